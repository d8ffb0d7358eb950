"""Served engines as variants: an OpenAI-compatible server (vLLM, SGLang, TGI, ...) streamed and timed
like a local variant, one more column beside them.

A remote variant is a worker process like the others (engine/process.py, engine/worker/serve.py):
instead of loading a model it asks the server what it serves (`/v1/models`, `/version`), and each
request streams `/v1/completions` greedily (temperature 0) with the same prompt tokens, the same
max new tokens and `ignore_eos` where the server takes it, so every variant does equal work. Each
chunk is timestamped with `time.perf_counter()` the moment it is read off the socket, the clock the
local workers use, so TTFT counts from the request being sent and TPOT = (t_last - t_first) / (N - 1)
with N the server's own completion token count (`usage`). A chunk that carries several tokens counts
as that many: its tokens share out the time since the previous chunk (inter-token latency per token,
not per chunk), and the result says how many chunks did. Where the server exposes Prometheus metrics
(vLLM's `/metrics`), they are read before and after each request: the server's own TTFT, time per
output token and queue time stand beside the client's, and the difference is network and queueing.

Endpoints come only from preset files and the command line, never from a page's visitor. Memory is
what the server reports or "not reported by the server", never a local figure. Failures (unreachable,
a wrong model, a 4xx/5xx, a stream cut mid-answer, a timeout) are values: that column fails, the
others finish.
"""
from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from engine import events

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,39}")
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 300.0          # the longest wait for the next chunk of a stream
MEMORY_NOT_REPORTED = "not reported by the server"
# vLLM's histograms (name -> what the server measured), read before and after each request
SERVER_HISTOGRAMS = {"ttft_s": "vllm:time_to_first_token_seconds",
                     "tpot_s": "vllm:request_time_per_output_token_seconds",
                     "queue_s": "vllm:request_queue_time_seconds",
                     "e2e_s": "vllm:e2e_request_latency_seconds"}


class ServerError(Exception):
    """What went wrong with a server, in one line a person can act on."""


@dataclass(frozen=True)
class Endpoint:
    """One served model: `name` is its variant name, `base_url` the OpenAI-compatible root (…/v1),
    `model` the served model (None: the server's first), `api_key_env` the environment variable
    holding its key (the key itself is never written in a preset)."""
    name: str
    base_url: str
    model: str | None = None
    api_key_env: str | None = None

    @property
    def host(self) -> str:
        return urlsplit(self.base_url).netloc

    @property
    def server_root(self) -> str:
        """The server's own root, where /version, /metrics and /health live (the URL less its /v1)."""
        return re.sub(r"/v1/?$", "", self.base_url.rstrip("/"))

    def headers(self) -> dict:
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        return {"Authorization": f"Bearer {key}"} if key else {}


def endpoint(data: object, origin: str) -> Endpoint:
    """An Endpoint from a preset's `remote:` entry (a mapping); ValueError naming `origin` otherwise."""
    if not isinstance(data, dict):
        raise ValueError(f"{origin}: each entry of 'remote' must be a mapping with name and base_url, "
                         f"got {type(data).__name__}")
    allowed = {"name", "base_url", "model", "api_key_env"}
    unknown = sorted(str(k) for k in data if k not in allowed)
    if unknown:
        raise ValueError(f"{origin}: 'remote' entry has unknown field {unknown[0]!r}; allowed: "
                         f"{', '.join(sorted(allowed))}")
    for key in ("name", "base_url"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise ValueError(f"{origin}: each entry of 'remote' needs {key!r} (a string)")
    for key in ("model", "api_key_env"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise ValueError(f"{origin}: 'remote' field {key!r} must be a string")
    return _checked(Endpoint(data["name"], data["base_url"].rstrip("/"), data.get("model"), data.get("api_key_env")),
                    origin)


def from_flag(text: str) -> Endpoint:
    """An Endpoint from `--remote URL[,model=M][,name=N][,api_key_env=E]`; the name defaults to
    "remote-" and the URL's host and port."""
    url, *options = [part.strip() for part in text.split(",")]
    values = {"base_url": url}
    for option in options:
        key, equals, value = option.partition("=")
        if not equals or key not in ("model", "name", "api_key_env"):
            raise ValueError(f"--remote {text}: {option!r} is not model=..., name=... or api_key_env=...")
        values[key] = value
    host = urlsplit(url).netloc
    values.setdefault("name", "remote-" + re.sub(r"[^a-z0-9]+", "-", host.lower()).strip("-"))
    return endpoint(values, "--remote")


def _checked(found: Endpoint, origin: str) -> Endpoint:
    from engine.variants import CATALOG
    parts = urlsplit(found.base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{origin}: base_url {found.base_url!r} must be an http:// or https:// URL, "
                         "e.g. http://host:8000/v1")
    if not NAME_PATTERN.fullmatch(found.name) or found.name in CATALOG:
        raise ValueError(f"{origin}: remote name {found.name!r} must be lower-case letters, digits, '.', '_' "
                         f"or '-' and not a local variant's name ({', '.join(CATALOG)})")
    return found


# ---------------------------------------------------------------------- reading a server

def read_metrics(text: str, model: str | None) -> dict[str, float]:
    """Prometheus text format -> {series name: value}, summed over the series of `model` (its
    `model_name` label; every series when None or unlabelled)."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z_:][\w:]*)(\{[^}]*\})?\s+(\S+)(\s+\S+)?", line.strip())
        if not match:
            continue
        name, labels, value = match.group(1), match.group(2) or "", match.group(3)
        labelled = re.search(r'model_name="([^"]*)"', labels)
        if model is not None and labelled and labelled.group(1) != model:
            continue
        if 'le="' in labels:                     # a histogram's buckets: only _sum and _count are used
            continue
        try:
            values[name] = values.get(name, 0.0) + float(value)
        except ValueError:
            continue
    return values


def server_figures(before: dict[str, float] | None, after: dict[str, float] | None) -> dict:
    """The server's own mean per request of each SERVER_HISTOGRAMS figure over one request (the
    difference of its _sum over the difference of its _count); {} when it exposes none."""
    if before is None or after is None:
        return {}
    found = {}
    for key, name in SERVER_HISTOGRAMS.items():
        count = after.get(name + "_count", 0.0) - before.get(name + "_count", 0.0)
        if count > 0:
            found[key] = (after.get(name + "_sum", 0.0) - before.get(name + "_sum", 0.0)) / count
    return found


@dataclass
class Stream:
    """What one streamed completion gave: sequence 0's tokens with their arrival times."""
    times: list[float] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    text: str = ""
    usage_tokens: int | None = None      # the server's completion_tokens (all sequences)
    multi_token_chunks: int = 0
    cut: str | None = None               # why the stream broke off, when it did


class RemoteRunner:
    """The worker side of a remote variant: what it serves, and one request at a time streamed."""
    cuda_index = None
    remote = True

    def __init__(self, target: Endpoint, preset, emit):
        import httpx
        self.endpoint, self.preset, self.emit = target, preset, emit
        self.client = httpx.Client(timeout=httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
                                   headers=target.headers())
        self.model, self.version, self.server_kind = self._describe()
        self.tokenizer = self._tokenizer()
        self.extensions = True           # vLLM's ignore_eos and return_token_ids, until refused
        self.metrics_available = self._metrics() is not None

    @property
    def label(self) -> str:
        return f"served by {self.server_kind}{' ' + self.version if self.version else ''} at {self.endpoint.host}"

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
        kind = "vLLM" if "vllm" in owners else "an OpenAI-compatible server"
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
            from engine.worker.models import load_tokenizer
            return load_tokenizer(self.preset)
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
        from engine.worker.runner import prompt_ids
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
        prompt = self.prompt(request)
        before = self._metrics() if self.metrics_available else None
        stream, t_start = self._stream(request, prompt, cancel)
        if stream.cut:                           # its tokens so far were streamed; the request failed
            raise ServerError(stream.cut)
        after = self._metrics() if self.metrics_available else None
        figures = server_figures(before, after)
        counted = len(stream.times) * request.batch_size
        server = {"endpoint": self.endpoint.base_url, "model": self.model, "version": self.version,
                  "kind": self.server_kind, "completion_tokens": stream.usage_tokens,
                  "multi_token_chunks": stream.multi_token_chunks, "memory": MEMORY_NOT_REPORTED,
                  "metrics": "exposed" if self.metrics_available else "not exposed by the server", **figures}
        if stream.usage_tokens is not None and stream.usage_tokens != counted:
            server["token_count_note"] = (f"the stream carried {counted} tokens, the server counted "
                                          f"{stream.usage_tokens}: timings use the stream's")
        return events.Finished(
            variant=self.endpoint.name, request_id=request.request_id, t_start=t_start,
            token_times=tuple(stream.times), token_ids=tuple(stream.ids), text=stream.text,
            prompt_tokens=len(prompt) if isinstance(prompt, list) else 0, batch_size=request.batch_size,
            cancelled=cancel.is_set() and len(stream.times) < request.max_new_tokens, memory={},
            server=server, cell=request.cell)

    def _stream(self, request: events.Request, prompt, cancel) -> tuple[Stream, float]:
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
                    return self._stream(request, prompt, cancel)
                if response.status_code != 200:
                    raise ServerError(f"{url} answered HTTP {response.status_code}: {response.read()[:200]!r}")
                self.emit(events.Started(self.endpoint.name, request.request_id, t_start,
                                         len(prompt) if isinstance(prompt, list) else 0, request.cell))
                self._read(response, request, stream, cancel)
        except httpx.HTTPError as error:
            stream.cut = (f"the stream from {self.endpoint.host} broke after {len(stream.times)} tokens: "
                          f"{type(error).__name__}: {str(error) or 'connection closed'}")
        return stream, t_start

    def _read(self, response, request: events.Request, stream: Stream, cancel) -> None:
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
            for choice in chunk.get("choices") or []:
                if choice.get("index", 0) != 0:          # the batch's other sequences: counted by usage
                    continue
                self._take(choice, now, request, stream)
            if cancel.is_set():
                break
        if not done and not cancel.is_set():
            stream.cut = (f"the stream from {self.endpoint.host} ended without [DONE] after "
                          f"{len(stream.times)} tokens")

    def _take(self, choice: dict, now: float, request: events.Request, stream: Stream) -> None:
        """One chunk's tokens: each its id and a share of the time since the previous chunk."""
        text = choice.get("text") or ""
        ids = choice.get("token_ids")
        if ids is None:
            ids = [-1] if (text or choice.get("finish_reason") is None) else []
        if not ids:
            stream.text += text
            return
        if len(ids) > 1:
            stream.multi_token_chunks += 1
        previous = stream.times[-1] if stream.times else now
        for i, token in enumerate(ids):
            t = now if not stream.times else previous + (now - previous) * (i + 1) / len(ids)
            index = len(stream.times)
            stream.times.append(t)
            stream.ids.append(int(token))
            self.emit(events.Token(self.endpoint.name, request.request_id, index, int(token),
                                   text if i == 0 else "", t))
        stream.text += text


def load(spec, emit) -> RemoteRunner:
    """The worker's load step for a remote variant: connect and describe; raises ServerError."""
    target = spec.preset.endpoint(spec.variant)
    emit(events.Status(spec.variant, "loading", f"connecting to {target.base_url}"))
    return RemoteRunner(target, spec.preset, emit)
