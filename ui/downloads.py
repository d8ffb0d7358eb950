"""The files a visitor downloads (a run's or a sweep's JSON, CSV, chart page), in one folder.

Gradio serves its own copies of the files it is given, so ours are pruned once they are old.
"""
from __future__ import annotations

import atexit
import shutil
import tempfile
import time
from pathlib import Path

KEEP_S = 3600.0                # run and sweep files older than this are deleted


class Downloads:
    """One folder of files to download; each save first deletes the files older than `keep_s`."""

    def __init__(self, folder: Path, keep_s: float = KEEP_S):
        self.folder, self.keep_s = Path(folder), keep_s

    @classmethod
    def temporary(cls) -> Downloads:
        """A new temporary folder, deleted when the process exits."""
        folder = Path(tempfile.mkdtemp(prefix="sidebyside-runs-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        return cls(folder)

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
