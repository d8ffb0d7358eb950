"""The worker's model loaders (engine/worker/models.py), on the built-in tiny preset."""
from engine import presets

PROMPT = "Why does decoding wait on memory bandwidth?"


def test_baseline_and_sdpa_give_the_same_logits():
    import torch

    from engine.worker import models
    from engine.variants import CATALOG
    tiny = presets.load("tiny")
    eager, tokenizer = models.load_model(tiny, CATALOG["baseline"], "cpu")
    sdpa, _ = models.load_model(tiny, CATALOG["sdpa"], "cpu")
    assert eager.config._attn_implementation == "eager" and sdpa.config._attn_implementation == "sdpa"
    ids = torch.tensor([tokenizer(PROMPT)["input_ids"]])
    with torch.inference_mode():
        a, b = eager(ids).logits, sdpa(ids).logits
    assert a.shape == (1, ids.shape[1], 512)
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
