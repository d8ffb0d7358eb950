"""Runtimes: the Python environments a variant's worker runs in, and how such a worker is started.

The app's own environment is the default. Another is named by a variant (`Variant.runtime`), pinned
by a requirements file in `runtimes/NAME.txt`, and made once into a virtual environment by
`python -m engine runtime make NAME` (under $SIDEBYSIDE_RUNTIMES, else ~/.local/share/sidebyside/runtimes).
Its worker is the same serving loop (engine/worker/serve.py) over the same pipe protocol, started by that
environment's interpreter with only this project's folder added to its path, so that it imports the
libraries of its own pins (transformers 4.48 and optimum 1.27 for `legacy-bt`) and nothing of the app's.

multiprocessing cannot start it: a spawned child takes its parent's `sys.path`, the app's site-packages
included. So the worker is a plain subprocess (`python -m engine.worker.foreign`) handed three file
descriptors: its end of a socket pair, wrapped as the same multiprocessing Connection a forked worker
gets; a one-byte shared memory page, its cancel flag (set and cleared here, read by the worker at each
token, as multiprocessing's Event is); and the read end of a pipe whose write end only this process
holds, which reads as closed the moment this process dies, so the worker ends with it.
"""
from __future__ import annotations

import contextlib
import mmap
import os
import socket
import subprocess
import venv
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from engine.errors import InputError

ROOT = Path(__file__).resolve().parent.parent
PINS = ROOT / "runtimes"
RUNTIMES_ENV = "SIDEBYSIDE_RUNTIMES"


@dataclass(frozen=True)
class Runtime:
    """A named environment: its pinned requirements and where its interpreter is once made."""
    name: str

    @property
    def requirements(self) -> Path:
        return PINS / f"{self.name}.txt"

    @property
    def folder(self) -> Path:
        base = os.environ.get(RUNTIMES_ENV)
        root = Path(base) if base else Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) \
            / "sidebyside" / "runtimes"
        return root / self.name

    @property
    def python(self) -> Path:
        return self.folder / "bin" / "python"

    @property
    def made(self) -> bool:
        """Whether its environment is here and whole (the marker is written after its last install)."""
        return self.python.is_file() and (self.folder / ".made").is_file()

    def package_version(self, package: str) -> str | None:
        """A package's version in this environment, from its installed metadata (no interpreter started)."""
        normal = package.replace("-", "_").lower()
        for info in self.folder.glob("lib/python*/site-packages/*.dist-info"):
            name, _, version = info.name[:-len(".dist-info")].partition("-")
            if name.replace("-", "_").lower() == normal:
                return version
        return None

    def missing(self) -> str | None:
        """Why a variant of this runtime cannot start here, with what to do; None when it can."""
        if not self.made:
            return (f"the {self.name} runtime is not made: python -m engine runtime make {self.name} "
                    f"(a virtual environment at {self.folder}, from {self.requirements.relative_to(ROOT)})")
        return None


def known() -> list[str]:
    return sorted(path.stem for path in PINS.glob("*.txt"))


def get(name: str) -> Runtime:
    if name not in known():
        raise InputError(f"unknown runtime {name!r}; known: {', '.join(known()) or 'none'}")
    return Runtime(name)


SHARED = ("torch",)      # kept from the host's environment with --system-site-packages (its CUDA build)


def make(name: str, log=print, system_site_packages: bool = False, wheels: str | None = None) -> Runtime:
    """Make the runtime's virtual environment once (nothing to do when it is made): pip installs its pins.
    `system_site_packages`: the environment also sees this interpreter's packages, and SHARED ones are not
    pinned (a GPU host keeps its own CUDA torch); `wheels`: install the pins from that folder alone (no index,
    no dependencies beyond them: the host's), for a machine without internet."""
    runtime = get(name)
    if runtime.made:
        log(f"{name}: already made at {runtime.folder}")
        return runtime
    log(f"{name}: making a virtual environment at {runtime.folder} from {runtime.requirements}")
    venv.EnvBuilder(with_pip=True, clear=True, system_site_packages=system_site_packages).create(runtime.folder)
    pins = runtime.requirements
    if system_site_packages:
        lines = [line for line in pins.read_text().splitlines()
                 if line.split("#")[0].strip().split("=")[0].split("<")[0].strip() not in SHARED]
        pins = runtime.folder / "requirements.txt"
        pins.write_text("\n".join(lines) + "\n")
    # offline: the pinned wheels alone, their dependencies taken as the environment has them
    source = ["--no-index", "--no-deps", "--find-links", wheels] if wheels else []
    subprocess.run([str(runtime.python), "-m", "pip", "install", "-q", *source, "-r", str(pins)], check=True)
    (runtime.folder / ".made").write_text("")
    found = {p: runtime.package_version(p) or "the host's" for p in ("torch", "transformers", "optimum")}
    log(f"{name}: made ({', '.join(f'{p} {v}' for p, v in found.items())})")
    return runtime


class SharedFlag:
    """A cancel flag in one shared byte (a memfd both processes map): multiprocessing.Event's set, clear
    and is_set, across interpreters."""

    def __init__(self, fd: int | None = None):
        self.fd = os.memfd_create("sidebyside-cancel", 0) if fd is None else fd
        if fd is None:
            os.ftruncate(self.fd, 1)
        self._map = mmap.mmap(self.fd, 1)

    def set(self) -> None:
        self._map[0] = 1

    def clear(self) -> None:
        self._map[0] = 0

    def is_set(self) -> bool:
        return self._map[0] == 1


class RuntimeProcess:
    """multiprocessing.Process's surface (pid, is_alive, join, kill, sentinel, exitcode) over a worker
    started by another environment's interpreter (the module's docstring says how)."""

    def __init__(self, runtime: Runtime, entry: str):
        parent_end, child_end = socket.socketpair()
        self.flag = SharedFlag()
        alive_read, self._alive_write = os.pipe()          # the write end stays here: closed when we die
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        env["PYTHONPATH"] = str(ROOT)
        fds = (child_end.fileno(), self.flag.fd, alive_read)
        self._popen = subprocess.Popen(
            [str(runtime.python), "-m", "engine.worker.foreign", *map(str, fds), entry],
            pass_fds=fds, env=env, cwd=os.getcwd(), stdin=subprocess.DEVNULL)
        child_end.close()
        os.close(alive_read)
        self.conn = Connection(parent_end.detach())
        self._sentinel: int | None = None

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def exitcode(self) -> int | None:
        return self._popen.poll()

    def is_alive(self) -> bool:
        return self._popen.poll() is None

    def join(self, timeout: float | None = None) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._popen.wait(timeout)

    def kill(self) -> None:
        if self._popen.poll() is None:
            self._popen.kill()                 # our own child, by its handle

    @property
    def sentinel(self) -> int:
        """A descriptor that reads as ready once the process has ended (its pidfd)."""
        if self._sentinel is None:
            self._sentinel = os.pidfd_open(self._popen.pid)
        return self._sentinel

    def release(self) -> None:
        """After it ended: close the descriptors this side holds (its pidfd, the parent pipe, the flag)."""
        for fd in (self._sentinel, self._alive_write, self.flag.fd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._sentinel = self._alive_write = None


def start(name: str, spec, entry: str) -> tuple[Connection, SharedFlag, RuntimeProcess]:
    """Start `spec`'s worker in runtime `name`: (its connection, its cancel flag, its process). The spec
    is the first message on the connection."""
    process = RuntimeProcess(get(name), entry)
    process.conn.send(spec)
    return process.conn, process.flag, process


def add_command(sub) -> None:
    """The `runtime` command (list, make), on the command line's subparsers."""
    command = sub.add_parser("runtime", help="the Python environments variants may run in: list them, or make one "
                             "once from its pinned requirements (runtimes/NAME.txt)")
    command.add_argument("action", choices=("list", "make"))
    command.add_argument("name", nargs="?", help="the runtime to make (e.g. legacy-bt)")
    command.add_argument("--system-site-packages", action="store_true",
                         help="also see this environment's packages and keep its torch (a GPU host's CUDA build)")
    command.add_argument("--wheels", metavar="DIR", help="install from the wheels in DIR alone (no index: offline)")
    command.set_defaults(func=_command)


def _command(args) -> int:
    if args.action == "list":
        for name in known():
            found = Runtime(name)
            print(f"{name}: {'made at ' + str(found.folder) if found.made else found.missing()}")
        return 0
    if not args.name:
        raise InputError(f"runtime make: name the runtime to make: {', '.join(known())}")
    make(args.name, system_site_packages=args.system_site_packages, wheels=args.wheels)
    return 0
