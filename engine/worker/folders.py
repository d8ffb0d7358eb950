"""A model folder in the cache, made once: under a file lock, staged and renamed into place, so that it is
whole or absent (a random-weight model, engine/worker/models.py; a package's model, engine/worker/gguf.py)."""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from pathlib import Path

from engine.source import saved_model_complete


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def made_once(target: Path, make, what: str) -> Path:
    """The model folder `target`, made by `make(folder)` unless it is already whole; made under a file lock.

    Made atomically: saved in a temporary sibling folder, then renamed into place, so the folder
    either is whole or is not there. A folder that is there but not whole (from before, or emptied
    by hand) is replaced, as are temporary folders that a killed process left behind.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)         # held: no other process is making this folder now
        if saved_model_complete(target):
            return target
        for stale in target.parent.glob(f".{target.name}.tmp-*"):
            _remove(stale)                       # left by a process killed while making it
        _remove(target.with_name(target.name + ".tmp"))   # the staging folder of older versions
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        staging.chmod(0o755)                     # mkdtemp's 0700 would keep the cache from other users
        try:
            make(staging)
            if not saved_model_complete(staging):
                raise RuntimeError(f"making {what} in {staging} left it incomplete")
            if target.exists() or target.is_symlink():
                _remove(target)                  # half-made: replaced
            os.rename(staging, target)
        except BaseException:
            _remove(staging)
            raise
    return target
