"""An engine the dashboard starts itself (engine/launch.py), started by its served variant's worker.

The server is this worker's child: it starts when the worker loads (its card shows the wait), is asked
to stop when the worker ends, and is sent SIGTERM by the kernel the moment the worker dies
(PR_SET_PDEATHSIG), so it never outlives the worker; the worker itself ends within about 2 s of the
app's death. Its output goes to a log file in the model cache, named on the card and in every failure.
A server that exits, or does not answer /health within its time, fails this variant alone, with the
last lines of its log. No torch.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import subprocess
import time
from collections import deque
from pathlib import Path

from engine import events, launch
from engine.events import WorkerSpec
from engine.source import cache_dir, model_location

PR_SET_PDEATHSIG = 1
STOP_GRACE_S = 5.0


class StartError(Exception):
    """The server did not start; the message says why, with its log's last lines."""


def _die_with_parent() -> None:
    """In the child, before exec: the kernel sends SIGTERM when the worker that started it dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def log_path(spec: WorkerSpec) -> Path:
    """Where the server's output goes: one file per preset and engine, replaced at each start."""
    folder = cache_dir() / "engine-logs"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{spec.preset.name}-{spec.variant}.log"


ERROR_LINE = re.compile(r"\b\w*(Error|Exception): \S|^[\d.]+ E ")       # Python's, or llama.cpp's error level


def tail(path: Path, lines: int = 2) -> str:
    """The last lines of a log, on one line (a failure's reason is one line of about 300 characters),
    after the last line before them that names an error (vLLM ends with "Engine core initialization
    failed. See root cause above": the cause is the line to show)."""
    errors: deque[str] = deque(maxlen=lines + 1)
    last: deque[str] = deque(maxlen=lines)
    try:
        with open(path, errors="replace") as file:
            for line in file:
                if line.strip():
                    last.append(line.strip())
                    found = ERROR_LINE.search(line)
                    if found:                        # from the error's name: less the log's prefix
                        errors.append(line[found.start():].strip())
    except OSError:
        return "no log"
    cause = next((line for line in reversed(errors) if not any(line in shown for shown in last)), None)
    return " | ".join([cause[:300], *last] if cause else last) or "an empty log"


class Server:
    """A started engine: its process, its log, stopped by `stop()` (and by the kernel if this worker dies)."""

    def __init__(self, spec: WorkerSpec, emit):
        found = spec.endpoint
        kind = found.launch.kind
        self.log = log_path(spec)
        port = int(found.host.rsplit(":", 1)[1])
        threads = spec.threads or 1
        context = min(spec.preset.context_length, launch.CONTEXT_CAP)
        command = launch.command(kind, found.launch, spec.preset, served_model(kind, spec.preset), port, threads,
                                 found.model, spec.launch_device, kv_cache_bytes(spec.preset, context))
        env = dict(os.environ, **launch.environment(kind, threads, spec.launch_device))
        if spec.own_gpu is not None:                 # on a host with several GPUs: its own, as a worker's
            env["CUDA_VISIBLE_DEVICES"] = str(spec.own_gpu)
        emit(events.Status(spec.variant, "loading", f"starting {kind}'s server on port {port} (log: {self.log})"))
        with open(self.log, "w") as out:
            # its own process group, so that stop() ends what it starts too (vLLM's engine processes)
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=env, preexec_fn=_die_with_parent, start_new_session=True)
        try:
            self._wait_healthy(found.server_root + "/health", kind, spec, emit)
        except BaseException:
            self.stop()
            raise

    def _wait_healthy(self, url: str, kind: str, spec: WorkerSpec, emit) -> None:
        import httpx
        started = time.monotonic()
        told = 0
        while True:
            code = self.process.poll()
            if code is not None:
                raise StartError(f"{kind}'s server exited with code {code} while starting (log: {self.log}): "
                                 f"{tail(self.log)}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=2.0).status_code == 200:
                    return
            waited = time.monotonic() - started
            if waited > launch.START_TIMEOUT_S:
                raise StartError(f"{kind}'s server did not answer {url} within {launch.START_TIMEOUT_S:.0f} s "
                                 f"(log: {self.log}): {tail(self.log)}")
            if waited - told >= 2:
                told = waited
                emit(events.Status(spec.variant, "loading", f"{kind}'s server is loading the model: {waited:.0f} s "
                                                            f"(log: {self.log})"))
            time.sleep(0.2)

    def stop(self) -> None:
        """SIGTERM to its process group (the server and what it started), then SIGKILL to what is left
        after STOP_GRACE_S; by the server's own process id, which leads the group."""
        group = self.process.pid
        if self.process.poll() is None:
            _signal_group(group, signal.SIGTERM)
            try:
                self.process.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                pass
        _signal_group(group, signal.SIGKILL)         # whatever is left of the group, the server included
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(STOP_GRACE_S)


def _signal_group(group: int, number: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, number)


def kv_cache_bytes(preset, context: int) -> int:
    """Room for one sequence of `context` tokens in vLLM's KV cache, with a quarter to spare (vLLM refuses
    to start with less than one whole context); 0 where the model's shape is unknown."""
    from engine import budget
    from engine.variants import CATALOG
    found = budget.footprint(preset, CATALOG["baseline"], cuda=False)
    return int(found.kv_cache_bytes * context / preset.context_length * 1.25) if found else 0


def served_model(kind: str, preset) -> str:
    """What the server loads: llama.cpp the preset's GGUF file; vLLM what the local variants load (a
    package preset's folder, made before any worker starts; a random-weight preset's folder, made here
    once if no local worker has yet; a hub preset's id)."""
    if kind == "llama.cpp":
        return str(launch.model_file(preset, kind))
    if preset.random_weights:
        from engine.worker.models import saved_random_model
        return str(saved_random_model(preset))
    return model_location(preset)
