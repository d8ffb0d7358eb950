"""The look every figure and card shares: one colour per catalog variant, stable across runs, and
a transparent background with neutral greys, readable in light and dark themes alike."""
from __future__ import annotations

from engine.variants import CATALOG

# One colour per catalog variant, in catalog order.
PALETTE = ("#6b7280", "#2563eb", "#0891b2", "#7c3aed", "#d97706", "#db2777", "#16a34a", "#dc2626")
GRID = "rgba(128,128,128,0.22)"
AXIS_TEXT = "#7c828d"
NOTE_TEXT = "#8a8f98"
SURFACE = dict(paper_bgcolor="rgba(0,0,0,0)", plot_bgcolor="rgba(0,0,0,0)", font=dict(size=12, color=AXIS_TEXT))


def color_of(variant: str) -> str:
    """The variant's colour (catalog order; a name outside the catalog gets the next one)."""
    names = list(CATALOG)
    index = names.index(variant) if variant in names else len(names)
    return PALETTE[index % len(PALETTE)]


def note(figure, text: str):
    """Write `text` across an empty figure, in place of its data."""
    figure.add_annotation(text=text, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5,
                          font=dict(size=13, color=NOTE_TEXT))
    return figure
