"""Variants in another Python environment (engine/runtimes.py): the legacy-bt runtime (transformers 4.48,
optimum 1.27), made by `.ci/run` with `python -m engine runtime make legacy-bt`, runs `bettertransformer`
beside the app's own baseline and sdpa, on the same prompt token ids, with the same timing definitions;
its worker dies alone, and with the app."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from engine import events, presets, runtimes
from engine.hardware import Device
from engine.pool import Engine
from engine.spec import RunSpec
from engine.variants import CATALOG

PROMPT = "What does BetterTransformer change?"
CPU = Device("cpu", 0, "cpu", 0, 0, None, None, None)


def require_runtime() -> runtimes.Runtime:
    found = runtimes.Runtime("legacy-bt")
    if found.missing():
        if os.environ.get("CI") == "true":
            pytest.fail(found.missing())
        pytest.skip(found.missing())
    return found


def test_a_runtime_variant_says_what_it_needs_where_it_cannot_run(monkeypatch, tmp_path):
    opt = presets.load("opt-tiny")
    monkeypatch.setenv(runtimes.RUNTIMES_ENV, str(tmp_path))          # no runtime made there
    reason = CATALOG["bettertransformer"].unavailable_reason(opt, CPU)
    assert reason.startswith("the legacy-bt runtime is not made: python -m engine runtime make legacy-bt")
    with pytest.raises(Exception, match="unknown runtime 'nope'; known: legacy-bt"):
        runtimes.get("nope")


def test_with_its_runtime_made_a_variant_is_greyed_only_where_the_model_or_the_device_cannot_run_it():
    require_runtime()
    opt, llama = presets.load("opt-tiny"), presets.load("tiny")
    assert CATALOG["bettertransformer"].unavailable_reason(opt, CPU) is None
    assert "converts opt, bloom, gpt_neo, gptj, codegen decoders; this preset's model is llama" in \
        CATALOG["bettertransformer"].unavailable_reason(llama, CPU)
    assert "needs an NVIDIA GPU (CUDA)" in CATALOG["bnb-4bit-bt"].unavailable_reason(opt, CPU)


@pytest.fixture(scope="module")
def legacy_run():
    """One run of baseline and sdpa (this environment) beside bettertransformer (legacy-bt) on the tiny OPT."""
    require_runtime()
    with Engine(presets.load("opt-tiny"), request_timeout_s=300, threads=1) as engine:
        seen = list(engine.run(RunSpec(PROMPT, ("baseline", "sdpa", "bettertransformer"), 16, repeats=2,
                                       ignore_eos=True, warmup_requests=1, live=False)))
        worker = psutil.Process(engine.pids()["bettertransformer"])
        yield seen, worker.cmdline(), worker.environ()


def test_bettertransformer_runs_in_its_runtime_beside_the_apps_variants_on_the_same_tokens(legacy_run):
    seen, command, environ = legacy_run
    rows = {row["variant"]: row for row in seen[-1].report["results"]}
    assert [row["status"] for row in rows.values()] == ["ok"] * 3, [row["reason"] for row in rows.values()]
    legacy = rows["bettertransformer"]
    # its own interpreter, with this project's folder and nothing of the app's environment on its path
    assert command[0] == str(runtimes.Runtime("legacy-bt").python) and command[1:3] == ["-m", "engine.worker.foreign"]
    assert environ["PYTHONPATH"] == str(runtimes.ROOT)
    assert legacy["label"].startswith("Eager + BetterTransformer (legacy-bt: transformers 4.48.3, optimum 1.27.0, torch ")
    # the same prompt token ids, the same work, timed the same way
    assert legacy["prompt_tokens"] == rows["baseline"]["prompt_tokens"] and legacy["output_tokens"] == 16
    assert len(legacy["tpot_repeats_s"]) == 2 and legacy["ttft_s"] < legacy["e2e_s"]
    # greedy answers compared token by token: BetterTransformer's fused attention changes none on this model
    assert legacy["token_ids"] == rows["baseline"]["token_ids"] == rows["sdpa"]["token_ids"]
    assert legacy["first_diff_token"] is None and legacy["identical_token_share"] == 1.0
    # the verdict says the comparison crosses environments, and the rows say which
    assert (legacy["runtime"], rows["baseline"]["runtime"]) == ("legacy-bt", None)
    assert ("Not like with like: bettertransformer runs in the legacy-bt runtime, baseline in the app's own "
            "environment") in seen[-1].report["comparison"]["text"]
    streamed = [e for e in seen if isinstance(e, events.Finished) and e.variant == "bettertransformer"]
    assert len(streamed) == 2 and all(len(e.token_times) == 16 for e in streamed)


def test_a_legacy_worker_killed_mid_run_fails_alone():
    require_runtime()
    with Engine(presets.load("opt-tiny"), request_timeout_s=120, threads=1) as engine:
        run = engine.start(RunSpec(PROMPT, ("bettertransformer", "baseline"), 200, repeats=1, warmup_requests=0,
                                   ignore_eos=True))
        seen, killed = [], False
        for event in run:
            seen.append(event)
            if not killed and isinstance(event, events.Token) and event.variant == "bettertransformer" and event.index >= 3:
                os.kill(engine.pids()["bettertransformer"], signal.SIGKILL)     # our own worker, by its id
                killed = True
    rows = {row["variant"]: row for row in seen[-1].report["results"]}
    assert killed and rows["bettertransformer"]["status"] == "failed"
    assert "the worker process died" in rows["bettertransformer"]["reason"]
    assert rows["baseline"]["status"] == "ok" and rows["baseline"]["output_tokens"] == 200


def test_a_runtime_worker_ends_with_the_process_that_started_it(tmp_path):
    """The orchestrator killed outright: its worker in the other environment reads its parent pipe closed."""
    require_runtime()
    script = tmp_path / "orchestrator.py"
    script.write_text(
        "import sys, time\n"
        f"sys.path.insert(0, {str(runtimes.ROOT)!r})\n"
        "from engine import presets, runtimes\n"
        "from engine.events import WorkerSpec\n"
        "conn, flag, process = runtimes.start('legacy-bt', WorkerSpec(presets.load('opt-tiny'), 'bettertransformer', "
        "'cpu', 1), 'engine.worker.serve:main')\n"
        "print(process.pid, flush=True)\n"
        "time.sleep(600)\n")
    orchestrator = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        worker = psutil.Process(int(orchestrator.stdout.readline()))
        assert worker.is_running()
    finally:
        orchestrator.kill()                        # by its handle
        orchestrator.wait(10)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and worker.is_running() and worker.status() != psutil.STATUS_ZOMBIE:
        time.sleep(0.05)
    assert not worker.is_running() or worker.status() == psutil.STATUS_ZOMBIE
