"""A variant's distributions on the reference's answer, by teacher forcing (the "quality" probe).

One forward pass over the prompt and the reference variant's answer gives, at each answer position i,
the variant's next-token distribution after prompt + answer[:i]: its top token, the log-probability of
answer[i], and, given the reference's log-probabilities at the same positions, KL(P_ref || P_variant)
summed over the whole vocabulary, in float32. Nothing here runs inside a timed request: the probe
comes after a run's timed requests (engine/quality.py says what the figures mean).

The compiled decoder's variant is scored through the model's plain forward: its weights are the
baseline's, and the compiled step's own rounding is not in these figures.
"""
from __future__ import annotations

import torch

from engine.events import Probe

COMPILED_NOTE = "scored through the model's plain forward, not its compiled step"
# the reference's log-probabilities, (positions, vocabulary) float32, are sent to every variant: at most this
# many bytes, so a long answer is scored on its first positions (SmolLM2's 49,152 tokens: 341 positions)
REFERENCE_BYTES = 64 * 2**20


def teacher_forced_logprobs(runner, prompt: list[int], answer: list[int]) -> torch.Tensor:
    """(len(answer), vocabulary) float32 log-probabilities of the token at each answer position."""
    ids = torch.tensor([prompt + answer[:-1]], device=runner.device)
    with runner.attention_context(), torch.inference_mode():
        logits = runner.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False,
                              logits_to_keep=len(answer)).logits[0]
    return torch.log_softmax(logits.float(), dim=-1).cpu()


def score(runner, probe: Probe, cancel) -> dict:
    """The per-position values of the variant on `probe.answer`, against `probe.reference` (an
    (answer, vocabulary) float32 array of the reference's log-probabilities) when given; the variant's
    own log-probabilities travel back when no reference is given (it is the reference) or when asked."""
    answer = [int(token) for token in probe.answer]
    if not answer:
        raise ValueError("the reference's answer has no tokens to score")
    if probe.reference is None:           # the reference: its array travels to every variant, so it is bounded
        vocabulary = runner.model.get_output_embeddings().weight.shape[0]
        answer = answer[:max(1, REFERENCE_BYTES // (vocabulary * 4))]
    prompt = list(runner.prompt_ids(probe.request))
    logprobs = teacher_forced_logprobs(runner, prompt, answer)
    values = {"positions": len(answer), "prompt_tokens": len(prompt),
              "top_ids": logprobs.argmax(dim=-1).tolist(),
              "token_logprobs": logprobs.gather(1, torch.tensor(answer)[:, None])[:, 0].tolist()}
    if probe.reference is not None:
        reference = torch.from_numpy(probe.reference)
        if tuple(reference.shape) != tuple(logprobs.shape):
            raise ValueError(f"the reference's log-probabilities are {tuple(reference.shape)}, this variant's "
                             f"{tuple(logprobs.shape)}: not the same tokens or vocabulary")
        # KL(P_ref || P_var) = sum_v p_ref(v) (log p_ref(v) - log p_var(v)), in nats
        values["kld"] = (reference.exp() * (reference - logprobs)).sum(dim=-1).clamp_min(0.0).tolist()
    if runner.decoder is not None:
        values["approximation"] = COMPILED_NOTE
    if probe.reference is None or probe.keep_logprobs:
        values["logprobs"] = logprobs.numpy()
    return values
