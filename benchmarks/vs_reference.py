"""The engine against the independent reference (benchmarks/reference.py), fresh processes in alternating pairs.

For every pair and variant, one `python -m engine bench` process measures that variant alone at one
cell (a warm-up at the cell's lengths, then --repeats timed requests; its overhead probe is not used)
and one reference process (`python -I benchmarks/reference.py`, isolated so it cannot import the
engine) times the same model folder, prompt tokens, new tokens, repeats, threads and dtype with
plain generate(): eager attention for `baseline`, sdpa for `sdpa`. Which of the two goes first
alternates from pair to pair (ABBA), so a drift of the machine cancels out of the median.
A ratio is engine / reference of the two processes' medians over their repeats (above 1: the engine
times slower). Each pair also checks the work was the same: prompt length, token count, and the
greedy tokens (by id when the engine's JSON has them, else by the decoded text).

    python benchmarks/vs_reference.py --preset small --variants sdpa,baseline --prompt-tokens 128 \\
        --new-tokens 64 --pairs 6 [--repeats 5] [--threads N] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine import hardware, presets  # noqa: E402
from engine.report import BEFORE_CLOCK, IN_TTFT, PHASES  # noqa: E402
from engine.studies.bench import FILLER  # noqa: E402
from engine.variants import CATALOG  # noqa: E402
from engine.views.tables import fixed, fixed_width, ms  # noqa: E402
from engine.worker import allocator  # noqa: E402
from engine.worker.models import saved_random_model  # noqa: E402

REFERENCE_SCRIPT = Path(__file__).resolve().parent / "reference.py"
SIDES = ("engine", "reference")


@dataclass(frozen=True)
class Setup:
    """What both sides of every pair are given."""
    preset: str
    model_dir: str
    device: str              # "cpu" or "cuda:N", where the engine puts the preset's workers
    dtype: str
    prompt_tokens: int
    new_tokens: int
    repeats: int
    threads: int | None      # None: torch's default on both sides
    timeout_s: float


def model_dir(preset) -> str:
    """The folder both sides load: the saved random-weight model, or the preset's model id or path."""
    if not preset.random_weights:
        return preset.model_id
    if not preset.cache_on_disk:
        raise SystemExit(f"error: preset {preset.name!r} makes its random weights in memory: the reference "
                         "needs a saved folder (set `cache_on_disk: true` in the preset)")
    return str(saved_random_model(preset))


def reference_attn(name: str) -> str:
    """The attn_implementation the reference uses for an engine variant that changes only that."""
    variant = CATALOG.get(name)
    if variant is None:
        raise SystemExit(f"error: unknown variant {name!r}; available: {', '.join(CATALOG)}")
    plain = (variant.quantization is None and variant.sdpa_backend is None and not variant.compile
             and not variant.bettertransformer and variant.use_cache)
    if not plain:
        raise SystemExit(f"error: {name!r} is more than an attention implementation; the reference is plain "
                         "generate(): compare variants such as baseline (eager) and sdpa")
    return variant.attn_implementation


def run_process(command: list[str], json_path: Path, timeout_s: float, env: dict | None = None) -> dict:
    """Run one side in a fresh process (with `env` added to the environment); the JSON it wrote (an
    error with its stderr when it wrote none)."""
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s,
                          env=dict(os.environ, **env) if env else None)
    if not json_path.exists():
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"{' '.join(command[:5])} ... exited {done.returncode} without its JSON:\n{tail}")
    return json.loads(json_path.read_text())


def engine_side(setup: Setup, variant: str, folder: Path, env: dict | None = None) -> dict:
    """One engine bench process on one variant and one cell (with `env` added to its environment): the
    figures of that cell."""
    path = folder / "engine.json"
    path.unlink(missing_ok=True)
    command = [sys.executable, "-m", "engine", "bench", "--preset", setup.preset, "--variants", variant,
               "--prompt-lengths", str(setup.prompt_tokens), "--new-tokens", str(setup.new_tokens),
               "--repeats", str(setup.repeats), "--json", str(path)]
    report = run_process(command + (["--threads", str(setup.threads)] if setup.threads else []), path,
                         setup.timeout_s, env)
    row = next(r for r in report["results"] if r["variant"] == variant)
    if row["status"] != "ok":
        raise RuntimeError(f"the engine's {variant} cell is {row['status']}: {row['reason']}")
    ids = row.get("token_ids")
    if ids and isinstance(ids[0], list):      # one list per repeat, should the report hold them so
        ids = ids[0]
    return {"ttft_s": row["ttft_s"], "tpot_s": row["tpot_s"], "e2e_s": row["e2e_s"],
            "tpot_repeats_s": row["tpot_repeats_s"], "prompt_tokens": row["prompt_tokens"],
            "output_tokens": row["output_tokens"], "threads": row.get("cpu_threads"),
            "host_busy": row.get("host_busy"), "text": row["text"], "token_ids": ids,
            "phases_repeats_s": row.get("phases_repeats_s") or [], "versions": report.get("versions")}


def reference_side(setup: Setup, variant: str, folder: Path) -> dict:
    """One reference process on the same folder and lengths: its medians and tokens."""
    path = folder / "reference.json"
    path.unlink(missing_ok=True)
    command = [sys.executable, "-I", str(REFERENCE_SCRIPT), setup.model_dir, "--prompt", FILLER,
               "--prompt-tokens", str(setup.prompt_tokens), "--new-tokens", str(setup.new_tokens),
               "--repeats", str(setup.repeats), "--device", setup.device, "--dtype", setup.dtype,
               "--attn", reference_attn(variant), "--json", str(path)]
    # the allocator the engine's CPU workers set for themselves (engine/worker/allocator.py), as the C library
    # reads it at the start: generate() on both sides meets the same malloc
    env = {"GLIBC_TUNABLES": allocator.TUNABLES} if setup.device == "cpu" else None
    report = run_process(command + (["--threads", str(setup.threads)] if setup.threads else []), path,
                         setup.timeout_s, env)
    if report["engine_imported"]:
        raise RuntimeError("the reference imported the engine: it is no longer independent")
    return {"ttft_s": report["ttft_s"], "tpot_s": report["tpot_s"], "e2e_s": report["e2e_s"],
            "tpot_cuda_events_s": report["tpot_cuda_events_s"],
            "tpot_repeats_s": [run["tpot_s"] for run in report["runs"]], "prompt_tokens": report["prompt_tokens"],
            "phases_repeats_s": [{key: run.get(key) for key, _, _ in IN_TTFT} for run in report["runs"]],
            "output_tokens": len(report["token_ids"]), "threads": report["threads"], "text": report["text"],
            "token_ids": report["token_ids"], "versions": report["versions"]}


def same_tokens(engine: dict, reference: dict) -> tuple[bool, str]:
    """Whether both made the same greedy tokens, and what was compared."""
    if engine["token_ids"]:
        return list(engine["token_ids"]) == reference["token_ids"], "token ids"
    # the engine's streamer holds back a trailing incomplete UTF-8 character; a full decode shows it as U+FFFD
    same = engine["text"].rstrip("\ufffd") == reference["text"].rstrip("\ufffd")
    return same, "decoded text (the engine's JSON has no token ids)"


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def measure_pair(setup: Setup, variant: str, index: int, folder: Path) -> dict:
    """One pair: both sides in the order of its index (even: engine first), and their ratios."""
    order = SIDES if index % 2 == 0 else SIDES[::-1]
    runners = {"engine": engine_side, "reference": reference_side}
    sides = {side: runners[side](setup, variant, folder) for side in order}
    engine, reference = sides["engine"], sides["reference"]
    tokens, basis = same_tokens(engine, reference)
    return {"pair": index, "first": order[0], "engine": engine, "reference": reference,
            "tpot_ratio": ratio(engine["tpot_s"], reference["tpot_s"]),
            "ttft_ratio": ratio(engine["ttft_s"], reference["ttft_s"]),
            "same_prompt_length": engine["prompt_tokens"] == reference["prompt_tokens"],
            "same_output_tokens": engine["output_tokens"] == reference["output_tokens"],
            "same_threads": engine["threads"] in (None, reference["threads"]),
            "same_tokens": tokens, "tokens_compared_by": basis}


def ratio_spread(pairs: list[dict]) -> dict:
    """The pairs' TPOT and TTFT ratios: every value, their median and their range (None without any)."""
    result = {}
    for key in ("tpot_ratio", "ttft_ratio"):
        values = [p[key] for p in pairs if p[key] is not None]
        result[key + "s"] = values
        result[key + "_median"] = statistics.median(values) if values else None
        result[key + "_min"], result[key + "_max"] = (min(values), max(values)) if values else (None, None)
    return result


def summary(pairs: list[dict], attn: str) -> dict:
    """A variant's pairs with the medians (and ranges) of their ratios."""
    result = {"reference_attn_implementation": attn, "pairs": pairs, **ratio_spread(pairs)}
    result["same_work"] = all(p["same_prompt_length"] and p["same_output_tokens"] and p["same_tokens"]
                              and p["same_threads"] for p in pairs)
    result["engine_phases_s"] = phase_medians(pairs, "engine", PHASES)
    result["reference_phases_s"] = phase_medians(pairs, "reference", IN_TTFT)
    return result


def phase_medians(pairs: list[dict], side: str, steps) -> dict:
    """One side's steps (engine.report.PHASES: the engine's before its clock, which the reference, calling
    generate() back to back, does not take, and TTFT's three), each the median over every timed request
    of every pair, in seconds."""
    found = {}
    for key, _, _ in steps:
        values = [phase[key] for p in pairs for phase in p[side].get("phases_repeats_s") or []
                  if phase.get(key) is not None]
        found[key] = statistics.median(values) if values else None
    return found


def table(variants: dict) -> str:
    """One line per pair, then each variant's medians."""
    rows = [("variant", "pair", "first", "engine TPOT ms", "ref TPOT ms", "TPOT ratio", "engine TTFT ms",
             "ref TTFT ms", "TTFT ratio", "prompt", "tokens")]
    for name, result in variants.items():
        for p in result["pairs"]:
            e, r = p["engine"], p["reference"]
            rows.append((name, str(p["pair"] + 1), p["first"], ms(e["tpot_s"], 3), ms(r["tpot_s"], 3),
                         fixed(p["tpot_ratio"], 3), ms(e["ttft_s"], 2), ms(r["ttft_s"], 2), fixed(p["ttft_ratio"], 3),
                         f"{e['prompt_tokens']}/{r['prompt_tokens']}", "same" if p["same_tokens"] else "DIFFERENT"))
    lines = fixed_width(rows).splitlines()
    for name, result in variants.items():
        pairs = result["pairs"]
        lines.append(f"{name}: TPOT engine/reference median {fixed(result['tpot_ratio_median'], 3)} over "
                     f"{len(pairs)} pairs ({', '.join(fixed(v, 3) for v in result['tpot_ratios'])}); TTFT median "
                     f"{fixed(result['ttft_ratio_median'], 3)} ({', '.join(fixed(v, 3) for v in result['ttft_ratios'])})"
                     f"; reference attention {result['reference_attn_implementation']}; tokens compared by "
                     f"{pairs[0]['tokens_compared_by']}" + ("" if result["same_work"] else "; NOT THE SAME WORK"))
        steps, theirs = result.get("engine_phases_s") or {}, result.get("reference_phases_s") or {}
        before = [key for key, _, _ in BEFORE_CLOCK if steps.get(key) is not None]
        if before:
            lines.append(f"{name}: before the engine's clock (medians, not in TTFT): " + ", ".join(
                f"{key.removesuffix('_s')} {ms(steps[key], 2)} ms" for key in before))
        within = [key for key, _, _ in IN_TTFT if steps.get(key) is not None or theirs.get(key) is not None]
        if within:
            lines.append(f"{name}: TTFT in three, engine / reference (medians): " + ", ".join(
                f"{key.removesuffix('_s').replace('_', ' ')} {ms(steps.get(key), 3)} / {ms(theirs.get(key), 3)} ms"
                for key in within))
    return "\n".join(lines)


def pair_parser(description: str, preset: str, pairs: int, variants_help: str, threads_help: str):
    """The command line of a command that alternates fresh processes in pairs (this one, start_method.py)."""
    top = argparse.ArgumentParser(description=description)
    top.add_argument("--preset", default=preset)
    top.add_argument("--variants", default="sdpa,baseline", help=variants_help)
    top.add_argument("--prompt-tokens", type=int, default=128)
    top.add_argument("--new-tokens", type=int, default=64)
    top.add_argument("--pairs", type=int, default=pairs, help="fresh-process pairs per variant")
    top.add_argument("--repeats", type=int, default=5, help="timed requests in each process, after its warm-up")
    top.add_argument("--threads", type=int, help=f"torch CPU threads on both sides (default: {threads_help})")
    top.add_argument("--timeout", type=float, default=900.0, help="seconds one process may take")
    top.add_argument("--json", help="write every pair and the medians here")
    return top


def parse(top: argparse.ArgumentParser, argv) -> argparse.Namespace:
    args = top.parse_args(argv)
    if min(args.pairs, args.repeats, args.prompt_tokens, args.new_tokens) < 1:
        raise SystemExit("error: --pairs, --repeats, --prompt-tokens and --new-tokens must be at least 1")
    return args


def run_pairs(setup: Setup, variants: list[str], count: int, measure) -> dict[str, list[dict]]:
    """`count` pairs of every variant, `measure(setup, variant, index, folder)` each, variants interleaved
    so that each sees the same drift of the machine; a line on stderr per pair."""
    t0 = time.perf_counter()
    pairs = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for index in range(count):
            for name in variants:
                pairs[name].append(measure(setup, name, index, Path(tmp)))
                p = pairs[name][-1]
                print(f"[{time.perf_counter() - t0:5.0f} s] {name} pair {index + 1}/{count} "
                      f"({p['first']} first): TPOT ratio {fixed(p['tpot_ratio'], 3)}, "
                      f"TTFT ratio {fixed(p['ttft_ratio'], 3)}", file=sys.stderr, flush=True)
    return pairs


def finish(report: dict, text: str, json_path: str | None) -> int:
    """Print the table, write the JSON when asked; 0 when every variant's pairs did the same work."""
    print(text)
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=1))
        print(f"wrote {json_path}", file=sys.stderr)
    return 0 if all(r["same_work"] for r in report["variants"].values()) else 1


def parser() -> argparse.ArgumentParser:
    return pair_parser(__doc__.splitlines()[0], "small", 6, "comma-separated; each must only change attention",
                       "torch's")


def main(argv=None) -> int:
    args = parse(parser(), argv)
    preset = presets.load(args.preset)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    attns = {name: reference_attn(name) for name in variants}       # refuse a variant before any run
    device = hardware.resolve(preset.device)
    setup = Setup(preset.name, model_dir(preset), "cpu" if device.kind == "cpu" else f"cuda:{device.index}",
                  preset.dtype, args.prompt_tokens, args.new_tokens, args.repeats, args.threads, args.timeout)
    t0 = time.perf_counter()
    pairs = run_pairs(setup, variants, args.pairs, measure_pair)
    results = {name: summary(pairs[name], attns[name]) for name in variants}
    report = {"setup": asdict(setup), "device_name": device.name, "prompt": FILLER,
              "ratio": "engine / reference, of each process's median over its repeats",
              "order": "ABBA: pair 1 runs the engine first, pair 2 the reference first, and so on",
              "wall_s": time.perf_counter() - t0, "variants": results}
    return finish(report, table(results), args.json)


if __name__ == "__main__":
    sys.exit(main())
