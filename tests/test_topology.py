"""CPU cores and their hyper-thread siblings (engine/topology.py)."""


def test_core_siblings_read_linux_topology(tmp_path):
    from engine.topology import core_siblings
    for core, text in ((0, "0,8\n"), (1, "1-2\n"), (3, "3\n")):
        (tmp_path / f"cpu{core}" / "topology").mkdir(parents=True)
        (tmp_path / f"cpu{core}" / "topology" / "thread_siblings_list").write_text(text)
    assert [core_siblings(core, tmp_path) for core in (0, 1, 3, 5)] == [
        {0, 8}, {1, 2}, {3}, {5}]                                   # cpu5: no topology, stands alone
