"""Served engines as variants: endpoints from presets and flags, the server's metrics read, fair mode
on several devices, and a real vLLM server (its CPU build) serving the `small` model folder beside
the local baseline on the same weights."""
from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from types import SimpleNamespace

import psutil
import pytest
from served import vllm_server
from test_browser import browser, set_max_tokens, wait_until_all_final  # noqa: F401 - fixture

from engine import events, metrics, presets, remote
from engine.errors import InputError, PresetError
from engine.pool import Engine
from engine.schedule import Execution
from engine.spec import RunSpec, validate
from engine.worker import served, served_stream

PROMPT = "Why is decoding bound by memory bandwidth?"

METRICS_TEXT = """\
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.1",model_name="small"} 1.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="small"} %s
vllm:time_to_first_token_seconds_count{engine="0",model_name="small"} %s
vllm:time_to_first_token_seconds_sum{engine="0",model_name="other"} 99.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="other"} 9.0
vllm:request_time_per_output_token_seconds_sum{engine="0",model_name="small"} %s
vllm:request_time_per_output_token_seconds_count{engine="0",model_name="small"} %s
vllm:num_requests_running{engine="0",model_name="small"} 0.0
"""


def test_the_servers_own_figures_are_the_difference_of_its_histograms_over_one_request():
    before = served_stream.read_metrics(METRICS_TEXT % (1.5, 3, 0.30, 3), "small")
    after = served_stream.read_metrics(METRICS_TEXT % (1.62, 4, 0.35, 4), "small")
    assert before["vllm:time_to_first_token_seconds_count"] == 3.0          # the other model's series left out
    figures = served_stream.server_figures(before, after)
    assert figures["ttft_s"] == pytest.approx(0.12) and figures["tpot_s"] == pytest.approx(0.05)
    assert "queue_s" not in figures                                       # not exposed: not made up
    assert served_stream.server_figures(None, after) == {}


def test_endpoints_come_from_a_flag_or_a_preset_entry_and_bad_ones_say_what_to_fix(monkeypatch):
    flag = remote.from_flag("http://gpu-box:8000/v1,model=meta-llama/Llama-3.1-8B,name=vllm-tp2,api_key_env=KEY")
    assert flag == remote.Endpoint("vllm-tp2", "http://gpu-box:8000/v1", "meta-llama/Llama-3.1-8B", "KEY")
    assert flag.host == "gpu-box:8000" and flag.server_root == "http://gpu-box:8000"
    assert remote.from_flag("http://127.0.0.1:8011/v1").name == "remote-127-0-0-1-8011"
    monkeypatch.setenv("SBS_TEST_KEY", "secret")
    assert remote.from_flag("http://h/v1,api_key_env=SBS_TEST_KEY").headers() == {"Authorization": "Bearer secret"}
    for text, message in (("ftp://h/v1", "must be an http:// or https:// URL"),
                          ("http://h/v1,port=3", "is not model=..., name=... or api_key_env=..."),
                          ("http://h/v1,name=sdpa", "not a local variant's name")):
        with pytest.raises(ValueError, match=message):
            remote.from_flag(text)
    preset = presets.parse({"name": "p", "title": "P", "source": "random", "tokenizer": "bytes",
                            "config": {"model_type": "llama"}, "variants": ["baseline", "vllm"],
                            "remote": [{"name": "vllm", "base_url": "http://h:8000/v1/", "model": "m"}]}, "p.yaml")
    assert preset.remote == (remote.Endpoint("vllm", "http://h:8000/v1", "m"),)
    assert preset.variants == ("baseline", "vllm")
    bad = {"name": "p", "title": "P", "source": "random", "config": {"model_type": "llama"}}
    for entries, message in (([{"name": "x"}], "needs 'base_url'"), (["http://h"], "must be a mapping"),
                             ([{"name": "x", "base_url": "http://h", "key": "k"}], "unknown field 'key'")):
        with pytest.raises(PresetError, match=message):
            presets.parse({**bad, "remote": entries}, "p.yaml")


def test_a_run_may_name_the_presets_endpoints_and_nothing_else():
    small = presets.load("small")
    served = dataclasses.replace(small, remote=(remote.Endpoint("vllm", "http://h:8000/v1"),))
    assert validate(RunSpec(PROMPT, ["baseline", "vllm"], 4), served) > 0
    with pytest.raises(InputError, match="unknown variant 'vllm'; available: baseline, .*"):
        validate(RunSpec(PROMPT, ["baseline", "vllm"], 4), small)


def test_fair_mode_sends_variants_on_different_devices_together_and_one_at_a_time_on_each():
    far, other, near = (remote.Endpoint(n, f"http://{host}/v1") for n, host in
                        (("far", "gpu-box:8000"), ("other", "10.0.0.7:8000"), ("near", "127.0.0.1:8011")))
    specs = {"baseline": SimpleNamespace(device="cpu", endpoint=None, shares_machine=True),
             "sdpa": SimpleNamespace(device="cpu", endpoint=None, shares_machine=True)}
    for served in (far, other, near):
        specs[served.name] = SimpleNamespace(device=f"remote:{served.host}", endpoint=served,
                                             shares_machine=remote.on_this_machine(served))
    workers = SimpleNamespace(get=lambda name: SimpleNamespace(spec=specs[name]))
    execution = Execution(workers, None, None, threading.Event(), None, None)
    assert execution._rounds(["baseline", "sdpa", "far", "other"]) == [["baseline", "far", "other"], ["sdpa"]]
    # a server on this machine shares its cores with the local workers: it waits its turn with them
    assert execution._rounds(["baseline", "near", "far"]) == [["baseline", "far"], ["near"]]
    assert remote.on_this_machine(remote.Endpoint("x", "http://localhost:8000/v1"))
    assert remote.on_this_machine(remote.Endpoint("x", "http://[::1]:8000/v1"))
    assert not remote.on_this_machine(far)
    for name, device in (("a", "cuda:0"), ("b", "cuda:0"), ("c", "cuda:1")):    # several GPUs: one at a time on each
        specs[name] = SimpleNamespace(device=device, endpoint=None, shares_machine=True)
    assert execution._rounds(["a", "b", "c", "far"]) == [["a", "c", "far"], ["b"]]


@pytest.fixture(scope="module")
def served_small():
    """vLLM serving the `small` preset's own model folder (random weights, made locally) as "small", started
    as the dashboard starts a vLLM engine (tests/served.py): (the preset with that endpoint, the server's
    process, the URL of a dashboard started with it as --remote). The dashboard starts while vLLM does: it
    asks the server nothing until a run."""
    from app_server import serve
    preset = presets.load("small")

    def page(url: str):
        return serve("--private", "--preset", "small", "--remote", f"{url},model=small,name=vllm",
                     name="test_remote_page")

    with vllm_server(preset, "small", log_name="test_remote_vllm", meanwhile=page) as \
            (url, process, address):
        yield dataclasses.replace(preset, remote=(remote.Endpoint("vllm", url, "small"),)), process, address


def test_a_served_model_streams_beside_the_local_baseline_timed_the_same_way(served_small):
    preset, _, _ = served_small
    with Engine(preset, request_timeout_s=120) as engine:
        seen = list(engine.run(RunSpec(PROMPT, ["baseline", "vllm"], 16, repeats=2, ignore_eos=True)))
    tokens = [e for e in seen if isinstance(e, events.Token) and e.variant == "vllm"]
    finished = [e for e in seen if isinstance(e, events.Finished) and e.variant == "vllm"]
    assert len(tokens) >= 16 * 2 and tokens[0].t < finished[0].token_times[-1]      # streamed, then finished
    report = seen[-1].report
    base, served = report["results"]
    assert (base["status"], served["status"]) == ("ok", "ok"), (base["reason"], served["reason"])
    assert served["label"].startswith("served by vLLM 0.") and served["label"].endswith(preset.remote[0].host)
    server = served["server"]
    assert server["completion_tokens_repeats"] == [16, 16] and served["output_tokens"] == 16
    assert served["token_ids"] == base["token_ids"]           # the same weights and prompt ids: the same greedy answer
    times = served["token_times_s"]                                            # the repeat shown: the last
    assert served["shown_repeat"] == 1 and served["ttft_repeats_s"][1] == times[0] < times[-1]   # TTFT < E2E
    assert served["ttft_s"] == pytest.approx(metrics.median(served["ttft_repeats_s"]))
    assert served["ttft_s"] < served["e2e_s"]
    assert served["tpot_repeats_s"][1] == pytest.approx((times[-1] - times[0]) / 15)
    assert served["tpot_s"] == pytest.approx(metrics.median(served["tpot_repeats_s"]))
    # the server's own figures beside the client's: the client's include the network and the queue
    assert 0 < server["ttft_s"] <= served["ttft_s"] + 0.005 and 0 < server["tpot_s"]
    assert server["queue_s"] is not None and server["memory"] == "not reported by the server"
    assert served["peak_memory_bytes"] is None and served["mbu"] is None and served["weights_bytes"] is None
    # a busy server may send several tokens in one chunk: however many, the stream's count is the server's
    assert server["multi_token_chunks"] >= 0 and "token_count_note" not in server
    # the same weights, the same prompt tokens, greedy: the same tokens as the local baseline
    assert served["first_diff_token"] is None and served["token_ids"] == base["token_ids"]
    assert served["prompt_tokens"] == base["prompt_tokens"]


def test_vllm_runs_as_the_dashboard_starts_it_on_one_unbound_thread_and_idles_without_spinning(served_small):
    """The command line and environment of engine/launch.py (what `engines: [{kind: vllm}]` starts): the
    local variants' own folder on loopback, one OpenMP thread unbound, and no core spun while idle."""
    from engine.source import cache_dir
    _, process, _ = served_small
    server = psutil.Process(process.pid)
    command, environ = server.cmdline(), server.environ()
    assert command[command.index("--model") + 1].startswith(str(cache_dir())) and "--enforce-eager" in command
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert environ["OMP_NUM_THREADS"] == "1" and environ["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"
    tree = [server, *server.children(recursive=True)]
    before, started = sum(sum(p.cpu_times()[:2]) for p in tree), time.monotonic()
    time.sleep(1.0)
    assert (sum(sum(p.cpu_times()[:2]) for p in tree) - before) / (time.monotonic() - started) < 0.05


def test_an_unreachable_server_and_a_wrong_model_fail_their_column_in_one_line_while_the_baseline_runs(served_small):
    preset, _, _ = served_small
    from app_server import free_port
    url = preset.remote[0].base_url
    broken = dataclasses.replace(preset, remote=(remote.Endpoint("gone", f"http://127.0.0.1:{free_port()}/v1"),
                                                 remote.Endpoint("wrong", url, "no-such-model")))
    with Engine(broken, request_timeout_s=120) as engine:
        report = list(engine.run(RunSpec(PROMPT, ["baseline", "gone", "wrong"], 4)))[-1].report
    rows = {r["variant"]: r for r in report["results"]}
    assert rows["baseline"]["status"] == "ok"
    assert rows["gone"]["status"] == "failed" and "cannot reach http://127.0.0.1:" in rows["gone"]["reason"]
    assert rows["wrong"]["status"] == "failed"
    assert "does not serve model 'no-such-model'; it serves: small" in rows["wrong"]["reason"]
    assert all("\n" not in rows[n]["reason"] for n in ("gone", "wrong"))


@pytest.mark.browser
def test_the_page_shows_a_served_column_beside_the_local_one(served_small, browser):  # noqa: F811
    """The dashboard started with --remote: the endpoint is one more column, selected, labelled with
    what serves it; its answer streams and the summary has its row."""
    from app_server import ARTIFACTS
    _, _, address = served_small
    page = browser.new_page(viewport={"width": 1366, "height": 768})
    page.goto(address)
    page.wait_for_selector("#sbs-card-vllm", timeout=30_000)
    # the variants' boxes may be drawn after the cards: read them once the served one is there
    page.wait_for_selector('#sbs-variants input[name="vllm"]', state="attached", timeout=30_000)
    boxes = {b.get_attribute("name"): b.is_checked() for b in page.locator("#sbs-variants input").all()}
    assert boxes["vllm"] and boxes["baseline"], boxes
    for name in [n for n, checked in boxes.items() if checked and n not in ("baseline", "vllm")]:
        page.locator(f'#sbs-variants input[name="{name}"]').click()
    set_max_tokens(page, 12)
    page.click("#sbs-run")
    assert wait_until_all_final(page, 2, 240) == ["done"] * 2
    card = page.inner_text("#sbs-card-vllm")
    assert "served by vLLM 0." in card and "127.0.0.1" in card, card
    assert page.input_value("#sbs-answer-vllm textarea") != ""
    page.wait_for_selector("#sbs-message .sbs-verdict", timeout=10_000)
    assert "vllm" in page.locator("#sbs-summary").inner_text()
    page.screenshot(path=str(ARTIFACTS / "served-column.png"), full_page=True)
    page.close()


def test_a_served_models_quality_comes_from_its_prompt_log_probabilities(served_small):
    """vLLM scored on the local baseline's answer from its top-20 prompt log-probabilities, against the
    baseline's own teacher-forced pass on the same weights: the same top tokens and perplexity, and a
    bucketed KLD near 0, named as the lower bound it is."""
    import threading

    from engine import quality
    from engine.events import Probe, Request, WorkerSpec
    from engine.worker import quality as local_quality
    from engine.worker import served_quality
    from engine.worker.runner import Runner
    preset, _, _ = served_small
    runner = Runner(WorkerSpec(preset, "baseline", "cpu", threads=1), lambda event: None)
    request = Request(1, PROMPT, 12, True)
    answer = runner.generate(request, threading.Event()).token_ids
    reference = local_quality.score(runner, Probe(2, "quality", request=request, answer=answer), None)
    endpoint = preset.remote[0]
    server = served.load(WorkerSpec(preset, "vllm", f"remote:{endpoint.host}", endpoint=endpoint), lambda event: None)
    values = served_quality.score(server, Probe(3, "quality", request=request, answer=answer,
                                                reference=reference["logprobs"]))
    entry = quality.summarize(values, reference, "baseline", values["approximation"])
    assert entry["positions"] == 12 and entry["top_token_agreement"] == 1.0
    assert entry["perplexity"] == pytest.approx(entry["reference_perplexity"], rel=1e-3)
    assert 0 <= entry["kld_mean"] < 1e-3 and "lower bound" in quality.line(entry)


def test_a_server_killed_mid_answer_turns_into_a_failed_column_while_the_local_variant_finishes(served_small):
    preset, process, _ = served_small                # the last test of the module: it ends the server
    with Engine(preset, request_timeout_s=120) as engine:
        run = engine.start(RunSpec(PROMPT, ["vllm", "baseline"], 120, repeats=1, warmup_requests=0, ignore_eos=True))
        seen = []
        for event in run:
            seen.append(event)
            if isinstance(event, events.Token) and event.variant == "vllm" and event.index == 5:
                os.killpg(process.pid, signal.SIGKILL)       # the server this module started, by its id
    rows = {r["variant"]: r for r in seen[-1].report["results"]}
    assert rows["vllm"]["status"] == "failed", rows["vllm"]
    assert "broke after" in rows["vllm"]["reason"] or "ended without [DONE]" in rows["vllm"]["reason"]
    assert rows["baseline"]["status"] == "ok" and rows["baseline"]["output_tokens"] == 120


def test_a_chunk_of_several_tokens_counts_as_that_many_each_with_its_share_of_the_gap():
    runner = object.__new__(served.ServedRunner)          # the chunk arithmetic alone, no server
    seen = []
    runner.endpoint = remote.Endpoint("srv", "http://h/v1")
    request = events.Request(1, PROMPT, 8)
    stream = served_stream.Stream()
    runner._take({"text": "a", "token_ids": [5]}, 10.0, request, stream, seen.append)
    runner._take({"text": "bcd", "token_ids": [6, 7, 8]}, 10.3, request, stream, seen.append)    # three tokens at once
    runner._take({"text": "", "token_ids": [9]}, 10.4, request, stream, seen.append)             # a token with no text yet
    assert stream.times == pytest.approx([10.0, 10.1, 10.2, 10.3, 10.4]) and stream.ids == [5, 6, 7, 8, 9]
    assert stream.multi_token_chunks == 1 and stream.text == "abcd"
    assert [e.index for e in seen] == [0, 1, 2, 3, 4] and [e.text for e in seen] == ["a", "bcd", "", "", ""]
    plain = served_stream.Stream()                                # a server that sends no token ids
    runner._take({"text": "x"}, 1.0, request, plain, seen.append)
    runner._take({"text": "", "finish_reason": "length"}, 1.1, request, plain, seen.append)       # the end: no token
    assert plain.ids == [-1] and plain.times == [1.0]


def test_the_bucketed_kld_is_a_lower_bound_of_the_full_one():
    import numpy as np

    from engine.worker.served_quality import bucket_kld
    rng = np.random.default_rng(1)
    for _ in range(20):
        p, q = (np.log(d) for d in rng.dirichlet(np.full(300, 0.3), size=2))
        full = float(np.sum(np.exp(p) * (p - q)))
        top = {int(i): float(q[i]) for i in np.argsort(q)[-20:]}
        assert 0 <= bucket_kld(p, top) <= full + 1e-9
        assert bucket_kld(p, {int(i): float(q[i]) for i in range(300)}) == pytest.approx(full, rel=1e-9)
