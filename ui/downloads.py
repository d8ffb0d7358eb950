"""The files a visitor downloads (a run's or a sweep's JSON, CSV, chart page), in one folder.

Gradio serves its own copies of the files it is given, so ours are pruned once they are old.
"""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import time
from pathlib import Path

import psutil

KEEP_S = 3600.0                # run and sweep files older than this are deleted
PREFIX = "sidebyside-runs-"    # then the app's process id, then mkdtemp's random part


def remove_orphans(parent: Path, prefix: str = PREFIX) -> list[Path]:
    """Delete the folders `{prefix}{pid}-...` under `parent` whose app process no longer runs; the ones deleted."""
    removed = []
    for folder in parent.glob(f"{prefix}*-*"):
        pid = folder.name[len(prefix):].split("-", 1)[0]
        if folder.is_dir() and pid.isdigit() and not psutil.pid_exists(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def process_folder(prefix: str) -> Path:
    """A new temporary folder of this process, deleted when it exits; the folders of earlier app
    processes that were killed (their process id is gone) are deleted first."""
    remove_orphans(Path(tempfile.gettempdir()), prefix)
    folder = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


class Downloads:
    """One folder of files to download; each save first deletes the files older than `keep_s`."""

    def __init__(self, folder: Path, keep_s: float = KEEP_S):
        self.folder, self.keep_s = Path(folder), keep_s

    @classmethod
    def temporary(cls) -> Downloads:
        """A new temporary folder, deleted when the process exits; those of earlier app processes that
        were killed (their process id is gone) are deleted first."""
        return cls(process_folder(PREFIX))

    def prune(self) -> None:
        cutoff = time.time() - self.keep_s
        for old in [*self.folder.glob("run-*"), *self.folder.glob("sweep-*")]:
            if old.stat().st_mtime < cutoff:
                old.unlink(missing_ok=True)

    def save(self, kind: str, run_id: int, name: str, **contents: str) -> list[str]:
        """Write `{kind}-{run_id}-{name}-{time}.{ext}` for each ext=text of `contents`; their paths, in order."""
        self.prune()
        stem = f"{kind}-{run_id}-{name}-{time.strftime('%Y%m%d-%H%M%S')}"
        paths = []
        for ext, text in contents.items():
            path = self.folder / f"{stem}.{ext}"
            path.write_text(text)
            paths.append(str(path))
        return paths
