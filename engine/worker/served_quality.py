"""A served variant scored on the reference's answer from the server's prompt log-probabilities.

vLLM's completions take `prompt_logprobs: k`: for every prompt position, the log-probability of the
token there and of the k most likely tokens. Sent the prompt and the reference's answer as token ids
(one token generated, ignored), its entries at the answer positions are the served model's
distributions there, as a local variant's teacher-forced pass gives them (engine/worker/quality.py).
Only k tokens of each distribution come back (vLLM allows 20 by default), so:
- the top token and the log-probability of the answer's token are exact;
- KL(P_ref || P_served) is computed over those tokens with the rest of the vocabulary as one bucket
  (the reference's remaining mass against the server's): merging outcomes never raises a KL
  divergence, so the figure is a lower bound of the full one, and the row says so.
A server that takes no `prompt_logprobs` gets "not reported by the server". No torch: the reference's
log-probabilities arrive as a NumPy array.
"""
from __future__ import annotations

import math

from engine.events import Probe

TOP_K = 20
APPROXIMATION = (f"KLD from the server's top-{TOP_K} log-probabilities with the rest of the vocabulary as one "
                 "bucket: a lower bound of the full KLD")


class NotReported(Exception):
    """The server gives no prompt log-probabilities."""


def bucket_kld(reference_row, listed: dict[int, float]) -> float:
    """KL(P_ref || P_served) over the `listed` tokens (id -> served log-probability) and one bucket for the
    rest; `reference_row`: the reference's log-probabilities over the whole vocabulary."""
    kld, p_listed, q_listed = 0.0, 0.0, 0.0
    for token, q_log in listed.items():
        p_log = float(reference_row[token])
        p = math.exp(p_log)
        kld += p * (p_log - q_log)
        p_listed += p
        q_listed += math.exp(q_log)
    p_rest, q_rest = max(1.0 - p_listed, 0.0), max(1.0 - q_listed, 1e-12)
    if p_rest > 0:
        kld += p_rest * math.log(p_rest / q_rest)
    return max(kld, 0.0)


def score(runner, probe: Probe) -> dict:
    """The per-position values of the served model on `probe.answer` (engine/worker/quality.py's keys)."""
    answer = [int(token) for token in probe.answer]
    prompt = runner.prompt(probe.request)
    if not isinstance(prompt, list):
        raise NotReported("the model's tokenizer is not on this machine: the answer's tokens cannot be sent")
    body = {"model": runner.model, "prompt": prompt + answer, "max_tokens": 1, "temperature": 0,
            "prompt_logprobs": TOP_K}
    response = runner.client.post(runner.endpoint.base_url + "/completions", json=body)
    if response.status_code != 200:
        raise NotReported(f"it answered HTTP {response.status_code} to prompt_logprobs")
    entries = (response.json().get("choices") or [{}])[0].get("prompt_logprobs")
    if not entries or len(entries) != len(prompt) + len(answer):
        raise NotReported("it sent no prompt log-probabilities")
    top_ids, token_logprobs, kld = [], [], []
    for position, token in enumerate(answer):
        listed = {int(k): float(v["logprob"]) for k, v in entries[len(prompt) + position].items()}
        top_ids.append(max(listed, key=listed.get))
        token_logprobs.append(listed[token])
        if probe.reference is not None:
            kld.append(bucket_kld(probe.reference[position], listed))
    values = {"positions": len(answer), "prompt_tokens": len(prompt), "top_ids": top_ids,
              "token_logprobs": token_logprobs, "approximation": APPROXIMATION}
    if probe.reference is not None:
        values["kld"] = kld
    return values
