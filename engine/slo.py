"""Latency targets (SLOs) and goodput: which timed requests met every target, and the rate of those.

Goodput as vLLM's serving benchmark defines it (`--goodput ttft:200 tpot:50`): a request is good when it
meets every target given, and goodput = good requests / the benchmark's duration, beside request
throughput = all requests / the same duration (GenAI-Perf and AIPerf: "completed requests per second that
meet the constraints"). A request of one token has no TPOT and meets a TPOT target (vLLM counts its TPOT
as 0). Here each timed repeat of a (variant, cell) is one request per sequence of its batch (a batch of 4
is 4 requests that share their timings), and the duration is the sum of the repeats' E2E latencies: in
fair mode they run one after another. Goodput in tokens/s counts the output tokens of the good requests
over the same duration, beside tokens/s.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from engine.errors import InputError

FIELDS = {"ttft_ms": "TTFT", "tpot_ms": "TPOT"}      # a target's name -> the figure it bounds
EXAMPLE = "ttft_ms=200,tpot_ms=50"


@dataclass(frozen=True)
class Targets:
    """Upper bounds on a request's TTFT and TPOT, in milliseconds; None: no target on that figure."""
    ttft_ms: float | None = None
    tpot_ms: float | None = None

    def __post_init__(self):
        for name in FIELDS:
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value) or value <= 0):
                raise InputError(f"the {FIELDS[name]} target must be a positive number of milliseconds, got {value!r}")

    @classmethod
    def parse(cls, text: str) -> Targets:
        """`ttft_ms=200,tpot_ms=50` (either may be left out); InputError naming what is wrong."""
        found = {}
        for part in (p.strip() for p in str(text).split(",")):
            if not part:
                continue
            name, equals, value = (s.strip() for s in part.partition("="))
            if name not in FIELDS or not equals:
                raise InputError(f"--slo takes {', '.join(FIELDS)} as NAME=MILLISECONDS, e.g. {EXAMPLE}; got {part!r}")
            try:
                found[name] = float(value)
            except ValueError:
                raise InputError(f"--slo {name}: expected milliseconds, e.g. {EXAMPLE}; got {value!r}") from None
        if not found:
            raise InputError(f"--slo needs at least one target, e.g. {EXAMPLE}")
        return cls(**found)

    def __bool__(self) -> bool:
        return any(getattr(self, name) is not None for name in FIELDS)

    def describe(self) -> str:
        """"TTFT <= 200 ms, TPOT <= 50 ms"."""
        return ", ".join(f"{FIELDS[n]} <= {getattr(self, n):g} ms" for n in FIELDS if getattr(self, n) is not None)

    def as_dict(self) -> dict:
        return {name: getattr(self, name) for name in FIELDS}

    def met(self, ttft_s: float | None, tpot_s: float | None) -> bool:
        """Whether one request met every target (no TTFT: it did not answer, and fails)."""
        if ttft_s is None:
            return False
        if self.ttft_ms is not None and ttft_s * 1000 > self.ttft_ms:
            return False
        return self.tpot_ms is None or tpot_s is None or tpot_s * 1000 <= self.tpot_ms


def judge(row: dict, targets: Targets, batch_size: int = 1) -> dict:
    """The fields a results row gets for `targets`: whether each timed request met them, the request rate
    and goodput in requests/s and tokens/s (module docstring); None figures where the row has no answer."""
    batch = row.get("batch_size") or batch_size or 1
    ttfts, tpots = row.get("ttft_repeats_s") or [], row.get("tpot_repeats_s") or []
    per_sequence = (row.get("output_tokens") or 0) / batch            # new tokens of one sequence, one repeat
    met, duration = [], 0.0
    for index, ttft in enumerate(ttfts):
        tpot = tpots[index] if index < len(tpots) else None
        met.append(targets.met(ttft, tpot))
        if ttft is not None:
            duration += ttft + (tpot or 0.0) * max(per_sequence - 1, 0)      # E2E = TTFT + TPOT x (N - 1)
    good = sum(met) * batch
    requests = len(met) * batch
    rate = duration > 0 and requests > 0
    return {"slo_met": bool(met) and all(met), "slo_met_repeats": met, "slo_requests": requests,
            "slo_good_requests": good,
            "request_throughput_rps": requests / duration if rate else None,
            "throughput_tokens_per_s": requests * per_sequence / duration if rate else None,   # on goodput's basis
            "goodput_rps": good / duration if rate else None,
            "goodput_tokens_per_s": good * per_sequence / duration if rate else None}


def apply(report: dict, targets: Targets) -> dict:
    """The report with `targets` under "slo" and each row judged against them (a new dict; rows copied)."""
    rows = [dict(row, **judge(row, targets, report.get("batch_size") or 1)) for row in report["results"]]
    return {**report, "slo": targets.as_dict(), "results": rows}


def lines(report: dict) -> list[str]:
    """One line per row that answered: how many requests met the targets, request rate and goodput."""
    if not report.get("slo"):
        return []
    targets = Targets(**report["slo"])
    out = [f"targets ({targets.describe()}): goodput = requests meeting every target per second "
           "(vLLM's definition), beside all requests per second"]
    for row in report["results"]:
        if row.get("request_throughput_rps") is None:
            continue
        cell = ", ".join(f"{k.replace('_', ' ')} {row[k]}" for k in ("prompt_length", "batch_size") if row.get(k))
        out.append(f"  {row['variant']}{f' ({cell})' if cell else ''}: {'met' if row['slo_met'] else 'missed'}, "
                   f"{row['slo_good_requests']} of {row['slo_requests']} requests; "
                   f"{row['request_throughput_rps']:.2f} req/s, goodput {row['goodput_rps']:.2f} req/s "
                   f"({row['goodput_tokens_per_s']:.1f} of {row['throughput_tokens_per_s']:.1f} tokens/s)")
    return out
