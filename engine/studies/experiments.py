"""Experiments as data: which variants, which grid of cells, which figures, and what each teaches.

Each experiment reproduces a classic inference finding; its paragraph says what its chart shows
and why. Measuring one is engine/studies/sweeps.py.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from engine.presets import Preset
from engine.spec import Cell
from engine.variants import REFERENCE

PROMPT = "Attention reads every cached key and value for each new token, so memory bandwidth sets the pace. "


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
        ("speedup_vs_baseline", "peak_memory_bytes")),
    Experiment(
        "batch", "Batching: throughput against time per token",
        "A decode step reads all the weights once, whatever the batch: with more sequences per step the same "
        "bytes serve more tokens, so throughput (tokens per second across the batch) rises almost in "
        "proportion while memory bandwidth is the limit. Each step does more arithmetic, so every user's "
        "tokens arrive a little slower (TPOT rises), until compute, not bandwidth, is the limit.",
        ("sdpa",), _batch_grid, lambda quick: 16 if quick else 64, ("tokens_per_s", "tpot_s")),
    Experiment(
        "kv-cache", "The KV cache: time per token against output length, with and without it",
        "With the cache each new token computes its own keys and values and reads the cached ones, so a step "
        "costs about the same all along. Without it every step recomputes the whole sequence so far: a step "
        "costs more with every token, and the total grows with the square of the output length.",
        ("sdpa", "no-kv-cache"), _kv_grid, lambda quick: 8 if quick else 16, ("tpot_s", "e2e_s")),
    Experiment(
        "quantization", "Quantization: memory, speed and agreement with full precision",
        "4-bit NF4 and 8-bit weights take a quarter and a half of the memory of 16-bit ones. Decoding reads "
        "every weight each step, so fewer bytes can mean faster tokens, but the kernels must dequantize on "
        "the fly, which at batch 1 often costs more than it saves. Rounding the weights changes the logits a "
        "little: greedy outputs agree with the full-precision baseline for a while, then may part ways.",
        (REFERENCE, "bnb-4bit", "bnb-8bit"), _quant_grid, lambda quick: 16 if quick else 64,
        ("weights_bytes", "tpot_s", "identical_token_share")),
    Experiment(
        "lengths", "Latency against output and input length",
        "End-to-end latency is the first token's wait plus one time-per-token for each further token: "
        "E2E = TTFT + TPOT x (N - 1), a straight line in the output length, predicted here from the "
        "longest answer's TTFT and TPOT. TTFT is the prompt pass: it grows with the input length, "
        "slowly while the GPU has idle capacity, then in proportion.",
        ("sdpa",), _lengths_grid, lambda quick: 4 if quick else 16,
        ("e2e_s", "predicted_e2e_s", "ttft_s")),
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


def repeats_for(quick: bool) -> int:
    """Measured requests per (variant, cell): one on the quick grid, else three (rows keep the median)."""
    return 1 if quick else 3


def derive(experiment: Experiment, rows: list[dict]) -> list[dict]:
    """Add the experiment's derived figures to its rows (pure; rows are the engine's result rows)."""
    for row in rows:
        row["time_s"] = row["ttft_s"] if row.get("phase") == "prefill" else row["e2e_s"]
    if experiment.name == "attention":
        baseline = {r["cell"]: r["time_s"] for r in rows if r["variant"] == REFERENCE and r["time_s"]}
        for row in rows:
            reference = baseline.get(row["cell"])
            row["speedup_vs_baseline"] = reference / row["time_s"] if reference and row["time_s"] else None
    if experiment.name == "lengths":
        outputs = [r for r in rows if r.get("axis") == "output" and r["status"] == "ok"]
        for variant in {r["variant"] for r in outputs}:
            mine = [r for r in outputs if r["variant"] == variant]
            reference = max(mine, key=lambda r: r["output_tokens"] or 0)
            for row in mine:
                n = row["output_tokens"] // max(row["batch_size"], 1)
                row["predicted_e2e_s"] = reference["ttft_s"] + reference["tpot_s"] * (n - 1)
    return rows
