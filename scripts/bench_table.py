#!/usr/bin/env python3
"""Render saved benchmark JSON (gpu_check.py or `python -m engine bench --json`) as Markdown tables.

    python scripts/bench_table.py benchmarks/results/gpu_check-h200-2026-11-26.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.report import tpot_spread           # noqa: E402
from engine.studies.targets import SPREAD_MAX, shown   # noqa: E402
from engine.views import tables                         # noqa: E402


def _ms(value) -> str:
    return tables.ms(value, 2)


def _pct(value) -> str:
    """A share in whole percent, as the saved tables in BENCHMARKS.md print it."""
    return tables.fixed(value, 0, 100, "%")


def _threads(report: dict) -> str:
    """The workers' torch CPU threads and any row timed on a busy CPU (recorded since these fields exist)."""
    threads = sorted({r["cpu_threads"] for r in report["results"] if r.get("cpu_threads")})
    busy = [f"{r['variant']}@{r.get('prompt_length', '-')}" for r in report["results"] if r.get("host_busy")]
    plural = "" if threads == [1] else "s"
    text = f"; {'/'.join(map(str, threads))} torch CPU thread{plural} per worker" if threads else ""
    return text + (f"; timed while other processes kept its CPU busy: {', '.join(busy)}" if busy else "")


def _repeats(row: dict) -> str:
    """Each repeat's TPOT in the order timed (a slow first repeat is not noise), else the range."""
    if row.get("tpot_repeats_s"):
        return ", ".join(_ms(t) for t in row["tpot_repeats_s"])
    return f"{_ms(row['tpot_min_s'])}-{_ms(row['tpot_max_s'])}" if row["tpot_min_s"] else "-"


def _spread_notes(report: dict) -> list[str]:
    """For each cell whose repeats spread past the GPU check's target: what each repeat saw beside
    its TPOT (runs recorded since these fields exist)."""
    notes = []
    for r in report["results"]:
        clocks, taken = r.get("sm_clock_mhz_repeats") or [], r.get("preemptions_repeats") or []
        spread = tpot_spread(r)
        if spread is None or spread <= SPREAD_MAX:
            continue
        if not any(c is not None for c in clocks) and not any(p is not None for p in taken):
            continue
        seen = [f"TPOT {_repeats(r)} ms"]
        if any(c is not None for c in clocks):
            seen.append("SM clock " + ", ".join("-" if c is None else f"{c:.0f}" for c in clocks) + " MHz")
        if any(p is not None for p in taken):
            seen.append("serving thread preempted " + ", ".join("-" if p is None else str(p) for p in taken) + " times")
        notes.append(f"- repeats of `{r['variant']}` at prompt {r.get('prompt_length', '-')}: " + "; ".join(seen))
    return notes


def bench_markdown(report: dict) -> str:
    """One table per bench report, with the facts that make it reproducible."""
    v, device = report["versions"], report["device"]
    lines = [f"### {report['preset']['title']} on {device['name']}", "",
             f"torch {v['torch']}, transformers {v['transformers']}, bitsandbytes {v['bitsandbytes']}, "
             f"driver {device.get('driver')}; {report['preset']['dtype']}, batch {report['batch_size']}, "
             f"{report['new_tokens']} new tokens, {report['repeats']} repeats after one warm-up request per cell, "
             f"fair mode, greedy; random weights (seed {report['preset']['seed']}){_threads(report)}.", "",
             "| variant | prompt | status | TTFT ms | TPOT ms (median) | TPOT ms per repeat, in order | spread | "
             "tok/s | MBU (datasheet) | MBU (copy) | peak reserved GiB | weights GiB | placement |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in report["results"]:
        spread = _pct(tpot_spread(r))
        cells = (r["variant"], r.get("prompt_length", "-"), r["status"], _ms(r["ttft_s"]), _ms(r["tpot_s"]),
                 _repeats(r), spread, tables.fixed(r["tokens_per_s"], 1),
                 _pct(r["mbu"]), _pct(r.get("mbu_measured")), tables.gib(r["peak_memory_bytes"]),
                 tables.gib(r["weights_bytes"]), r["placement"] or "-")
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    reasons = {}
    for r in report["results"]:
        if r["reason"]:
            reasons.setdefault(r["variant"], r["reason"])
    lines += [""] + [f"- `{name}`: {reason}" for name, reason in reasons.items()]
    lines += _spread_notes(report)
    ref, bw = report.get("overhead_reference") or {}, report.get("peak_bandwidth_bytes_per_s") or {}
    if report.get("overhead_ratio") is not None:
        how = (f"median of {len(ref['pair_ratios'])} back-to-back pairs" if ref.get("pair_ratios")
               else "the run's median against a bare loop timed after the run")   # recorded before the pairs
        lines.append(f"- overhead: worker TPOT / bare-loop TPOT = {report['overhead_ratio']:.3f}, {how} "
                     f"({ref['variant']}, prompt {ref['prompt_length']}: {_ms(ref['worker_tpot_s'])} / "
                     f"{_ms(ref['bare_tpot_s'])} ms, {ref['clock']})")
    if bw.get("measured"):
        lines.append(f"- bandwidth: measured device-to-device copy {bw['measured'] / 1e9:.0f} GB/s; datasheet "
                     + ("-" if not bw.get("datasheet") else f"{bw['datasheet'] / 1e9:.0f} GB/s"))
    lines.append(f"- wall time of this preset, model creation and compilation included: {report['wall_s']:.0f} s")
    return "\n".join(lines)


def probe_markdown(data: dict) -> str:
    """A compile_probe.py run: one row per way of compiling the step, then where a step's time goes."""
    long = any("long_tpot_ms" in r for r in data["results"])
    lines = [f"### `{data['command']}`", "",
             f"{data['preset']} on {data['device']}, torch {data['torch']}, transformers {data['transformers']}; "
             f"prompt {data['prompt_tokens']}, {data['new_tokens']} new tokens; weights "
             f"{data['weights_bytes'] / 1e9:.2f} GB, copy bandwidth {data['copy_bandwidth_bytes_per_s'] / 1e9:.0f} GB/s.",
             "", "| config | step | inductor options | compile + first run s | next bucket's first run s | TPOT ms (median of 3) | MBU (copy) | "
             "MBU counting all of the input table | kernel us per step | idle us per step | kernels per step |"
             + (f" TPOT ms at prompt {data['next_bucket_prompt_tokens']} | MBU (copy) there |" if long else ""),
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |" + (" ---: | ---: |" if long else "")]
    for r in data["results"]:
        options = ", ".join(f"{key}={value}" for key, value in r["inductor"].items()) or "inductor's defaults"
        cells = (r["config"], r["step"], options, tables.fixed(r["compile_and_first_run_s"], 1),
                 tables.fixed(r.get("next_bucket_first_run_s"), 2), tables.fixed(r["tpot_ms"], 2),
                 _pct(r["mbu_vs_copy"]), _pct(r["mbu_vs_copy_counting_input_table"]),
                 tables.fixed(r.get("kernel_us_per_step"), 0), tables.fixed(r.get("idle_us_per_step"), 0),
                 tables.fixed(r.get("kernels_per_step"), 0))
        if long:                              # probes since the long prompt's TPOT was measured
            cells += (tables.fixed(r.get("long_tpot_ms"), 2), _pct(r.get("long_mbu_vs_copy")))
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    for r in data["results"]:
        if r.get("us_per_step_by_kind"):
            lines.append(f"- `{r['config']}`, us per step by kind: "
                         + ", ".join(f"{kind} {us:.0f}" for kind, us in r["us_per_step_by_kind"].items()))
        if r.get("long_us_per_step_by_kind"):
            lines.append(f"- `{r['config']}` at prompt {data['next_bucket_prompt_tokens']}, us per step by kind: "
                         + ", ".join(f"{kind} {us:.0f}" for kind, us in r["long_us_per_step_by_kind"].items()))
    return "\n".join(lines)


def first_shape_markdown(data: dict) -> str:
    """sdpa_first_shape.py: three identical generate() calls per SDPA setting."""
    settings = {"default": "PyTorch's default SDPA dispatch, prompt 128",
                "no-cudnn": "cuDNN attention turned off, prompt 128",
                "default-again-new-length": "default dispatch again, a 300-token prompt (lengths not met before)"}
    lines = [f"torch {data['torch']}; ms per generated token (prefill included) of three identical calls, in order:",
             "", "| SDPA setting | call 1 | call 2 | call 3 |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {label} | " + " | ".join(f"{t:.2f}" for t in data[key]) + " |"
              for key, label in settings.items() if key in data]
    return "\n".join(lines)


def main(paths: list[str]) -> int:
    for path in paths:
        data = json.loads(Path(path).read_text())
        if "runs" in data:                    # gpu_check.py: several bench reports
            print(f"## `{data['command']}` (torch {data['torch']}, CUDA {data['cuda']}, {data['device']})\n")
            print("FlashAttention implementations found: "
                  + ", ".join(f"{k}: {v}" for k, v in data["flash_attention"].items()) + "\n")
            for report in data["runs"]:
                print(bench_markdown(report) if "results" in report else f"### {report['preset']}: "
                      f"{report.get('skipped') or report.get('error')}")
                print()
            print(f"Total wall time: {data['wall_s']:.0f} s\n")
            if data.get("targets"):
                print("Targets, as the script judged them:\n")
                print("\n".join(f"- {'met' if c['met'] else '**not met**'}: {c['target']}: {shown(c['value'])}"
                                 + (f" ({c['detail']})" if c["detail"] else "") for c in data["targets"]) + "\n")
        elif "cudnn_sdp_enabled" in data:      # sdpa_first_shape.py
            print(first_shape_markdown(data) + "\n")
        elif "results" in data and "copy_bandwidth_bytes_per_s" in data:    # compile_probe.py
            print(probe_markdown(data) + "\n")
        elif "results" in data:
            print(bench_markdown(data) + "\n")
        else:                                 # compile_probe.py before it compared configs
            print(f"- compile probe ({'tuned inductor' if data['tuned'] else 'default inductor'}), "
                  f"{data['preset']}: TPOT {data['tpot_ms']:.2f} ms, {data['bytes_per_step_gb']:.2f} GB per step, "
                  f"copy bandwidth {data['copy_bandwidth_gbs']:.0f} GB/s, MBU {data['mbu_vs_copy']:.0%}; "
                  f"launches in 3 decode steps after a prefill: {data['launches_in_3_decode_steps']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
