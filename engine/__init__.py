"""Side-by-side inference engine: one prompt through several model variants in worker processes.

Public surface: `Engine` (pool.py), `presets.load`, the variant `CATALOG`, the event types and
the metric functions. Nothing here imports torch; workers do.
"""
from engine.pool import Cell, Engine, InputError, Run
from engine.presets import Preset, PresetError, load as load_preset
from engine.variants import CATALOG

__all__ = ["CATALOG", "Cell", "Engine", "InputError", "Preset", "PresetError", "Run", "load_preset"]
