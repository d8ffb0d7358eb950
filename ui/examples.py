"""The example prompts of the Compare tab: a question, and notes of about 256, 2k and 4k tokens."""
from __future__ import annotations

PASSAGE = (
    "During decoding a language model produces one token per step. Each step reads every weight of "
    "the model from memory and, with a KV cache, the keys and values of all earlier positions, but "
    "does little arithmetic per byte read, so the step is bound by memory bandwidth rather than by "
    "compute. Prefill is different: the whole prompt is processed at once, and attention over a long "
    "prompt builds a score matrix whose size grows with the square of its length. FlashAttention "
    "tiles that computation so the matrix never travels to main memory; quantized weights shrink the "
    "bytes each decoding step must read. "
)
QUESTION = "Explain why attention is memory-bound during decoding."


def sized_prompt(chars: int) -> str:
    """A prompt of about `chars` characters: one token per character with a byte-level tokenizer."""
    question = "\n\nSummarise the notes above in three sentences."
    body = (PASSAGE * (chars // len(PASSAGE) + 1))[:chars - len(question)]
    return body.rsplit(" ", 1)[0].ljust(chars - len(question), ".") + question


EXAMPLES = ((QUESTION, "short question"), (sized_prompt(256), "~256 tokens"),
            (sized_prompt(1900), "~2k tokens"), (sized_prompt(4000), "~4k tokens"))
