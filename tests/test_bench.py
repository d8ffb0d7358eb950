"""The benchmark command and the GPU script, on the CPU."""
import json
import statistics
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from app_server import kill_if_running

from engine import events, presets, schedule
from engine.pool import Engine
from engine.spec import RunSpec, lengths
from engine.studies.bench import FILLER, run_bench, table
from engine.events import Request

ROOT = Path(__file__).resolve().parent.parent


def test_bench_gives_a_cell_per_variant_and_length_with_spread_and_overhead(compile_probe):  # beside it
    report = run_bench(presets.load("tiny"), ["sdpa", "baseline"], [16, 64], 8, repeats=3)
    cells = {(r["variant"], r["prompt_length"]): r for r in report["results"]}
    assert set(cells) == {(v, n) for v in ("sdpa", "baseline") for n in (16, 64)}
    for row in cells.values():
        assert row["status"] == "ok" and row["repeats"] == 3 and row["output_tokens"] == 8
        assert row["tpot_min_s"] <= row["tpot_s"] <= row["tpot_max_s"]
        assert len(row["tpot_repeats_s"]) == 3 and sorted(row["tpot_repeats_s"]) == \
            [row["tpot_min_s"], row["tpot_s"], row["tpot_max_s"]]
        assert row["mbu_measured"] == pytest.approx(row["decode_bytes_per_step"] / row["tpot_s"]
                                                    / report["peak_bandwidth_bytes_per_s"]["measured"])
    ref = report["overhead_reference"]
    assert ref["variant"] == "sdpa" and ref["prompt_length"] == 16 and ref["clock"] == "perf_counter"
    # three timed pairs, each run back to back: the ratio is the median of the pairs' ratios
    assert len(ref["worker_runs_s"]) == len(ref["bare_runs_s"]) == len(ref["pair_ratios"]) == 3
    assert ref["pair_ratios"] == pytest.approx([w / b for w, b in zip(ref["worker_runs_s"], ref["bare_runs_s"])])
    assert report["overhead_ratio"] == pytest.approx(statistics.median(ref["pair_ratios"]))
    assert ref["worker_tpot_s"] == statistics.median(ref["worker_runs_s"]) > 0
    assert ref["bare_tpot_s"] == statistics.median(ref["bare_runs_s"]) > 0
    assert report["peak_bandwidth_bytes_per_s"]["measured"] > 0
    assert report["peak_bandwidth_bytes_per_s"]["datasheet"] is None          # a CPU has no datasheet entry
    text = table(report)
    assert "overhead: worker TPOT / bare-loop TPOT" in text and text.count("\nsdpa ") == 2


def test_a_warm_up_request_decodes_every_token_of_its_cell(monkeypatch, compile_probe):  # beside it
    # a few warm-up tokens leave the lengths past them unseen: the first timed repeat then pays
    # for them (a cuDNN attention plan per length on a Hopper GPU)
    made = []

    def recording(*args, **kwargs):
        made.append(Request(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(schedule, "Request", recording)
    with Engine(presets.load("tiny")) as engine:
        run = engine.start(RunSpec(FILLER, ["sdpa"], 12, repeats=2, ignore_eos=True, cells=lengths([16, 40]),
                                   warmup_requests=1))
        report = next(e.report for e in run if isinstance(e, events.RunDone))
    assert [(r.prompt_tokens, r.max_new_tokens) for r in made] == [(16, 12)] * 3 + [(40, 12)] * 3
    assert [row["repeats"] for row in report["results"]] == [2, 2]      # the warm-up is measured by nobody


def _gpu_check(*args, **kwargs):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), *args], capture_output=True,
                          text=True, timeout=600, **kwargs)


PROBE = [sys.executable, str(ROOT / "scripts" / "compile_probe.py"), "--device", "cpu", "--preset", "tiny"]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """gpu_check's dry run on the CPU, the variants' runs then the attention sweep: (the process, its --out)."""
    out = tmp_path_factory.mktemp("gpu_check")
    done = _gpu_check("--device", "cpu", "--variants", "baseline,sdpa,fa2,compiled,int4", "--attention",
                      "--out", str(out))
    return done, out


@pytest.fixture(scope="module")
def compile_probe(dry_run, tmp_path_factory):
    """compile_probe.py with --keep-caches, started once the dry run is done: what the dry run compiled (the
    compiled variant's fused step) loads from inductor's cache instead of compiling again. It computes on one
    core for seconds, so the module's in-process bench tests ask for it and run beside it. (the process,
    its --out, its stdout and stderr files)."""
    out = tmp_path_factory.mktemp("compile_probe")
    with open(out / "stdout.txt", "w") as stdout, open(out / "stderr.txt", "w") as stderr:
        process = subprocess.Popen(PROBE + ["--tokens", "8", "--configs", "fused-tuned,forward-graphs", "--keep-caches",
                                            "--out", str(out)], stdout=stdout, stderr=stderr, text=True)
    yield process, out
    kill_if_running(process)                         # a test failed before it waited for it


def test_gpu_check_refuses_bad_arguments():
    done = _gpu_check("--variants", "baseline,warp")
    assert done.returncode == 2 and "unknown variant(s) warp" in done.stderr
    done = _gpu_check("--device", "tpu")
    assert done.returncode == 2 and "invalid choice: 'tpu'" in done.stderr


def test_gpu_check_without_cuda_says_how_to_dry_run():
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    done = _gpu_check()
    assert done.returncode == 2 and "pass --device cpu for a dry run" in done.stderr


def test_gpu_check_dry_run_on_the_cpu_with_the_attention_sweep(dry_run):
    done, out = dry_run
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((out / "gpu_check.json").read_text())
    assert summary["device"] == "cpu"
    assert summary["flash_attention"]["torch sdpa flash backend"] == "works"
    (run,) = summary["runs"]
    statuses = {(r["variant"], r["prompt_length"]): r["status"] for r in run["results"]}
    assert statuses == {(v, n): ("unavailable" if v == "fa2" else "ok")
                        for v in ("baseline", "sdpa", "fa2", "compiled", "int4") for n in (32, 128)}
    assert done.stdout.strip().splitlines()[-1].startswith("total ")
    timeline = (out / "gpu_check-timeline.txt").read_text()   # each timed request as it ended, also on stderr
    assert timeline.count("compiled, prompt 128: 8 tokens") == 1 and timeline.splitlines()[-1] in done.stderr
    assert "overhead: worker TPOT / bare-loop TPOT" in done.stdout
    checks = {c["target"]: c for c in summary["targets"]}        # the GPU targets, checked even on a dry run
    overhead = checks["tiny: worker TPOT / bare-loop TPOT <= 1.02"]
    assert overhead["value"] == run["overhead_ratio"] and overhead["met"] == (0.98 <= run["overhead_ratio"] <= 1.02)
    assert checks["tiny: every variant runs, or is unavailable with its reason"]["met"]   # fa2: unavailable, says why
    assert checks["wall time <= 480 s"]["value"] == summary["wall_s"]
    spread = "tiny: TPOT spread (max / min - 1 over repeats) <= 5% in every cell"
    assert (spread in checks) == (run["repeats"] > 1)              # one repeat here: no spread to judge
    for check in summary["targets"]:
        assert f"[{'met' if check['met'] else 'NOT MET'}] {check['target']}" in done.stdout
    sweep = summary["attention"]            # the attention sweep, after the variants' runs
    assert sweep["experiment"] == "attention" and sweep["quick"] is True
    rows = {(r["variant"], r["prompt_length"], r["pad_ratio"], r["max_new_tokens"]): r for r in sweep["results"]}
    # eager, sdpa, sdpa-flash, fa2 over prompts 64 and 256, padding 0 and 0.3, prefill and generation
    assert {key[0] for key in rows} == {"baseline", "sdpa", "sdpa-flash", "fa2"} and len(rows) == 4 * 8
    assert all(r["status"] == ("unavailable" if r["variant"] == "fa2" else "ok") for r in rows.values())
    assert "== attention sweep on tiny" in done.stdout and "claim:" in done.stdout


def test_gpu_check_targets_count_a_preset_that_never_ran_as_not_met():
    from engine.studies.targets import check_targets
    checks = check_targets({"runs": [{"preset": "opt-350m-random", "skipped": "time budget spent (470 s)"}],
                            "wall_s": 470.0}, quick=False)
    assert [(c["target"], c["met"], c["detail"]) for c in checks] == [
        ("opt-350m-random: measured", False, "time budget spent (470 s)"), ("wall time <= 480 s", True, "")]


def test_the_int4_target_is_its_tpot_over_compiled_bf16_at_prompt_128():
    from engine.studies.targets import check_targets
    row = dict(status="ok", repeats=1, reason=None, prompt_length=128, mbu_measured=None, tpot_min_s=None,
               tpot_max_s=None)
    rows = [dict(row, variant="compiled", tpot_s=0.0050), dict(row, variant="int4", tpot_s=0.0026)]
    summary = {"runs": [{"preset": {"name": "llama-3.1-8b-random"}, "results": rows, "overhead_ratio": 1.0}],
               "wall_s": 100.0}
    name = "llama-3.1-8b-random: int4 TPOT / compiled TPOT at prompt 128 <= 0.55"
    found = {c["target"]: c for c in check_targets(summary, quick=True)}[name]
    assert found["value"] == pytest.approx(0.52) and found["met"]
    rows[1]["status"] = "failed"
    found = {c["target"]: c for c in check_targets(summary, quick=True)}[name]
    assert found["value"] is None and not found["met"] and "did not answer" in found["detail"]


def test_gpu_check_spread_target_names_the_cells_over_it():
    from engine.studies.targets import check_targets
    cell = dict(status="ok", repeats=3, reason=None, variant="sdpa", prompt_length=128, tpot_min_s=0.010,
                tpot_max_s=0.0103, mbu_measured=None)
    rows = [cell, dict(cell, variant="baseline", tpot_max_s=0.0108), dict(cell, variant="fa2", status="unavailable",
                                                                          reason="no flash_attn")]
    summary = {"runs": [{"preset": {"name": "opt-350m-random"}, "results": rows, "overhead_ratio": 1.01}],
               "wall_s": 500.0}
    checks = {c["target"]: c for c in check_targets(summary, quick=False)}
    spread = checks["opt-350m-random: TPOT spread (max / min - 1 over repeats) <= 5% in every cell"]
    assert not spread["met"] and spread["value"] == pytest.approx(0.08) and spread["detail"] == "baseline@128 8%"
    from engine.report import tpot_spread
    assert tpot_spread(dict(cell, repeats=1)) is None            # one repeat: no spread to judge
    assert checks["opt-350m-random: worker TPOT / bare-loop TPOT <= 1.02"]["met"]
    assert checks["opt-350m-random: every variant runs, or is unavailable with its reason"]["met"]
    assert not checks["wall time <= 480 s"]["met"]
    summary["runs"][0]["overhead_ratio"] = 0.605      # a bare loop slower than the engine: a broken comparison
    overhead = {c["target"]: c for c in check_targets(summary, quick=False)}[
        "opt-350m-random: worker TPOT / bare-loop TPOT <= 1.02"]
    assert not overhead["met"] and "the comparison is broken" in overhead["detail"]
    rows[1]["host_busy"] = True                       # the slow repeat had its CPU core taken
    checks = {c["target"]: c for c in check_targets(summary, quick=False)}
    assert checks["opt-350m-random: TPOT spread (max / min - 1 over repeats) <= 5% in every cell"]["detail"] == \
        "baseline@128 8% (CPU busy)"


def test_bench_table_renders_saved_results():
    saved = ROOT / "benchmarks" / "results" / "gpu_check-h200-2026-11-26.json"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_table.py"), str(saved)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    data = json.loads(saved.read_text())
    compiled = next(r for r in data["runs"][0]["results"] if r["variant"] == "compiled" and r["prompt_length"] == 128)
    assert f"| compiled | 128 | ok | {compiled['ttft_s'] * 1000:.2f} | {compiled['tpot_s'] * 1000:.2f} |" in done.stdout
    assert "per worker" not in done.stdout         # recorded before the runs kept the thread count


def test_bench_table_renders_each_repeat_the_targets_and_the_sdpa_probe():
    results = ROOT / "benchmarks" / "results"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_table.py"),
                           str(results / "gpu_check-h200-2026-11-26-2.json"),
                           str(results / "sdpa_first_shape-h200-2026-11-26.json")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    data = json.loads((results / "gpu_check-h200-2026-11-26-2.json").read_text())
    sdpa = next(r for r in data["runs"][0]["results"] if r["variant"] == "sdpa" and r["prompt_length"] == 128)
    assert " | " + ", ".join(f"{t * 1000:.2f}" for t in sdpa["tpot_repeats_s"]) + " | " in done.stdout
    for check in data["targets"]:
        assert f"{'met' if check['met'] else '**not met**'}: {check['target']}" in done.stdout
    probe = json.loads((results / "sdpa_first_shape-h200-2026-11-26.json").read_text())
    assert "| default dispatch again, a 300-token prompt (lengths not met before) | " + \
        " | ".join(f"{t:.2f}" for t in probe["default-again-new-length"]) + " |" in done.stdout


def test_bench_table_shows_what_each_repeat_of_a_spread_cell_saw():
    sys.path.insert(0, str(ROOT / "scripts"))
    from bench_table import bench_markdown
    report = json.loads((ROOT / "benchmarks" / "results" / "bench-tiny-per-token-after-cpu-2026-11-26-1.json").read_text())
    row = report["results"][0]
    row.update(tpot_repeats_s=[0.0300, 0.0200, 0.0201], tpot_min_s=0.0200, tpot_max_s=0.0300,
               sm_clock_mhz_repeats=[1410, 1980, 1980], preemptions_repeats=[12, 0, 1])
    assert ("- repeats of `sdpa` at prompt 128: TPOT 30.00, 20.00, 20.10 ms; SM clock 1410, 1980, 1980 MHz; "
            "serving thread preempted 12, 0, 1 times") in bench_markdown(report)
    row.update(tpot_max_s=0.0205)                             # within 5%: nothing to explain
    assert "- repeats of" not in bench_markdown(report)


def test_bench_table_names_the_threads_and_the_cells_timed_on_a_busy_cpu():
    sys.path.insert(0, str(ROOT / "scripts"))
    from bench_table import bench_markdown
    report = json.loads((ROOT / "benchmarks" / "results" / "bench-tiny-per-token-after-cpu-2026-11-26-1.json").read_text())
    assert "; 2 torch CPU threads per worker." in bench_markdown(report)
    report["results"][0]["host_busy"] = True
    assert "timed while other processes kept its CPU busy: sdpa@128." in bench_markdown(report)


def test_compile_probe_dry_run_on_the_cpu(compile_probe):
    done = subprocess.run(PROBE + ["--configs", "fused-tuned,warp"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 2 and "unknown config 'warp'" in done.stderr
    process, out = compile_probe
    returncode = process.wait(600)
    done = SimpleNamespace(returncode=returncode, stdout=(out / "stdout.txt").read_text(),
                           stderr=(out / "stderr.txt").read_text())
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((out / "compile_probe.json").read_text())
    assert summary["inductor_caches"] == "kept" and "inductor's caches kept (--keep-caches)" in done.stdout
    fused, forward = summary["results"]
    assert (fused["step"], forward["step"]) == ("fused Llama step", "transformers forward")
    for result in (fused, forward):
        assert len(result["tpot_runs_ms"]) == 3 and result["tpot_ms"] == sorted(result["tpot_runs_ms"])[1]
        assert result["mbu_vs_copy"] == pytest.approx(
            (summary["weights_bytes"] - summary["input_table_bytes"] + summary["kv_bytes_mean"])
            / (result["tpot_ms"] / 1000)
            / summary["copy_bandwidth_bytes_per_s"])
        assert result["first_token_unlike_generate"] is None      # float32 on a CPU: the same greedy tokens
        assert f"{result['config']:16} {result['compile_and_first_run_s']:9.1f} " \
               f"{result['next_bucket_first_run_s']:10.2f} {result['tpot_ms']:8.2f}" in done.stdout
    assert summary["next_bucket_prompt_tokens"] == 257       # 128 + 8 tokens fill bucket 256: the next is 512
    for result in (fused, forward):                          # the later bucket, served by the same compile
        assert len(result["long_tpot_runs_ms"]) == 3
        assert result["long_tpot_ms"] == sorted(result["long_tpot_runs_ms"])[1]
    table = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_table.py"), str(out / "compile_probe.json")],
                           capture_output=True, text=True, timeout=60).stdout
    assert "| TPOT ms at prompt 257 | MBU (copy) there |" in table
    assert f"| {fused['long_tpot_ms']:.2f} | {fused['long_mbu_vs_copy']:.0%} |" in table


def test_the_overhead_line_states_the_pairs_it_takes_the_median_of():
    from engine.studies.bench import overhead_line
    ref = {"variant": "sdpa", "prompt_length": 64, "clock": "perf_counter",
           "worker_runs_s": [0.00120, 0.00130, 0.00125], "bare_runs_s": [0.00122, 0.00123, 0.00119]}
    ref["pair_ratios"] = [w / b for w, b in zip(ref["worker_runs_s"], ref["bare_runs_s"])]
    report = {"overhead_ratio": statistics.median(ref["pair_ratios"]), "overhead_reference": ref}
    line = overhead_line(report)
    stated = f"{report['overhead_ratio']:.3f}"
    assert line.startswith(f"overhead: worker TPOT / bare-loop TPOT = {stated}, the median of the ratios of 3 "
                           "back-to-back pairs (sdpa, prompt 64, perf_counter): ")
    pairs = line.split("): ", 1)[1].split(", ")
    assert pairs == [f"{w * 1000:.3f}/{b * 1000:.3f} ms = {r:.3f}" for w, b, r in
                     zip(ref["worker_runs_s"], ref["bare_runs_s"], ref["pair_ratios"])]
    assert sorted(p.rsplit(" = ", 1)[1] for p in pairs)[1] == stated          # the middle pair is the ratio stated
    assert overhead_line({"overhead_ratio": None}) is None
