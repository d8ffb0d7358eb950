"""The device's door: one run at a time across both tabs and every preset, in arrival order.

Each job (a /compare or /experiment call) takes a ticket, waits for its turn while its page shows
how many are ahead, and gives the ticket back however it ends (done, refused, stopped, or the page
closed: Gradio closes the generator). The queue is bounded and, on a public page, each visitor
(their session, and their address) has at most `per_visitor` jobs queued or running; a job
refused at the door gets a message at once, never a silent wait. A job whose updates nobody reads
(its tab lost, a script that joined the queue and went away) gives its place up (`Audience`).
"""
from __future__ import annotations

import ipaddress
import itertools
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from engine.limits import Limits


@dataclass(frozen=True)
class Ticket:
    number: int
    visitor: tuple[str, ...]          # the keys it counts against: session, address


class Refused(Exception):
    """Why a job cannot join the queue (said to the visitor as is)."""


TRUST_ENV = "FORWARDED_ALLOW_IPS"      # uvicorn believes X-Forwarded-For from these peers only


def on_spaces() -> bool:
    """Whether this app runs on a Hugging Face Space (behind its proxy)."""
    return os.environ.get("SYSTEM") == "spaces"


def trust_proxies(proxies: str | None) -> str:
    """Name the peers whose X-Forwarded-For uvicorn believes (it reads $FORWARDED_ALLOW_IPS when Gradio starts
    its server, and by default believes 127.0.0.1, so anyone on the host, or a tunnel, could name any address
    and count as another visitor): `proxies` (--trusted-proxies: comma-separated addresses or networks), else
    what the deployment's environment already says, else none. Returns the setting; raises ValueError
    naming an entry that is no address or network."""
    if proxies is None:
        proxies = os.environ.get(TRUST_ENV, "")
    entries = [entry.strip() for entry in proxies.split(",") if entry.strip()]
    for entry in entries:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ValueError(f"--trusted-proxies: {entry!r} is not an IP address or network (e.g. 10.0.0.5 or "
                             "10.0.0.0/8): name the reverse proxies in front of this app, or leave the flag out") from None
    os.environ[TRUST_ENV] = ",".join(entries)
    return os.environ[TRUST_ENV]


def address_of(host: str | None, forwarded: str, behind_proxy: bool) -> str | None:
    """A visitor's address: behind Spaces' proxy the last entry of X-Forwarded-For (`forwarded`), the one the
    proxy itself saw; anywhere else the connection's own peer (`host`, which uvicorn replaces only for the
    proxies the deployment trusts: `trust_proxies`), since the header is then the client's own word."""
    return (forwarded.split(",")[-1].strip() if behind_proxy else "") or host


def visitor_of(request, behind_proxy: bool | None = None) -> tuple[str, ...]:
    """The keys a visitor's jobs are counted under: their session, and their address (`address_of`;
    `behind_proxy` default: on a Space). A call without a request (a test) has none."""
    if request is None:
        return ()
    if behind_proxy is None:
        behind_proxy = on_spaces()
    keys = []
    session = getattr(request, "session_hash", None)
    if session:
        keys.append(f"session:{session}")
    headers = getattr(request, "headers", None) or {}
    forwarded = headers.get("x-forwarded-for", "") if hasattr(headers, "get") else ""
    address = address_of(getattr(getattr(request, "client", None), "host", None), forwarded or "", behind_proxy)
    if address:
        keys.append(f"address:{address}")
    return tuple(keys)


class Slots:
    """What each visitor may have going at once besides device jobs (a replay): at most `per_visitor` (None:
    no limit), counted under each of the visitor's keys; `take` raises Refused with `busy` beyond that."""

    def __init__(self, per_visitor: int | None, busy: str):
        self.per_visitor, self.busy = per_visitor, busy
        self._held: Counter[str] = Counter()
        self._lock = threading.Lock()

    def take(self, visitor: tuple[str, ...]) -> tuple[str, ...]:
        """Hold a slot for `visitor` (give it back with `give`)."""
        with self._lock:
            if self.per_visitor is not None and any(self._held[key] >= self.per_visitor for key in visitor):
                raise Refused(self.busy)
            self._held.update(visitor)
            return visitor

    def give(self, visitor: tuple[str, ...]) -> None:
        with self._lock:
            self._held.subtract(visitor)
            self._held = +self._held                # drop the zeros: the table holds only what is going


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
