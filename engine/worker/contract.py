"""What the serving loop (engine/worker/serve.py) asks of a loaded variant: the local model's runner
(engine/worker/runner.py) and a served model's (engine/worker/served.py) both fulfil it."""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from engine import events


class Runner(Protocol):
    """A loaded variant, answering one request at a time."""
    device: str                     # where it computes, as the orchestrator names it ("cpu", "cuda:0", "remote:…")
    cuda_index: int | None          # the CUDA device whose memory it frees after a failure (None: none)
    emit: Callable[[object], None]  # where its Started, Token and MemorySample events go

    @property
    def label(self) -> str:
        """What actually runs, for its card: "SDPA", "served by vLLM 0.32 at host:8000", ..."""

    def answer(self, probe: events.Probe, cancel) -> events.Measured:
        """A measurement outside a request (engine/worker/probes.py); raises when the probe does not apply."""

    def generate(self, request: events.Request, cancel) -> events.Finished:
        """Serve one request, streaming its Started and Token events (held until its end when the
        request is not `live`); its raw measurements. Raises on failure; `cancel` stops it early."""
