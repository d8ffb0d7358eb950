"""The worker's probes that need no model: the copy bandwidth."""


def test_copy_bandwidth_on_a_cpu_is_the_best_copy_and_never_cached(tmp_path, monkeypatch):
    from engine.worker.probes import measure_copy_bandwidth
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    (tmp_path / "sidebyside").mkdir()
    value = measure_copy_bandwidth("cpu", "cpu", size_bytes=1 << 24, repeats=3)
    assert 1e8 < value < 1e13                                    # bytes/s of a real copy of 16 MiB
    assert not list((tmp_path / "sidebyside").glob("*"))          # other programs share a CPU's memory
