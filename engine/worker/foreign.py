"""A worker run by another environment's interpreter (engine/runtimes.py): the entry point of
`python -m engine.worker.foreign CONN_FD FLAG_FD ALIVE_FD ENTRY`.

It wraps its three inherited descriptors as the forked worker's arguments (its Connection, its cancel
flag), ends the moment the orchestrator dies (the ALIVE_FD pipe reads as closed), reads its WorkerSpec
as the first message, and runs the same entry point ("module:function") a forked worker runs.
"""
from __future__ import annotations

import importlib
import os
import select
import sys
import threading
from multiprocessing.connection import Connection

from engine.runtimes import SharedFlag

ORPHANED_EXIT_CODE = 3


def watch_parent(fd: int) -> None:
    """End this process as soon as the pipe `fd` reads as closed: its only writer, the orchestrator, died."""
    def wait() -> None:
        select.select([fd], [], [])
        os._exit(ORPHANED_EXIT_CODE)

    threading.Thread(target=wait, daemon=True, name="parent-watch").start()


def main(argv: list[str]) -> None:
    conn_fd, flag_fd, alive_fd = (int(value) for value in argv[:3])
    watch_parent(alive_fd)
    conn = Connection(conn_fd)
    try:
        spec = conn.recv()
    except EOFError:
        return
    module, _, function = argv[3].partition(":")
    getattr(importlib.import_module(module), function)(spec, conn, SharedFlag(flag_fd))


if __name__ == "__main__":
    main(sys.argv[1:])
