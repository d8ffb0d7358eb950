"""The look every figure and card shares: one colour per catalog variant, stable across runs, and
a transparent background with neutral greys, readable in light and dark themes alike."""
from __future__ import annotations

import zlib

from engine.variants import CATALOG

# One colour per catalog variant, in catalog order; served endpoints (engine/remote.py) take one of
# their own, the same for a name in every run.
PALETTE = ("#6b7280", "#2563eb", "#0891b2", "#7c3aed", "#d97706", "#db2777", "#16a34a", "#65a30d", "#dc2626")
SERVED_PALETTE = ("#0f766e", "#a16207", "#be185d", "#4338ca")
GRID = "rgba(128,128,128,0.22)"
AXIS_TEXT = "#7c828d"
NOTE_TEXT = "#8a8f98"
SURFACE = dict(paper_bgcolor="rgba(0,0,0,0)", plot_bgcolor="rgba(0,0,0,0)", font=dict(size=12, color=AXIS_TEXT))


def color_of(variant: str) -> str:
    """The variant's colour: catalog order; a served endpoint's from its name."""
    names = list(CATALOG)
    if variant in names:
        return PALETTE[names.index(variant) % len(PALETTE)]
    return SERVED_PALETTE[zlib.crc32(variant.encode()) % len(SERVED_PALETTE)]


def note(figure, text: str):
    """Write `text` across an empty figure, in place of its data."""
    figure.add_annotation(text=text, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5,
                          font=dict(size=13, color=NOTE_TEXT))
    return figure
