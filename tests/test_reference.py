"""benchmarks/reference.py and benchmarks/vs_reference.py on the tiny preset: behaviour, not speed."""
import ast
import json
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from engine import presets
from engine.studies.bench import FILLER
from engine.worker.models import saved_random_model
from engine.worker.prompts import load_tokenizer

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
PROMPT_TOKENS, NEW_TOKENS, REPEATS = 40, 12, 2


@pytest.fixture(scope="module")
def folder() -> Path:
    return saved_random_model(presets.load("tiny"))


@pytest.fixture(scope="module")
def commands(folder, tmp_path_factory) -> dict:
    """The two commands this module checks, run at the same time: one reference run, isolated (-I: neither
    the repository nor PYTHONPATH is importable), and one pair of vs_reference.py. (process, JSON path) each."""
    out = tmp_path_factory.mktemp("reference")
    reference = [sys.executable, "-I", str(BENCHMARKS / "reference.py"), str(folder), "--prompt", FILLER,
                 "--prompt-tokens", str(PROMPT_TOKENS), "--new-tokens", str(NEW_TOKENS), "--repeats", str(REPEATS),
                 "--threads", "1", "--attn", "eager", "--device", "cpu", "--json", str(out / "reference.json")]
    pair = [sys.executable, str(BENCHMARKS / "vs_reference.py"), "--preset", "tiny", "--variants", "sdpa",
            "--prompt-tokens", str(PROMPT_TOKENS), "--new-tokens", str(NEW_TOKENS), "--pairs", "1", "--repeats",
            str(REPEATS), "--threads", "1", "--json", str(out / "vs.json")]
    with ThreadPoolExecutor(2) as both:
        started = {name: both.submit(subprocess.run, command, capture_output=True, text=True, timeout=600)
                   for name, command in (("reference", reference), ("pair", pair))}
        return {"reference": (started["reference"].result(), out / "reference.json"),
                "pair": (started["pair"].result(), out / "vs.json")}


@pytest.fixture(scope="module")
def report(commands) -> dict:
    done, path = commands["reference"]
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(path.read_text())


def test_every_repeat_makes_n_tokens_and_its_figures_follow_from_its_timestamps(report):
    assert report["repeats"] == REPEATS and len(report["runs"]) == REPEATS
    assert report["prompt_tokens"] == PROMPT_TOKENS and report["threads"] == 1
    assert report["attn_implementation"] == "eager" and report["dtype"] == "float32"
    for run in report["runs"]:
        times = run["token_times_s"]
        assert len(times) == NEW_TOKENS and times == sorted(times) and times[0] > 0
        assert run["ttft_s"] == times[0] and run["e2e_s"] == times[-1]
        assert run["tpot_s"] == pytest.approx((times[-1] - times[0]) / (NEW_TOKENS - 1), rel=1e-12)
        assert abs(run["e2e_s"] - (run["ttft_s"] + run["tpot_s"] * (NEW_TOKENS - 1))) < 1e-9
        # TTFT in three, from the prefill's own marks: each part positive, together TTFT
        parts = [run["before_prefill_s"], run["prefill_s"], run["first_token_out_s"]]
        assert all(part > 0 for part in parts) and sum(parts) == pytest.approx(run["ttft_s"], rel=1e-9)
    for key in ("ttft_s", "tpot_s", "e2e_s"):
        assert report[key] == statistics.median(run[key] for run in report["runs"])
    assert report["tpot_cuda_events_s"] is None            # CUDA events only on a GPU
    assert set(report["versions"]) == {"python", "torch", "transformers"}


def test_it_makes_the_greedy_tokens_of_plain_generate_on_the_engines_prompt(report, folder):
    import torch
    from transformers import AutoModelForCausalLM
    # the prompt as the engine's worker builds a synthetic one: its tokenizer's ids, repeated and cut
    ids = load_tokenizer(presets.load("tiny"))(FILLER, add_special_tokens=True)["input_ids"]
    ids = (ids * (PROMPT_TOKENS // len(ids) + 1))[:PROMPT_TOKENS]
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                  # as the reference ran: the same sums in the same order
    try:
        out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             do_sample=False, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, pad_token_id=0)
    finally:
        torch.set_num_threads(threads)
    assert report["token_ids"] == out[0, len(ids):].tolist()
    assert report["same_tokens_every_repeat"]


def test_the_reference_imports_nothing_from_the_engine(report):
    assert report["engine_imported"] is False
    tree = ast.parse((BENCHMARKS / "reference.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert "engine" not in imported and "ui" not in imported and "app" not in imported


def test_one_pair_against_the_engine_runs_end_to_end_and_writes_its_json(commands):
    done, path = commands["pair"]
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(path.read_text())
    assert result["setup"]["prompt_tokens"] == PROMPT_TOKENS and result["setup"]["threads"] == 1
    sdpa = result["variants"]["sdpa"]
    assert sdpa["reference_attn_implementation"] == "sdpa" and sdpa["same_work"]
    (pair,) = sdpa["pairs"]
    assert pair["first"] == "engine" and pair["same_tokens"] and pair["same_prompt_length"]
    assert pair["engine"]["prompt_tokens"] == pair["reference"]["prompt_tokens"] == PROMPT_TOKENS
    assert pair["reference"]["output_tokens"] == pair["engine"]["output_tokens"] == NEW_TOKENS
    assert pair["tpot_ratio"] == pair["engine"]["tpot_s"] / pair["reference"]["tpot_s"]
    assert pair["ttft_ratio"] == pair["engine"]["ttft_s"] / pair["reference"]["ttft_s"]
    assert sdpa["tpot_ratios"] == [pair["tpot_ratio"]] and sdpa["tpot_ratio_median"] == pair["tpot_ratio"]
    assert sdpa["ttft_ratio_median"] == pair["ttft_ratio"]
    assert "TPOT engine/reference median" in done.stdout
    # TTFT in three on both sides, each side's medians over its repeats, printed engine / reference
    for side in ("engine_phases_s", "reference_phases_s"):
        assert all(sdpa[side][key] > 0 for key in ("before_prefill_s", "prefill_s", "first_token_out_s")), sdpa[side]
    assert sdpa["reference_phases_s"]["prefill_s"] == statistics.median(
        phase["prefill_s"] for phase in pair["reference"]["phases_repeats_s"])
    assert "sdpa: TTFT in three, engine / reference (medians): before prefill" in done.stdout


def test_the_start_method_pairs_give_ratios_medians_and_counts_of_the_slower_side():
    sys.path.insert(0, str(BENCHMARKS))
    import start_method

    def side(ttft, tpot, ids=(1, 2, 3)):
        return {"ttft_s": ttft, "tpot_s": tpot, "token_ids": list(ids), "text": "abc"}

    figures = [((2.0, 1.0), (2.2, 1.0)), ((2.4, 1.1), (2.0, 1.0)), ((2.0, 0.9), (2.0, 1.0))]
    pairs = []
    for index, (forked, spawned) in enumerate(figures):
        f, s = side(*forked), side(*spawned)
        pairs.append({"pair": index, "first": start_method.SIDES[index % 2], "forkserver": f, "spawn": s,
                      "tpot_ratio": f["tpot_s"] / s["tpot_s"], "ttft_ratio": f["ttft_s"] / s["ttft_s"],
                      "same_tokens": True})
    result = start_method.summary(pairs)
    assert result["ttft_ratios"] == [2.0 / 2.2, 1.2, 1.0] and result["ttft_ratio_median"] == 1.0
    assert (result["ttft_ratio_min"], result["ttft_ratio_max"]) == (2.0 / 2.2, 1.2)
    assert result["ttft_ratio_slower_pairs"] == 1 and result["tpot_ratio_slower_pairs"] == 1
    assert result["tpot_ratio_median"] == 1.0 and result["same_work"]
    assert result["forkserver_ttft_s_median"] == 2.0 and result["spawn_ttft_s_median"] == 2.0
    text = start_method.table({"sdpa": result})
    assert "forked slower in 1 of 3 pairs" in text and "TTFT median 1.000 (range 0.909-1.200" in text
    pairs[1]["same_tokens"] = False
    assert not start_method.summary(pairs)["same_work"]
    assert "NOT THE SAME TOKENS" in start_method.table({"sdpa": start_method.summary(pairs)})


def test_pooled_runs_give_one_median_with_a_bootstrap_interval_and_refuse_other_setups(tmp_path):
    sys.path.insert(0, str(BENCHMARKS))
    import pool_pairs

    def run(preset, ttft_ratios):
        setup = {"preset": preset, "model_dir": f"/cache/{preset}", "device": "cpu", "dtype": "float32",
                 "prompt_tokens": 128, "new_tokens": 64, "repeats": 5, "threads": None, "timeout_s": 900.0}
        pairs = [{"ttft_ratio": r, "tpot_ratio": 1.0} for r in ttft_ratios]
        return {"setup": setup, "variants": {"sdpa": {"pairs": pairs}}}

    first, second = run("tiny", [0.9, 1.1, 1.2]), run("tiny", [1.0, 1.05])
    (tmp_path / "a.json").write_text(json.dumps(first))
    (tmp_path / "b.json").write_text(json.dumps(second))
    out = tmp_path / "pooled.json"
    assert pool_pairs.main([str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--json", str(out)]) == 0
    ttft = json.loads(out.read_text())["variants"]["sdpa"]["ttft_ratio"]
    assert ttft["values"] == [0.9, 1.1, 1.2, 1.0, 1.05] and ttft["median"] == 1.05 and ttft["above_1"] == 3
    low, high = ttft["interval_95"]
    assert 0.9 <= low <= 1.05 <= high <= 1.2 and low < high
    assert pool_pairs.pool([first, second], 400) == pool_pairs.pool([first, second], 400)   # seeded: repeatable
    with pytest.raises(SystemExit, match="different setups"):
        pool_pairs.pool([first, run("small", [1.0])], 400)
