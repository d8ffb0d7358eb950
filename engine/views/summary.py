"""A run's report as the summary table and the CSV file, and the definitions shown beside them.

Speedups and first differences are against `variants.REFERENCE`; whether a difference is called or
is within noise is engine/verdict.py's rule.
"""
from __future__ import annotations

from engine import quality, quality_table, verdict
from engine.report import tpot_range
from engine.variants import REFERENCE
from engine.views import tables

DEFINITIONS_MD = f"""\
Timestamps are taken in the worker process with `time.perf_counter()` right after each new token
reached the host (the copy to the host waits for the device). The prompt is not a token.

- **TTFT** (time to first token) = t(first token) - t(request start in the worker). Just before
  that start the worker makes one untimed forward pass of a few tokens, so that a request meets the
  machine as back-to-back requests leave it, not as an idle wait does (BENCHMARKS.md).
- **TPOT** (time per output token) = (t(last token) - t(first token)) / (N - 1); the first
  token is excluded (vLLM's definition; GenAI-Perf calls it ITL).
- **ITL** (inter-token latency) = the gaps between consecutive tokens; the chart shows each
  gap, the JSON holds p50/p90/p99.
- **E2E latency** = t(last token) - t(request start) = TTFT + TPOT x (N - 1).
- **Tokens/s** = new tokens of all sequences / E2E latency.
- **Against the {REFERENCE}**, every ratio says its direction in words: *1.12x faster* is the
  {REFERENCE}'s TPOT (or TTFT) over the variant's, *1.54x slower* the variant's over the {REFERENCE}'s;
  memory is the difference of the peaks in percent, *48% less* or *14% more*.
- **Within noise**: a difference is called only when the two variants' ranges over the repeats
  (min-max) do not overlap; the range beside a ratio is then the reference's slowest repeat over the
  variant's fastest, and the other way round. Ranges that overlap read *within noise*; one request
  has no range, and nothing is called; peak memory within 1% is the same. The verdict above the
  columns names, for each figure, the variant with the best median of those measurably better than
  the reference, and those within noise of it (*tied*); the cards and the summary star them.
- **Warm-up and repeats**: in each cell, every variant first answers one untimed warm-up request
  identical to the timed ones (its time is shown apart, never in the figures): the first request
  at sequence lengths a variant has not met can be several times slower than the next (on Hopper
  GPUs PyTorch's default SDPA builds a cuDNN plan for each new length; BENCHMARKS.md). Then the
  request is timed Repeats times (3 by default). Each figure is the median over the repeats of
  that figure (TTFT, TPOT, E2E, ITL percentiles, tokens/s, MBU), with the TPOT range in brackets;
  E2E = TTFT + TPOT x (N - 1) holds for each repeat, and the JSON holds every repeat's token
  times (`token_times_repeats_s`), so each figure can be recomputed from it.
- **MBU** (model bandwidth utilisation) = (weight bytes a step reads + mean KV-cache bytes) /
  TPOT / peak memory bandwidth of the device. A step reads every weight but an input embedding
  table that the output head does not share (it gathers one row of it). Against two peaks:
  *measured copy*, the best of 20 large copies on a GPU, 10 on a CPU (bytes read + written, measured
  once after the first run's timed requests), and *datasheet*, the vendor's figure (GPUs in the
  engine's table only). Near 100% of the measured
  peak, a step reads its bytes as fast as this device can; far below it, something else
  (launching kernels from Python, say) sets the pace.
- **Peak memory**: the worker process's own memory: peak reserved by the torch allocator on a GPU,
  peak resident set size on a CPU. Whole-GPU memory mixes variants and is never shown as one's.
- **Served** variants (an OpenAI-compatible server, e.g. vLLM) are timed by the same clock as each
  chunk arrives: TTFT from the request being sent, TPOT over the server's own token count. Their
  JSON row's `server` holds what the server measured of itself (its TTFT, time per output token and
  queue time, from its Prometheus metrics): the difference is network and queueing. Their memory is
  the server's own, not reported here.
- **First diff**: index of the first new token that differs from the {REFERENCE}'s (greedy decoding).
- **Fair** mode runs one variant at a time on a device, so no variant slows another. **Race** mode
  runs them all at once: their timings are marked *contended*. *Replay* plays fair timings as a race.
- **CPU busy**: while each request is timed the worker counts the CPU time other processes spent
  on its cores. Past the cores it leaves spare, its timings are marked *CPU busy* with the cores
  taken: that variant was slowed by something else (a browser, another job), not by its kernels.
  Every comparison it enters names it (*slowed by other processes: baseline*); a slowed reference overstates every gain.
- **Quality**: after the timed requests, off the clock, each variant reads the {REFERENCE}'s answer (the prompt
  and the {REFERENCE}'s new tokens) in one forward pass, teacher forcing, and gives its next-token
  distribution at every position of that answer; the {REFERENCE}'s own distributions are the reference.
  - **Same top token** = the share of positions where the variant's most likely token is the
    {REFERENCE}'s (llama.cpp's "same top p", from its perplexity tool with `--kl-divergence`).
  - **Mean KLD** and **KLD p99** = the mean and the 99th percentile over the positions of
    `KL(P_{REFERENCE} || P_variant)`, in nats over the whole vocabulary (llama.cpp's KLD statistics, from the
    same tool): 0 means the same distributions. An answer under 100 tokens gives its maximum instead of a
    99th percentile (*max*), which would only be the largest value again.
  - **Perplexity** = exp(-mean log p(token)) of the {REFERENCE}'s answer under the variant, beside the
    {REFERENCE}'s own, as vLLM and lm-eval compute perplexity from token log-probabilities: higher means
    the variant predicts that answer less well.
  - A random-weight preset reads *not meaningful: random weights* instead of numbers: its
    distributions are noise. A served variant's server does not report them.
  - **Speed against quality** (chart): each variant at its TPOT and mean KLD, the marker's area its peak
    memory; the best place is the bottom left.
- While a run streams, the figures are live estimates from the tokens so far; the report's numbers
  replace them at the end.
- **Goodput** (with latency targets: `--slo ttft_ms=200,tpot_ms=50` on the command line, the targets
  on the History tab's comparison) = requests that met *every* target per second, beside all
  requests per second: vLLM's serving-benchmark definition (GenAI-Perf's and AIPerf's too). Each timed
  repeat is one request per sequence of its batch; the seconds are the repeats' E2E latencies summed;
  a one-token request has no TPOT and meets a TPOT target. In tokens/s: the good requests' tokens
  over the same seconds.
"""

SUMMARY_HEADERS = ("Variant", "Speedup (TPOT)", "TPOT ms (min-max)", "TTFT vs reference", "TTFT ms (min-max)",
                   "Tokens/s", "Peak memory", "Memory vs reference", "Best at", "Status", "Tokens", "Weights",
                   "MBU (measured copy)", "MBU (datasheet)", "First diff", "Same top token", "Mean KLD",
                   "KLD p99 (or max)", "Perplexity (reference's)", "Timings")
RUN_FIELDS = ("created", "mode", "prompt_tokens", "repeats", "batch_size", "decoding", "cancelled")
VERDICT_WORDS = {verdict.BETTER: "", verdict.WORSE: "", verdict.NOISE: "within noise", verdict.NO_RANGE: "1 request"}
# what a person compares at a glance, the page's first table: the rest of SUMMARY_HEADERS is behind a toggle
GLANCE_HEADERS = ("Variant", "Time per token, ms (min-max)", "First token, ms (min-max)", "Peak memory",
                  "Quality of answers", "Verdict")
SLOWED = "slowed by other processes"


def judgement(report: dict) -> dict:
    """The report's comparisons (engine/verdict.py), made now for a report saved without them."""
    return report.get("comparison") or verdict.judge(report.get("results", []))


def versus(row: dict, metric: str) -> str:
    """A variant against the reference in one figure, its direction in words: "4.40x faster (3.85-5.00x)",
    "1.02x slower, within noise", "48% less (46-50%)"; "reference" on the reference's own row."""
    if row["variant"] == REFERENCE:
        return "reference" if verdict.answered(row) else tables.DASH
    found = (row.get("vs_reference") or {}).get(metric)
    if not found:
        return tables.DASH
    measure = verdict.BY_NAME[metric]
    comparison = verdict.Comparison(**found)
    text = verdict.directed(measure, comparison, with_range=comparison.verdict != verdict.NOISE, word="")
    return text + (f", {VERDICT_WORDS[comparison.verdict]}" if VERDICT_WORDS[comparison.verdict] else "")


def slowed_text(row: dict) -> str:
    """Who other processes slowed among this row and the reference it is compared with, said once: "slowed by
    other processes: sdpa, baseline"; "" when nobody was."""
    busy = (row.get("vs_reference") or {}).get("slowed_by_others")
    if busy is None:                                # the reference's own row, or one without a comparison
        busy = [row["variant"]] if row.get("host_busy") else []
    return f"{SLOWED}: {', '.join(busy)}" if busy else ""


def tpot_text(row: dict, digits: int = 2) -> str:
    """The TPOT median in ms, and its (min-max) range over the repeats when there are several."""
    spread = tpot_range(row)
    text = tables.ms(row.get("tpot_s"), digits)
    return text if spread is None else f"{text} ({tables.ms_range(*spread, digits)})"


def ttft_text(row: dict, digits: int = 2) -> str:
    """The TTFT median in ms, and its (min-max) range over the repeats when there are several."""
    values = verdict.values(row, verdict.BY_NAME["ttft"])
    text = tables.ms(row.get("ttft_s"), digits)
    return text if len(values) < 2 else f"{text} ({tables.ms_range(min(values), max(values), digits)})"


def _first_diff(row: dict, has_reference: bool) -> str:
    if row["variant"] == REFERENCE:
        return "reference"
    if not has_reference or not row.get("output_tokens"):
        return tables.DASH
    if row.get("server") and not row.get("token_ids"):
        return "unknown: no token ids from the server"
    return "none" if row.get("first_diff_token") is None else f"token {row['first_diff_token']}"


def quality_cells(row: dict) -> list[str]:
    """The row's quality columns (engine/quality.py): same top token, mean KLD, its tail, perplexity beside
    the reference's; "reference" on the reference's row; the reason in place of numbers where there are none
    (a random-weight preset: "not meaningful: random weights"); dashes where the row has no entry."""
    found = row.get("quality")
    if not quality.has_figures(found):
        note = (found or {}).get("note")
        return [note or tables.DASH] + [tables.DASH] * 3
    perplexity = tables.general(found.get("perplexity"))
    if found["status"] == "reference":
        return ["reference", "reference", "reference", perplexity]
    reference = found.get("reference_perplexity")
    return [*quality_table.cells(found),
            perplexity + ("" if reference is None else f" ({found['reference']} {reference:.4g})")]


def _timings(row: dict) -> str:
    if not row.get("output_tokens"):
        return tables.DASH
    text = "contended (race)" if row.get("contended") else "alone on the device"
    if row.get("host_busy"):
        text += f"; CPU busy ({row['host_others_cores']:.1f} cores taken)"
    return text


def _order(row: dict) -> tuple:
    """The reference first, then the variants that answered from the fastest per token, then the rest."""
    if row["variant"] == REFERENCE:
        return (0, 0.0)
    return (1, row["tpot_s"]) if verdict.answered(row) and row.get("tpot_s") else (2, 0.0)


def summary_rows(report: dict) -> list[list[str]]:
    """One formatted row per variant of the report (see SUMMARY_HEADERS), the fastest per token first."""
    results = report.get("results", [])
    judged = judgement(report)
    has_reference = any(r["variant"] == REFERENCE and r.get("output_tokens") for r in results)
    rows = []
    for r in sorted(results, key=_order):
        best = verdict.marks(judged, r["variant"])
        rows.append([r["variant"], versus(r, "tpot"), tpot_text(r), versus(r, "ttft"), ttft_text(r),
                     tables.fixed(r.get("tokens_per_s")),
                     "server's own" if r.get("server") else tables.size(r.get("peak_memory_bytes")), versus(r, "memory"),
                     ("\u2605 " + ", ".join(best)) if best else "", r["status"],
                     str(r.get("output_tokens") or tables.DASH), tables.size(r.get("weights_bytes")),
                     tables.percent(r.get("mbu_measured")), tables.percent(r.get("mbu")),
                     _first_diff(r, has_reference), *quality_cells(r), _timings(r)])
    return rows


def _with_versus(value: str, row: dict, metric: str) -> str:
    """A figure and, after it, how it compares with the reference's: "5.00 (4.90-5.20) · 2.00x faster (1.88-2.12x)"."""
    if value == tables.DASH or not verdict.answered(row):
        return value
    against = versus(row, metric)
    return value if against == tables.DASH else f"{value} · {against}"


def _quality_glance(row: dict) -> str:
    """One cell on the answers: "same top token 94%, mean KLD 0.041", "reference", or why there are no figures."""
    found = row.get("quality")
    if not quality.has_figures(found):
        return (found or {}).get("note") or tables.DASH
    if found["status"] == "reference":
        return "reference"
    top, mean, _ = quality_table.cells(found)
    return f"same top token {top}, mean KLD {mean}"


def glance_rows(report: dict) -> list[list[str]]:
    """The columns a person compares (GLANCE_HEADERS), one row per variant in `summary_rows`' order: each figure
    with its direction against the reference in words, the titles won, and who was slowed, once per row."""
    judged = judgement(report)
    rows = []
    for r in sorted(report.get("results", []), key=_order):
        best = verdict.marks(judged, r["variant"])
        memory = "server's own" if r.get("server") else tables.size(r.get("peak_memory_bytes"))
        said = [("\u2605 " + ", ".join(best)) if best else "", slowed_text(r),
                "" if verdict.answered(r) else (r.get("reason") or r["status"])]
        rows.append([r["variant"], _with_versus(tpot_text(r), r, "tpot"), _with_versus(ttft_text(r), r, "ttft"),
                     _with_versus(memory, r, "memory"), _quality_glance(r),
                     "; ".join(part for part in said if part) or tables.DASH])
    return rows


def report_csv(report: dict) -> str:
    """The report as CSV: one row per variant, run facts repeated on each row, lists left out."""
    table = []
    for r in report.get("results", []):
        row = {"preset": report.get("preset", {}).get("name"), "device": report.get("device", {}).get("name")}
        row.update({key: report.get(key) for key in RUN_FIELDS})
        row.update({k: v for k, v in r.items() if not isinstance(v, (list, dict))})
        row.update({f"memory_{k}": v for k, v in (r.get("memory") or {}).items()})
        if "quality" in r:              # its figures as columns, empty where unmeasured, and the reason why
            entry = r["quality"] or {}
            row.update(quality_status=entry.get("status"), quality_kld_tail=entry.get("kld_tail"),
                       **quality.flat(entry))
        table.append(row)
    return tables.csv_text(table)
