"""A public page under attack: the real app (`python app.py --public`, conftest's `public_app`) on a free
local port, driven with gradio_client and plain HTTP, a bounded number of requests, to 127.0.0.1 only.

Each case asserts the refusal (its status or its message) and that a good run works afterwards; the
server's log must hold no traceback for any of them.
"""
from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import psutil
import pytest
from gradio_client import Client

from ui.compare import EXAMPLE, RUN

MESSAGE, REPORT = RUN.index("message"), RUN.index("report")
PROMPT = "Why is decoding bound by memory bandwidth?"
LONG_PROMPT = "Why does decoding wait on memory bandwidth? " * 40


@pytest.fixture(scope="module")
def public_url(public_app):
    """The shared public app (conftest.py): prompts up to 2,000 characters, a run deadline of 120 s, and
    a job whose updates nobody reads for 3 s stopped."""
    return public_app.url


@pytest.fixture(scope="module")
def log(public_app):
    return public_app.log


@pytest.fixture(scope="module")
def visitor(public_url):
    return Client(public_url, verbose=False)


def run(client, prompt=PROMPT, variants=("baseline", "sdpa"), tokens=8, repeats=3, preset="tiny"):
    return client.predict(prompt, preset, list(variants), tokens, "fair", repeats, api_name="/compare")


def test_the_banner_says_public_mode_and_its_limits(public_url):
    with urllib.request.urlopen(public_url + "/config", timeout=10) as response:
        config = response.read().decode()
    assert "Public mode" in config and "at most 8 runs waiting for the device" in config
    assert "prompts up to 2,000 characters" in config


@pytest.mark.parametrize("args, expected", [
    ((PROMPT, "tiny", ["baseline"], "5", "fair", 3), "max new tokens must be a whole number"),
    ((PROMPT, "tiny", ["baseline"], 3.7, "fair", 3), "got 3.7"),
    ((PROMPT, "tiny", ["baseline"], 8, "fair", 5), "repeats must be a whole number from 1 to 3, got 5"),
    ((PROMPT, "tiny", ["baseline"], 300, "fair", 3), "max new tokens is 300; this page allows 1 to 256"),
    ("x" * 2001, "the prompt has 2,001 characters; this page allows up to 2,000"),
    ((LONG_PROMPT, "tiny", ["no-kv-cache", "baseline"], 256, "fair", 3), "token positions; this page allows"),
])
def test_bad_input_is_refused_with_one_line_naming_what_to_change(visitor, args, expected):
    if isinstance(args, str):
        args = (args, "tiny", ["baseline"], 8, "fair", 3)
    result = visitor.predict(*args, api_name="/compare")
    assert expected in result[MESSAGE] and 'data-kind="error"' in result[MESSAGE], result[MESSAGE]
    assert result[REPORT] is None


def call(url: str, data: list) -> str:
    """A /compare call through the queue's own HTTP API (what any script can send; NaN included), its
    stream as text."""
    body = json.dumps({"data": data}).encode()                # json writes NaN as NaN, as JavaScript can't
    request = urllib.request.Request(url + "/gradio_api/call/compare", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        event = json.loads(response.read())["event_id"]
    with urllib.request.urlopen(f"{url}/gradio_api/call/compare/{event}", timeout=60) as response:
        return response.read().decode()


def test_a_not_a_number_sent_over_plain_http_gets_the_same_one_line_refusal(public_url):
    stream = call(public_url, [PROMPT, "tiny", ["baseline"], 8, "fair", float("nan")])
    assert "repeats must be a whole number from 1 to 3, got nan" in stream, stream[-2000:]


def test_a_preset_not_offered_and_a_full_experiment_grid_are_not_available(visitor):
    refused = run(visitor, preset="llama-3.1-8b-random")   # 16 GB of weights: not offered on this machine
    assert "preset &#x27;llama-3.1-8b-random&#x27; is not offered on this page; choose one of: " in refused[MESSAGE]
    assert refused[REPORT] is None
    result = visitor.predict("batch", "tiny", ["baseline"], False, api_name="/experiment")
    sweep = result[3]
    assert sweep["quick"] is True and [r["variant"] for r in sweep["results"]] == ["sdpa"] * 3   # its own, quick


def test_direct_http_cannot_skip_the_queue_and_uploads_are_refused(public_url):
    body = json.dumps({"data": [PROMPT, "tiny", ["baseline"], 4, "fair", 1]}).encode()
    request = urllib.request.Request(public_url + "/gradio_api/run/compare", data=body,
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code in (400, 401, 403, 404, 405)
    boundary = "sbsboundary"
    upload = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.bin\"\r\n"
              f"Content-Type: application/octet-stream\r\n\r\n").encode() + b"0" * 4096 + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(public_url + "/gradio_api/upload", data=upload,
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code in (400, 413)


def test_one_job_per_visitor_then_a_good_run_works(public_url):
    """Two tabs at one address, each naming another address in X-Forwarded-For (which uvicorn believed from
    127.0.0.1 until the deployment had to name its proxies): still one visitor."""
    forged = Client(public_url, verbose=False, headers={"X-Forwarded-For": "203.0.113.1"})
    first = forged.submit(LONG_PROMPT, "tiny", ["baseline", "sdpa"], 256, "fair", 3, api_name="/compare")
    deadline = time.monotonic() + 60
    while not any("Running" in (u[MESSAGE] or "") or "generating" in (u[MESSAGE] or "") for u in first.outputs()):
        assert time.monotonic() < deadline and not first.done(), "the first run never started"
        time.sleep(0.2)
    second = Client(public_url, verbose=False, headers={"X-Forwarded-For": "203.0.113.2"})
    refused = second.predict(PROMPT, "tiny", ["baseline"], 4, "fair", 1, api_name="/compare")
    assert "Not queued: you already have a run queued or running on this page" in refused[MESSAGE]
    assert all(r["status"] in ("ok", "cancelled") for r in first.result()[REPORT]["results"])
    good = second.predict(PROMPT, "tiny", ["baseline", "sdpa"], 8, "fair", 3, api_name="/compare")
    assert all(r["status"] == "ok" for r in good[REPORT]["results"])
    assert "Verdict" in good[MESSAGE] or "Done" in good[MESSAGE]


def join(url: str, data: list, session_hash: str) -> int:
    """Join the queue for /compare as the page does (POST queue/join; the last input, the session's state,
    is the server's), and never read the updates."""
    with urllib.request.urlopen(url + "/config", timeout=10) as response:
        fn_index = next(d["id"] for d in json.loads(response.read())["dependencies"] if d.get("api_name") == "compare")
    body = json.dumps({"data": [*data, None], "fn_index": fn_index, "session_hash": session_hash, "event_data": None,
                       "trigger_id": None}).encode()
    request = urllib.request.Request(url + "/gradio_api/queue/join", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status


def test_jobs_whose_updates_nobody_reads_give_the_device_up_and_a_visitor_runs_after(public_url, log):
    before = log.read_text().count("nobody read its updates")
    heavy = [LONG_PROMPT, "tiny", ["baseline", "sdpa"], 256, "fair", 3]
    assert [join(public_url, heavy, f"gone-{i}") for i in range(10)] == [200] * 10     # accepted by Gradio
    deadline = time.monotonic() + 60             # one of them ran (one job per address), unread for 3 s
    while log.read_text().count("nobody read its updates") == before:
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.3)
    stopped = log.read_text().splitlines()
    lines = [line for line in stopped if "nobody read its updates for 3 s" in line]
    assert len(lines) == before + 1 and "running (run " in lines[-1], lines   # the other nine never got in
    good = Client(public_url, verbose=False).predict(PROMPT, "tiny", ["baseline", "sdpa"], 8, "fair", 3,
                                                     api_name="/compare")
    assert all(r["status"] == "ok" for r in good[REPORT]["results"]), good[MESSAGE]


def host_port(url: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(url)
    return parts.hostname, parts.port


def config(url: str) -> dict:
    with urllib.request.urlopen(url + "/config", timeout=10) as response:
        return json.loads(response.read())


def fn_index(url: str, name: str) -> int:
    return next(d["id"] for d in config(url)["dependencies"] if d.get("api_name") == name)


class Visitor:
    """A visitor at an address of its own: the loopback network is 127.0.0.0/8, so a connection from
    127.0.0.N is a real, unforgeable other address. It joins /compare's queue as the page does and reads its
    updates in a thread (`text`: the stream so far), until `close`."""

    def __init__(self, url: str, address: str, data: list, name: str = "compare"):
        self.url, self.address, self.session = url, address, f"visitor-{address}-{time.monotonic_ns()}"
        self.text, self.closed = "", False
        status, body = post(url, "/gradio_api/queue/join", {"data": [*data, None], "fn_index": fn_index(url, name),
                            "session_hash": self.session, "event_data": None, "trigger_id": None}, address)
        assert status == 200, body
        self.connection = http.client.HTTPConnection(*host_port(url), timeout=120, source_address=(address, 0))
        self.connection.request("GET", f"/gradio_api/queue/data?session_hash={self.session}")
        self.response = self.connection.getresponse()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        try:
            while not self.closed and (line := self.response.readline()):
                self.text += line.decode(errors="replace")
        except (OSError, ValueError, AttributeError):        # closed under it (http.client drops its file)
            pass

    def wait_for(self, *texts: str, timeout_s: float = 60) -> str:
        """The first of `texts` that the stream holds, once it does."""
        deadline = time.monotonic() + timeout_s
        while not (found := [t for t in texts if t in self.text]):
            assert time.monotonic() < deadline, f"{self.address} never saw {texts}: {self.text[-1500:]}"
            time.sleep(0.1)
        return found[0]

    def close(self) -> None:
        """Go away without reading on (the app stops a job nobody reads: 3 s on this app)."""
        self.closed = True
        self.connection.close()


def post(url: str, path: str, body: dict, address: str = "127.0.0.1") -> tuple[int, str]:
    """POST `body` as JSON from `address`: (status, the answer's text)."""
    connection = http.client.HTTPConnection(*host_port(url), timeout=60, source_address=(address, 0))
    try:
        connection.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def test_the_queue_holds_the_documented_eight_runs_and_the_ninth_waiting_is_told_the_queue_is_full(public_url):
    heavy = [LONG_PROMPT, "tiny", ["baseline", "sdpa"], 256, "fair", 3]
    holder = Visitor(public_url, "127.0.0.2", heavy)
    waiting = []
    try:
        holder.wait_for("generating", "Running", "loading")
        for n in range(3, 11):                                  # eight more visitors, each at its own address
            waiting.append(Visitor(public_url, f"127.0.0.{n}", heavy))
            waiting[-1].wait_for("Waiting for the device")
        refused = Visitor(public_url, "127.0.0.11", heavy)       # no ninth place: the page's own message, at once
        waiting.append(refused)
        assert refused.wait_for("Not queued: the queue is full (8 runs waiting for the device)", timeout_s=10)
        assert "Queue is full" not in refused.text              # never Gradio's own
    finally:
        for visitor in [holder, *waiting]:
            visitor.close()


def test_a_visitors_replays_are_one_at_a_time_and_never_lock_the_queue(public_url):
    mine = Client(public_url, verbose=False)
    done = run(mine, tokens=4, repeats=1)
    assert all(r["status"] == "ok" for r in done[REPORT]["results"]), done[MESSAGE]
    replays = [mine.submit(api_name="/replay") for _ in range(16)]       # what filled Gradio's queue for 20 s
    other = run(Client(public_url, verbose=False), tokens=4, repeats=1)   # another tab runs meanwhile
    assert all(r["status"] == "ok" for r in other[REPORT]["results"]), other[MESSAGE]
    messages = [job.result()[0] for job in replays]
    refused = [m for m in messages if "Not played: a replay of yours is already playing" in m]
    assert len(refused) >= 12 and any("Replay of the fair-mode timings" in m for m in messages), messages


def test_direct_calls_of_the_pages_own_handlers_with_bad_values_get_one_line_not_a_traceback(public_url, log):
    before = log.read_text().count("Traceback")
    cases = [("example", [None], "example must be a whole number from 0 to 3, got None"),
             ("example", [{"x": 1}], "example must be a whole number from 0 to 3"),
             ("on_preset", [12], "preset must be text, got int"),
             ("prepare", ["bad", None], "variants must be a list of names"),
             ("on_experiment", ["nope", "tiny", True], "experiment must be one of attention"),
             ("on_experiment", ["attention", "tiny", "x"], "quick must be true or false"),
             ("on_quick", ["nope", True], "experiment must be one of attention"),
             ("on_preset_1", ["tiny", "nope"], "experiment must be one of attention"),
             ("prepare_1", ["nope", None], "experiment must be one of attention")]
    for name, data, expected in cases:
        status, body = post(public_url, "/gradio_api/run/predict",
                            {"data": data, "fn_index": fn_index(public_url, name), "session_hash": "direct"},
                            "127.0.0.40")
        assert status == 200 and expected in body, (name, status, body[:500])
    status, body = post(public_url, "/gradio_api/run/predict", {"data": [2], "fn_index": fn_index(public_url, "example"),
                                                                "session_hash": "direct"}, "127.0.0.40")
    assert "~256 tokens" not in body and "Summarise the notes above" in json.loads(body)["data"][EXAMPLE.index("prompt")]
    assert log.read_text().count("Traceback") == before


def test_a_visitors_calls_are_rate_limited_and_another_visitor_is_not_slowed(public_url):
    quick = fn_index(public_url, "on_quick")
    statuses = [post(public_url, "/gradio_api/run/predict", {"data": ["attention", True], "fn_index": quick,
                                                             "session_hash": "flood"}, "127.0.0.50")
                for _ in range(40)]
    codes = [status for status, _ in statuses]
    assert codes[:20] == [200] * 20 and 429 in codes[20:], codes             # 20 at once, then 5 a second
    assert "too many calls from your address: at most 20 at once and 5 a second" in statuses[codes.index(429)][1]
    assert post(public_url, "/gradio_api/run/predict", {"data": ["attention", True], "fn_index": quick,
                                                        "session_hash": "calm"}, "127.0.0.51")[0] == 200


def app_process(url: str) -> psutil.Process:
    """The app serving `url`: our own child (conftest's public_app), found by its --port."""
    port = str(host_port(url)[1])
    return next(p for p in psutil.Process().children() if port in p.cmdline())


def send_body(url: str, head: bytes, chunks, address: str) -> str:
    """Send a request's head and then its body chunk by chunk (as long as the server takes them); the
    status line and body of the answer."""
    with socket.create_connection(host_port(url), timeout=30, source_address=(address, 0)) as sock:
        sock.sendall(head)
        try:
            for chunk in chunks:
                sock.sendall(chunk)
        except OSError:                          # refused and closed before the body was all sent
            pass
        answer = b""
        try:
            while data := sock.recv(65536):
                answer += data
        except OSError:
            pass
    return answer.decode(errors="replace")


def test_a_huge_body_is_refused_before_it_is_read_and_the_apps_memory_stays_where_it_was(public_url):
    app = app_process(public_url)
    before = app.memory_info().rss
    size = 100 << 20                                       # a 100 MB prompt, as JSON
    prompt = json.dumps({"data": ["x" * (size - 200), "tiny", ["baseline"], 8, "fair", 3, None],
                         "fn_index": fn_index(public_url, "compare"), "session_hash": "huge"}).encode()
    head = (f"POST /gradio_api/queue/join HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(prompt)}\r\n\r\n").encode()
    answer = send_body(public_url, head, (prompt[i:i + (1 << 20)] for i in range(0, len(prompt), 1 << 20)),
                       "127.0.0.60")
    assert answer.startswith("HTTP/1.1 413") and "this page takes up to 1.0 MiB: send a shorter prompt" in answer
    chunked = (b"POST /gradio_api/queue/join HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n")        # no length: counted as it streams
    answer = send_body(public_url, chunked, [b"100000\r\n" + b"a" * (1 << 20) + b"\r\n"] * 8 + [b"0\r\n\r\n"],
                       "127.0.0.61")
    assert answer.startswith("HTTP/1.1 413") and "is over 1." in answer, answer[:400]
    after = app.memory_info().rss
    print(f"app RSS before {before / 2**20:.1f} MiB, after the 100 MB and the streamed 8 MB bodies "
          f"{after / 2**20:.1f} MiB")
    assert after - before < 20 << 20, (before, after)


def test_the_state_of_the_last_sessions_is_kept_and_older_ones_are_forgotten(public_url):
    """This app keeps 40 sessions' state (--max-sessions; 1,000 by default): 150 visitors later, the
    first one's last run is gone from memory, and the app's memory levels off."""
    first = Client(public_url, verbose=False)
    done = run(first, tokens=4, repeats=1)
    assert all(r["status"] == "ok" for r in done[REPORT]["results"]), done[MESSAGE]
    prepare = fn_index(public_url, "prepare")
    app, sizes = app_process(public_url), []
    for n in range(150):                      # each a new session with state (Run's prepare), from its own address
        status, _ = post(public_url, "/gradio_api/run/predict", {"data": [["baseline"], None], "fn_index": prepare,
                         "session_hash": f"many-{n}"}, f"127.0.{3 + n // 250}.{1 + n % 250}")
        assert status == 200
        if n % 50 == 49:                      # from the 41st on, each new session's state replaces the oldest's
            sizes.append(app.memory_info().rss)
    print("app RSS after 50, 100, 150 sessions (MiB):", [round(size / 2**20, 1) for size in sizes])
    assert sizes[-1] - sizes[0] < 10 << 20, sizes
    replay = first.predict(api_name="/replay")
    assert "Nothing to replay yet: run first." in replay[0], replay[0]      # its state was forgotten


def test_nothing_reached_the_log_as_a_traceback(public_url, visitor, log):
    run(visitor)                                            # the app still serves after everything above
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]
