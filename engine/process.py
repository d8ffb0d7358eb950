"""Worker processes as the orchestrator sees them: spawn, pipe, cancel flag, death, stop.

The process layer knows nothing of models: a worker is an entry point named by a string
("module:function"), imported in the child only, called with its picklable `WorkerSpec`, its end
of a pipe and a cancel flag. Each worker has its own pipe: a worker killed mid-write cannot jam
the others (a shared multiprocessing.Queue's lock could).
"""
from __future__ import annotations

import contextlib
import gc
import importlib
import multiprocessing
import multiprocessing.connection
import multiprocessing.forkserver
import os
import threading
import time
from collections.abc import Callable

from engine import events
from engine.events import WorkerSpec

ENTRY = "engine.worker.serve:main"          # the child side (imported in the child process only)
STOP_WAIT_S = 10.0                          # a worker asked to stop may take this long before it is killed
PRELOAD = "engine.worker.preload"           # what the fork server imports once for every CPU worker
START_METHOD_ENV = "SIDEBYSIDE_START_METHOD"     # "spawn": every worker a fresh interpreter

# A GPU worker is spawned: a fresh interpreter, as CUDA needs. A CPU worker is forked from
# multiprocessing's fork server, which imported torch and transformers once (worker/preload.py),
# and starts in a fraction of the time. Both get the pipe, the cancel flag and the entry point the same way.
SPAWN = multiprocessing.get_context("spawn")
FORKSERVER = multiprocessing.get_context("forkserver")
FORKSERVER.set_forkserver_preload([PRELOAD])


def context(spec: WorkerSpec):
    """How the worker of `spec` is started: spawned on a GPU (or when $SIDEBYSIDE_START_METHOD is
    "spawn"), forked from the preloaded fork server otherwise."""
    if spec.device.startswith("cuda") or os.environ.get(START_METHOD_ENV) == "spawn":
        return SPAWN
    return FORKSERVER


@contextlib.contextmanager
def long_lived_imports():
    """For imports whose objects live as long as the process (torch, transformers, gradio): no garbage
    collection while they are made, and all that the process made by then frozen after (gc.freeze),
    so later collections skip it, and so do those of the workers a fork server forks, which then
    neither walk nor copy page by page what they inherit. Python's advice for a process that forks
    without exec (the gc.freeze documentation); the imports also take less CPU time, with no
    collection running through them."""
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


def start_fork_server() -> None:
    """Start the fork server now, unless every worker is spawned: it imports torch and transformers
    (seconds) while the caller goes on, so the first CPU worker need not wait for all of it. It is
    started once per process: by the dashboard before it imports gradio when there is no GPU, else
    by Engine.prepare (the dashboard's engines as the page starts, a command line's once its input
    is valid)."""
    if os.environ.get(START_METHOD_ENV) != "spawn":
        multiprocessing.forkserver.ensure_running()


def fork_servers(parent=None) -> list:
    """The running fork servers among the children of `parent` (a psutil.Process; None: this process).
    A child that has ended, or is a zombie, is none."""
    import psutil

    def is_server(child: psutil.Process) -> bool:
        try:
            return "from multiprocessing.forkserver import main" in " ".join(child.cmdline())
        except psutil.Error:
            return False
    try:
        return [child for child in (parent or psutil.Process()).children() if is_server(child)]
    except psutil.Error:                          # the parent itself has ended
        return []


def stop_fork_server(timeout_s: float = 5.0) -> None:
    """End this process's fork server, by its id, once its workers are stopped (the dashboard closing).
    Left alone, it ends when this process exits, but only after its imports: a dashboard stopped
    seconds after it started would leave it importing for seconds more. It is not reaped here: were
    a worker started later, multiprocessing would reap it and start another."""
    import psutil
    servers = fork_servers()
    for server in servers:
        with contextlib.suppress(psutil.Error):
            server.terminate()
    deadline = time.monotonic() + timeout_s
    for server in servers:
        with contextlib.suppress(psutil.Error):
            while server.status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
                time.sleep(0.02)


def _child(entry: str, environment: dict[str, str], folder: str, *args) -> None:
    """The worker process's target: take the orchestrator's environment and folder as they are now (a
    forked worker would otherwise have the fork server's, from when it started), import the entry
    point, and run it."""
    if os.environ != environment:
        os.environ.clear()
        os.environ.update(environment)
    with contextlib.suppress(OSError):
        os.chdir(folder)
    module, _, function = entry.partition(":")
    getattr(importlib.import_module(module), function)(*args)


def runtime_of(spec: WorkerSpec) -> str | None:
    """The runtime (engine/runtimes.py) the variant's worker runs in; None: this environment."""
    from engine.variants import CATALOG
    found = CATALOG.get(spec.variant)
    return found.runtime if found is not None and spec.endpoint is None else None


class WorkerProcess:
    """One worker process: its pipe, its cancel flag, and what it said about loading."""

    def __init__(self, spec: WorkerSpec, entry: str = ENTRY):
        self.spec, self.variant = spec, spec.variant
        self.loaded: events.Loaded | None = None
        self.failed: events.Failed | None = None
        runtime = runtime_of(spec)
        if runtime is not None:                  # another environment's interpreter (engine/runtimes.py)
            from engine import runtimes
            self.conn, self.cancel, self.process = runtimes.start(runtime, spec, entry)
            return
        start = context(spec)
        self.conn, child = start.Pipe(duplex=True)
        self.cancel = start.Event()              # set: stop the current request at its next token
        self.process = start.Process(target=_child, args=(entry, dict(os.environ), os.getcwd(), spec, child, self.cancel),
                                     daemon=True, name=f"worker-{spec.variant}")
        self.process.start()
        child.close()

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.is_alive()

    @property
    def ready(self) -> bool:
        """Loaded, warmed up and still running: it can take a request."""
        return self.loaded is not None and self.alive

    def send(self, message) -> bool:
        """Send a Request, a Probe or None (stop); False when the pipe is gone."""
        try:
            self.conn.send(message)
            return True
        except (OSError, ValueError):            # BrokenPipeError is an OSError; ValueError: closed here
            return False

    def read(self) -> list:
        """Every event waiting in the pipe (batches unpacked), noting Loaded and a load failure."""
        found = []
        try:
            while self.conn.poll():
                found += events.unbatch(self.conn.recv())
        except (EOFError, OSError, ValueError):  # it died mid-message or the pipe was closed here
            pass
        for event in found:
            if isinstance(event, events.Loaded):
                self.loaded = event
            elif isinstance(event, events.Failed) and event.request_id is None:
                self.failed = event
        return found

    def close(self) -> None:
        """After the process ended: release the pipe (and a runtime worker's descriptors)."""
        self.conn.close()
        release = getattr(self.process, "release", None)      # engine/runtimes.py RuntimeProcess
        if release is not None:
            release()


def stop(workers: list[WorkerProcess], timeout: float = STOP_WAIT_S) -> None:
    """Ask every worker to stop first, then wait for all of them together; kill (by its own handle)
    any still running at the deadline. Shutting down N workers takes one timeout, not N."""
    for worker in workers:
        worker.send(None)
    deadline = time.monotonic() + timeout
    for worker in workers:
        worker.process.join(max(deadline - time.monotonic(), 0.0))
    for worker in workers:
        if worker.process.is_alive():
            worker.process.kill()               # our own child, by its handle
            worker.process.join(5)
        worker.close()


def wait(workers: list[WorkerProcess], timeout: float) -> tuple[list[WorkerProcess], list[WorkerProcess]]:
    """Block up to `timeout` until a worker has sent something or died: (readable, dead)."""
    handles = [w.conn for w in workers] + [w.process.sentinel for w in workers]
    ready = multiprocessing.connection.wait(handles, timeout=timeout)
    return ([w for w in workers if w.conn in ready], [w for w in workers if w.process.sentinel in ready])


class WorkerSet:
    """The worker processes of one engine, by variant. Every walk and change of the set holds its lock,
    so a Stop or a shutdown from another thread never races a run that is spawning workers."""

    def __init__(self, make_spec: Callable[[str, list[WorkerSpec]], WorkerSpec], entry: str = ENTRY):
        self._make_spec, self._entry = make_spec, entry        # make_spec(variant, specs of the others)
        self._workers: dict[str, WorkerProcess] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> WorkerProcess | None:
        with self._lock:
            return self._workers.get(name)

    def all(self) -> list[WorkerProcess]:
        with self._lock:
            return list(self._workers.values())

    def names(self) -> list[str]:
        with self._lock:
            return list(self._workers)

    def spawn(self, name: str) -> WorkerProcess:
        with self._lock:
            spec = self._make_spec(name, [w.spec for w in self._workers.values()])
            worker = self._workers[name] = WorkerProcess(spec, self._entry)
            return worker

    def stop(self, names: list[str], timeout: float = STOP_WAIT_S) -> None:
        """Stop the named workers together (those not running are skipped)."""
        with self._lock:
            gone = [self._workers.pop(name) for name in names if name in self._workers]
        stop(gone, timeout)

    def stop_all(self, timeout: float = STOP_WAIT_S) -> None:
        self.stop(self.names(), timeout)

    def cancel_all(self) -> None:
        """Every worker stops its current request at its next token."""
        for worker in self.all():
            worker.cancel.set()

    def clear_cancel(self) -> None:
        for worker in self.all():
            worker.cancel.clear()

    def loaded(self) -> dict[str, events.Loaded]:
        """The Loaded event of every worker that is ready now."""
        return {w.variant: w.loaded for w in self.all() if w.ready}
