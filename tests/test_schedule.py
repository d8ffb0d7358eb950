"""The plan of a run: load groups and the order of its requests (pure)."""
from engine.schedule import Turn, groups, turns
from engine.spec import RunSpec, lengths


def test_fair_turns_go_cell_by_cell_warmups_first():
    spec = RunSpec("hi", ["a", "b"], 8, repeats=2, cells=lengths([16, 32]), warmup_requests=1)
    assert turns(spec) == [Turn(0, True, False), Turn(0, False, False), Turn(0, False, False),
                           Turn(1, True, False), Turn(1, False, False), Turn(1, False, False)]


def test_race_turns_send_every_variant_together_and_a_plain_run_is_one_cell_after_its_warmup():
    assert turns(RunSpec("hi", ["a", "b"], 8, mode="race")) == [Turn(0, True, True), Turn(0, False, True)]
    assert turns(RunSpec("hi", ["a"], 8, warmup_requests=0)) == [Turn(0, False, False)]


def test_resident_variants_load_together_and_each_swapped_one_alone():
    placement = {"a": "resident", "b": "swapped", "c": "resident", "d": "swapped"}
    assert groups(["a", "b", "c", "d"], placement) == [["a", "c"], ["b"], ["d"]]
    assert groups(["b"], {"b": "swapped"}) == [["b"]]
