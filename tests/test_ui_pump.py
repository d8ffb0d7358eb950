"""The dashboard's event pump keeps up with synthetic workers (benchmarks/ui_pump.py, run for ~2 s).

Not a timing assertion: every event must be folded in, and the final view must be exact.
"""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_benchmark():
    spec = importlib.util.spec_from_file_location("ui_pump", ROOT / "benchmarks" / "ui_pump.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pump_handles_every_event_of_four_variants_at_200_tokens_per_s():
    result = load_benchmark().run(variants=4, rate=200, seconds=2.0)
    view = result["view"]
    assert result["handled"] == result["produced"]
    assert result["tokens"] == 400
    assert view.done and view.error is None
    assert len(view.lanes) == 4
    expected = "".join(f"w{i} " for i in range(400))
    for lane in view.lanes.values():
        assert lane.stage == "done"
        assert len(lane.token_times) == 400
        assert lane.text == expected
        assert lane.memory, "memory samples were folded in"
        assert lane.figures()["final"] and lane.figures()["tokens"] == 400
    # one update per tick, not one per event: far fewer updates than events
    assert 1 <= result["updates"] < result["handled"] / 20
    assert result["last_update_lag_s"] >= 0
