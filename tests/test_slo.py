"""Latency targets and goodput (engine/slo.py), with values worked by hand, and `--slo` on the command line."""
import pytest

from engine import slo
from engine.errors import InputError
from engine.slo import Targets


def test_parse_takes_either_target_and_refuses_anything_else_with_one_line():
    assert Targets.parse("ttft_ms=200,tpot_ms=50") == Targets(200.0, 50.0)
    assert Targets.parse(" tpot_ms = 7.5 ") == Targets(None, 7.5)
    for text, message in (("tpot=3", "takes ttft_ms, tpot_ms"), ("ttft_ms=fast", "expected milliseconds"),
                          ("", "at least one target"), ("ttft_ms=0", "positive number"),
                          ("ttft_ms=nan", "positive number")):
        with pytest.raises(InputError, match=message):
            Targets.parse(text)


def test_a_request_meets_every_target_or_fails():
    targets = Targets(ttft_ms=200, tpot_ms=50)
    assert targets.met(0.2, 0.05) and not targets.met(0.201, 0.01) and not targets.met(0.1, 0.051)
    assert targets.met(0.1, None)                 # one token: no TPOT, meets a TPOT target (vLLM: TPOT 0)
    assert not targets.met(None, None)            # no answer


def test_goodput_counts_the_requests_that_met_every_target_per_second():
    # batch 2, 5 new tokens per sequence (10 in all), three repeats: E2E = TTFT + 4 TPOT
    row = {"variant": "sdpa", "status": "ok", "batch_size": 2, "output_tokens": 10,
           "ttft_repeats_s": [0.10, 0.10, 0.30], "tpot_repeats_s": [0.025, 0.075, 0.025], "tokens_per_s": 50.0}
    judged = slo.judge(row, Targets(ttft_ms=200, tpot_ms=50))
    duration = (0.10 + 4 * 0.025) + (0.10 + 4 * 0.075) + (0.30 + 4 * 0.025)     # 0.2 + 0.4 + 0.4 = 1.0 s
    assert judged["slo_met_repeats"] == [True, False, False] and judged["slo_met"] is False
    assert (judged["slo_requests"], judged["slo_good_requests"]) == (6, 2)        # 2 sequences per repeat
    assert judged["request_throughput_rps"] == pytest.approx(6 / duration)       # 6 req/s
    assert judged["goodput_rps"] == pytest.approx(2 / duration)                  # 2 req/s
    assert judged["goodput_tokens_per_s"] == pytest.approx(10 / duration)        # 2 requests x 5 tokens
    assert judged["throughput_tokens_per_s"] == pytest.approx(30 / duration)
    loose = slo.judge(row, Targets(ttft_ms=300))
    assert loose["slo_met"] and loose["goodput_rps"] == pytest.approx(loose["request_throughput_rps"])


def test_apply_judges_every_row_of_a_sweep_and_says_the_targets():
    rows = [{"variant": "sdpa", "status": "ok", "batch_size": b, "output_tokens": 4 * b,
             "ttft_repeats_s": [0.01], "tpot_repeats_s": [0.01 * b], "tokens_per_s": 1.0} for b in (1, 2, 4)]
    sweep = {"experiment": "batch", "results": rows}
    judged = slo.apply(sweep, Targets(tpot_ms=25))
    assert judged["slo"] == {"ttft_ms": None, "tpot_ms": 25} and "slo" not in sweep      # the input is not changed
    assert [r["slo_met"] for r in judged["results"]] == [True, True, False]
    assert [r["goodput_rps"] > 0 for r in judged["results"]] == [True, True, False]
    text = "\n".join(slo.lines(judged))
    assert "TPOT <= 25 ms" in text and "missed, 0 of 4 requests" in text and "vLLM's definition" in text


def test_the_command_line_refuses_a_bad_target_before_any_work(capsys):
    from engine.__main__ import main
    with pytest.raises(SystemExit) as exited:
        main(["run", "--slo", "tpot=3", "--no-history"])
    assert exited.value.code == 2 and "--slo takes ttft_ms, tpot_ms" in capsys.readouterr().err
