"""Experiments as data: which variants, which grid of cells, which figures, and what each teaches.

Each experiment reproduces a classic inference finding; its paragraph says what its chart shows
and why, and its `claims` say the same as checks on the rows (engine/studies/trends.py measures
them on a run's rows, so that a chart that contradicts its paragraph says so). Measuring one is
engine/studies/sweeps.py.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from engine import quality, verdict
from engine.presets import Preset
from engine.spec import Cell
from engine.variants import REFERENCE

PROMPT = "Attention reads every cached key and value for each new token, so memory bandwidth sets the pace. "


@dataclass(frozen=True)
class Claim:
    """What a paragraph says the chart shows, as a check: row field `y` changes along grid field `x`
    (from its first cell to its last) in `direction`, in every series of rows (one per variant and
    padding); or, with `faster_than`, it grows along `x` by a larger factor than that variant's does."""
    text: str                   # the claim, in the paragraph's words
    y: str
    x: str                      # a grid field; "variant": along `variants`, in their order
    contrary: str               # what the run showed when it contradicts the claim
    why: str                    # the likely reason, said with the contradiction
    where: dict = field(default_factory=dict)          # the rows it is about, e.g. {"phase": "prefill"}
    variants: tuple[str, ...] = ()                     # () : every variant of the rows (but the reference
                                                       # for a ratio to it)
    direction: int = 1                                 # +1: grows along x; -1: falls
    faster_than: str | None = None


@dataclass(frozen=True)
class Experiment:
    """One sweep: which variants, which cells, which figures, and what it teaches."""
    name: str
    title: str
    explanation: str
    variants: tuple[str, ...]
    grid: Callable[[bool], list[tuple[dict, Cell]]]   # quick -> [(labels of the cell, cell)]
    max_new_tokens: Callable[[bool], int]
    y: tuple[str, ...]                                # the row fields the summary table shows
    claims: tuple[Claim, ...] = ()                    # what `explanation` says, checkable on the rows
    preset: str = "tiny"                              # what `python -m engine sweep` runs it on unless told
    quality: bool = False                             # score each variant on the reference's answer (cell 0,
                                                      # off the clock: engine/quality.py); only where it is shown


def _attention_grid(quick: bool):
    lengths = (64, 256) if quick else (256, 1024, 2048, 4096)
    cells = []
    for phase, new in (("prefill", 1), ("generation", 8 if quick else 64)):
        for pad in (0.0, 0.3):
            for length in lengths:
                cells.append(({"phase": phase}, Cell(prompt_tokens=length, max_new_tokens=new, batch_size=4,
                                                     pad_ratio=pad)))
    return cells


def _batch_grid(quick: bool):
    return [({}, Cell(prompt_tokens=64 if quick else 128, batch_size=b)) for b in ((1, 2, 4) if quick else (1, 2, 4, 8, 16))]


def _kv_grid(quick: bool):
    return [({}, Cell(prompt_tokens=32 if quick else 128, max_new_tokens=n))
            for n in ((8, 16, 32) if quick else (16, 32, 64, 128, 256))]


def _quant_grid(quick: bool):
    return [({}, Cell(prompt_tokens=None))]


def _lengths_grid(quick: bool):
    outputs = (4, 8, 16) if quick else (16, 32, 64, 128)
    inputs = (32, 64, 128) if quick else (128, 512, 1024, 2048)
    return ([({"axis": "output"}, Cell(prompt_tokens=inputs[0], max_new_tokens=n)) for n in outputs]
            + [({"axis": "input"}, Cell(prompt_tokens=n, max_new_tokens=outputs[0])) for n in inputs])


EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in (
    Experiment(
        "attention", "FlashAttention and SDPA against eager attention, by prompt length and padding",
        "Eager attention writes the full prompt x prompt score matrix to memory and reads it back; fused "
        "kernels (SDPA, FlashAttention-2) tile it through on-chip memory instead. The work saved grows with "
        "the square of the prompt length, so the speedup over eager is small for short prompts and grows "
        "with length, and peak memory falls. Padding wastes part of the batch on pad tokens that every "
        "kernel still processes, which shrinks the gain. Prefill rows time the first token (the prompt pass); "
        "generation rows time the whole answer, where decoding, bound by memory bandwidth, dilutes the gain.",
        (REFERENCE, "sdpa", "sdpa-flash", "fa2"), _attention_grid, lambda quick: 8 if quick else 64,
        ("speedup_vs_baseline", "peak_memory_bytes"),
        (Claim("the prefill speedup over eager grows with the prompt length", "speedup_vs_baseline",
               "prompt_length", "the prefill speedup did not grow with the prompt length",
               "at this model size and these lengths attention is a small part of the time",
               where={"phase": "prefill"}),)),
    Experiment(
        "batch", "Batching: throughput against time per token",
        "A decode step reads all the weights once, whatever the batch: with more sequences per step the same "
        "bytes serve more tokens, so throughput (tokens per second across the batch) rises almost in "
        "proportion while memory bandwidth is the limit. Each step does more arithmetic, so every user's "
        "tokens arrive a little slower (TPOT rises), until compute, not bandwidth, is the limit.",
        ("sdpa",), _batch_grid, lambda quick: 16 if quick else 64, ("tokens_per_s", "tpot_s"),
        (Claim("throughput rises with the batch size", "tokens_per_s", "batch_size",
               "throughput did not rise with the batch size",
               "each step's arithmetic, not reading the weights, already set the pace on this device"),
         Claim("time per token (TPOT) rises with the batch size", "tpot_s", "batch_size",
               "TPOT did not rise with the batch size",
               "at this model size a step's fixed costs outweigh the arithmetic of a few more sequences"))),
    Experiment(
        "kv-cache", "The KV cache: time per token against output length, with and without it",
        "With the cache each new token computes its own keys and values and reads the cached ones, so a step "
        "costs about the same all along. Without it every step recomputes the whole sequence so far: a step "
        "costs more with every token, and the total grows with the square of the output length.",
        ("sdpa", "no-kv-cache"), _kv_grid, lambda quick: 8 if quick else 16, ("tpot_s", "e2e_s"),
        (Claim("without the cache, time per token grows with the output length faster than with it", "tpot_s",
               "max_new_tokens", "TPOT without the cache did not grow faster than with it",
               "at these lengths recomputing the short sequence costs little more than a cached step",
               variants=("no-kv-cache",), faster_than="sdpa"),)),
    Experiment(
        "quantization", "Quantization: memory, speed and what the answers lose, against full precision",
        "4-bit NF4 and 8-bit weights take a quarter and a half of the memory of 16-bit ones. Decoding reads "
        "every weight each step, so fewer bytes can mean faster tokens, but the kernels must dequantize on "
        "the fly, which at batch 1 often costs more than it saves (bitsandbytes); torchao's int4 unpacks "
        "inside its matrix product and runs compiled, where fewer bytes do make faster tokens. Rounding the "
        "weights changes the logits: each variant scores the baseline's answer token by token (teacher "
        "forcing), as llama.cpp's quantization tables do. Same top token: the share of positions where its "
        "most likely token is the baseline's; KLD: how far its distribution over the vocabulary lies from the "
        "baseline's, the mean and the tail (99th percentile, or the maximum on a short answer); PPL: the "
        "perplexity of the baseline's answer under it, beside the baseline's own. Fewer bits, further away. "
        "Random-weight presets get no quality figures (their distributions are noise): this one runs on a "
        "real model by default.",
        (REFERENCE, "bnb-8bit", "bnb-4bit", "int4"), _quant_grid, lambda quick: 16 if quick else 128,
        ("weights_bytes", "peak_memory_bytes", "tpot_s", "speedup_vs_baseline", "quality_top_agreement",
         "quality_kld_mean", "quality_kld_p99", "quality_kld_max", "quality_perplexity"),
        (Claim("weights take less memory with fewer bits: 8-bit less than the baseline, 4-bit less still",
               "weights_bytes", "variant", "the weights did not shrink with fewer bits",
               "some layers stay at full precision (bitsandbytes quantizes the linear layers only)",
               variants=(REFERENCE, "bnb-8bit", "bnb-4bit"), direction=-1),
         Claim("fewer bits move the distributions further from the baseline's: 4-bit's mean KLD above 8-bit's",
               "quality_kld_mean", "variant", "4-bit's mean KLD was not above 8-bit's",
               "on a short answer a few positions decide the mean: run the full grid, which scores more tokens",
               variants=("bnb-8bit", "bnb-4bit"))),
        preset="smollm2-135m", quality=True),
    Experiment(
        "lengths", "Latency against output and input length",
        "End-to-end latency is the first token's wait plus one time-per-token for each further token: "
        "E2E = TTFT + TPOT x (N - 1), a straight line in the output length, predicted here from the "
        "longest answer's TTFT and TPOT. TTFT is the prompt pass: it grows with the input length, "
        "slowly while the GPU has idle capacity, then in proportion.",
        ("sdpa",), _lengths_grid, lambda quick: 4 if quick else 16,
        ("e2e_s", "predicted_e2e_s", "ttft_s"),
        (Claim("TTFT grows with the input length", "ttft_s", "prompt_length",
               "TTFT did not grow with the input length",
               "at these short prompts the prompt pass costs about the same whatever its length",
               where={"axis": "input"}),)),
)}

def get(name: str) -> Experiment:
    """An experiment by name, or a ValueError that lists them."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose one of: {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name]


def grid_for(experiment: Experiment, quick: bool, preset: Preset) -> tuple[list[tuple[dict, Cell]], list[str]]:
    """The cells that fit the preset's context, and a note for each cell left out."""
    fits, left_out = [], []
    new = experiment.max_new_tokens(quick)
    for labels, cell in experiment.grid(quick):
        tokens = (cell.prompt_tokens or 0) + (cell.max_new_tokens or new)
        if tokens <= preset.context_length and (cell.max_new_tokens or new) <= preset.max_new_tokens_cap:
            fits.append((labels, cell))
        else:
            left_out.append(f"{cell.prompt_tokens} prompt + {cell.max_new_tokens or new} new tokens exceed the "
                            f"context of {preset.context_length} (or the cap of {preset.max_new_tokens_cap} new "
                            f"tokens) of preset {preset.name!r}")
    return fits, left_out


QUICK_REPEATS = FULL_REPEATS = 3


def repeats_for(quick: bool) -> int:
    """Measured requests per (variant, cell), on either grid: enough for each row to have a range over
    its repeats, against which `trends` tells a trend from noise (rows keep the median)."""
    return QUICK_REPEATS if quick else FULL_REPEATS


# a timed figure -> the row field with its value in each repeat (the report's, or `derive`'s)
REPEATS = {"tpot_s": "tpot_repeats_s", "ttft_s": "ttft_repeats_s", "tokens_per_s": "tokens_per_s_repeats",
           "e2e_s": "e2e_repeats_s", "time_s": "time_repeats_s"}
TIME = verdict.Metric("time", "time_s", "time_repeats_s", True, "speedup", "time")   # a row's time, as judged
# the experiments with a speedup over the reference: of the row's time (prefill or whole answer), or per token
SPEEDUP = {"attention": TIME, "quantization": verdict.BY_NAME["tpot"]}


def repeat_values(row: dict, name: str) -> list[float] | None:
    """The row's figure `name` in each of its repeats; None for a figure measured once per row (bytes,
    shares, predictions), which has no spread."""
    if name not in REPEATS:
        return None
    return [value for value in row.get(REPEATS[name]) or [] if value is not None]


def spread(row: dict, name: str) -> tuple[float, float] | None:
    """The (min, max) of the row's figure over its repeats; (value, value) for a figure measured once
    per row; None when a timed figure has fewer than two repeats (no range to judge noise by)."""
    if name == "speedup_vs_baseline":                  # a ratio of two rows: `derive` puts its range in the row
        found = (row.get("ranges") or {}).get(name)
        return None if found is None else tuple(found)
    values = repeat_values(row, name)
    if values is None:
        return None if row.get(name) is None else (row[name], row[name])
    return (min(values), max(values)) if len(values) >= 2 else None


def derive(experiment: Experiment, rows: list[dict]) -> list[dict]:
    """Add the experiment's derived figures to its rows (pure; rows are the engine's result rows), and
    `ranges`: {field: [min, max] over the repeats} of the figures it shows or checks that have one."""
    for row in rows:
        row["time_s"] = row.get("ttft_s") if row.get("phase") == "prefill" else row.get("e2e_s")
        row["time_repeats_s"] = row.get("ttft_repeats_s") if row.get("phase") == "prefill" else row.get("e2e_repeats_s")
        row["ranges"] = {}
        if isinstance(row.get("quality"), dict):       # the figures as columns, for the table, CSV and claims
            row.update(quality.flat(row["quality"]))
    if experiment.name in SPEEDUP:
        metric = SPEEDUP[experiment.name]
        baseline = {r["cell"]: r for r in rows if r["variant"] == REFERENCE and r.get(metric.field)}
        for row in rows:
            # the reference's time over this row's, its range from the two rows' repeats (engine/verdict.py)
            found = verdict.compare(row, baseline[row["cell"]], metric) if row["cell"] in baseline else None
            row["speedup_vs_baseline"] = found.ratio if found else None
            if found and found.low is not None:
                row["ranges"]["speedup_vs_baseline"] = [found.low, found.high]
    if experiment.name == "lengths":
        outputs = [r for r in rows if r.get("axis") == "output" and r["status"] == "ok"]
        for variant in {r["variant"] for r in outputs}:
            mine = [r for r in outputs if r["variant"] == variant]
            reference = max(mine, key=lambda r: r["output_tokens"] or 0)
            for row in mine:
                n = row["output_tokens"] // max(row["batch_size"], 1)
                row["predicted_e2e_s"] = reference["ttft_s"] + reference["tpot_s"] * (n - 1)
    timed = {name for name in (*experiment.y, *(claim.y for claim in experiment.claims)) if name in REPEATS}
    for row in rows:
        for name in timed:
            found = spread(row, name) if row.get(name) is not None else None
            if found:
                row["ranges"][name] = list(found)
    return rows
