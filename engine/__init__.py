"""Side-by-side inference engine: one prompt through several model variants in worker processes.

Public surface: `Engine` and `Run` (pool.py), `RunSpec` and `Cell` (spec.py), the errors
(errors.py), `presets.load`, the variant `CATALOG`, the events and the metric functions.
Nothing here imports torch; workers do.
"""
from engine.errors import DeviceError, InputError, ModelSourceError, PresetError
from engine.pool import Engine, Run
from engine.presets import Preset, load as load_preset
from engine.spec import Cell, RunSpec
from engine.variants import CATALOG

__all__ = ["CATALOG", "Cell", "DeviceError", "Engine", "InputError", "ModelSourceError", "Preset", "PresetError",
           "Run", "RunSpec", "load_preset"]
