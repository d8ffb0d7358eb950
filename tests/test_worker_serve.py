"""The worker process (engine/worker/serve.py): its pipe, its core, its outbox, its parent's death."""
import contextlib
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from engine import events, presets
from engine.worker.serve import LOAD_DELAY_ENV
from app_server import still_running


def test_a_worker_given_a_core_serves_from_it_once_loaded():
    from engine.events import WorkerSpec
    from engine.worker.serve import main
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        pytest.skip("one core: nothing to pin to")
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe(duplex=True)
    spec = WorkerSpec(presets.load("tiny"), "sdpa", "cpu", 1, cores[-1])
    cancel = context.Event()                                   # kept referenced until the child has it
    process = context.Process(target=main, args=(spec, child, cancel), daemon=True)
    process.start()
    child.close()                                               # the child's death ends parent.recv()
    try:
        while not isinstance(event := parent.recv(), (events.Loaded, events.Failed)):
            pass
        assert isinstance(event, events.Loaded), event
        assert psutil.Process(process.pid).cpu_affinity() == [cores[-1]]
    finally:
        parent.send(None)
        process.join(30)


def test_the_outbox_batches_tokens_and_keeps_every_event_in_order():
    from engine.events import unbatch
    from engine.worker.serve import Outbox
    sent = []
    outbox = Outbox(sent.append, period_s=3600.0)              # the timer never fires during this test
    tokens = [events.Token("sdpa", 1, i, i, "x", float(i)) for i in range(3)]
    sample = events.MemorySample("sdpa", 0.5, 100)
    for event in (*tokens[:2], sample, tokens[2]):
        outbox.emit(event)
    assert sent == []                                          # no wake-up of the orchestrator per token
    done = events.Status("sdpa", "done")
    outbox.emit(done)
    assert sent == [[tokens[0], tokens[1], sample, tokens[2]], done]   # the batch first, then what followed it
    outbox.emit(done)
    assert sent[-1] is done and len(sent) == 3                 # nothing pending: no empty batch
    outbox.emit(tokens[0])
    outbox.close()
    assert sent[-1] == [tokens[0]]                             # closing sends what waits
    assert [e for message in sent for e in unbatch(message)] == [*tokens[:2], sample, tokens[2], done, done,
                                                                 tokens[0]]


def test_the_outbox_sends_a_waiting_batch_after_its_period():
    from engine.worker.serve import Outbox
    sent, arrived = [], threading.Event()
    outbox = Outbox(lambda message: (sent.append(message), arrived.set()), period_s=0.01)
    token = events.Token("sdpa", 1, 0, 7, "a", 1.0)
    outbox.emit(token)
    assert arrived.wait(5.0) and sent == [[token]]
    outbox.close()


def test_closing_the_outbox_while_a_batch_waits_sends_it_once_and_returns():
    from engine.worker.serve import Outbox
    sent = []
    outbox = Outbox(sent.append, period_s=0.2)
    token = events.Token("sdpa", 1, 0, 7, "a", 1.0)
    outbox.emit(token)
    started = time.monotonic()
    outbox.close()
    assert time.monotonic() - started < 2.0 and not outbox._thread.is_alive()
    assert sent == [[token]]


def _read(process: psutil.Process, what: str, default=None, **options):
    """process.<what>(**options) (psutil), or `default` once the process has ended."""
    try:
        return getattr(process, what)(**options)
    except psutil.Error:
        return default


def _workers_of(process: psutil.Process) -> list[psutil.Process]:
    """The worker processes a CLI started: spawned by multiprocessing, or forked by its fork server and
    at work (a child of the server with the server's command line and more than one thread: a worker
    starts its parent-watch thread first thing). Not one: the fork server itself, the resource tracker,
    a process that a worker starts, nor a program that the server runs while it imports (`ldconfig -p`,
    from ctypes.util.find_library): until it execs, that child has the server's command line too, and
    one thread; it ends within milliseconds, and a test that took it for a worker failed."""
    from engine.process import fork_servers
    forked = [child for server in fork_servers(process) for child in _read(server, "children", [])
              if _read(child, "cmdline") == _read(server, "cmdline") and _read(child, "num_threads", 0) > 1]
    spawned = [child for child in _read(process, "children", [])
               if "spawn_main" in " ".join(_read(child, "cmdline", []))]
    return forked + spawned


def _tree_said(cli: psutil.Process, workers: list[psutil.Process], gone: list[psutil.Process], log: Path) -> str:
    """What a failed 'still at work' check saw: the workers found, those gone, the CLI's process tree
    now (pid, parent, command line) and the CLI's log."""
    tree = [f"{p.pid} (parent {_read(p, 'ppid')}, {_read(p, 'status', 'gone')}): "
            f"{' '.join(_read(p, 'cmdline', []))[:160]}" for p in _read(cli, "children", [], recursive=True)] or ["none"]
    return "\n".join([f"found {[p.pid for p in workers]}, gone {[p.pid for p in gone]}; the CLI's tree now:", *tree,
                      "its log:", log.read_text()[-2000:]])


@pytest.mark.parametrize("stage", ["loading", "generating"])
def test_workers_exit_within_seconds_of_a_killed_parent(stage, tmp_path):
    """A CLI killed outright (SIGKILL) cannot stop its workers: each notices its parent's death and
    exits on its own, mid-load or mid-request (a request of 256 tokens after a 4k-token prompt)."""
    log = tmp_path / "cli.err"
    prompt = ("Why does decoding wait on memory bandwidth? " * 91)[:4000]
    with open(log, "w") as err:
        cli = psutil.Popen([sys.executable, "-m", "engine", "run", "--preset", "tiny", "--variants", "sdpa",
                            "--prompt", prompt, "--max-new-tokens", "256"], stdout=subprocess.DEVNULL, stderr=err,
                           env=dict(os.environ, HF_HUB_OFFLINE="1",      # a load drawn out to be caught midway
                                    **({LOAD_DELAY_ENV: "sdpa=60"} if stage == "loading" else {})))
    started, workers = time.monotonic(), []
    try:
        while time.monotonic() - started < 120:
            assert cli.poll() is None, log.read_text()
            workers = _workers_of(cli) or workers
            loaded = "loaded in" in log.read_text()
            if stage == "loading" and workers and not loaded and time.monotonic() - started > 3.0:
                break                                         # loading the model, for a minute
            if stage == "generating" and workers and loaded:
                time.sleep(1.0)                               # inside the request: seconds of decoding
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"the worker never reached {stage}: {log.read_text()}")
        gone = [worker for worker in workers if not worker.is_running()]
        assert cli.poll() is None and not gone, _tree_said(cli, workers, gone, log)      # still at work
        cli.kill()                                            # our own child, by its handle
        cli.wait(10)
        alive = still_running(workers, timeout_s=3.0)
        assert not alive, f"workers {[p.pid for p in alive]} outlived their parent by 3 s"
    finally:
        for process in [cli, *workers]:
            with contextlib.suppress(psutil.Error):
                process.kill()                                # leftovers of a failure, by pid
