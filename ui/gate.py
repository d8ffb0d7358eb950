"""The device's door: one run at a time across both tabs and every preset, in arrival order.

Each job (a /compare or /experiment call) takes a ticket, waits for its turn while its page shows
how many are ahead, and gives the ticket back however it ends (done, refused, stopped, or the page
closed: Gradio closes the generator). The queue is bounded and, on a public page, each visitor
(their session, and their address) has at most `per_visitor` jobs queued or running; a job
refused at the door gets a message at once, never a silent wait. A job whose updates nobody reads
(its tab lost, a script that joined the queue and went away) gives its place up (`Audience`).
"""
from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from engine.limits import Limits


@dataclass(frozen=True)
class Ticket:
    number: int
    visitor: tuple[str, ...]          # the keys it counts against: session, address


class Refused(Exception):
    """Why a job cannot join the queue (said to the visitor as is)."""


def visitor_of(request, behind_proxy: bool | None = None) -> tuple[str, ...]:
    """The keys a visitor's jobs are counted under: their session, and their address. Behind Spaces'
    proxy (`behind_proxy`, default: on a Space) the address is the last of X-Forwarded-For, the one
    the proxy itself saw; anywhere else the header is the client's own word and is ignored. A call
    without a request (a test) has none."""
    if request is None:
        return ()
    if behind_proxy is None:
        behind_proxy = os.environ.get("SYSTEM") == "spaces"
    keys = []
    session = getattr(request, "session_hash", None)
    if session:
        keys.append(f"session:{session}")
    headers = getattr(request, "headers", None) or {}
    forwarded = headers.get("x-forwarded-for", "") if behind_proxy and hasattr(headers, "get") else ""
    address = forwarded.split(",")[-1].strip() or getattr(getattr(request, "client", None), "host", None)
    if address:
        keys.append(f"address:{address}")
    return tuple(keys)


class Gate:
    """FIFO of tickets for the one device; the first ticket holds it."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self._numbers = itertools.count(1)
        self._line: list[Ticket] = []             # the holder first, then those waiting, in order
        self._changed = threading.Condition()

    def enter(self, visitor: tuple[str, ...]) -> Ticket:
        """A ticket at the end of the line; raises Refused when the line is full or the visitor has
        as many jobs in it as allowed."""
        with self._changed:
            waiting = len(self._line) - 1 if self._line else 0
            if self.limits.queue_size is not None and waiting >= self.limits.queue_size:
                raise Refused(f"the queue is full ({self.limits.queue_size} runs waiting for the device): "
                              "try again in a minute")
            if self.limits.per_visitor is not None and visitor:
                mine = sum(1 for ticket in self._line if set(ticket.visitor) & set(visitor))
                if mine >= self.limits.per_visitor:
                    raise Refused("you already have a run queued or running on this page: wait for it to "
                                  "finish, or press Stop, then run again")
            ticket = Ticket(next(self._numbers), visitor)
            self._line.append(ticket)
            return ticket

    def ahead(self, ticket: Ticket) -> int:
        """How many jobs are before this one (0: it holds the device)."""
        with self._changed:
            return self._line.index(ticket) if ticket in self._line else 0

    def wait(self, ticket: Ticket, timeout: float) -> bool:
        """Wait up to `timeout` for the ticket's turn; True once it holds the device."""
        with self._changed:
            return self._changed.wait_for(lambda: self._line and self._line[0] == ticket, timeout)

    def leave(self, ticket: Ticket) -> None:
        """The job is over (or never ran): the next one's turn."""
        with self._changed:
            if ticket in self._line:
                self._line.remove(ticket)
            self._changed.notify_all()

    def __len__(self) -> int:
        with self._changed:
            return len(self._line)


def unread_updates(blocks, session_hash: str | None) -> int | None:
    """How many of a session's updates wait in Gradio's queue for its page (or script) to read them;
    None when that cannot be told (no session, or a Gradio that keeps them elsewhere). A reader
    connected to the session's stream takes each update as it comes: the count keeps falling to 0."""
    pending = getattr(getattr(blocks, "_queue", None), "pending_messages_per_session", None)
    if not session_hash or not isinstance(pending, dict):
        return None
    messages = pending.get(session_hash)
    return messages.qsize() if messages is not None else None


class Audience:
    """Whether anyone still reads a job's updates: gone once they have piled up unread, never all
    taken, for `patience_s` (None: never gone). Asked at each update the job makes."""

    def __init__(self, unread: Callable[[], int | None], patience_s: float | None,
                 clock: Callable[[], float] = time.monotonic):
        self.unread, self.patience_s, self.clock = unread, patience_s, clock
        self.heard = clock()                      # the last time nothing was waiting unread

    def gone(self) -> bool:
        if self.patience_s is None:
            return False
        if not self.unread():                     # 0: all read; None: unknown, given the benefit of the doubt
            self.heard = self.clock()
            return False
        return self.clock() - self.heard > self.patience_s
