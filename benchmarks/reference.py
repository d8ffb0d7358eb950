"""An independent reference: a saved model folder timed with plain transformers, nothing from the engine.

It loads the folder with `AutoModelForCausalLM.from_pretrained`, runs one untimed warm-up generate()
at the timed lengths, then `--repeats` greedy generate() calls with min_new_tokens = max_new_tokens
(every call makes the same number of tokens). A minimal streamer stamps `time.perf_counter()` in
`put` as each new token reaches the host (the copy to the host synchronises the device; the first
`put` carries the prompt and is skipped). Definitions, per repeat, times relative to the call's start:
TTFT = t(first), TPOT = (t(last) - t(first)) / (N - 1), E2E = t(last); the summary is their medians.
On CUDA the decode is also timed on the device's clock: a CUDA event is recorded when the first token
reaches the streamer and another is re-recorded at every later token, so the events span decode steps
2..N (all their kernels and any gaps between launches); `tpot_cuda_events_s` = elapsed / (N - 1).
Each run's TTFT is also given in three, from two hooks on the model that stamp its first forward pass (the
prefill) and remove themselves: generate()'s work before it (`before_prefill_s`), the pass (`prefill_s`)
and the rest until the first token reaches the host (`first_token_out_s`).

    python benchmarks/reference.py MODEL_DIR [--prompt TEXT] [--prompt-tokens 128] [--new-tokens 64]
        [--repeats 5] [--threads N] [--device cpu|cuda] [--dtype auto|float32|bfloat16|float16]
        [--attn sdpa|eager] [--json PATH]

It must stay independent: it imports nothing from this repository (the JSON says `engine_imported`).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from transformers.generation.streamers import BaseStreamer  # noqa: E402


class StampStreamer(BaseStreamer):
    """Stamps perf_counter() per new token and keeps its tensor; skips the prompt generate() puts first."""

    def __init__(self, cuda: bool):
        self.times: list[float] = []
        self.values: list = []          # (batch,) tensors already on the host; read into ids after the call
        self._saw_prompt = False
        self.first_event = torch.cuda.Event(enable_timing=True) if cuda else None
        self.last_event = torch.cuda.Event(enable_timing=True) if cuda else None

    def put(self, value) -> None:
        now = time.perf_counter()
        if not self._saw_prompt:
            self._saw_prompt = True
            return
        self.times.append(now)
        self.values.append(value)
        if self.first_event is not None:
            (self.first_event if len(self.times) == 1 else self.last_event).record()

    def end(self) -> None:
        pass

    def ids(self) -> list[int]:
        """The new token ids of the first sequence."""
        return [int(value.reshape(-1)[0]) for value in self.values]


def prompt_ids(tokenizer, prompt: str, prompt_tokens: int | None) -> list[int]:
    """The prompt's ids; with `prompt_tokens`, the tokenized text repeated and cut to that many."""
    ids = tokenizer(prompt or "x", add_special_tokens=True)["input_ids"]
    if prompt_tokens is None:
        return ids
    return (ids * (prompt_tokens // max(len(ids), 1) + 1))[:prompt_tokens]


def figures(t_start: float, times: list[float]) -> dict:
    """TTFT, TPOT and E2E of one call from its token timestamps."""
    relative = [t - t_start for t in times]
    n = len(relative)
    return {"token_times_s": relative, "ttft_s": relative[0], "e2e_s": relative[-1],
            "tpot_s": (relative[-1] - relative[0]) / (n - 1) if n > 1 else None}


def first_forward_marks(model) -> list[float]:
    """perf_counter() as the model's first forward pass (the prefill) begins and as it ends, appended to the
    list returned, by two hooks that remove themselves once they have fired."""
    marks: list[float] = []
    handles = []

    def stamp(*_):
        marks.append(time.perf_counter())
        handles[len(marks) - 1].remove()

    handles += [model.register_forward_pre_hook(stamp), model.register_forward_hook(stamp)]
    return marks


def timed_generate(model, input_ids, new_tokens: int, pad_token_id, cuda: bool) -> tuple[dict, list[int]]:
    """One greedy generate() of exactly `new_tokens` tokens: its figures and its token ids."""
    streamer = StampStreamer(cuda)
    mask = torch.ones_like(input_ids)
    if cuda:
        torch.cuda.synchronize()        # nothing queued earlier may count in this call's time
    with torch.inference_mode():
        marks = first_forward_marks(model)
        t_start = time.perf_counter()
        model.generate(input_ids=input_ids, attention_mask=mask, streamer=streamer, do_sample=False,
                       max_new_tokens=new_tokens, min_new_tokens=new_tokens, use_cache=True,
                       pad_token_id=pad_token_id)
    run = figures(t_start, streamer.times)
    if len(marks) == 2 and streamer.times:      # TTFT in three: before the prefill, the prefill, the first token out
        run.update(before_prefill_s=marks[0] - t_start, prefill_s=marks[1] - marks[0],
                   first_token_out_s=streamer.times[0] - marks[1])
    if cuda:
        torch.cuda.synchronize()
        n = len(streamer.times)
        run["tpot_cuda_events_s"] = (streamer.first_event.elapsed_time(streamer.last_event) / 1000 / (n - 1)
                                     if n > 1 else None)
    return run, streamer.ids()


def median_of(runs: list[dict], key: str):
    """The median of `key` over the runs that have it, or None."""
    values = [run[key] for run in runs if run.get(key) is not None]
    return statistics.median(values) if values else None


def device_name(device: str) -> str:
    """The GPU's name, or the CPU's model name as /proc/cpuinfo gives it."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def measure(args) -> dict:
    """Load, warm up, time `args.repeats` calls; the whole report."""
    if args.threads:
        torch.set_num_threads(args.threads)     # before loading, as a worker sets its threads
    dtype = args.dtype if args.dtype == "auto" else getattr(torch, args.dtype)
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=dtype, attn_implementation=args.attn)
    model = model.to(args.device).eval()
    cuda = args.device.startswith("cuda")
    ids = prompt_ids(tokenizer, args.prompt, args.prompt_tokens)
    input_ids = torch.tensor([ids], device=args.device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    timed_generate(model, input_ids, args.new_tokens, pad, cuda)      # warm-up: picks kernels at these lengths
    # a full collection mid-call would stall one token at random: move what loading made out of its reach
    gc.collect()
    gc.freeze()
    runs, tokens = [], []
    for _ in range(args.repeats):
        run, run_ids = timed_generate(model, input_ids, args.new_tokens, pad, cuda)
        runs.append(run)
        tokens.append(run_ids)
    tpots = [run["tpot_s"] for run in runs if run["tpot_s"] is not None]
    return {
        "tool": "benchmarks/reference.py", "model_dir": str(args.model_dir), "device": args.device,
        "device_name": device_name(args.device), "dtype": str(model.dtype).removeprefix("torch."),
        "attn_implementation": model.config._attn_implementation, "threads": torch.get_num_threads(),
        "prompt_tokens": len(ids), "new_tokens": args.new_tokens, "repeats": args.repeats, "batch_size": 1,
        "decoding": "greedy, min_new_tokens = max_new_tokens", "warmup_requests": 1,
        "gc": "collected and frozen after the warm-up",
        "clock": "perf_counter" + ("; tpot_cuda_events_s on CUDA events" if cuda else ""),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__},
        "runs": runs,
        "ttft_s": median_of(runs, "ttft_s"), "tpot_s": median_of(runs, "tpot_s"), "e2e_s": median_of(runs, "e2e_s"),
        "tpot_cuda_events_s": median_of(runs, "tpot_cuda_events_s"),
        "tpot_min_s": min(tpots) if tpots else None, "tpot_max_s": max(tpots) if tpots else None,
        "token_ids": tokens[0] if tokens else [], "same_tokens_every_repeat": all(t == tokens[0] for t in tokens),
        "text": tokenizer.decode(tokens[0], skip_special_tokens=True) if tokens else "",
        "engine_imported": any(name == "engine" or name.startswith("engine.") for name in sys.modules),
    }


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    top.add_argument("model_dir", help="a saved model folder (config, weights, tokenizer)")
    top.add_argument("--prompt", default="The quick brown fox jumps over the lazy dog.")
    top.add_argument("--prompt-tokens", type=int, help="repeat the tokenized prompt and cut it to this many tokens")
    top.add_argument("--new-tokens", "--max-new-tokens", dest="new_tokens", type=int, default=64)
    top.add_argument("--repeats", type=int, default=5, help="timed calls after the warm-up")
    top.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    top.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu, cuda or cuda:N")
    top.add_argument("--dtype", default="auto", help="auto (as saved), float32, bfloat16 or float16")
    top.add_argument("--attn", default="sdpa", help="attn_implementation: sdpa or eager")
    top.add_argument("--json", help="write the report here instead of stdout")
    return top


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if args.repeats < 1 or args.new_tokens < 1:
        raise SystemExit("error: --repeats and --new-tokens must be at least 1")
    report = measure(args)
    text = json.dumps(report, indent=1)
    if args.json:
        with open(args.json, "w") as out:
            out.write(text)
        print(f"{args.attn}, prompt {report['prompt_tokens']}: TTFT {report['ttft_s'] * 1e3:.2f} ms, "
              f"TPOT {(report['tpot_s'] or 0) * 1e3:.3f} ms (median of {args.repeats}); wrote {args.json}",
              file=sys.stderr)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
