"""A model shipped as a GGUF file inside a Python package, made once into a safetensors folder.

transformers reads a GGUF file (with the `gguf` package) and dequantizes its weights to float32;
`save_pretrained` refuses a model loaded that way ("quantized with gguf and is not serializable"), so
the folder is written here: the config without its GGUF quantization entry, the state dict as one
safetensors file (a tied output head is not written twice: from_pretrained ties it again), and the
tokenizer with its chat template. Every variant, and a served engine, then loads these same weights.

Run as `python -m engine.worker.gguf FILE.gguf FOLDER` by the orchestrator (engine/source.py), which
never imports torch; a worker that finds no folder makes it the same way.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from engine.source import package_file, package_folder
from engine.worker.folders import made_once

if TYPE_CHECKING:
    from engine.presets import Preset


def write_folder(gguf: Path, folder: Path) -> None:
    """The model and tokenizer in `gguf`, dequantized to float32, written into `folder`."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config                 # the weights written are plain float32
    config.save_pretrained(folder)
    model.generation_config.save_pretrained(folder)
    state = model.state_dict()
    head, table = model.get_output_embeddings(), model.get_input_embeddings()
    if config.tie_word_embeddings and head is not None and head.weight.data_ptr() == table.weight.data_ptr():
        state = {name: tensor for name, tensor in state.items() if name != "lm_head.weight"}
    save_file({name: tensor.contiguous() for name, tensor in state.items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt", "source": gguf.name})
    tokenizer.save_pretrained(folder)
    for path in folder.iterdir():
        path.chmod(0o644)                              # safetensors writes 0600: the cache is for every user


def saved_package_model(preset: Preset) -> Path:
    """A package preset's folder, made once (engine/worker/models.py made_once)."""
    gguf = package_file(preset)
    return made_once(package_folder(preset), lambda folder: write_folder(gguf, folder),
                     f"the model of preset {preset.name!r} from {gguf.name}")


def main(argv: list[str]) -> int:
    gguf, target = Path(argv[0]), Path(argv[1])
    made_once(target, lambda folder: write_folder(gguf, folder), f"the model from {gguf.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
