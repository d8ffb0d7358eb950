"""Experiments as data: which variants, which grid of cells, which figures, and what each teaches.

Each experiment reproduces a classic inference finding; its paragraph says what its chart shows
and why, and its `claims` say the same as checks on the rows: `trends` measures each one from a
run's rows (first cell against last, judged against the ranges over the repeats), so that a chart
that contradicts its paragraph says so. Measuring one is engine/studies/sweeps.py.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from engine import verdict
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
        "quantization", "Quantization: memory, speed and agreement with full precision",
        "4-bit NF4 and 8-bit weights take a quarter and a half of the memory of 16-bit ones. Decoding reads "
        "every weight each step, so fewer bytes can mean faster tokens, but the kernels must dequantize on "
        "the fly, which at batch 1 often costs more than it saves. Rounding the weights changes the logits a "
        "little: greedy outputs agree with the full-precision baseline for a while, then may part ways.",
        (REFERENCE, "bnb-4bit", "bnb-8bit"), _quant_grid, lambda quick: 16 if quick else 64,
        ("weights_bytes", "tpot_s", "identical_token_share"),
        (Claim("weights take less memory with fewer bits: 8-bit less than the baseline, 4-bit less still",
               "weights_bytes", "variant", "the weights did not shrink with fewer bits",
               "some layers stay at full precision (bitsandbytes quantizes the linear layers only)",
               variants=(REFERENCE, "bnb-8bit", "bnb-4bit"), direction=-1),)),
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
        row["e2e_repeats_s"] = [times[-1] for times in row.get("token_times_repeats_s") or [] if times]
        row["time_repeats_s"] = row.get("ttft_repeats_s") if row.get("phase") == "prefill" else row["e2e_repeats_s"]
        row["ranges"] = {}
    if experiment.name == "attention":
        baseline = {r["cell"]: r for r in rows if r["variant"] == REFERENCE and r["time_s"]}
        for row in rows:
            # the reference's time over this row's, its range from the two rows' repeats (engine/verdict.py)
            found = verdict.compare(row, baseline[row["cell"]], TIME) if row["cell"] in baseline else None
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


def _series(claim: Claim, rows: list[dict]) -> list[tuple[str, list[dict]]]:
    """(name, rows in the order of x) of each series of rows the claim is about."""
    ok = [r for r in rows if r.get("status") == "ok" and r.get(claim.y) is not None
          and all(r.get(key) == value for key, value in claim.where.items())]
    if claim.x == "variant":                      # one row per variant: each step along the variants' order
        by = {r["variant"]: r for r in ok}
        along = [by[v] for v in claim.variants if v in by]
        return [(f"{a['variant']} to {b['variant']}", [a, b]) for a, b in zip(along, along[1:])]
    ratio = claim.y == "speedup_vs_baseline"      # the reference's ratio to itself is 1 everywhere
    chosen = claim.variants or [v for v in dict.fromkeys(r["variant"] for r in ok) if not (ratio and v == REFERENCE)]
    groups: dict[tuple[str, float], list[dict]] = {}
    for row in ok:
        if row["variant"] in chosen:
            groups.setdefault((row["variant"], row.get("pad_ratio") or 0.0), []).append(row)
    return [(variant + (f", {pad:.0%} padding" if pad else ""), sorted(members, key=lambda r: r[claim.x]))
            for (variant, pad), members in groups.items() if len({r[claim.x] for r in members}) >= 2]


def _change(claim: Claim, name: str, members: list[dict]) -> dict:
    """How `claim.y` changed from the series' first cell to its last: the medians' ratio, and its range
    from the two rows' ranges over their repeats (None: a row has no range)."""
    first, last = members[0], members[-1]
    low, high = spread(first, claim.y), spread(last, claim.y)
    ranged = low is not None and high is not None and low[0] > 0
    return {"series": name, "variant": first["variant"], "pad_ratio": first.get("pad_ratio"),
            "from": {"x": first[claim.x], "value": first[claim.y]}, "to": {"x": last[claim.x], "value": last[claim.y]},
            "change": last[claim.y] / first[claim.y] if first[claim.y] else None,
            "change_min": high[0] / low[1] if ranged else None, "change_max": high[1] / low[0] if ranged else None,
            "rows": 2, "busy_rows": sum(bool(r.get("host_busy")) for r in (first, last))}


def _beyond(mine: dict, theirs: tuple[float, float], direction: int) -> bool | None:
    """True when the whole range of `mine` lies past `theirs` the claimed way, False when it lies past it
    the other way, None when the ranges overlap (noise) or a range is unknown."""
    if mine["change_min"] is None:
        return None
    low, high = mine["change_min"], mine["change_max"]
    their_low, their_high = theirs
    if direction < 0:                                  # falls: the same test on the negated ranges
        low, high, their_low, their_high = -high, -low, -their_high, -their_low
    return True if low > their_high else False if high < their_low else None


def _judge(claim: Claim, series: list[tuple[str, list[dict]]], rows: list[dict]) -> list[dict]:
    """Each series' change, and whether it bears the claim out (`agrees`: True, False, None for noise)."""
    changes = [_change(claim, name, members) for name, members in series]
    if claim.faster_than is None:
        for change in changes:
            change["agrees"] = _beyond(change, (1.0, 1.0), claim.direction)
        return changes
    theirs = replace(claim, variants=(claim.faster_than,), faster_than=None)
    others = {(c["pad_ratio"] or 0.0): c for c in (_change(theirs, name, members)
                                                   for name, members in _series(theirs, rows))}
    judged = []
    for change in changes:
        other = others.get(change["pad_ratio"] or 0.0)
        if other is None:
            continue
        known = other["change_min"] is not None
        change.update(than=other, agrees=_beyond(change, (other["change_min"], other["change_max"]), claim.direction)
                      if known else None, rows=4, busy_rows=change["busy_rows"] + other["busy_rows"])
        judged.append(change)
    return judged


def _span(x: str, first, last) -> str:
    return {"prompt_length": f"from {first} to {last} prompt tokens", "batch_size": f"from batch {first} to {last}",
            "max_new_tokens": f"from {first} to {last} new tokens"}.get(x, f"from {first} to {last}")


def _factor(change: dict) -> str:
    """x1.23 (range 1.10-1.40): the change of the medians and its range over the repeats."""
    if change["change_min"] is None:
        return f"x{change['change']:.2f} (one repeat: no range)"
    if change["change_min"] == change["change_max"]:            # figures measured once per row: exact
        return f"x{change['change']:.2f}"
    return f"x{change['change']:.2f} (range {change['change_min']:.2f}-{change['change_max']:.2f})"


def _measured(claim: Claim, change: dict, text: Callable[[str, float], str]) -> str:
    """One series' change in words: its figures at the two ends and the factor between them."""
    first, last = (text(claim.y, change[end]["value"]) for end in ("from", "to"))
    if claim.x == "variant":
        said = f"{change['from']['x']} {first}, {change['to']['x']} {last}: {_factor(change)}"
    else:
        said = (f"{change['series']}: {first} to {last} {_span(claim.x, change['from']['x'], change['to']['x'])}: "
                f"{_factor(change)}")
    if "than" in change:
        said += f"; {change['than']['series']}: {_factor(change['than'])}"
    return said


def trend(claim: Claim, rows: list[dict], text: Callable[[str, float], str] | None = None) -> dict:
    """Whether the rows bear `claim` out: {claim, measured, agrees, note, series}.

    Each series (a variant, at a padding) is judged from its first cell to its last: the claim holds
    when the change's whole range (from the two rows' ranges over their repeats) lies on the claimed
    side, is contradicted when it lies on the other, and is noise when the range straddles it. `agrees`:
    True when some series bear it out and none contradict it, False when any contradicts it, None when
    every series is noise (or has one repeat, or there is nothing to judge). `text(field, value)`
    formats a figure (default: four significant digits).
    """
    text = text or (lambda name, value: f"{value:.4g}")
    changes = _judge(claim, _series(claim, rows), rows)
    verdicts = [c["agrees"] for c in changes]
    agrees = False if False in verdicts else True if True in verdicts else None
    yes = [c["series"] for c in changes if c["agrees"] is True]
    no = [c["series"] for c in changes if c["agrees"] is False]
    if not changes:
        note = "On this run nothing could be judged: the rows it needs did not run."
    elif agrees:
        note = f"On this run, as the paragraph says: {claim.text}."
    elif agrees is False:
        where = "" if len(no) == len(changes) else f" for {', '.join(no)}" + (f" (it did for {', '.join(yes)})"
                                                                               if yes else "")
        slowed = all(c["busy_rows"] for c in changes if c["agrees"] is False)
        note = f"On this run {claim.contrary}{where}" + (
            ", but other processes slowed rows it compares: rerun with less running beside it before reading a "
            "trend into it." if slowed else f": {claim.why}.")
    elif all(c["change_min"] is None for c in changes):
        note = "On this run one request per cell: no range over repeats to tell a trend from noise."
    else:
        note = (f"On this run the change stayed within the repeats' spread: noise, so the chart neither shows nor "
                f"refutes that {claim.text}. Rerun, or run the full grid.")
    busy = sum(c["busy_rows"] for c in changes)
    if busy:
        note += (f" {busy} of the {sum(c['rows'] for c in changes)} rows compared were slowed by other processes "
                 "on the CPU.")
    return {"claim": claim.text, "measured": "; ".join(_measured(claim, c, text) for c in changes) or "-",
            "agrees": agrees, "note": note, "series": changes}


def trends(experiment: Experiment, rows: list[dict], text: Callable[[str, float], str] | None = None) -> list[dict]:
    """`trend` of each of the experiment's claims."""
    return [trend(claim, rows, text) for claim in experiment.claims]
