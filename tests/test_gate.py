"""The device's door: arrival order, a bounded line, one job per visitor, every place given back."""
import threading
from types import SimpleNamespace

import pytest

from engine.limits import Limits
from ui import checks
from engine.errors import InputError
from ui.gate import Audience, Gate, Refused, unread_updates, visitor_of


def test_jobs_hold_the_device_in_arrival_order_and_the_next_goes_when_one_leaves():
    gate = Gate(Limits())
    first, second, third = (gate.enter((f"session:{i}",)) for i in range(3))
    assert gate.wait(first, 0) and not gate.wait(second, 0)
    assert [gate.ahead(t) for t in (first, second, third)] == [0, 1, 2]
    turns = []
    waiter = threading.Thread(target=lambda: turns.append(gate.wait(third, 5)))
    waiter.start()
    gate.leave(second)                       # a job that gave up its place (its page closed)
    gate.leave(first)
    waiter.join(5)
    assert turns == [True] and len(gate) == 1


def test_a_full_line_and_a_visitor_with_a_job_are_refused_at_once():
    gate = Gate(Limits.public_defaults(queue_size=2))
    holder = gate.enter(("session:a", "address:1.1.1.1"))
    gate.enter(("session:b", "address:2.2.2.2"))
    with pytest.raises(Refused, match="you already have a run queued or running"):
        gate.enter(("session:c", "address:1.1.1.1"))        # another tab, the same address
    gate.enter(("session:d", "address:3.3.3.3"))
    with pytest.raises(Refused, match=r"the queue is full \(2 runs waiting for the device\): try again in a minute"):
        gate.enter(("session:e", "address:4.4.4.4"))
    gate.leave(holder)
    gate.enter(("session:c", "address:1.1.1.1"))            # its first job is over: it may queue again


def test_a_visitor_is_its_session_and_its_address_as_the_proxy_or_the_socket_saw_it():
    request = SimpleNamespace(session_hash="abc", headers={"x-forwarded-for": "9.9.9.9, 10.0.0.1"},
                              client=SimpleNamespace(host="10.0.0.1"))
    assert visitor_of(request, behind_proxy=True) == ("session:abc", "address:10.0.0.1")   # what the proxy saw
    assert visitor_of(request, behind_proxy=False) == ("session:abc", "address:10.0.0.1")  # the header ignored
    spoofed = SimpleNamespace(session_hash="x", headers={"x-forwarded-for": "6.6.6.6"},
                              client=SimpleNamespace(host="127.0.0.1"))
    assert visitor_of(spoofed, behind_proxy=False) == ("session:x", "address:127.0.0.1")
    assert visitor_of(spoofed, behind_proxy=True) == ("session:x", "address:6.6.6.6")
    assert visitor_of(SimpleNamespace(session_hash=None, headers={}, client=SimpleNamespace(host="127.0.0.1"))) \
        == ("address:127.0.0.1",)
    assert visitor_of(None) == ()


@pytest.mark.parametrize("value, message", [("5", "got '5'"), (None, "got None"), (float("nan"), "got nan"),
                                            (3.7, "got 3.7"), (True, "got True"), (0, "got 0"), (300, "got 300")])
def test_a_number_of_the_wrong_type_or_range_is_refused_naming_the_parameter(value, message):
    with pytest.raises(InputError, match=f"max new tokens must be a whole number from 1 to 256, {message}"):
        checks.whole("max new tokens", value, 1, 256)


def test_text_flags_and_lists_are_checked_strictly():
    assert checks.whole("repeats", 3.0, 1, 5) == 3                  # a slider's float
    with pytest.raises(InputError, match="not valid text .* character 2"):
        checks.text("prompt", "ab\ud800c")
    with pytest.raises(InputError, match="quick must be true or false, got 'false'"):
        checks.flag("quick", "false")
    with pytest.raises(InputError, match="variants must be a list of names"):
        checks.names("variants", "baseline")
    assert checks.names("variants", None) == []


def test_download_folders_of_killed_app_processes_are_removed_and_live_ones_kept(tmp_path):
    import os
    import subprocess
    import sys

    from ui.downloads import PREFIX, remove_orphans
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()                     # a process id that has ended
    dead, alive = tmp_path / f"{PREFIX}{gone}-abc", tmp_path / f"{PREFIX}{os.getpid()}-def"
    for folder in (dead, alive):
        folder.mkdir()
        (folder / "run-1.json").write_text("{}")
    assert remove_orphans(tmp_path) == [dead]
    assert not dead.exists() and alive.exists()


def test_a_job_whose_updates_pile_up_unread_for_its_patience_is_gone_and_one_read_now_and_then_is_not():
    now, waiting = [0.0], [0]
    audience = Audience(lambda: waiting[0], 3.0, clock=lambda: now[0])
    for second in range(1, 10):                 # a reader taking every update within the second
        now[0], waiting[0] = float(second), (second + 1) % 2   # all taken at t=9
        assert not audience.gone()
    waiting[0] = 1                              # from t=9 nothing is taken any more
    for t, expected in ((10.0, False), (12.0, False), (12.5, True)):
        now[0], waiting[0] = t, waiting[0] + 1
        assert audience.gone() is expected
    assert not Audience(lambda: 50, None).gone()                 # no patience set: never gone
    unknown = Audience(lambda: None, 0.5, clock=lambda: now[0])
    now[0] += 100
    assert not unknown.gone()                                    # cannot be told: given the benefit of the doubt


def test_unread_updates_are_read_from_gradios_queue_of_the_session():
    import asyncio
    queue = asyncio.Queue()
    queue.put_nowait("update")
    queue.put_nowait("update")
    blocks = SimpleNamespace(_queue=SimpleNamespace(pending_messages_per_session={"abc": queue}))
    assert unread_updates(blocks, "abc") == 2
    assert unread_updates(blocks, "other") is None and unread_updates(blocks, None) is None
    assert unread_updates(SimpleNamespace(), "abc") is None      # a Gradio that keeps them elsewhere


def test_forwarding_headers_are_believed_only_from_the_proxies_the_deployment_names(monkeypatch):
    from ui.gate import TRUST_ENV, trust_proxies
    monkeypatch.delenv(TRUST_ENV, raising=False)
    assert trust_proxies(None) == ""                       # uvicorn's default (127.0.0.1) replaced: nobody
    assert trust_proxies("10.0.0.5, 10.1.0.0/16") == "10.0.0.5,10.1.0.0/16"
    monkeypatch.setenv(TRUST_ENV, "192.168.1.1")
    assert trust_proxies(None) == "192.168.1.1"            # what the deployment's environment already says
    with pytest.raises(ValueError, match="--trusted-proxies: 'proxy.local' is not an IP address or network"):
        trust_proxies("proxy.local")


def test_a_visitor_has_one_replay_at_a_time_under_each_of_its_keys():
    from ui.gate import Slots
    slots = Slots(1, "a replay of yours is already playing")
    mine = slots.take(("session:a", "address:1.1.1.1"))
    with pytest.raises(Refused, match="already playing"):
        slots.take(("session:b", "address:1.1.1.1"))       # another tab, the same address
    slots.take(("session:c", "address:2.2.2.2"))
    slots.give(mine)
    slots.take(("session:b", "address:1.1.1.1"))
    assert Slots(None, "").take(("session:a",)) == ("session:a",)


def test_a_visitors_calls_refill_at_their_rate_and_the_table_of_addresses_is_bounded():
    from ui.guard import Rates
    now = [0.0]
    rates = Rates(per_s=5.0, burst=3, remembered=2, clock=lambda: now[0])
    assert [rates.take("a") for _ in range(3)] == [0.0] * 3
    assert rates.take("a") == pytest.approx(0.2)
    now[0] = 0.2
    assert rates.take("a") == 0.0 and rates.take("b") == 0.0 and rates.take("c") == 0.0
    assert len(rates._buckets) == 2                         # "a", idle the longest, forgotten


def test_downloads_are_bounded_by_total_size_as_well_as_age_and_the_chart_library_is_written_once(tmp_path):
    import os
    import time

    from ui.downloads import Downloads
    downloads = Downloads(tmp_path, keep_s=3600, keep_bytes=10_000)
    first = downloads.save("sweep", 1, "a", json="x" * 4000)
    old = time.time() - 10
    os.utime(first[0], (old, old))                          # the oldest
    second = downloads.save("sweep", 2, "b", json="y" * 4000)
    third = downloads.save("sweep", 3, "c", json="z" * 4000)        # 12,000 bytes would not fit: the oldest goes
    assert not os.path.exists(first[0]) and os.path.exists(second[0]) and os.path.exists(third[0])
    assert downloads.size() == 8000
    os.utime(second[0], (time.time() - 7200,) * 2)          # past its age
    downloads.save("run", 4, "d", csv="w")
    assert not os.path.exists(second[0]) and downloads.size() == 4001
    name = downloads.library()
    written = (tmp_path / name).stat().st_mtime_ns
    assert downloads.library() == name and (tmp_path / name).stat().st_mtime_ns == written      # once
    assert (tmp_path / name).stat().st_size > 1_000_000 and downloads.size() == 4001           # not counted
