"""A served variant's worker: an OpenAI-compatible server (vLLM, SGLang, TGI, llama.cpp, ...) streamed
and timed like a local variant, one more column beside them.

Instead of loading a model the worker asks the server what it serves (`/v1/models`, `/version`), and
each request streams `/v1/completions` greedily (temperature 0) with the same prompt tokens, the same
max new tokens and `ignore_eos` where the server takes it, so every variant does equal work. Each
chunk is timestamped with `time.perf_counter()` the moment it is read off the socket, the clock the
local workers use, so TTFT counts from the request being sent and TPOT = (t_last - t_first) / (N - 1)
with N the server's own completion token count (`usage`). A chunk that carries several token ids
counts as that many: its tokens share out the time since the previous chunk. A server that sends
no token ids (llama.cpp's, TGI, SGLang, plain OpenAI-compatible ones) may still put several tokens in
a chunk: when its count is larger than the chunks carried, the extra tokens are shared out evenly
over the chunks after the first (engine/worker/served_stream.py), the row says so, and `multi_token_chunks` counts
the chunks given several. Where the server exposes Prometheus metrics (vLLM's `/metrics`), they are
read before and after each request: the server's own TTFT, time per output token and queue time
stand beside the client's, and the difference is network and queueing.

This module imports no torch: the prompt's token ids come from engine/worker/prompts.py. Memory is
what the server reports or "not reported by the server", never a local figure. Failures
(unreachable, a wrong model, a 4xx/5xx, a stream cut mid-answer, a timeout) are values: that column
fails, the others finish.
"""
from __future__ import annotations

import json
import time

from engine import events
from engine.remote import Endpoint
from engine.worker.prompts import load_tokenizer, prompt_ids
from engine.worker.served_stream import (NO_TOKEN_ID, Stream, by_server_count, own_timings, read_metrics,
                                         server_figures, share_gap)

CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 300.0          # the longest wait for the next chunk of a stream
MEMORY_NOT_REPORTED = "not reported by the server"

class ServerError(Exception):
    """What went wrong with a server, in one line a person can act on."""


class ServedRunner:
    """The worker side of a served variant: what it serves, and one request at a time streamed."""
    cuda_index = None

    def __init__(self, target: Endpoint, preset, emit, device: str):
        import httpx
        self.endpoint, self.preset, self.emit, self.device = target, preset, emit, device
        self.client = httpx.Client(timeout=httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
                                   headers=target.headers())
        self.model, self.version, self.server_kind = self._describe()
        self.tokenizer = self._tokenizer()
        self.extensions = True           # vLLM's ignore_eos and return_token_ids, until refused
        self.metrics_available = self._metrics() is not None

    server = None                  # the engine this worker started (engine/worker/launched.py), if any

    @property
    def label(self) -> str:
        if self.endpoint.launch is not None:
            from engine.launch import describe
            return f"{describe(self.endpoint.launch.kind, self.preset)}; started here, {self.endpoint.host}"
        return f"served by {self.server_kind}{' ' + self.version if self.version else ''} at {self.endpoint.host}"

    def answer(self, probe: events.Probe, cancel) -> events.Measured:
        """The quality probe from the server's own log-probabilities (engine/worker/served_quality.py); the
        other probes time a model on this machine and do not apply."""
        if probe.kind != "quality":
            raise ValueError(f"the {probe.kind} probe times a model on this machine: not applicable to a served model")
        from engine.worker import served_quality
        return events.Measured(self.endpoint.name, probe.request_id, probe.kind, served_quality.score(self, probe))

    def close(self) -> None:
        """Stop the engine this worker started (nothing for a server someone else runs)."""
        if self.server is not None:
            self.server.stop()

    def _get(self, url: str):
        import httpx
        try:
            response = self.client.get(url, timeout=CONNECT_TIMEOUT_S)
        except httpx.HTTPError as error:
            raise ServerError(f"cannot reach {self.endpoint.base_url}: {type(error).__name__}: "
                              f"{str(error) or 'no answer'}") from None
        return response

    def _describe(self) -> tuple[str, str | None, str]:
        """(the served model, the server's version, its kind) from /v1/models and /version."""
        response = self._get(self.endpoint.base_url + "/models")
        if response.status_code != 200:
            raise ServerError(f"{self.endpoint.base_url}/models answered HTTP {response.status_code}: "
                              f"{response.text[:200]}")
        models = [m.get("id") for m in response.json().get("data", []) if isinstance(m, dict)]
        model = self.endpoint.model or (models[0] if models else None)
        if model is None or (models and model not in models):
            raise ServerError(f"{self.endpoint.host} does not serve model {model!r}; it serves: "
                              f"{', '.join(map(str, models)) or 'nothing'}")
        owners = {m.get("owned_by") for m in response.json().get("data", []) if isinstance(m, dict)}
        kind = "vLLM" if "vllm" in owners else "llama.cpp" if "llamacpp" in owners else "an OpenAI-compatible server"
        version = None
        answer = self._get(self.endpoint.server_root + "/version")
        if answer.status_code == 200:
            try:
                version = str(answer.json().get("version") or "") or None
            except ValueError:
                version = None
        return model, version, kind

    def _tokenizer(self):
        """The preset's tokenizer, so the server gets the very token ids the local variants get;
        None (the prompt goes as text) when the preset has none here."""
        try:
            return load_tokenizer(self.preset, torch_free=True)
        except Exception:  # noqa: BLE001 - a served model need not be on this machine
            return None

    def _metrics(self) -> dict[str, float] | None:
        import httpx
        try:
            response = self.client.get(self.endpoint.server_root + "/metrics", timeout=CONNECT_TIMEOUT_S)
        except httpx.HTTPError:
            return None
        return read_metrics(response.text, self.model) if response.status_code == 200 else None

    def prompt(self, request: events.Request):
        if request.pad_ratio:
            raise ServerError("padding within a batch is the local variants' experiment: not applicable to a "
                              "served model, which batches its requests itself")
        if self.tokenizer is None:
            if request.prompt_tokens is not None:
                raise ServerError("a prompt of a given token length needs the model's tokenizer on this "
                                  "machine: not applicable to this served model")
            return request.prompt
        return prompt_ids(self.tokenizer, self.preset, request)

    def body(self, request: events.Request, prompt) -> dict:
        prompts = [prompt] * request.batch_size if request.batch_size > 1 else prompt
        body = {"model": self.model, "prompt": prompts, "max_tokens": request.max_new_tokens, "temperature": 0,
                "stream": True, "stream_options": {"include_usage": True}}
        if self.extensions:
            body["return_token_ids"] = True
            if request.ignore_eos or self.preset.always_ignore_eos:
                body["ignore_eos"] = True
        return body

    def generate(self, request: events.Request, cancel) -> events.Finished:
        """Stream one request. Not `live` (a command line's or a benchmark's timed request): its Started
        and Token events wait until the stream has ended, as a local worker's do, so that nothing wakes
        the orchestrator while a variant beside it may be timed."""
        received = time.perf_counter()
        prompt = self.prompt(request)
        prompt_ready = time.perf_counter()
        before = self._metrics() if self.metrics_available else None
        held: list = []
        emit = self.emit if request.live else held.append
        stream, t_start = self._stream(request, prompt, cancel, emit)
        for event in held:
            self.emit(event)
        if stream.cut:                           # its tokens so far were streamed; the request failed
            raise ServerError(stream.cut)
        after = self._metrics() if self.metrics_available else None
        counted = by_server_count(stream, request.batch_size)
        server = {"endpoint": self.endpoint.base_url, "model": self.model, "version": self.version,
                  "kind": self.server_kind, "completion_tokens": stream.usage_tokens,
                  "multi_token_chunks": counted.multi_token_chunks, "memory": MEMORY_NOT_REPORTED,
                  "metrics": "exposed" if self.metrics_available else "not exposed by the server",
                  **own_timings(stream.timings), **server_figures(before, after)}
        if counted.note:
            server["token_count_note"] = counted.note
        return events.Finished(
            variant=self.endpoint.name, request_id=request.request_id, t_start=t_start,
            token_times=counted.times, token_ids=counted.ids, text=stream.text,
            prompt_tokens=len(prompt) if isinstance(prompt, list) else 0, batch_size=request.batch_size,
            cancelled=cancel.is_set() and len(counted.times) < request.max_new_tokens, memory={},
            server=server, cell=request.cell,
            phases={"sent": request.t_sent, "received": received, "prompt_ready": prompt_ready, "start": t_start})

    def _stream(self, request: events.Request, prompt, cancel, emit) -> tuple[Stream, float]:
        import httpx
        url = self.endpoint.base_url + "/completions"
        body = self.body(request, prompt)
        stream = Stream()
        try:
            t_start = time.perf_counter()
            with self.client.stream("POST", url, json=body) as response:
                if response.status_code in (400, 422) and self.extensions:
                    response.read()
                    self.extensions = False          # a server that refuses vLLM's fields: plain OpenAI
                    return self._stream(request, prompt, cancel, emit)
                if response.status_code != 200:
                    raise ServerError(f"{url} answered HTTP {response.status_code}: {response.read()[:200]!r}")
                emit(events.Started(self.endpoint.name, request.request_id, t_start,
                                    len(prompt) if isinstance(prompt, list) else 0, request.cell))
                self._read(response, request, stream, cancel, emit)
        except httpx.HTTPError as error:
            stream.cut = (f"the stream from {self.endpoint.host} broke after {len(stream.times)} tokens: "
                          f"{type(error).__name__}: {str(error) or 'connection closed'}")
        return stream, t_start

    def _read(self, response, request: events.Request, stream: Stream, cancel, emit) -> None:
        done = False
        for line in response.iter_lines():
            now = time.perf_counter()                   # the moment this chunk was read off the socket
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                done = True
                break
            chunk = json.loads(data)
            if chunk.get("usage"):
                stream.usage_tokens = chunk["usage"].get("completion_tokens")
            if isinstance(chunk.get("timings"), dict):
                stream.timings = chunk["timings"]
            for choice in chunk.get("choices") or []:
                if choice.get("index", 0) != 0:          # the batch's other sequences: counted by usage
                    continue
                self._take(choice, now, request, stream, emit)
            if cancel.is_set():
                break
        if not done and not cancel.is_set():
            stream.cut = (f"the stream from {self.endpoint.host} ended without [DONE] after "
                          f"{len(stream.times)} tokens")

    def _take(self, choice: dict, now: float, request: events.Request, stream: Stream, emit) -> None:
        """One chunk's tokens: each its id and a share of the time since the previous chunk."""
        text = choice.get("text") or ""
        ids = choice.get("token_ids")
        if ids is None:
            ids = [NO_TOKEN_ID] if (text or choice.get("finish_reason") is None) else []
        if not ids:
            stream.text += text
            return
        if len(ids) > 1:
            stream.multi_token_chunks += 1
        times = share_gap(stream.times[-1] if stream.times else now, now, len(ids))
        for i, (token, t) in enumerate(zip(ids, times)):
            index = len(stream.times)
            stream.times.append(t)
            stream.ids.append(int(token))
            emit(events.Token(self.endpoint.name, request.request_id, index, int(token), text if i == 0 else "", t))
        stream.text += text


def load(spec, emit) -> ServedRunner:
    """The worker's load step for a served variant: start its server if the dashboard starts it
    (engine/worker/launched.py), connect and describe; raises ServerError (or StartError)."""
    server = None
    if spec.endpoint.launch is not None:
        from engine.worker.launched import Server
        server = Server(spec, emit)
    emit(events.Status(spec.variant, "loading", f"connecting to {spec.endpoint.base_url}"))
    try:
        runner = ServedRunner(spec.endpoint, spec.preset, emit, spec.device)
    except BaseException:
        if server is not None:
            server.stop()
        raise
    runner.server = server
    return runner
