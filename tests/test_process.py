"""The process layer with real child processes (entry points from tests/fake_workers.py)."""
import json
import threading

from engine import events, process
from engine.events import WorkerSpec
from engine.process import WorkerProcess, WorkerSet


def spec_for(name, others=()):
    return WorkerSpec(None, name, "cpu")


def test_stopping_workers_signals_them_all_before_waiting_for_any(tmp_path, monkeypatch):
    monkeypatch.setenv("SIDEBYSIDE_FAKE_LOG", str(tmp_path))
    workers = WorkerSet(spec_for, entry="fake_workers:slow_to_stop")
    for name in ("a", "b", "c"):
        workers.spawn(name)
    for worker in workers.all():                         # each says it loaded
        readable, dead = process.wait([worker], 30)
        assert readable == [worker] and not dead
        assert [type(e) for e in worker.read()] == [events.Loaded] and worker.ready
    assert set(workers.loaded()) == {"a", "b", "c"}
    workers.stop_all(timeout=20)
    logs = [json.loads((tmp_path / f"{name}.json").read_text()) for name in ("a", "b", "c")]
    # every worker had its stop message before the first of them ended: the waits overlap
    assert max(log["received"] for log in logs) < min(log["exited"] for log in logs)
    assert workers.names() == [] and workers.loaded() == {}


def test_a_dying_worker_is_seen_through_its_sentinel_with_what_it_sent_first():
    worker = WorkerProcess(spec_for("x"), entry="fake_workers:crash")
    seen, dead = [], []
    while not dead:
        readable, dead = process.wait([worker], 30)
        seen += worker.read()
    worker.process.join(5)
    assert [e.stage for e in seen] == ["loading"] and worker.process.exitcode == 3
    assert not worker.ready and worker.send(None) in (True, False)     # a send to the dead never raises
    process.stop([worker], timeout=1)


def test_the_worker_set_can_be_walked_and_cancelled_while_another_thread_spawns(tmp_path, monkeypatch):
    monkeypatch.setenv("SIDEBYSIDE_FAKE_LOG", str(tmp_path))
    workers = WorkerSet(spec_for, entry="fake_workers:slow_to_stop")
    errors, spawned = [], threading.Event()

    def spawn_many():
        try:
            for i in range(8):
                workers.spawn(f"w{i}")
        finally:
            spawned.set()

    def walk():
        try:
            while not spawned.is_set():
                workers.cancel_all()
                workers.clear_cancel()
                workers.loaded()
        except Exception as error:  # noqa: BLE001 - any exception here is the defect
            errors.append(error)

    threads = [threading.Thread(target=spawn_many), threading.Thread(target=walk)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    workers.stop_all(timeout=20)
    assert errors == [] and len(list(tmp_path.glob("w*.json"))) == 8


def test_a_cpu_worker_is_forked_from_the_preloaded_server_with_the_environment_and_folder_of_now(tmp_path,
                                                                                                  monkeypatch):
    """The fork server imported torch and transformers once (without starting CUDA); a worker forked
    from it still sees the environment variables and working folder the orchestrator has when it
    starts the worker, not those from when the fork server started; it inherits the fork server's
    objects frozen, its garbage collector on. A GPU worker is spawned."""
    monkeypatch.setenv("SIDEBYSIDE_FAKE_LOG", str(tmp_path))
    first = WorkerProcess(WorkerSpec(None, "first", "cpu"), entry="fake_workers:describe")   # starts the server
    first.process.join(120)
    monkeypatch.setenv("SBS_MARKER", "set after the fork server started")
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    monkeypatch.chdir(folder)
    later = WorkerProcess(WorkerSpec(None, "later", "cpu"), entry="fake_workers:describe")
    later.process.join(60)
    assert first.process.exitcode == later.process.exitcode == 0
    facts = json.loads((tmp_path / "later.json").read_text())
    # what the fork server made is frozen before it forks: the worker's collections skip it all
    assert facts.pop("frozen_objects") > 100_000 and facts.pop("gc_enabled") is True, facts
    assert facts == {"start_method": "forkserver", "process_name": "worker-later", "cwd": str(folder),
                     "marker": "set after the fork server started", "torch_imported": True,
                     "transformers_imported": True, "cuda_initialized": False, "parent_alive": True}
    assert process.context(WorkerSpec(None, "gpu", "cuda:0")) is process.SPAWN
    monkeypatch.setenv(process.START_METHOD_ENV, "spawn")
    assert process.context(WorkerSpec(None, "cpu", "cpu")) is process.SPAWN
    for worker in (first, later):
        worker.close()


def test_a_cpu_engine_starts_the_fork_server_when_prepared_and_a_refused_run_starts_none():
    """The dashboard prepares its engines as the page starts, so the fork server's imports overlap it;
    a command line refused on its input exits at once, with no fork server holding its output open
    for seconds. Checked in fresh processes, which end the fork server they started, by its id."""
    import os
    import subprocess
    import sys
    code = ("from engine import Engine, InputError, RunSpec, load_preset\n"
            "from engine.process import fork_servers as servers\n"
            "engine = Engine(load_preset('tiny'))\n"
            "counts = [len(servers())]\n"
            "try:\n"
            "    engine.start(RunSpec('hello', ['baseline'], 0))\n"
            "except InputError:\n"
            "    counts.append(len(servers()))\n"
            "engine.prepare()\n"
            "counts.append(len(servers()))\n"
            "[c.kill() for c in servers()]\n"
            "print(*counts)\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for method, expected in (("forkserver", ["0", "0", "1"]), ("spawn", ["0", "0", "0"])):
        done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, **{process.START_METHOD_ENV: method}))
        assert done.returncode == 0 and done.stdout.split() == expected, (method, done.stderr[-2000:])
    code = ("from engine.process import fork_servers; from ui.state import Engines; Engines().get('tiny'); "
            "servers = fork_servers(); [c.kill() for c in servers]; print(len(servers))")
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.split() == ["1"], done.stderr[-2000:]


def test_the_dashboard_starts_the_fork_server_before_it_imports_gradio_and_ends_it_when_it_returns():
    """Without a GPU the fork server's imports of torch and transformers overlap gradio's. Checked in a
    fresh process, the page itself replaced by a function that looks at the processes."""
    import os
    import subprocess
    import sys
    code = ("import sys, app\n"
            "from engine.process import fork_servers\n"
            "app.serve_page = lambda *args: print(len(fork_servers()), 'gradio' in sys.modules) or 0\n"
            "code = app.main([])\n"
            "print(code, len(fork_servers()))\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["1", "False", "0", "0"], done.stdout + done.stderr[-2000:]
