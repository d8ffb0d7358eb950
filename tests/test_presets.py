"""Preset files: every shipped one loads; a bad one is refused with the file, the field and what is allowed."""
import textwrap

import pytest

from engine import presets
from engine.variants import CATALOG


def write(tmp_path, text):
    path = tmp_path / "custom.yaml"
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_every_shipped_preset_loads():
    names = presets.available()
    for required in ("tiny", "small", "opt-350m", "falcon-7b", "llama-3.1-8b-random", "qwen2.5-0.5b-instruct"):
        assert required in names
    for name in names:
        preset = presets.load(name)
        assert preset.name == name
        assert set(preset.variants) <= set(CATALOG)
        assert 1 <= preset.max_new_tokens <= preset.max_new_tokens_cap


def test_unknown_field_names_file_field_and_allowed(tmp_path):
    path = write(tmp_path, """
        name: custom
        title: x
        source: random
        config: {model_type: llama}
        colour: red
    """)
    with pytest.raises(presets.PresetError) as error:
        presets.load(path)
    message = str(error.value)
    assert path in message and "'colour'" in message and "allowed fields" in message and "dtype" in message


def test_wrong_type_and_unknown_variant_are_refused(tmp_path):
    path = write(tmp_path, """
        name: custom
        title: x
        source: random
        config: {model_type: llama}
        max_new_tokens: lots
    """)
    with pytest.raises(presets.PresetError, match=r"custom.yaml: field 'max_new_tokens' must be an integer"):
        presets.load(path)
    path = write(tmp_path, """
        name: custom
        title: x
        source: random
        config: {model_type: llama}
        variants: [baseline, warp-drive]
    """)
    with pytest.raises(presets.PresetError, match=r"unknown variant 'warp-drive'; allowed: baseline, sdpa"):
        presets.load(path)


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(presets.PresetError, match=r"unknown preset 'nope'; available: .*tiny"):
        presets.load("nope")
