"""The report's pure parts: rows from raw measurements."""
from engine import events


def test_a_busy_host_marks_the_timings_it_slowed():
    from engine.report import HOST_BUSY_MARGIN_CORES, host_load, host_note

    def timed(others, resolution, spare=0, threads=2):
        host = {"cores": threads + spare, "threads": threads, "others_cores": others, "resolution_cores": resolution}
        return events.Finished("sdpa", 1, 0.0, (0.1, 0.2), (1, 2), "", 4, 1, False, {}, {}, host)

    quiet = host_load([timed(0.05, 0.02), timed(0.1, 0.02)])
    assert quiet == {"cpu_threads": 2, "host_others_cores": 0.1, "host_busy": False}
    assert host_note(quiet) is None
    busy = host_load([timed(0.05, 0.02), timed(1.2, 0.05)])                 # one repeat disturbed is enough
    assert busy["host_busy"] and busy["host_others_cores"] == 1.2
    assert "1.2 of its CPU cores" in host_note(busy)
    assert not host_load([timed(0.6, 0.67)])["host_busy"]                   # a 50 ms request: within counting error
    assert not host_load([timed(0.9, 0.02, spare=1, threads=1)])["host_busy"]   # the core it left spare
    assert host_load([timed(1.0 + HOST_BUSY_MARGIN_CORES + 0.1, 0.02, spare=1, threads=1)])["host_busy"]
    assert host_load([events.Finished("sdpa", 1, 0.0, (0.1,), (1,), "", 4, 1, False)]) == {}
