"""A served variant scored on the reference's answer from the server's own log-probabilities.

Both engines are given the prompt and the reference's answer as token ids, so each answer position is
scored after the same tokens as the local variants' teacher-forced pass (engine/worker/quality.py):
- vLLM's completions take `prompt_logprobs: k`: one request gives, for every prompt position, the
  log-probability of the token there and of the k most likely tokens (vLLM allows 20 by default);
- llama.cpp's server gives log-probabilities only for what it generates (`n_probs`, computed over the
  whole vocabulary before sampling), so each answer position is one request of one token, on the prompt
  and the answer up to there; its prompt cache makes each request a one-token prefill.
Only k tokens of each distribution come back, so:
- the top token is exact, and so is the answer token's log-probability where it is listed (vLLM
  always lists it; llama.cpp only among its top k, and where it is not, the rest of the vocabulary's
  mass is its upper bound: the perplexity is then a lower bound, and the row says so);
- KL(P_ref || P_served) is computed over those tokens with the rest of the vocabulary as one bucket
  (the reference's remaining mass against the server's): merging outcomes never raises a KL
  divergence, so the figure is a lower bound of the full one, and the row says so.
A server that gives neither gets "not reported by the server". No torch: the reference's
log-probabilities arrive as a NumPy array.
"""
from __future__ import annotations

import math

from engine.events import Probe

TOP_K = 20
BUCKET = f"top-{TOP_K} log-probabilities with the rest of the vocabulary as one bucket: a lower bound of the full KLD"
APPROXIMATION = f"KLD from the server's {BUCKET}"
LLAMA_CPP_APPROXIMATION = f"KLD from llama.cpp's {BUCKET}, one request per answer position"
UNLISTED = "; perplexity a lower bound ({count} answer tokens outside the top {k})"


class NotReported(Exception):
    """The server gives no log-probabilities for the answer's positions."""


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


def vllm_positions(runner, prompt: list[int], answer: list[int]) -> list[dict[int, float]]:
    """Each answer position's listed log-probabilities, from one request's `prompt_logprobs`."""
    body = {"model": runner.model, "prompt": prompt + answer, "max_tokens": 1, "temperature": 0,
            "prompt_logprobs": TOP_K}
    response = runner.client.post(runner.endpoint.base_url + "/completions", json=body)
    if response.status_code != 200:
        raise NotReported(f"it answered HTTP {response.status_code} to prompt_logprobs")
    entries = (response.json().get("choices") or [{}])[0].get("prompt_logprobs")
    if not entries or len(entries) != len(prompt) + len(answer):
        raise NotReported("it sent no prompt log-probabilities")
    return [{int(k): float(v["logprob"]) for k, v in entries[len(prompt) + i].items()} for i in range(len(answer))]


def llama_cpp_positions(runner, prompt: list[int], answer: list[int]) -> list[dict[int, float]]:
    """Each answer position's top log-probabilities, one one-token request per position (the prompt cached)."""
    url = runner.endpoint.server_root + "/completion"
    positions = []
    for i in range(len(answer)):
        body = {"prompt": prompt + answer[:i], "n_predict": 1, "temperature": 0, "n_probs": TOP_K,
                "cache_prompt": True, "post_sampling_probs": False}
        response = runner.client.post(url, json=body)
        if response.status_code != 200:
            raise NotReported(f"it answered HTTP {response.status_code} to n_probs")
        entries = response.json().get("completion_probabilities") or [{}]
        listed = {int(e["id"]): float(e["logprob"]) for e in entries[0].get("top_logprobs") or []}
        if not listed:
            raise NotReported("it sent no log-probabilities")
        positions.append(listed)
    return positions


def score(runner, probe: Probe) -> dict:
    """The per-position values of the served model on `probe.answer` (engine/worker/quality.py's keys)."""
    answer = [int(token) for token in probe.answer]
    prompt = runner.prompt(probe.request)
    if not isinstance(prompt, list):
        raise NotReported("the model's tokenizer is not on this machine: the answer's tokens cannot be sent")
    llama_cpp = runner.server_kind == "llama.cpp"
    positions = (llama_cpp_positions if llama_cpp else vllm_positions)(runner, prompt, answer)
    top_ids, token_logprobs, kld, unlisted = [], [], [], 0
    for position, (token, listed) in enumerate(zip(answer, positions)):
        top_ids.append(max(listed, key=listed.get))
        if token not in listed:
            unlisted += 1
        token_logprobs.append(listed.get(token, _rest(listed)))
        if probe.reference is not None:
            kld.append(bucket_kld(probe.reference[position], listed))
    approximation = LLAMA_CPP_APPROXIMATION if llama_cpp else APPROXIMATION
    if unlisted:
        approximation += UNLISTED.format(count=unlisted, k=TOP_K)
    values = {"positions": len(answer), "prompt_tokens": len(prompt), "top_ids": top_ids,
              "token_logprobs": token_logprobs, "approximation": approximation}
    if probe.reference is not None:
        values["kld"] = kld
    return values


def _rest(listed: dict[int, float]) -> float:
    """An upper bound of an unlisted token's log-probability: the mass the listed tokens leave."""
    rest = 1.0 - sum(math.exp(v) for v in listed.values())
    return math.log(min(max(rest, 1e-12), math.exp(min(listed.values()))))
