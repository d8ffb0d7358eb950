"""A public page under attack: the real app (`python app.py --public`, conftest's `public_app`) on a free
local port, driven with gradio_client and plain HTTP, a bounded number of requests, to 127.0.0.1 only.

Each case asserts the refusal (its status or its message) and that a good run works afterwards; the
server's log must hold no traceback for any of them.
"""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest
from gradio_client import Client

from ui.compare import RUN

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


def test_one_job_per_visitor_then_a_good_run_works(public_url, visitor):
    first = visitor.submit(LONG_PROMPT, "tiny", ["baseline", "sdpa"], 256, "fair", 3, api_name="/compare")
    deadline = time.monotonic() + 60
    while not any("Running" in (u[MESSAGE] or "") or "generating" in (u[MESSAGE] or "") for u in first.outputs()):
        assert time.monotonic() < deadline and not first.done(), "the first run never started"
        time.sleep(0.2)
    second = Client(public_url, verbose=False)              # another tab, the same address
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


def test_nothing_reached_the_log_as_a_traceback(public_url, visitor, log):
    run(visitor)                                            # the app still serves after everything above
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]
