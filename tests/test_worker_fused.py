"""The fused Llama decode step (engine/worker/fused.py): its maths, and the models it refuses."""
import pytest


def test_the_fused_steps_two_attentions_agree_uncompiled():
    """Attention as products and sums ("reduce", for inductor to split over the cache) is SDPA's maths:
    eager, it gives SDPA's result, masked and grouped alike, and the same tokens as generate()."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from engine.worker import decode
    from engine.worker.fused import FusedLlamaStep, reduce_attention
    torch.manual_seed(0)
    group, keys, values = torch.randn(2, 2, 3, 16), torch.randn(2, 2, 40, 16), torch.randn(2, 2, 40, 16)
    visible = torch.rand(2, 40) > 0.5
    visible[:, 0] = True
    sdpa = torch.nn.functional.scaled_dot_product_attention(group, keys, values, attn_mask=visible[:, None, None, :],
                                                            scale=0.25)
    torch.testing.assert_close(reduce_attention(group, keys, values, visible, 0.25), sdpa)
    half = [t.bfloat16() for t in (group, keys, values)]           # float32 inside, the model's dtype out
    assert reduce_attention(*half, visible, 0.25).dtype == torch.bfloat16

    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(
        "llama", vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, pad_token_id=0), attn_implementation="sdpa")
    model.eval().generation_config.eos_token_id = None
    ids = torch.randint(3, 500, (2, 12))
    mask = torch.ones_like(ids)
    ids[1, :5], mask[1, :5] = 0, 0
    with torch.inference_mode():
        reference = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False)

    def decoded(attention: str) -> list:
        decoder, got = decode.CompiledDecoder(model, 64, "cpu", fused=True, fused_attention=attention), []
        decoder.step = decode._fused_step                            # uncompiled
        with torch.inference_mode():
            decoder.run(ids, 8, lambda tokens, ready: got.append(tokens), lambda host: False, attention_mask=mask)
        return torch.stack(got, 1).tolist()

    assert decoded("reduce") == decoded("sdpa") == reference[:, 12:].tolist()
    with pytest.raises(ValueError, match="unknown attention 'flash'.*'sdpa' or 'reduce'"):
        FusedLlamaStep(model, attention="flash")


def test_the_fused_step_refuses_models_it_does_not_compute():
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from engine.worker.decode import CompiledDecoder
    from engine.worker.fused import unsupported_reason
    mistral = AutoModelForCausalLM.from_config(AutoConfig.for_model(
        "mistral", vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, sliding_window=16))
    assert unsupported_reason(mistral) == "sliding-window attention"
    with pytest.raises(ValueError, match="sliding-window attention"):
        CompiledDecoder(mistral, 64, "cpu", fused=True)
    assert CompiledDecoder(mistral, 64, "cpu").step_kind == "transformers forward"
    llama = AutoModelForCausalLM.from_config(AutoConfig.for_model(
        "llama", vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2))
    llama.model.layers[0].mlp.up_proj = torch.nn.Identity()     # not a plain Linear (as a quantized layer is not)
    assert "Identity layers" in unsupported_reason(llama)
