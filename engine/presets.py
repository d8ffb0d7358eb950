"""Presets: one YAML file per model setup (presets/*.yaml), read into frozen dataclasses.

Validation refuses unknown fields, wrong types and unknown variants with a message that names
the file, the field and what is allowed.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from engine.errors import PresetError
from engine.variants import CATALOG, REFERENCE

PRESET_DIR = Path(__file__).resolve().parent.parent / "presets"
SOURCES = ("random", "hub")
DTYPES = ("float32", "float16", "bfloat16")
TOKENIZERS = ("bytes", "model")


@dataclass(frozen=True)
class Preset:
    """One model setup. Field comments say what each one trades."""
    name: str
    title: str
    source: str                       # "random": architecture from `config`, seeded random weights
                                      # (text is noise, timings are real); "hub": `model_id` weights
    description: str = ""
    model_id: str | None = None       # hub id or local path, for source "hub"
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

    @property
    def random_weights(self) -> bool:
        return self.source == "random"

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
    }
    return checks[annotation](value)


_TYPE_WORDS = {"str": "a string", "str | None": "a string or null", "int": "an integer",
               "bool": "true or false", "dict": "a mapping", "tuple[str, ...]": "a list of strings"}


def parse(data: object, origin: str) -> Preset:
    """A Preset from parsed YAML; `origin` (the file) is named in every error."""
    if not isinstance(data, dict):
        raise PresetError(f"{origin}: a preset must be a mapping of fields, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(Preset)}
    for key in data:
        if key not in fields:
            raise PresetError(f"{origin}: unknown field {key!r}; allowed fields: {', '.join(sorted(fields))}")
    for key, value in data.items():
        if not _type_ok(value, fields[key].type):
            raise PresetError(f"{origin}: field {key!r} must be {_TYPE_WORDS[fields[key].type]}, "
                              f"got {value!r}")
    for required in ("name", "title", "source"):
        if required not in data:
            raise PresetError(f"{origin}: field {required!r} is required")
    choices = {"source": SOURCES, "dtype": DTYPES, "tokenizer": TOKENIZERS}
    for key, allowed in choices.items():
        if key in data and data[key] not in allowed:
            raise PresetError(f"{origin}: field {key!r} is {data[key]!r}; allowed: {', '.join(allowed)}")
    for variant in data.get("variants", []):
        if variant not in CATALOG:
            raise PresetError(f"{origin}: field 'variants' names unknown variant {variant!r}; "
                              f"allowed: {', '.join(CATALOG)}")
    if data["source"] == "hub" and not data.get("model_id"):
        raise PresetError(f"{origin}: source 'hub' needs field 'model_id' (a hub id or a local path)")
    if data["source"] == "random" and "model_type" not in data.get("config", {}):
        raise PresetError(f"{origin}: source 'random' needs field 'config' with a 'model_type' "
                          "(e.g. llama) and the architecture's sizes")
    device = data.get("device", "auto")
    if not (device in ("auto", "cpu", "cuda") or device.startswith("cuda:")):
        raise PresetError(f"{origin}: field 'device' is {device!r}; allowed: auto, cpu, cuda, cuda:N")
    for key in ("max_new_tokens", "max_new_tokens_cap", "context_length"):
        if key in data and data[key] < 1:
            raise PresetError(f"{origin}: field {key!r} must be at least 1")
    cap = data.get("max_new_tokens_cap", Preset.max_new_tokens_cap)
    if data.get("max_new_tokens", Preset.max_new_tokens) > cap:
        raise PresetError(f"{origin}: field 'max_new_tokens' is above 'max_new_tokens_cap' ({cap})")
    values = dict(data)
    if "variants" in values:
        values["variants"] = tuple(values["variants"])
    return Preset(**values)


def available() -> list[str]:
    """Names of the presets shipped in presets/."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load(name_or_path: str) -> Preset:
    """A preset by name (presets/NAME.yaml) or by path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = PRESET_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        raise PresetError(f"unknown preset {name_or_path!r}; available: {', '.join(available())} "
                          "(or give the path to a .yaml file)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise PresetError(f"{path}: not valid YAML: {error}") from None
    preset = parse(data, str(path))
    if path.parent == PRESET_DIR and preset.name != path.stem:
        raise PresetError(f"{path}: field 'name' is {preset.name!r}; it must match the file name {path.stem!r}")
    return preset
