"""The app's engines (one per preset) and each visitor's session, with one phase field."""
from __future__ import annotations

import enum
import threading
from dataclasses import dataclass

from engine import presets
from engine.pool import Engine
from engine.views.run import RunView
from ui.downloads import Downloads


class Engines:
    """The app's engines, one per preset, made on first use; only one preset keeps workers loaded."""

    def __init__(self, threads: int | None = None, spare_cores: int = 1):
        self.threads, self.spare_cores = threads, spare_cores      # see Engine: the page needs a core
        self._engines: dict[str, Engine] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> Engine:
        """The preset's engine (no workers are started); raises PresetError or DeviceError."""
        with self._lock:
            engine = self._engines.get(name)
            if engine is None:
                engine = self._engines[name] = Engine(presets.load(name), threads=self.threads,
                                                      spare_cores=self.spare_cores)
            return engine

    def activate(self, name: str) -> Engine:
        """The preset's engine, after closing every other one that holds workers or runs (switching unloads)."""
        engine = self.get(name)
        with self._lock:
            others = [e for e in self._engines.values() if e is not engine and not e.idle]
        for other in others:
            other.close()                    # cancels its runs (an abandoned one, say), then stops its workers
        return engine

    def cancel(self, name: str | None, run_id: int | None) -> bool:
        """Cancel run `run_id` of preset `name` (waiting for the engine or running), and nothing else."""
        with self._lock:
            engine = self._engines.get(name) if name else None
        return bool(engine and run_id is not None and engine.cancel(run_id))

    def close(self) -> None:
        with self._lock:
            engines = list(self._engines.values())
        for engine in engines:
            engine.close()


class Phase(enum.StrEnum):
    """Where a visitor's run is. Stop acts on each differently (stream.stop)."""
    IDLE = "idle"
    PENDING = "pending"                  # Run was pressed: the run waits in Gradio's queue, or is starting
    STOP_REQUESTED = "stop_requested"    # Stop was pressed while it was pending: it will not start
    RUNNING = "running"
    STOPPING = "stopping"                # Stop reached the engine; the run ends after its current token


@dataclass
class Session:
    """One visitor's state in one tab (gr.State): their run, so that Stop reaches it and only it."""
    phase: Phase = Phase.IDLE
    run_id: int | None = None
    preset: str | None = None
    view: RunView | None = None          # the last run, for the replay


@dataclass(frozen=True)
class Context:
    """What the handlers use: the engines and the folder of files to download."""
    engines: Engines
    downloads: Downloads
