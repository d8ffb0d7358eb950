"""How long each variant last took to load and warm up here, kept for the next run's estimate.

One small JSON file in the cache folder (engine/source.py), keyed by preset, variant and device,
holding the latest load and warm-up seconds of each. It never grows past `MAX_ENTRIES`, and a file
that cannot be read or written only means that no estimate is shown.
"""
from __future__ import annotations

import contextlib
import json
import os
import threading

from engine import events, source

MAX_ENTRIES = 256
_lock = threading.Lock()          # runs of different presets may end at the same moment


def _path():
    return source.cache_dir() / "load_times.json"


def _key(preset: str, variant: str, device: str) -> str:
    return f"{preset}|{variant}|{device}"


def _read() -> dict:
    with contextlib.suppress(OSError, ValueError):
        found = json.loads(_path().read_text())
        if isinstance(found, dict):
            return found
    return {}


def remember(preset: str, device: str, loaded: dict[str, events.Loaded]) -> None:
    """Keep the load and warm-up time of each freshly loaded variant (the newest entries win)."""
    if not loaded:
        return
    with _lock:
        table = _read()
        entries = {_key(preset, v, device): {"load_s": e.load_s, "warmup_s": e.warmup_s} for v, e in loaded.items()}
        if all(table.get(key) == entry for key, entry in entries.items()):
            return                                     # workers kept loaded from an earlier run: nothing new
        for key, entry in entries.items():
            table.pop(key, None)                       # re-inserted last: the oldest go first
            table[key] = entry
        while len(table) > MAX_ENTRIES:
            table.pop(next(iter(table)))
        path = _path()
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(f".{os.getpid()}.tmp")
            partial.write_text(json.dumps(table))
            partial.replace(path)                      # never a half-written file


def estimates(preset: str, device: str, variants) -> dict[str, float]:
    """The seconds each variant took last time to load and warm up here (those never loaded: absent)."""
    table = _read()
    found = {}
    for variant in variants:
        entry = table.get(_key(preset, variant, device))
        with contextlib.suppress(KeyError, TypeError, ValueError):
            found[variant] = float(entry["load_s"]) + float(entry["warmup_s"])
    return found
