"""The files a visitor downloads (a run's or a sweep's JSON, CSV, chart page), in one folder.

Gradio serves them from here (the page makes the folder a static path, so Gradio keeps no copy of its own):
each file is stored once, and the folder is bounded by age and by total size. The charting library the
chart pages need is written once, beside them (`library`), not into every page.
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
KEEP_BYTES = 256 << 20         # and the oldest are deleted while the folder holds more than this
LIBRARY = "plotly.min.js"      # the chart pages' library, one copy beside them (plotly's 'directory' option)
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
    """One folder of files to download; each save first deletes the files older than `keep_s`, then the
    oldest while the folder and the new files would hold more than `keep_bytes`."""

    def __init__(self, folder: Path, keep_s: float = KEEP_S, keep_bytes: int = KEEP_BYTES):
        self.folder, self.keep_s, self.keep_bytes = Path(folder), keep_s, keep_bytes

    @classmethod
    def temporary(cls) -> Downloads:
        """A new temporary folder, deleted when the process exits; those of earlier app processes that
        were killed (their process id is gone) are deleted first."""
        return cls(process_folder(PREFIX))

    def files(self) -> list[Path]:
        """The run and sweep files, oldest first."""
        found = []
        for path in [*self.folder.glob("run-*"), *self.folder.glob("sweep-*")]:
            try:
                found.append((path.stat().st_mtime, path))
            except FileNotFoundError:          # pruned by another save meanwhile
                continue
        return [path for _, path in sorted(found)]

    def size(self) -> int:
        """Bytes held by the run and sweep files (the library is not counted: one copy, kept)."""
        return sum(path.stat().st_size for path in self.files() if path.exists())

    def prune(self, incoming: int = 0) -> None:
        """Delete the files older than `keep_s`, then the oldest until `incoming` more bytes fit in `keep_bytes`."""
        cutoff = time.time() - self.keep_s
        kept = []
        for path in self.files():
            if path.stat().st_mtime < cutoff:
                path.unlink(missing_ok=True)
            else:
                kept.append((path, path.stat().st_size))
        total = sum(size for _, size in kept) + incoming
        for path, size in kept:
            if total <= self.keep_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size

    def library(self) -> str:
        """The chart pages' library, written beside them once; its file name (what a page's script loads)."""
        path = self.folder / LIBRARY
        if not path.exists():
            from plotly.offline import get_plotlyjs
            partial = path.with_suffix(f".{os.getpid()}.part")
            partial.write_text(get_plotlyjs())
            partial.replace(path)              # whole or absent, for a page loading it meanwhile
        return LIBRARY

    def save(self, kind: str, run_id: int, name: str, **contents: str) -> list[str]:
        """Write `{kind}-{run_id}-{name}-{time}.{ext}` for each ext=text of `contents`; their paths, in order."""
        encoded = {ext: text.encode() for ext, text in contents.items()}
        self.prune(sum(map(len, encoded.values())))
        stem = f"{kind}-{run_id}-{name}-{time.strftime('%Y%m%d-%H%M%S')}"
        paths = []
        for ext, data in encoded.items():
            path = self.folder / f"{stem}.{ext}"
            path.write_bytes(data)
            paths.append(str(path))
        return paths
