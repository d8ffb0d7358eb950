"""The app's engines (one per preset) and each visitor's session, with one phase field."""
from __future__ import annotations

import copy
import dataclasses
import enum
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from engine import presets
from engine.errors import InputError, PresetError
from engine.history import History, report_kind
from engine.pool import Engine
from engine.variants import CATALOG
from engine.views.run import RunView
from engine.limits import Limits
from ui.downloads import Downloads, process_folder
from ui.gate import Gate, Slots

HISTORY_PREFIX = "sidebyside-history-"     # a public page's own history folder: then its process id
PAGE_KINDS = {"run": "run", "sweep": "experiment"}      # the report's shape -> the kind saved from the page


class Engines:
    """The app's engines, one per preset, made on first use; only one preset keeps workers loaded."""

    def __init__(self, threads: int | None = None, spare_cores: int = 1, limits: Limits | None = None,
                 offered: list[str] | None = None, served: tuple = ()):
        """`limits`: what one run may ask (engine/limits.py); `offered`: the only presets this page
        serves (None: every preset file); `served`: endpoints (engine/remote.py, from app.py --remote)
        added to every preset, beside each preset's own."""
        self.threads, self.spare_cores = threads, spare_cores      # see Engine: the page needs a core
        self.limits, self.offered, self.served = limits or Limits(), offered, tuple(served)
        self._engines: dict[str, Engine] = {}
        self._lock = threading.Lock()
        self._lanes: tuple[str, ...] | None = None

    def preset(self, name: str):
        """The preset by name with the page's served endpoints added (and selected at first)."""
        preset = presets.load(name)
        added = tuple(e for e in self.served if e.name not in {r.name for r in preset.remote})
        return dataclasses.replace(preset, remote=preset.remote + added,
                                   variants=preset.variants + tuple(e.name for e in added))

    def lanes(self) -> tuple[str, ...]:
        """Every variant a column may show: the catalog's, then the served endpoints of the offered presets."""
        if self._lanes is None:
            names = list(CATALOG)
            for name in self.offered if self.offered is not None else presets.available():
                try:
                    names += [e.name for e in self.preset(name).remote if e.name not in names]
                except (PresetError, OSError):
                    continue
            self._lanes = tuple(names)
        return self._lanes

    def get(self, name: str) -> Engine:
        """The preset's engine (no workers are started, only what they are made from: Engine.prepare);
        raises PresetError, DeviceError or ModelSourceError (a package preset's package is missing)."""
        if self.offered is not None and name not in self.offered:
            raise PresetError(f"preset {str(name)[:60]!r} is not offered on this page; choose one of: "
                              f"{', '.join(self.offered)}")
        with self._lock:
            engine = self._engines.get(name)
            if engine is None:
                engine = Engine(self.preset(name), threads=self.threads, spare_cores=self.spare_cores,
                                limits=self.limits)
                engine.prepare()             # the fork server's imports overlap the page starting
                self._engines[name] = engine     # kept once prepared: a preset whose model is missing is not
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


class PageHistory:
    """The page's side of the run history (engine/history.py): what it saves, and whose runs a visitor sees.

    A private page shows every run of its file (the command line's too). On a public page each saved run
    carries the visitor's Gradio session, and a visitor sees and changes only their own. Unless the
    deployment keeps them (`keep`), public runs go to a temporary file of this process (deleted when it
    exits, or by the next app when it was killed) and a session's runs are deleted when its page closes:
    nothing outlives the session, and the deployment's own history never holds a stranger's run.
    """

    def __init__(self, store: History, public: bool = False, keep: bool = False):
        self.store, self.public, self.keep = store, public, keep

    @classmethod
    def for_page(cls, path: str | None, public: bool, keep: bool) -> PageHistory:
        """`path` (None: the default history) on a private page or one that keeps public runs; else a
        temporary file of this process."""
        if public and not keep:
            return cls(History(process_folder(HISTORY_PREFIX) / "history.sqlite"), public=True)
        return cls(History(path), public, keep)

    @property
    def imports(self) -> bool:
        """Whether the page may import a report file: a public page takes no upload."""
        return not self.public

    def scope(self, request) -> str | None:
        """The session whose runs this caller may see: None (all) on a private page."""
        if not self.public:
            return None
        session = getattr(request, "session_hash", None)
        if not isinstance(session, str) or not session:
            raise InputError("this public page shows each visitor the runs of their own session, and this call "
                             "has none: open the page, or call it with gradio_client")
        return session

    def save(self, report: dict, request=None) -> int | None:
        """Keep a finished run or experiment of the page; a failure only warns (the run stands)."""
        kind = PAGE_KINDS.get(report_kind(report))
        if kind is None:
            return None
        try:
            return self.store.save(report, kind, session=self.scope(request))
        except Exception as error:           # a full disk, a locked file, no session: the page goes on
            print(f"warning: a {kind} was not saved to the history {self.store.path}: {error}", file=sys.stderr)
            return None

    def forget(self, request) -> None:
        """A page closed (Gradio's unload): its session's runs go, unless the deployment keeps them."""
        session = getattr(request, "session_hash", None)
        if self.public and not self.keep and session:
            self.store.forget(session)


PRIVATE_QUEUE = 16      # jobs in the gate's line on a private page; more wait in Gradio's queue


class Phase(enum.StrEnum):
    """Where a visitor's run is; `Session` moves it from one to the next."""
    IDLE = "idle"
    PENDING = "pending"                  # Run was pressed: the run waits in Gradio's queue, or is starting
    STOP_REQUESTED = "stop_requested"    # Stop was pressed while it was pending: it will not run
    RUNNING = "running"
    STOPPING = "stopping"                # the engine cancelled it; it ends after its current token


@dataclass
class Session:
    """One visitor's run in one tab (gr.State), so that Stop reaches it and only it.

    Stop is handled outside the queue, on another thread than the run's stream: each change of
    phase happens under the session's lock.
    """
    phase: Phase = Phase.IDLE
    run_id: int | None = None
    preset: str | None = None
    view: RunView | None = None          # the last run, for the replay

    def __post_init__(self):
        # not a field: Gradio turns the initial value into a dict with dataclasses.asdict
        self._lock = threading.Lock()

    def __deepcopy__(self, memo) -> Session:
        """gr.State copies its value for each visitor; a lock cannot be copied, so each copy gets its own."""
        return Session(self.phase, self.run_id, self.preset, copy.deepcopy(self.view, memo))

    def prepare(self) -> None:
        """Run was pressed: the run waits for the device."""
        with self._lock:
            self.phase = Phase.PENDING

    def take_stop_request(self) -> bool:
        """True (and idle again) when Stop came before the run left the queue."""
        with self._lock:
            if self.phase is not Phase.STOP_REQUESTED:
                self.phase = Phase.PENDING
                return False
            self.phase = Phase.IDLE
            return True

    def begin(self, run_id: int, preset: str) -> bool:
        """The run started; False when Stop came while it was starting (the caller cancels it)."""
        with self._lock:
            stopped = self.phase is Phase.STOP_REQUESTED
            self.phase = Phase.STOPPING if stopped else Phase.RUNNING
            self.run_id, self.preset = run_id, preset
            return not stopped

    def end(self) -> None:
        with self._lock:
            self.phase, self.run_id = Phase.IDLE, None

    def stop(self, engines: Engines) -> Phase:
        """Stop this visitor's run whatever its phase; returns the phase it was in."""
        with self._lock:
            was = self.phase
            if was is Phase.PENDING:
                self.phase = Phase.STOP_REQUESTED
            run_id, preset = self.run_id, self.preset
        if was is Phase.RUNNING and engines.cancel(preset, run_id):
            with self._lock:
                if self.phase is Phase.RUNNING and self.run_id == run_id:
                    self.phase = Phase.STOPPING
        return was


@dataclass(frozen=True)
class Context:
    """What the handlers use: the engines, the folder of files to download, the device's door and the
    page's limits."""
    engines: Engines
    downloads: Downloads
    gate: Gate = field(default_factory=lambda: Gate(Limits()))
    unread: Callable[[str | None], int | None] = lambda session_hash: None   # ui/gate.py's unread_updates
    history: PageHistory | None = None       # None: the page saves nothing (--no-history)
    replays: Slots = field(default_factory=lambda: Slots(None, ""))     # each visitor's replays going at once

    @property
    def limits(self) -> Limits:
        return self.gate.limits

    @property
    def jobs(self) -> int | None:
        """Jobs Gradio lets in at once: the gate (ui/gate.py) runs one and keeps the rest in line, each
        telling its page how many are ahead. A public page lets every job in (None): the gate is then the one
        bound, and a job it cannot take is refused with its message at once, never left waiting unseen in
        Gradio's queue (a public page's Gradio queue is a backstop for floods: ui/page.py's queue_kwargs)."""
        return None if self.limits.queue_size is not None else PRIVATE_QUEUE + 1
