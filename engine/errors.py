"""Every error the engine raises for input a person can fix; each message says what to do.

One module so that the command line, the dashboard and scripts catch them from one place.
"""
from __future__ import annotations


class InputError(ValueError):
    """The run's input is unusable (prompt, variants, lengths, mode, repeats, grid)."""


class PresetError(ValueError):
    """A preset is missing or malformed; the message says how to fix it."""


class DeviceError(ValueError):
    """The requested device is not here."""


class ModelSourceError(ValueError):
    """The model's files cannot be found or fetched."""


# what stops a run before it starts: the caller shows the message and exits (or refuses) cleanly
USER_ERRORS = (InputError, PresetError, DeviceError, ModelSourceError)
