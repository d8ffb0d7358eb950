"""What a variant costs in answers: its token distributions against the reference's, on the reference's answer.

After a run's timed requests, off the clock, every variant scores the reference variant's answer by
teacher forcing: one forward pass over the prompt and the reference's generated tokens
(engine/worker/quality.py). Per answer position it gives its top token, the log-probability of the
reference's token, and KL(P_reference || P_variant) over the whole vocabulary. This module turns those
per-position values into a variant's figures, the same way for the page, the JSON, the CSV, the
history and the command line:

- top-token agreement: the share of positions where the variant's most likely token is the
  reference's most likely token (llama.cpp's "same top p", from its perplexity tool's --kl-divergence);
- KLD: the mean, and the 99th percentile (the maximum when an answer has fewer than 100 positions,
  where a 99th percentile is only the largest value again) of the per-position KL divergence in nats
  (llama.cpp's KLD statistics); 0 means the same distributions;
- perplexity of the reference's answer under the variant, exp(-mean log p(token)), beside its
  perplexity under the reference (as vLLM and lm-eval compute perplexity from token log-probabilities);
  a variant that predicts the reference's answer less well has the higher one.

Random-weight presets get no figures: their distributions are noise, and a number would pretend
otherwise. Pure Python: the orchestrator imports no torch and no NumPy for this.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

PERCENTILE_POSITIONS = 100        # from this many positions a 99th percentile is more than the maximum
RANDOM_WEIGHTS = "not meaningful: random weights"
NO_REFERENCE = "not measured: the run has no baseline answer to score"
NOT_REPORTED = "not reported by the server"
STATUSES = ("measured", "reference", "not meaningful", "not measured", "not reported")


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation between closest ranks (NumPy's default)."""
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(scored: dict, reference: dict, reference_name: str, approximation: str | None = None) -> dict:
    """A variant's figures from its per-position values (`scored`) and the reference's (`reference`):
    each holds `top_ids`, `token_logprobs` and, for the variant, `kld` (one value per answer position)."""
    kld, n = list(scored["kld"]), len(scored["kld"])
    agree = sum(a == b for a, b in zip(scored["top_ids"], reference["top_ids"]))
    tail = "p99" if n >= PERCENTILE_POSITIONS else "max"
    return {"status": "measured", "note": None, "reference": reference_name, "positions": n,
            "top_token_agreement": agree / n if n else None,
            "kld_mean": sum(kld) / n if n else None,
            "kld_p99": percentile(kld, 99) if n >= PERCENTILE_POSITIONS else None,
            "kld_max": max(kld) if n else None,
            "kld_tail": tail,
            "perplexity": perplexity(scored["token_logprobs"]),
            "reference_perplexity": perplexity(reference["token_logprobs"]),
            "approximation": approximation}


def perplexity(token_logprobs: Sequence[float]) -> float | None:
    """exp(-mean log-probability) of the tokens; None without any."""
    if not token_logprobs:
        return None
    return math.exp(-sum(token_logprobs) / len(token_logprobs))


def unmeasured(status: str, note: str, reference_name: str | None = None) -> dict:
    """The quality entry of a variant that has no figures, with the line that says why."""
    return {"status": status, "note": note, "reference": reference_name, "positions": None,
            "top_token_agreement": None, "kld_mean": None, "kld_p99": None, "kld_max": None, "kld_tail": None,
            "perplexity": None, "reference_perplexity": None, "approximation": None}


def has_figures(quality: dict | None) -> bool:
    return bool(quality) and quality.get("status") in ("measured", "reference")


def measured(quality: dict | None) -> bool:
    """Figures against the reference (not the reference's own answer scored against itself)."""
    return bool(quality) and quality.get("status") == "measured"


def agreement_text(share: float) -> str:
    """A top-token agreement as a whole percentage, never 100% unless every position agreed."""
    text = f"{share:.0%}"
    return f"{min(share, 0.999):.1%}" if text == "100%" and share < 1 else text


def kld_text(value: float) -> str:
    """A KL divergence to three significant digits: 0.0123, 4.5e-06."""
    return f"{value:.3g}"


def tail_value(quality: dict) -> float | None:
    """The KLD tail the entry gives: its 99th percentile, or its maximum on a short answer."""
    return quality.get("kld_p99") if quality.get("kld_tail") == "p99" else quality.get("kld_max")


def line(quality: dict | None) -> str:
    """One line for a card: "same top token as baseline on 97% of positions; mean KLD 0.012", or why not."""
    if not quality:
        return ""
    if not has_figures(quality):
        return quality.get("note") or ""
    if quality["status"] == "reference":
        return (f"the reference for every variant's answers: perplexity {quality['perplexity']:.2f} "
                f"on its own answer ({quality['positions']} tokens)")
    text = (f"same top token as {quality['reference']} on {agreement_text(quality['top_token_agreement'])} of "
            f"positions; mean KLD {kld_text(quality['kld_mean'])}")
    return text + (f" ({quality['approximation']})" if quality.get("approximation") else "")


def cost(quality: dict | None) -> str:
    """What a variant's answers cost, for the verdict: "same top token on 94%, mean KLD 0.04"; "" if unknown."""
    if not has_figures(quality) or quality["status"] == "reference":
        return ""
    return f"same top token on {agreement_text(quality['top_token_agreement'])}, mean KLD {quality['kld_mean']:.2g}"


COLUMNS = (   # (flat key for tables, CSV and history; key in the entry)
    ("quality_top_agreement", "top_token_agreement"),
    ("quality_kld_mean", "kld_mean"),
    ("quality_kld_p99", "kld_p99"),
    ("quality_kld_max", "kld_max"),
    ("quality_perplexity", "perplexity"),
    ("quality_reference_perplexity", "reference_perplexity"),
    ("quality_positions", "positions"),
)


FIELDS = frozenset(column for column, _ in COLUMNS)      # the flat figures' columns (quality_note aside)


def flat(quality: dict | None) -> dict:
    """The entry as flat columns (None where unmeasured), with `quality_note` saying why not."""
    values = {column: (quality or {}).get(key) for column, key in COLUMNS}
    values["quality_note"] = None if has_figures(quality) else (quality or {}).get("note")
    return values
