"""The preset dropdown both tabs have: its choices, and the one handler behind a change of preset."""
from __future__ import annotations

import gradio as gr

from engine import presets
from engine.errors import PresetError
from ui import checks, render
from ui.state import Context
from ui.stream import REFUSED


def preset_choices(offered: list[str] | None = None) -> list[tuple[str, str]]:
    """Dropdown choices (label, name), one per preset file (only those `offered`, when given), by name;
    a broken file is listed as unavailable with its reason (engine.presets.broken), and refused with
    that reason when chosen."""
    labels = {}
    for name in presets.available():
        if offered is not None and name not in offered:
            continue
        try:
            labels[name] = f"{presets.load(name).title} ({name})"
        except PresetError as error:           # broken since it was listed
            labels[name] = _unavailable(name, str(error))
    for name, reason in presets.broken().items():
        if offered is None:
            labels[name] = _unavailable(name, reason)
    return [(labels[name], name) for name in sorted(labels)]


def _unavailable(name: str, reason: str, limit: int = 120) -> str:
    _, found, rest = reason.partition(f"{name}.yaml: ")     # the label names the preset already
    reason = rest if found else reason
    reason = reason if len(reason) <= limit else reason[:limit - 3] + "..."
    return f"{name} (unavailable: {reason})"


def preset_update(ctx: Context, preset_name: str, selected: tuple[str, ...] | None = None):
    """(engine, update) for a new preset: its banner, the variants that can run there (`selected`, default
    the preset's, ticked) and a note; (None, an error message) when the preset cannot be used here."""
    try:
        engine = ctx.engines.get(checks.text("preset", preset_name))
    except REFUSED as error:
        text = f"Cannot use preset {render.e(str(preset_name)[:60])}: {render.e(error)}"
        return None, {"message": render.message_html(text, "error")}
    choices, ticked, classes = render.variant_choices(engine, selected)
    return engine, {"banner": render.banner_html(engine), "message": render.preset_note(engine),
                    "variants": gr.update(choices=choices, value=ticked, elem_classes=classes)}
