"""The quality figures (engine/quality.py) as the command line's table cells: `run`'s table, `history
show`, the quantization sweep's table, in the Compare tab's formats (engine/views/summary.py): agreement
as a whole percentage (never 100% unless every position agreed), KL divergence to three significant
digits (0.0123, 4.5e-06), perplexity with two decimals. A variant without figures gets dashes, and
its reason once below the table (`notes`): a fixed-width column would be as wide as the reason.
"""
from __future__ import annotations

from engine import quality
from engine.views.tables import DASH

HEADERS = ("same top", "mean KLD", "KLD p99/max")
PERPLEXITY_HEADERS = ("PPL", "PPL/ref")


def kld(value: float | None) -> str:
    return DASH if value is None else quality.kld_text(value)


def agreement(share: float | None) -> str:
    return DASH if share is None else quality.agreement_text(share)


def tail(entry: dict) -> str:
    """The KLD tail with its kind: "0.0871 (p99)", or "0.212 (max)" on an answer under 100 positions."""
    value = quality.tail_value(entry)
    return DASH if value is None else f"{kld(value)} ({entry['kld_tail']})"


def cells(entry: dict | None) -> list[str]:
    """The HEADERS' cells of one variant: its figures; "reference" for the variant whose answer was scored;
    dashes without figures (`notes` says why)."""
    if not quality.has_figures(entry):
        return [DASH] * len(HEADERS)
    if entry["status"] == "reference":
        return ["reference", DASH, DASH]
    return [agreement(entry.get("top_token_agreement")), kld(entry.get("kld_mean")), tail(entry)]


def perplexity_cells(entry: dict | None) -> list[str]:
    """The PERPLEXITY_HEADERS' cells: the reference's answer's perplexity under the variant, and its ratio
    to the reference's own (llama.cpp's PPL(Q)/PPL(base)); dashes without figures."""
    if not quality.has_figures(entry) or entry.get("perplexity") is None:
        return [DASH] * len(PERPLEXITY_HEADERS)
    own, base = entry["perplexity"], entry.get("reference_perplexity")
    return [f"{own:.2f}", f"{own / base:.3f}" if base else DASH]


def shown(rows: list[dict]) -> bool:
    """Whether the rows carry quality at all (a report made before it, or with it turned off, does not)."""
    return any(isinstance(row.get("quality"), dict) for row in rows)


def notes(rows: list[dict]) -> list[str]:
    """Why variants have no figures, a line per reason: "quality of every variant: not meaningful: random
    weights", "quality of remote: not reported by the server"."""
    entries = {row["variant"]: row.get("quality") for row in rows if isinstance(row.get("quality"), dict)}
    reasons: dict[str, list[str]] = {}
    for variant, entry in entries.items():
        if not quality.has_figures(entry) and entry.get("note"):
            reasons.setdefault(entry["note"], []).append(variant)
    return [f"quality of {'every variant' if len(names) == len(entries) > 1 else ', '.join(names)}: {note}"
            for note, names in reasons.items()]
