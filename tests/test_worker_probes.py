"""The worker's probes that need no model: the copy bandwidth."""


def test_copy_bandwidth_on_a_cpu_is_the_best_copy_and_never_cached(tmp_path, monkeypatch):
    from engine.worker.probes import measure_copy_bandwidth
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    (tmp_path / "sidebyside").mkdir()
    value = measure_copy_bandwidth("cpu", "cpu", size_bytes=1 << 24, repeats=3)
    assert 1e8 < value < 1e13                                    # bytes/s of a real copy of 16 MiB
    assert not list((tmp_path / "sidebyside").glob("*"))          # other programs share a CPU's memory


def test_a_corrupt_bandwidth_cache_is_ignored_and_rewritten_whole(tmp_path, monkeypatch):
    import json

    from engine.worker import probes
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = probes.bandwidth_cache_path()
    assert path == tmp_path / "sidebyside" / "copy-bandwidth-best.json"
    assert probes.cached_bandwidth("H200") is None                       # no file yet
    path.parent.mkdir()
    for corrupt in (b'{"H200": 4.1e12', b"\xff\xfe\x00garbage", b"[4.1e12]", b'"H200"', b""):
        path.write_bytes(corrupt)                                        # a writer killed halfway, or worse
        assert probes.read_bandwidth_cache() == {}
        assert probes.cached_bandwidth("H200") is None
    path.write_text('{"H200": "fast", "A100": -1, "L4": NaN, "T4": true, "H100": 3.0e12}')
    assert probes.read_bandwidth_cache() == {"H100": 3.0e12}            # only positive finite numbers count

    path.write_bytes(b'{"H200": 4.1e1')
    probes.remember_bandwidth("H200", 4.2e12)
    assert json.loads(path.read_text()) == {"H200": 4.2e12}             # the corrupt file is replaced
    probes.remember_bandwidth("A100", 1.9e12)
    assert json.loads(path.read_text()) == {"H200": 4.2e12, "A100": 1.9e12}
    assert probes.cached_bandwidth("A100") == 1.9e12
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary file is left


def test_a_bandwidth_cache_that_cannot_be_written_costs_only_a_measurement(tmp_path, monkeypatch):
    from engine.worker import probes
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    (tmp_path / "sidebyside").write_text("a file where the folder should be")
    probes.remember_bandwidth("H200", 4.2e12)                            # no error
    assert probes.cached_bandwidth("H200") is None
