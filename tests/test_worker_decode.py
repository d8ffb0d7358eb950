"""The compiled static-cache decoder (engine/worker/decode.py) against generate(), on the CPU."""
import pytest

from engine import presets


@pytest.mark.parametrize("model_type,fused,attention", [("llama", None, "sdpa"), ("llama", None, "reduce"),
                                                        ("llama", False, "sdpa"), ("qwen2", None, "sdpa"),
                                                        ("opt", None, "sdpa")])
def test_compiled_decoder_decodes_a_left_padded_batch_as_generate_does(model_type, fused, attention):
    """Rows padded on the left keep their own positions (OPT learns absolute ones) and never see the pads.

    Llama-family models get the engine's fused step (Qwen2 with q/k/v biases and tied embeddings,
    Llama with Llama 3's rotary scaling); OPT keeps transformers' forward, which builds its mask
    from the cache's fill level when given none: a data-dependent shape that transformers 5.17
    cannot compile. The decoder's step passes a mask of the cache's fixed length.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from engine.worker import models
    from engine.worker.decode import CompiledDecoder
    shape = dict(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, pad_token_id=0,
                 max_position_embeddings=512)
    shape.update({"opt": dict(ffn_dim=128, word_embed_proj_dim=32),
                  "qwen2": dict(intermediate_size=128, num_key_value_heads=2, tie_word_embeddings=True),
                  "llama": dict(intermediate_size=128, num_key_value_heads=2, rope_scaling={
                      "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 64})}[model_type])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **shape), attn_implementation="sdpa")
    model.eval().generation_config.eos_token_id = None        # random weights: decode all the tokens asked for
    ids = torch.randint(3, 500, (3, 24))
    mask = torch.ones_like(ids)
    ids[1, :9], mask[1, :9] = 0, 0                              # row 1 is 15 tokens, row 2 is 24, both left-aligned
    with torch.inference_mode():
        reference = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=False)
        alone = model.generate(input_ids=ids[1:2, 9:], max_new_tokens=10, do_sample=False)
    size = models.weights_bytes(model)
    decoder, got = CompiledDecoder(model, 512, "cpu", fused=fused, fused_attention=attention), []
    expected_kind = "fused Llama step" if model_type != "opt" and fused is None else "transformers forward"
    if attention == "reduce":
        expected_kind += ", reduce attention"
    assert decoder.step_kind == expected_kind
    assert models.weights_bytes(model) == size                  # fused weights are not stored twice
    with torch.inference_mode():
        decoder.run(ids, 10, lambda tokens, ready: got.append(tokens), lambda host: False, attention_mask=mask)
        after = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=False)
    tokens = torch.stack(got, 1)
    assert tokens.tolist() == reference[:, 24:].tolist()
    assert tokens[1].tolist() == alone[0, 15:].tolist()         # the padded row decodes as it would alone
    assert after.tolist() == reference.tolist()                 # the model's own forward still works after fusing
    if decoder.fused is not None:
        attn = model.model.layers[0].self_attn                  # q, k, v are views of the fused matrix
        assert attn.q_proj.weight.data_ptr() == decoder.fused.layers[0].qkv.data_ptr()
        assert attn.v_proj.weight.untyped_storage().data_ptr() == decoder.fused.layers[0].qkv.data_ptr()
    streamed = []                                               # a stop after the third token: no fourth
    with torch.inference_mode():
        decoder.run(ids, 10, lambda tokens, ready: streamed.append(tokens), lambda host: len(streamed) == 3,
                    attention_mask=mask)
    assert torch.stack(streamed, 1).tolist() == tokens[:, :3].tolist()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_the_forward_step_serves_every_cache_bucket_with_one_compile(attn):
    """A model without the fused step (OPT) gets a 4D mask from the step itself: transformers' own
    mask code would fix the cache's length and compile again for each bucket."""
    import torch
    from torch._dynamo.utils import counters
    from transformers import AutoConfig, AutoModelForCausalLM

    from engine.worker.decode import CompiledDecoder, mask_kind
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(
        "opt", vocab_size=512, hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
        word_embed_proj_dim=64, max_position_embeddings=1024, pad_token_id=0), attn_implementation=attn)
    model.eval().generation_config.eos_token_id = None
    decoder = CompiledDecoder(model, 1024, "cpu")
    assert decoder.step_kind == "transformers forward" and decoder.mask_kind == {"sdpa": "bool", "eager": "additive"}[attn]
    graphs = None
    for length in (10, 300, 600):                               # buckets 256, 512 and 1024
        ids = torch.randint(3, 500, (2, length))
        mask = torch.ones_like(ids)
        ids[1, :4], mask[1, :4] = 0, 0
        got = []
        with torch.inference_mode():
            decoder.run(ids, 8, lambda tokens, ready: got.append(tokens), lambda host: False, attention_mask=mask)
            reference = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False)
        assert torch.stack(got, 1).tolist() == reference[:, length:].tolist()
        if graphs is None:
            graphs = counters["stats"]["unique_graphs"]
    assert counters["stats"]["unique_graphs"] == graphs          # buckets 512 and 1024: no new compile
    # kept for reuse up to two whole contexts at batch 1 (2 x 1024 positions): the 1024 bucket at
    # batch 2 fills that alone, so the older ones were let go; a return to 256 lets the 1024 one go
    assert list(decoder.caches) == [(2, 1024)] and decoder.held_bytes == decoder.cache_budget_bytes
    assert not decoder.is_ready_for(torch.zeros(2, 10, dtype=torch.long), 8)      # warmed up again, not timed
    decoder._cache((2, 256))
    assert list(decoder.caches) == [(2, 256)]
    decoder._cache((1, 512))
    decoder._cache((2, 256))                                     # used again: the most recent
    decoder._cache((1, 1024))
    assert list(decoder.caches) == [(1, 512), (2, 256), (1, 1024)]
    assert decoder.held_bytes == (512 + 512 + 1024) * decoder.position_bytes <= decoder.cache_budget_bytes
    # models whose layers do not all attend to every earlier position keep transformers' masks
    for fields in (dict(sliding_window=64), dict(layer_types=["full_attention", "sliding_attention"])):
        windowed = type("Model", (), {"config": type("Config", (), {"_attn_implementation": "sdpa", **fields})()})()
        assert mask_kind(windowed) is None
    flash = type("Model", (), {"config": type("Config", (), {"_attn_implementation": "flash_attention_2"})()})()
    assert mask_kind(flash) is None


def test_on_a_cpu_each_token_is_streamed_before_the_next_step_runs():
    """A CPU step runs to its end inside the call: streaming a token after the next step would add
    a step to TTFT and put the last two tokens at the same instant."""
    import torch

    from engine.worker import models
    from engine.worker.decode import CompiledDecoder
    from engine.variants import CATALOG
    model, _ = models.load_model(presets.load("tiny"), CATALOG["compiled"], "cpu")
    decoder, log = CompiledDecoder(model, 512, "cpu"), []
    step = decoder.step
    decoder.step = lambda *args: log.append("step") or step(*args)
    with torch.inference_mode():
        decoder.run(torch.tensor([[5, 6, 7]]), 4, lambda tokens, ready: log.append("token"), lambda host: False)
    assert log == ["token", "step", "token", "step", "token", "step", "token"]
