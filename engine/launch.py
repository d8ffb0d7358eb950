"""Engines the dashboard starts itself: which server program runs a preset's `engines:` entry, on what model
file, with what command line. Plain data and file checks, no process started here (the served variant's
worker starts its server, engine/worker/launched.py, so the server lives and dies with that worker).

The programs come from the environment or the places `.ci/run` builds them into, never from a page's
visitor: a preset file or the command line names an engine kind; a run only picks variants by name.
"""
from __future__ import annotations

import os
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
}
KINDS = tuple(PROGRAMS)
START_TIMEOUT_S = 180.0           # from the program's start to its /health answering


def program(kind: str) -> Path | None:
    """The server program of `kind`, if it is here and executable."""
    spec = PROGRAMS[kind]
    path = Path(os.environ.get(spec.env) or spec.default)
    return path if path.is_file() and os.access(path, os.X_OK) else None


def model_file(preset: Preset, kind: str) -> Path:
    """The file the engine serves: llama.cpp a GGUF file (a package preset's own, which the local variants
    run dequantized); ModelSourceError when the preset has none."""
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
    try:
        model_file(preset, kind)
    except ModelSourceError as error:
        return str(error)
    return None


def command(kind: str, launch: Launch, preset: Preset, port: int, threads: int, served_name: str) -> list[str]:
    """The server's command line: on 127.0.0.1:`port`, the preset's model, `threads` threads (as many as a
    local worker computes on), its own timings and metrics on, one request at a time."""
    if kind != "llama.cpp":
        raise ValueError(f"unknown engine kind {kind!r}; known: {', '.join(KINDS)}")
    context = min(preset.context_length, 8192)
    return [str(program(kind)), "--model", str(model_file(preset, kind)), "--host", "127.0.0.1", "--port", str(port),
            "--threads", str(threads), "--threads-batch", str(threads), "--ctx-size", str(context),
            "--parallel", "1", "--alias", served_name, "--metrics", "--no-webui", *launch.args]


def describe(kind: str, preset: Preset) -> str:
    """What the engine serves, for its card: the file, and how it relates to the local variants' weights."""
    try:
        name = model_file(preset, kind).name
    except ModelSourceError:
        return kind
    return (f"{kind} on {name}: the original GGUF file, whose weights the local variants run dequantized to "
            f"{preset.dtype}")
