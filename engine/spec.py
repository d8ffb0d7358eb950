"""A run's settings as one frozen value, and every rule about them written once in `validate`.

A `RunSpec` is made by the caller (the command line, the dashboard, a study), validated once
against the preset before anything starts, then passed whole: to the scheduler, to the report.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from engine import source, variants
from engine.errors import InputError, ModelSourceError
from engine.presets import Preset

MODES = ("fair", "race")


@dataclass(frozen=True)
class Cell:
    """One point of a grid: what differs from the run's own settings (None keeps the run's)."""
    prompt_tokens: int | None = None     # a synthetic prompt of this many tokens, built from the prompt
    max_new_tokens: int | None = None
    batch_size: int | None = None
    pad_ratio: float = 0.0               # share of pad tokens in the batch (left padding), e.g. 0.3


@dataclass(frozen=True)
class RunSpec:
    """What to run: the same prompt through each variant, in every cell of the grid.

    `cells` empty: one cell, the run's own settings. `warmup_requests` unmeasured requests, identical
    to the measured ones, precede them in every cell: the first request at new lengths can be several
    times slower than the next, and is not what the variant does once it serves.
    """
    prompt: str
    variants: tuple[str, ...]
    max_new_tokens: int
    mode: str = "fair"                   # "fair": one variant generates at a time; "race": all at once
    repeats: int = 1                     # timed requests per (variant, cell); the report keeps medians
    ignore_eos: bool = False             # always generate max_new_tokens (variants do equal work)
    batch_size: int = 1
    cells: tuple[Cell, ...] = field(default=())
    warmup_requests: int = 1
    live: bool = True                    # stream tokens as they come (a page); False: nothing crosses the
                                         # pipe while a request is timed (the command line, benchmarks)
    quality: bool = True                 # after the timed requests, score every variant on the reference's
                                         # answer (engine/scoring.py); real weights only

    def __post_init__(self):
        # lists are accepted for convenience; stored as tuples the spec stays hashable and unchanged
        object.__setattr__(self, "variants", tuple(self.variants))
        object.__setattr__(self, "cells", tuple(self.cells))

    @property
    def grid(self) -> list[Cell | None]:
        """The cells a run measures; [None] for a plain run (its rows carry no cell fields)."""
        return list(self.cells) or [None]

    def resolved(self, cell: Cell | None) -> Cell:
        """A cell with the run's own settings filled in (prompt_tokens None: the prompt as given)."""
        cell = cell or Cell()
        return Cell(cell.prompt_tokens, cell.max_new_tokens or self.max_new_tokens,
                    cell.batch_size or self.batch_size, cell.pad_ratio)


def lengths(prompt_lengths: list[int]) -> tuple[Cell, ...]:
    """Cells that differ in prompt length only."""
    return tuple(Cell(prompt_tokens=length) for length in prompt_lengths)


def validate(spec: RunSpec, preset: Preset) -> int:
    """Raise InputError with what to do; return the prompt's token count (tokenized once, here)."""
    if not spec.variants:
        raise InputError("no variant selected: choose at least one (e.g. baseline,sdpa)")
    known = variants.names(preset)
    unknown = [v for v in spec.variants if v not in known]
    if unknown:
        raise InputError(f"unknown variant {str(unknown[0])[:60]!r}; available: {', '.join(known)}")
    if len(set(spec.variants)) != len(spec.variants):
        raise InputError("a variant is listed twice: list each once")
    if spec.mode not in MODES:
        raise InputError(f"mode {spec.mode!r} is not one of {', '.join(MODES)}")
    if not _whole(spec.max_new_tokens):
        raise InputError(f"max new tokens must be a whole number, got {spec.max_new_tokens!r}")
    for name, value in (("repeats", spec.repeats), ("batch size", spec.batch_size)):
        if not _whole(value) or value < 1:
            raise InputError(f"{name} must be a whole number of at least 1, got {value!r}")
    if not isinstance(spec.warmup_requests, int) or spec.warmup_requests < 0:
        raise InputError(f"warm-up requests must be 0 or more, got {spec.warmup_requests!r}")
    if not isinstance(spec.prompt, str) or not spec.prompt.strip():
        raise InputError("the prompt is empty: type a prompt (or pick an example)")
    try:
        source.ensure_source(preset)
    except ModelSourceError as error:
        raise InputError(str(error)) from None
    count = source.count_prompt_tokens(preset, spec.prompt)
    for cell in spec.grid:
        _check_cell(spec.resolved(cell), count, preset, grid=cell is not None)
    return count


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_cell(cell: Cell, prompt_count: int, preset: Preset, grid: bool) -> None:
    """The new-token cap, the context length, the batch and the padding of one (resolved) cell."""
    new, tokens = cell.max_new_tokens, cell.prompt_tokens or prompt_count
    cap = preset.max_new_tokens_cap
    if not 1 <= new <= cap:
        if grid:
            raise InputError(f"a cell asks for {new} new tokens; preset {preset.name!r} allows 1 to {cap}")
        raise InputError(f"max new tokens must be between 1 and {cap} for preset {preset.name!r}, got {new}")
    if tokens + new > preset.context_length:
        if grid:
            raise InputError(f"a cell of {tokens} prompt tokens and {new} new tokens exceeds the context of "
                             f"{preset.context_length} tokens of preset {preset.name!r}: use shorter prompts")
        raise InputError(f"the prompt is {tokens} tokens and {new} new tokens are asked for: more than the "
                         f"context of {preset.context_length} tokens of preset {preset.name!r}; shorten the "
                         "prompt or ask for fewer tokens")
    if cell.prompt_tokens is not None and cell.prompt_tokens < 1:
        raise InputError(f"a cell's prompt length must be at least 1 token, got {cell.prompt_tokens}")
    if cell.batch_size < 1 or not (math.isfinite(cell.pad_ratio) and 0 <= cell.pad_ratio < 1):
        raise InputError("a cell's batch size must be at least 1 and its pad ratio within [0, 1)")
    if cell.pad_ratio and cell.batch_size < 2:
        raise InputError("padding needs a batch of at least 2 sequences")
