"""The app killed outright (SIGKILL: no handler runs): its workers end by themselves, and the next app
on the machine deletes the download folder the killed one left (and, stopped at once, its own fork
server with it). Only the processes this test started are ended, by their ids."""
from __future__ import annotations

import signal
import time

import psutil
from app_server import ARTIFACTS, kill_if_running, outliving, start
from gradio_client import Client

from engine.process import fork_servers
from ui.compare import RUN
from ui.downloads import PREFIX

REPORT = RUN.index("report")


def test_a_killed_app_leaves_no_worker_running_and_the_next_deletes_its_downloads_and_stops_at_once(tmp_path):
    env = {"TMPDIR": str(tmp_path)}               # the apps' temporary folders, apart from everyone else's
    app, url = start("--private", name="test_app_kill", env=env)
    try:
        result = Client(url, verbose=False).predict("Why is decoding memory bound?", "tiny", ["baseline", "sdpa"],
                                                    4, "fair", 1, api_name="/compare")
        assert [r["status"] for r in result[REPORT]["results"]] == ["ok", "ok"]
        workers = psutil.Process(app.pid).children(recursive=True)
        assert len(workers) >= 2, workers          # a worker per variant, loaded for the next run
        left = list(tmp_path.glob(f"{PREFIX}{app.pid}-*"))
        assert len(left) == 1 and any(left[0].iterdir())        # the run's files to download
    finally:
        app.kill()                                 # SIGKILL, by its handle: the app cannot stop anything
        app.wait(10)
    alive = outliving(workers, timeout_s=20)
    assert not alive, f"workers outlived the app: {[w.pid for w in alive]}"
    assert left[0].exists()                        # nobody deleted it yet
    stopped_at_once(tmp_path, left[0])


def stopped_at_once(tmp_path, left) -> None:
    """The next app: it deletes the downloads folder `left` that the killed one left. Stopped as soon as
    its page answers, while its fork server is still importing torch and transformers, it ends the
    fork server as it closes instead of leaving it to finish its imports after the app is gone."""
    app, url = start("--private", name="test_app_kill_next", env={"TMPDIR": str(tmp_path)})
    try:
        assert not left.exists()                   # the next app's downloads folder replaced it
        assert len(list(tmp_path.glob(f"{PREFIX}*-*"))) == 1
        servers = fork_servers(psutil.Process(app.pid))
        assert len(servers) == 1, servers          # started with the page, for the first CPU worker
        app.send_signal(signal.SIGTERM)
        assert app.wait(30) == 0
    finally:
        kill_if_running(app)
    alive = outliving(servers, timeout_s=0.5)
    assert not alive, "the fork server outlived the app"


def test_two_stop_signals_in_a_row_still_close_the_app_cleanly(tmp_path):
    """`timeout` and a double Ctrl-C send a second signal while the app is closing: it still exits 0,
    with no traceback, and every worker it started ends."""
    app, url = start("--private", name="test_app_two_signals", env={"TMPDIR": str(tmp_path)})
    try:
        result = Client(url, verbose=False).predict("Why?", "tiny", ["sdpa"], 2, "fair", 1, api_name="/compare")
        assert [r["status"] for r in result[REPORT]["results"]] == ["ok"]
        workers = psutil.Process(app.pid).children(recursive=True)
        log = ARTIFACTS / "test_app_two_signals.log"
        app.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while "Stopping" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.01)
        app.send_signal(signal.SIGTERM)            # the second, while the app is closing
        assert app.wait(30) == 0
    finally:
        kill_if_running(app)
    alive = outliving(workers, timeout_s=20)
    assert not alive, f"workers outlived the app: {[w.pid for w in alive]}"
    log = log.read_text()
    assert "Stopping: closing the page and the workers." in log and "Traceback" not in log, log[-2000:]

