"""RunSpec and validate: every input rule, written once, checked without starting anything."""
import dataclasses

import pytest

from engine import presets
from engine.errors import InputError
from engine.spec import Cell, RunSpec, lengths, validate

TINY = presets.load("tiny")           # context 4608, new-token cap 256, byte-level tokenizer


def test_a_spec_is_frozen_hashable_and_keeps_lists_as_tuples():
    spec = RunSpec("hi", ["baseline", "sdpa"], 8, cells=[Cell(prompt_tokens=16)])
    assert spec.variants == ("baseline", "sdpa") and spec.cells == (Cell(prompt_tokens=16),)
    assert hash(spec) == hash(RunSpec("hi", ("baseline", "sdpa"), 8, cells=(Cell(prompt_tokens=16),)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.prompt = "other"


def test_the_grid_of_a_plain_run_is_one_cell_and_cells_take_the_runs_settings():
    plain = RunSpec("hi", ["sdpa"], 8, batch_size=2)
    assert plain.grid == [None]
    assert plain.resolved(None) == Cell(None, 8, 2, 0.0)
    grid = RunSpec("hi", ["sdpa"], 8, cells=lengths([64, 128]) + (Cell(max_new_tokens=4, batch_size=4, pad_ratio=0.3),))
    assert [grid.resolved(c) for c in grid.grid] == [Cell(64, 8, 1, 0.0), Cell(128, 8, 1, 0.0), Cell(None, 4, 4, 0.3)]


def test_validate_returns_the_prompts_token_count():
    assert validate(RunSpec("hello", ["sdpa"], 8), TINY) == len(b"hello") + 1     # + <s>


@pytest.mark.parametrize("changes, message", [
    ({"prompt": "   "}, "the prompt is empty"),
    ({"variants": []}, "no variant selected"),
    ({"variants": ["warp"]}, "unknown variant 'warp'"),
    ({"variants": ["sdpa", "sdpa"]}, "listed twice"),
    ({"mode": "sprint"}, "mode 'sprint' is not one of fair, race"),
    ({"max_new_tokens": 0}, "between 1 and 256"),
    ({"max_new_tokens": 257}, "between 1 and 256"),
    ({"max_new_tokens": 2.5}, "max new tokens must be a whole number"),
    ({"repeats": 0}, "repeats must be a whole number of at least 1"),
    ({"batch_size": 0}, "batch size must be a whole number of at least 1"),
    ({"warmup_requests": -1}, "warm-up requests must be 0 or more"),
    ({"prompt": "x" * 4600}, "more than the context of 4608"),
    ({"cells": (Cell(prompt_tokens=4601),)}, "a cell of 4601 prompt tokens and 8 new tokens exceeds the context"),
    ({"cells": (Cell(max_new_tokens=300),)}, "a cell asks for 300 new tokens"),
    ({"cells": (Cell(prompt_tokens=0),)}, "prompt length must be at least 1"),
    ({"cells": (Cell(batch_size=1, pad_ratio=0.3),)}, "padding needs a batch of at least 2"),
    ({"cells": (Cell(batch_size=4, pad_ratio=1.0),)}, "pad ratio within [0, 1)"),
    ({"cells": (Cell(batch_size=4, pad_ratio=float("nan")),)}, "pad ratio within [0, 1)"),
])
def test_bad_input_gets_a_message_that_says_what_to_do(changes, message):
    spec = dataclasses.replace(RunSpec("Why is decoding slow?", ["baseline"], 8), **changes)
    with pytest.raises(InputError) as refused:
        validate(spec, TINY)
    assert message in str(refused.value)


def test_a_hub_preset_that_is_not_cached_is_refused_with_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError, match="is not in the local Hugging Face cache"):
        validate(RunSpec("hi", ["sdpa"], 8), presets.load("opt-350m"))
