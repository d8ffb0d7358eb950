"""The CPU cores a process may use, their hyper-thread siblings, a core of its own for a GPU worker, and a
free loopback port for a server this machine starts."""
from __future__ import annotations

import os
from pathlib import Path

import psutil


def usable_cores() -> set[int]:
    """The CPU cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(psutil.cpu_count() or 1))


def core_siblings(core: int, cpus: Path = Path("/sys/devices/system/cpu")) -> frozenset[int]:
    """The logical CPUs that share `core`'s physical core (itself included): its hyper-threads.

    Read from Linux's topology files ("0,8" or "0-1"); a core whose topology is unknown stands alone.
    """
    try:
        text = (cpus / f"cpu{core}" / "topology" / "thread_siblings_list").read_text().strip()
    except OSError:
        return frozenset({core})
    siblings = set()
    for part in filter(None, text.split(",")):
        first, _, last = part.partition("-")
        siblings.update(range(int(first), int(last or first) + 1))
    return frozenset(siblings | {core})


def free_core(cores: list[int], taken: set[int | None], siblings=core_siblings) -> int | None:
    """A CPU core of its own for a GPU worker, or None when none is left.

    A GPU worker's one Python thread launches every kernel: when it shares a core or moves between
    cores mid-run, its TPOT jitters. The first core is left to the orchestrator, the page and the
    rest of the machine (none of which is pinned). Two hyper-threads of one physical core share
    its execution units, so a core whose physical core is free (not the first core's, not another
    worker's) comes first; a hyper-thread of a taken one only when no such core is left.
    """
    taken = {core for core in taken if core is not None}
    free = [core for core in cores[1:] if core not in taken]
    shared = set().union(*(siblings(core) for core in [*cores[:1], *taken]))
    return next((core for core in free if not siblings(core) & shared), free[0] if free else None)


def free_port() -> int:
    """A TCP port free on the loopback now (the system picks it), for a server this machine starts."""
    import socket
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
