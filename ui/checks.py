"""Every parameter of /compare and /experiment checked for type and range before any work.

The page's components send well-formed values, but the API takes whatever a client sends: a string
for a number, NaN, null, 3.7 tokens. Each check returns the value to use or raises InputError with
one line naming the parameter and what is allowed, which the page shows as the run's message.
"""
from __future__ import annotations

import math

from engine.errors import InputError


def whole(name: str, value, low: int, high: int | None) -> int:
    """An integer from `low` to `high` (None: no upper bound); an integral float (a slider's 32.0) too."""
    allowed = f"a whole number from {low} to {high}" if high is not None else f"a whole number of at least {low}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{name} must be {allowed}, got {value!r}")
    if isinstance(value, float) and (not math.isfinite(value) or not value.is_integer()):
        raise InputError(f"{name} must be {allowed}, got {value!r}")
    number = int(value)
    if number < low or (high is not None and number > high):
        raise InputError(f"{name} must be {allowed}, got {number}")
    return number


def text(name: str, value) -> str:
    """A string that is valid Unicode text (no unpaired surrogate)."""
    if not isinstance(value, str):
        raise InputError(f"{name} must be text, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InputError(f"the {name} is not valid text (an unpaired surrogate at character {error.start}): "
                         "remove it") from None
    return value


def names(name: str, value) -> list[str]:
    """A list of strings (the variants)."""
    if value is None:
        return []
    if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) for item in value):
        raise InputError(f"{name} must be a list of names, got {value!r}")
    return list(value)


def choice(name: str, value, allowed) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise InputError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def flag(name: str, value) -> bool:
    """true or false, nothing else ("false" as a string is not false)."""
    if not isinstance(value, bool):
        raise InputError(f"{name} must be true or false, got {value!r}")
    return value


def ids(name: str, value) -> list[int]:
    """Run ids: a list of whole numbers of at least 1 (or their text, "12" or "#12"), each once, in order."""
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise InputError(f"{name} must be a list of run ids, got {value!r}")
    found = []
    for item in value:
        if isinstance(item, str) and item.strip().lstrip("#").isdigit():
            item = int(item.strip().lstrip("#"))
        found.append(whole(f"each of the {name}", item, 1, None))
    return list(dict.fromkeys(found))
