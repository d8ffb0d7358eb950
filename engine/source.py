"""The orchestrator's view of a preset's model: its files, its architecture, its prompt's token count.

Needs only `tokenizers` and `huggingface_hub`, never torch or transformers: the process that serves
the page must not initialise CUDA. The loaders live on the worker side (worker/models.py).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import ModelSourceError

if TYPE_CHECKING:
    from engine.presets import Preset


def cache_dir() -> Path:
    """Where locally made models live: $SIDEBYSIDE_CACHE or ~/.cache/sidebyside."""
    env = os.environ.get("SIDEBYSIDE_CACHE")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sidebyside"
    return base


def hub_file(model_id: str, filename: str) -> str | None:
    """A file of a local model folder or of the Hugging Face cache (never downloaded), or None."""
    if Path(model_id).is_dir():
        path = Path(model_id) / filename
        return str(path) if path.exists() else None
    from huggingface_hub import try_to_load_from_cache
    found = try_to_load_from_cache(model_id, filename)
    return found if isinstance(found, str) else None


def ensure_source(preset: Preset) -> None:
    """Make sure a hub preset's config and tokenizer are here (cached or fetchable), or explain."""
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
    path = hub_file(preset.model_id, "tokenizer.json")
    if path is None:
        return 0                                         # no fast tokenizer file: the worker checks
    from tokenizers import Tokenizer
    return len(Tokenizer.from_file(path).encode(prompt).ids)


def architecture(preset: Preset) -> dict | None:
    """The config fields of a preset's model, from the preset or the cached config.json (None: unknown)."""
    if preset.random_weights:
        return dict(preset.config)
    path = hub_file(preset.model_id, "config.json")
    if path is None:
        return None
    config = json.loads(Path(path).read_text())
    return config.get("text_config", config)
