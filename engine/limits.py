"""What one run may ask of the device, in one place: the limits of a page that strangers use.

`Limits()` is a private deployment's: the preset's own caps and nothing more. `Limits.public_defaults()`
is what a Space or a `--share` link gets: a bounded queue, one job per visitor, short prompts, few
repeats, a work budget and a deadline per run, quick experiments only. The engine enforces the
per-run limits (`check`, the deadline); the page enforces the per-visitor ones and shows them all.
Which presets a public page offers unless told (`public_presets`) is decided here too.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from engine import budget, hardware, presets, source
from engine.errors import DeviceError, InputError, PresetError
from engine.variants import CATALOG


@dataclass(frozen=True)
class Limits:
    public: bool = False
    queue_size: int | None = None          # runs waiting for the device, beyond which a new one is refused
    per_visitor: int | None = None         # queued or running jobs of one visitor (session and address)
    prompt_chars: int | None = None        # refused before tokenizing
    repeats: int | None = None             # timed requests per variant
    new_tokens: int | None = None          # per request; None: the preset's own cap
    work_tokens: int | None = None         # token positions of a whole run (see `work`)
    run_deadline_s: float | None = None    # a run still going then is stopped, its results kept
    quick_experiments_only: bool = False   # experiments run their quick grid
    unread_s: float | None = None          # a job whose updates nobody reads for this long gives up its place
    body_bytes: int | None = None          # one request's body, refused before it is read (see `body_for`)
    calls_per_s: float | None = None       # a visitor's calls (POSTs) per second, sustained ...
    call_burst: int | None = None          # ... and at once: what a page's clicks need, not what a script floods
    sessions: int | None = None            # visitors' sessions whose state is kept (the oldest forgotten) ...
    session_s: float | None = None         # ... each for at most this long after its last change

    @classmethod
    def public_defaults(cls, **overrides) -> Limits:
        """The limits of a public page; `overrides` (from the command line) replace single fields. The body
        limit follows the prompt limit unless given: a prompt of the allowed length always fits."""
        limits = replace(cls(public=True, queue_size=8, per_visitor=1, prompt_chars=20_000, repeats=3,
                             new_tokens=256, work_tokens=400_000, run_deadline_s=300.0,
                             quick_experiments_only=True, unread_s=30.0, calls_per_s=5.0, call_burst=20,
                             sessions=1000, session_s=3600.0),
                         **overrides)
        return limits if limits.body_bytes is not None else replace(limits, body_bytes=body_for(limits.prompt_chars))

    def describe(self) -> list[str]:
        """The limits in words, one line each, for the page's banner and definitions."""
        if not self.public:
            return ["private mode: only each preset's own caps apply"]
        lines = [f"at most {self.queue_size} runs waiting for the device; one queued or running job per visitor",
                 f"prompts up to {self.prompt_chars:,} characters, up to {self.repeats} repeats and "
                 f"{self.new_tokens} new tokens",
                 f"a run's work up to {self.work_tokens:,} token positions (no-kv-cache counts every position it "
                 "recomputes); a run still going after "
                 f"{self.run_deadline_s:.0f} s is stopped, what it measured kept",
                 "experiments run their quick grid; uploads are refused",
                 f"a request's body up to {self.body_bytes / MIB:.1f} MiB (refused before it is read); each visitor "
                 f"up to {self.call_burst} calls at once and {self.calls_per_s:g} a second, one replay at a time",
                 f"the state of the last {self.sessions:,} sessions is kept, each up to {self.session_s:.0f} s after "
                 "its last change (an older session's Stop and Replay find no run)",
                 f"a job whose updates nobody reads for {self.unread_s:.0f} s (its page closed, a script gone) is "
                 "stopped and gives its place up"]
        return lines

    def check(self, spec, prompt_tokens: int | None = None) -> None:
        """Raise InputError (what to change) when `spec` asks for more than these limits allow.
        Without `prompt_tokens` only what needs no tokenizing is checked."""
        if self.prompt_chars is not None and isinstance(spec.prompt, str) and len(spec.prompt) > self.prompt_chars:
            raise InputError(f"the prompt has {len(spec.prompt):,} characters; this page allows up to "
                             f"{self.prompt_chars:,}: shorten it")
        if self.repeats is not None and isinstance(spec.repeats, int) and spec.repeats > self.repeats:
            raise InputError(f"repeats is {spec.repeats}; this page allows 1 to {self.repeats}")
        if self.new_tokens is not None:
            asked = max((spec.resolved(cell).max_new_tokens for cell in spec.grid), default=spec.max_new_tokens)
            if isinstance(asked, int) and asked > self.new_tokens:
                raise InputError(f"max new tokens is {asked}; this page allows 1 to {self.new_tokens}")
        if prompt_tokens is not None and self.work_tokens is not None:
            total = work(spec, prompt_tokens)
            if total > self.work_tokens:
                raise InputError(f"this run would process {total:,} token positions; this page allows "
                                 f"{self.work_tokens:,} per run: choose fewer variants, repeats or new tokens, a "
                                 "shorter prompt, or leave out no-kv-cache")


MIB = 1 << 20
BYTES_PER_CHAR = 12           # the most JSON spends on one character: an escaped surrogate pair (12 bytes)


def body_for(prompt_chars: int | None) -> int:
    """The body limit that fits a prompt of `prompt_chars` characters, whatever they are, with the other
    parameters and the request's envelope (64 KiB): at least 1 MiB."""
    return max(MIB, (prompt_chars or 0) * BYTES_PER_CHAR + 64 * 1024)


def request_work(prompt_tokens: int, new_tokens: int, batch_size: int, use_cache: bool) -> int:
    """Token positions one request runs through the model: with a KV cache the prompt once and each new
    token once; without one, every step recomputes the whole sequence so far (quadratic)."""
    if use_cache:
        positions = prompt_tokens + new_tokens
    else:
        positions = sum(prompt_tokens + step for step in range(new_tokens))
    return positions * batch_size


def work(spec, prompt_tokens: int) -> int:
    """Token positions of the whole run: every variant, every cell, its warm-ups and its repeats."""
    total = 0
    for cell in spec.grid:
        resolved = spec.resolved(cell)
        tokens = resolved.prompt_tokens or prompt_tokens
        for name in spec.variants:
            use_cache = CATALOG[name].use_cache if name in CATALOG else True
            total += (spec.warmup_requests + spec.repeats) * request_work(
                tokens, resolved.max_new_tokens, resolved.batch_size, use_cache)
    return total


def public_presets() -> list[str]:
    """The presets a public page offers unless told otherwise: those that need no download (random
    weights made here, or a model already in the local cache) and whose baseline fits the device's
    memory now with all its default variants loaded at once. A visitor can then never start a
    multi-GB download or load what cannot fit."""
    offered = []
    for name in presets.available():
        try:
            preset = presets.load(name)
            if not source.on_hand(preset):
                continue
            device = hardware.resolve(preset.device)
            runnable = [CATALOG[v] for v in preset.variants
                        if v in CATALOG and not CATALOG[v].unavailable_reason(preset, device)]
            placement = budget.plan(preset, runnable, budget.free_bytes(device), device.kind == "cuda")
            if "swapped" not in placement.values():
                offered.append(name)
        except (PresetError, DeviceError, OSError, ValueError):   # ModelSourceError too
            continue
    return offered
