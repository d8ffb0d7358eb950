#!/usr/bin/env python3
"""Does PyTorch's SDPA pay a cost the first time it meets a sequence length? (CUDA only)

    python scripts/sdpa_first_shape.py

On the Llama-3.1-8B shape (random weights, bf16, SDPA attention) it times three identical
generate() calls (prompt 128, 128 new tokens) with PyTorch's default SDPA dispatch, then three
with the cuDNN backend turned off, then three with the default again on a 300-token prompt,
whose decode lengths no earlier call met. Prints milliseconds per generated token of each call
(prefill included) and writes sdpa_first_shape.json to $OUT when that is set.
"""
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch                                    # noqa: E402

from engine import presets                      # noqa: E402
from engine.worker.models import random_config  # noqa: E402

NEW_TOKENS = 128


def ms_per_token(model, ids) -> list[float]:
    times = []
    for _ in range(3):
        torch.cuda.synchronize()
        start = time.perf_counter()
        model.generate(input_ids=ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
        torch.cuda.synchronize()
        times.append(round((time.perf_counter() - start) / NEW_TOKENS * 1000, 2))
    return times


def main() -> int:
    if not torch.cuda.is_available():
        print("error: needs a CUDA GPU", file=sys.stderr)
        return 2
    from transformers import AutoModelForCausalLM
    results = {"torch": torch.__version__, "cudnn_sdp_enabled": torch.backends.cuda.cudnn_sdp_enabled()}
    print(results, flush=True)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(random_config(presets.load("llama-3.1-8b-random")),
                                                 dtype=torch.bfloat16, attn_implementation="sdpa").eval()
    for setting, cudnn, prompt in (("default", True, 128), ("no-cudnn", False, 128),
                                   ("default-again-new-length", True, 300)):
        torch.backends.cuda.enable_cudnn_sdp(cudnn)
        results[setting] = ms_per_token(model, torch.randint(100, 1000, (1, prompt), device="cuda"))
        print(setting, "ms per token of 3 identical runs:", results[setting], flush=True)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "sdpa_first_shape.json").write_text(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
