"""The preset dropdown both tabs have: its choices, and the one handler behind a change of preset."""
from __future__ import annotations

import gradio as gr

from engine import presets
from engine.errors import PresetError
from ui import render
from ui.state import Context
from ui.stream import REFUSED


def preset_choices() -> list[tuple[str, str]]:
    """Dropdown choices (label, name), one per preset file; a broken file is listed, and refused when chosen."""
    choices = []
    for name in presets.available():
        try:
            choices.append((f"{presets.load(name).title} ({name})", name))
        except PresetError:
            choices.append((f"{name} (broken preset file)", name))
    return choices


def preset_update(ctx: Context, preset_name: str, selected: tuple[str, ...] | None = None):
    """(engine, update) for a new preset: its banner, the variants that can run there (`selected`, default
    the preset's, ticked) and a note; (None, an error message) when the preset cannot be used here."""
    try:
        engine = ctx.engines.get(preset_name)
    except REFUSED as error:
        text = f"Cannot use preset {render.e(preset_name)}: {render.e(error)}"
        return None, {"message": render.message_html(text, "error")}
    choices, ticked, classes = render.variant_choices(engine, selected)
    return engine, {"banner": render.banner_html(engine), "message": render.preset_note(engine),
                    "variants": gr.update(choices=choices, value=ticked, elem_classes=classes)}
