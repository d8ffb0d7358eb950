"""Start app.py as a subprocess on a free local port for end-to-end tests, and stop it by its own handle.

The app is stopped with SIGTERM (which it treats like Ctrl-C: Gradio closes, the engines stop their
workers); `serve` then checks that no process the app started is left running.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"


def free_port() -> int:
    """A port the OS says is free now (bind to port 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen, log: Path, timeout_s: float, what: str = "app.py") -> None:
    """Until `url` answers 200; a RuntimeError with the end of `log` if `process` exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{what} did not answer {url} within {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")


def launch(*args: str, name: str = "app", env: dict | None = None) -> tuple[subprocess.Popen, str, Path]:
    """Start `python app.py --port <free> *args` (with `env` added to the environment), its output in
    test-artifacts/NAME.log, without waiting for it: (the process, its URL, its log). It opens on the
    `tiny` preset (timing only, seconds per run) unless `args` name a preset: the page's own default, the
    real model, is for the tests about answers."""
    ARTIFACTS.mkdir(exist_ok=True)
    if "--preset" not in args:
        args = ("--preset", "tiny", *args)
    log = ARTIFACTS / f"{name}.log"
    port = free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1", GRADIO_ANALYTICS_ENABLED="False", **(env or {}))
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--host", "127.0.0.1", "--port", str(port),
                                    *args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
    return process, f"http://127.0.0.1:{port}", log


def kill_if_running(process: subprocess.Popen) -> None:
    """Kill our own child, by its handle, unless it has exited; then collect it."""
    if process.poll() is None:
        process.kill()
        process.wait(10)


def terminate(process: subprocess.Popen, timeout_s: float = 30.0) -> None:
    """Stop our own child as Ctrl-C would (SIGTERM), by its handle; killed if it is still running after
    `timeout_s`."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout_s)
    kill_if_running(process)


def ready(launched: tuple[subprocess.Popen, str, Path]) -> tuple[subprocess.Popen, str]:
    """(the process, its URL) of a launched app once it answers; killed if it never does."""
    process, url, log = launched
    try:
        wait_ready(url + "/gradio_api/info", process, log, 90)
    except BaseException:
        kill_if_running(process)
        raise
    return process, url


def start(*args: str, name: str = "app", env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """Start `python app.py --port <free> *args` (see `launch`); (the process, its URL) once it answers."""
    return ready(launch(*args, name=name, env=env))


def outliving(processes: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """Those of `processes` still running after up to `timeout_s`, killed by their ids: never expected,
    the caller fails on them, but what a test started does not outlive it."""
    alive = still_running(processes, timeout_s)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    return alive


def still_running(processes: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """Those of `processes` still running after up to `timeout_s`. A zombie has ended: a forked worker
    stays one until the fork server, or whoever adopts it once the fork server is gone, collects it."""
    def running(process: psutil.Process) -> bool:
        try:
            return process.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False
    deadline = time.monotonic() + timeout_s
    while (alive := [p for p in processes if running(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


@contextlib.contextmanager
def serve(*args: str, name: str = "app", env: dict | None = None, launched: tuple | None = None) -> Iterator[str]:
    """Run `python app.py --port <free> *args` (with `env` added to the environment); yield its URL;
    stop it and its workers afterwards. `launched`: an app that `launch` started earlier, to use instead."""
    process, url = ready(launched) if launched is not None else start(*args, name=name, env=env)
    children: list[psutil.Process] = []
    try:
        yield url
    finally:
        with contextlib.suppress(psutil.Error):
            children = psutil.Process(process.pid).children(recursive=True)
        stopped = process.poll() is None
        if stopped:
            terminate(process)
        alive = outliving(children, timeout_s=15)
        assert not alive, f"app.py left processes running: {[c.pid for c in alive]}"
        if stopped:                                         # SIGTERM is a stop like Ctrl-C: a clean exit
            assert process.returncode == 0, f"app.py exited with {process.returncode} on SIGTERM"
