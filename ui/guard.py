"""What a public page refuses before Gradio reads a request: a body over the size limit, and a visitor's
calls beyond their rate.

An ASGI middleware in front of every route Gradio serves (the queue, the direct routes, MCP), given to
`launch(app_kwargs={"middleware": ...})`: a body is refused by its Content-Length before a byte of it is
read, or once the bytes streamed without one pass the limit, so a 100 MB prompt never sits in memory; and a
visitor (their address, as ui/gate.py's `address_of` tells it) may make `call_burst` calls at once and
`calls_per_s` a second after that, so a script cannot flood the page's cheap handlers or Gradio's queue.
"""
from __future__ import annotations

import json
import math
import time
from collections import OrderedDict
from collections.abc import Callable

from starlette.exceptions import HTTPException

from engine.limits import MIB, Limits
from ui.gate import address_of, on_spaces

CALLS = frozenset({"POST", "PUT", "PATCH", "DELETE"})     # what a visitor sends: reading the page is not counted
REMEMBERED = 4096                                          # addresses whose rate is kept (the oldest forgotten)


class TooLarge(HTTPException):
    """A body that passed the limit while it was read (FastAPI passes an HTTPException from the body on)."""


class Rates:
    """A token bucket per address: `burst` calls at once, refilled at `per_s` a second; at most `remembered`
    addresses kept (a forgotten one starts full again, which costs nothing: it was idle the longest)."""

    def __init__(self, per_s: float, burst: int, remembered: int = REMEMBERED,
                 clock: Callable[[], float] = time.monotonic):
        self.per_s, self.burst, self.remembered, self.clock = per_s, burst, remembered, clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()     # address -> (tokens, when)

    def take(self, address: str) -> float:
        """0.0 when `address` may make a call now (one is taken), else the seconds until it may."""
        now = self.clock()
        tokens, then = self._buckets.pop(address, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - then) * self.per_s)
        wait = 0.0 if tokens >= 1 else (1 - tokens) / self.per_s
        self._buckets[address] = (tokens - 1 if not wait else tokens, now)
        while len(self._buckets) > self.remembered:
            self._buckets.popitem(last=False)
        return wait


class Guard:
    """The middleware: `limits.body_bytes` per request body, `limits.calls_per_s` and `call_burst` per visitor
    (either None: not limited)."""

    def __init__(self, app, limits: Limits, behind_proxy: bool | None = None):
        self.app, self.body_bytes = app, limits.body_bytes
        self.rates = Rates(limits.calls_per_s, limits.call_burst or 1) if limits.calls_per_s else None
        self.behind_proxy = on_spaces() if behind_proxy is None else behind_proxy

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] not in CALLS:
            return await self.app(scope, receive, send)
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        if self.rates is not None:
            address = address_of((scope.get("client") or (None,))[0], headers.get("x-forwarded-for", ""),
                                 self.behind_proxy) or "unknown"
            wait = self.rates.take(address)
            if wait:
                return await refuse(send, 429, f"too many calls from your address: at most "
                                    f"{self.rates.burst} at once and {self.rates.per_s:g} a second; wait "
                                    f"{math.ceil(wait)} s and try again", {"retry-after": str(math.ceil(wait))})
        if self.body_bytes is None:
            return await self.app(scope, receive, send)
        declared = headers.get("content-length", "")
        if declared.strip().isdigit() and int(declared) > self.body_bytes:
            return await refuse(send, 413, self.too_large(int(declared)))
        started = False

        async def counted_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.body_bytes:
                raise TooLarge(413, self.too_large(seen, more=True))
            return message

        async def watched_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if seen > self.body_bytes:         # the refusal: close, so the rest of the body is never read
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        seen = 0
        try:
            await self.app(scope, counted_receive, watched_send)
        except TooLarge as error:              # a route that let it through: answered here, if it can still be
            if not started:
                await refuse(send, 413, error.detail)

    def too_large(self, size: int, more: bool = False) -> str:
        return (f"the request's body is {'over ' if more else ''}{size / MIB:.1f} MiB; this page takes up to "
                f"{self.body_bytes / MIB:.1f} MiB: send a shorter prompt")


async def refuse(send, status: int, message: str, headers: dict[str, str] | None = None) -> None:
    """Answer `status` with {"error": message} (what Gradio's client shows) and close the connection: the
    rest of a refused body is never read."""
    body = json.dumps({"error": message}).encode()
    extra = [(name.encode(), value.encode()) for name, value in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *extra]})
    await send({"type": "http.response.body", "body": body})
