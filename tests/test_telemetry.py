"""What the worker reads about the machine around a request (engine/telemetry.py)."""
import pytest


def test_host_load_counts_other_processes_cpu_time_on_the_workers_cores():
    from engine.telemetry import HostLoad
    clock, machine, own = iter([0.0, 2.0]), iter([100.0, 105.0]), iter([10.0, 12.0])
    switches = iter([40, 47])
    with HostLoad({0, 1, 2, 3}, clock=lambda: next(clock), machine=lambda cores: next(machine),
                  own=lambda: next(own), tick_s=0.01, switches=lambda: next(switches)) as load:
        pass
    assert load.others_cores == pytest.approx((5.0 - 2.0) / 2.0)          # 3 CPU seconds of others over 2 s
    assert load.preemptions == 7                          # the serving thread was taken off its core 7 times
    assert load.resolution_cores == pytest.approx(5 * 0.01 / 2.0)         # four cores' counts and our own
    clock, machine, own = iter([0.0, 1.0]), iter([100.0, 100.5]), iter([10.0, 10.52])
    with HostLoad({0}, clock=lambda: next(clock), machine=lambda cores: next(machine),
                  own=lambda: next(own)) as load:
        pass
    assert load.others_cores == 0.0                      # tick rounding never gives a negative load
