"""A served variant's worker against a plain OpenAI-compatible server that sends no token ids and
puts several tokens in some chunks (as llama.cpp's server, TGI and SGLang do): a small real HTTP
server on loopback, streaming server-sent events with pauses between chunks."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from engine import events, metrics, presets, remote
from engine.worker import served, served_stream

# 16 tokens in 12 chunks: chunks 3, 5, 8 and 10 carry two tokens each
CHUNKS = ["a", "b", "c", "dd", "e", "ff", "g", "h", "ii", "j", "kk", "l"]
GAP_S = 0.02


class PlainServer(BaseHTTPRequestHandler):
    """/v1/models and a streamed /v1/completions without token ids; usage counts the tokens."""
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _send(self, status: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/v1/models":
            self._send(200, json.dumps({"data": [{"id": "plain", "owned_by": "someone"}]}).encode())
        else:
            self._send(404, b"{}")

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if "return_token_ids" in body:               # a plain server refuses vLLM's fields
            self._send(400, b'{"error": "unknown field return_token_ids"}')
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for text in CHUNKS:
            time.sleep(GAP_S)
            self.wfile.write(b"data: " + json.dumps({"choices": [{"index": 0, "text": text}]}).encode() + b"\n\n")
            self.wfile.flush()
        tokens = sum(len(text) for text in CHUNKS)
        self.wfile.write(b"data: " + json.dumps({"choices": [{"index": 0, "text": "", "finish_reason": "length"}],
                                                 "usage": {"completion_tokens": tokens}}).encode() + b"\n\n")
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
        self.close_connection = True


@pytest.fixture(scope="module")
def plain_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), PlainServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def runner_for(url: str, seen: list) -> served.ServedRunner:
    """A served runner as a worker makes it, its events stamped with the time they were emitted."""
    preset = presets.load("tiny")
    return served.ServedRunner(remote.Endpoint("plain", url), preset,
                               lambda event: seen.append((time.perf_counter(), event)), "remote:test")


def test_tokens_the_server_counted_beyond_its_chunks_are_shared_out_and_tpot_is_over_its_count(plain_server):
    seen: list = []
    finished = runner_for(plain_server, seen).generate(events.Request(1, "hello", 16, ignore_eos=True),
                                                       threading.Event())
    chunks = [event.t for _, event in seen if isinstance(event, events.Token)]
    assert len(chunks) == 12                                     # one Token event per chunk, as streamed
    assert len(finished.token_times) == 16 and finished.token_ids == (served_stream.NO_TOKEN_ID,) * 16
    times = metrics.relative_times(finished.t_start, finished.token_times)
    assert finished.token_times[0] == chunks[0] and finished.token_times[-1] == chunks[-1]
    # TPOT over the server's 16 tokens, not the 12 chunks (which read 15/11 = 1.36x high)
    assert metrics.tpot_s(times) == pytest.approx((chunks[-1] - chunks[0]) / 15)
    assert list(finished.token_times) == sorted(finished.token_times)
    server = finished.server
    assert server["completion_tokens"] == 16 and server["multi_token_chunks"] == 4
    assert "counted 16 tokens in 12 chunks without token ids" in server["token_count_note"]
    assert finished.text == "".join(CHUNKS)


def test_the_share_out_gives_each_later_chunk_its_part_of_the_extra_tokens():
    stream = served_stream.Stream(times=[0.0, 1.0, 2.0, 3.0], ids=[-1] * 4, usage_tokens=7)
    counted = served_stream.by_server_count(stream)
    # 6 tokens after the first over 3 chunks: two each, each pair splitting its chunk's gap
    assert counted.times == pytest.approx((0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0))
    assert counted.multi_token_chunks == 3 and counted.note
    batch = served_stream.Stream(times=[0.0, 1.0, 2.0], ids=[-1] * 3, usage_tokens=6)     # 2 sequences of 3
    assert served_stream.by_server_count(batch, batch_size=2).times == (0.0, 1.0, 2.0)
    exact = served_stream.Stream(times=[0.0, 1.0], ids=[5, 6], usage_tokens=3, multi_token_chunks=0)
    kept = served_stream.by_server_count(exact)               # ids the server sent are exact: the count is only named
    assert kept.times == (0.0, 1.0) and "timings use the stream's (the server sent the ids)" in kept.note
    one = served_stream.by_server_count(served_stream.Stream(times=[0.0], ids=[-1], usage_tokens=4))
    assert one.times == (0.0,) and "too few chunks" in one.note


def test_a_request_that_is_not_live_sends_nothing_until_its_stream_has_ended(plain_server):
    for live in (False, True):
        seen: list = []
        finished = runner_for(plain_server, seen).generate(
            events.Request(1, "hello", 16, ignore_eos=True, live=live), threading.Event())
        sent = [t for t, event in seen if isinstance(event, (events.Started, events.Token))]
        assert len(sent) == 13                                        # Started and one Token per chunk
        if live:
            assert sent[0] < finished.token_times[-1]                 # streamed while it ran
        else:
            assert min(sent) > finished.token_times[-1]               # all of it after the last chunk


SERVE_ALONE = """
import sys, threading
from engine import events, presets, remote
from engine.events import WorkerSpec
from engine.worker.serve import serve
endpoint = remote.Endpoint("plain", sys.argv[1])
spec = WorkerSpec(presets.load("tiny"), "plain", "remote:" + endpoint.host, endpoint=endpoint)
inbox = [events.Request(1, "hello", 16, ignore_eos=True, live=False), events.Probe(2, "overhead")]
seen = []
serve(spec, lambda: inbox.pop(0) if inbox else None, seen.append, threading.Event())
print(repr([type(e).__name__ for e in seen]))
print(repr(sorted(n for n in sys.modules if n == "torch" or n == "transformers.modeling_utils")))
"""


def test_a_served_variants_worker_loads_and_answers_without_importing_torch(plain_server):
    """The serving loop of a served variant, whole (load, a request, a probe it must refuse), in a fresh
    interpreter: torch is never imported, so a worker started for a server needs none of it."""
    import subprocess
    import sys
    from pathlib import Path
    done = subprocess.run([sys.executable, "-c", SERVE_ALONE, plain_server], capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    kinds, loaded = (eval(line) for line in done.stdout.strip().splitlines()[-2:])
    assert kinds[:2] == ["Status", "Loaded"] and "Finished" in kinds and kinds[-1] == "Failed", kinds
    assert loaded == [], loaded
