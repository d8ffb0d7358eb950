"""The worker's measuring instruments (engine/worker/instruments.py)."""


def test_the_memory_sampler_reports_the_gpu_clock_it_read():
    from engine.telemetry import ClockReader
    from engine.worker.instruments import MemorySampler
    assert ClockReader(0).read() is None or __import__("torch").cuda.is_available()   # no GPU: unknown, no error
    samples = []
    sampler = MemorySampler(samples.append, "sdpa", None)
    assert sampler.clock_mhz() == {}                          # a CPU: no clock
    reads = iter([1980, 1980, 1410] + [1980] * 100)

    class Clock:
        def read(self):
            return next(reads)

        def close(self):
            pass
    sampler._clock = Clock()
    with sampler:
        __import__("time").sleep(0.12)
    assert sampler.clocks_mhz[:3] == [1980, 1980, 1410]
    assert sampler.clock_mhz() == {"sm_clock_mhz": 1980, "sm_clock_mhz_min": 1410}
    assert samples                                            # the memory samples went out as before
