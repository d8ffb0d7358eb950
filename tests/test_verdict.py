"""The noise rule and the verdict, on hand-written report rows."""
from engine import verdict
from engine.verdict import BY_NAME, NO_RANGE, NOISE


def row(variant, tpots, ttfts=None, memory=None, busy=False, status="ok"):
    """A report row with these per-repeat TPOTs (s), TTFTs (s) and peak memories (bytes); medians from them."""
    ttfts = ttfts or [0.010] * len(tpots)
    memory = memory or [1000] * len(tpots)
    tokens_per_s = [1 / t for t in tpots]
    middle = lambda values: sorted(values)[len(values) // 2]        # odd counts only
    return {"variant": variant, "status": status, "output_tokens": 32, "repeats": len(tpots),
            "tpot_s": middle(tpots), "tpot_repeats_s": tpots, "ttft_s": middle(ttfts), "ttft_repeats_s": ttfts,
            "tokens_per_s": middle(tokens_per_s), "tokens_per_s_repeats": tokens_per_s,
            "peak_memory_bytes": max(memory), "peak_memory_repeats_bytes": memory, "host_busy": busy,
            "host_others_cores": 1.2 if busy else 0.0}


def test_a_speedup_is_called_only_when_the_ranges_do_not_overlap():
    base = row("baseline", [0.010, 0.011, 0.012])
    apart = verdict.compare(row("sdpa", [0.004, 0.005, 0.006]), base, BY_NAME["tpot"])
    assert apart.verdict == verdict.BETTER
    assert apart.ratio == 0.011 / 0.005
    assert (apart.low, apart.high) == (0.010 / 0.006, 0.012 / 0.004)     # worst against best, both ways
    touching = verdict.compare(row("sdpa", [0.008, 0.009, 0.010]), base, BY_NAME["tpot"])
    assert touching.verdict == NOISE and touching.low <= 1 <= touching.high
    slower = verdict.compare(row("eager2", [0.020, 0.021, 0.025]), base, BY_NAME["tpot"])
    assert slower.verdict == verdict.WORSE and slower.high < 1
    single = verdict.compare(row("sdpa", [0.004]), row("baseline", [0.010]), BY_NAME["tpot"])
    assert single.verdict == NO_RANGE and single.low is None and single.ratio == 2.5


def test_memory_is_a_share_where_less_is_better_and_equal_is_noise():
    base = row("baseline", [0.01] * 3, memory=[1000, 1000, 1000])
    small = verdict.compare(row("bnb-4bit", [0.01] * 3, memory=[500, 520, 510]), base, BY_NAME["memory"])
    assert small.verdict == verdict.BETTER and small.ratio == 520 / 1000     # peak of the run: the largest
    assert verdict.directed(BY_NAME["memory"], small) == "48% less (range 48-50%)"
    same = verdict.compare(row("sdpa", [0.01] * 3, memory=[1000, 1000, 1000]), row("baseline", [0.01] * 3,
                           memory=[999, 999, 1000]), BY_NAME["memory"])
    assert verdict.directed(BY_NAME["memory"], same) == "the same"           # not "0.0% more"
    more = verdict.compare(row("compiled", [0.01] * 3, memory=[1140] * 3), base, BY_NAME["memory"])
    assert verdict.directed(BY_NAME["memory"], more) == "14% more"           # no spread: no range
    slow = verdict.compare(row("bnb-4bit", [0.019, 0.020, 0.021]), row("baseline", [0.0125, 0.013, 0.0135]),
                           BY_NAME["tpot"])
    assert verdict.directed(BY_NAME["tpot"], slow) == f"{0.020 / 0.013:.2f}x slower (range {0.019 / 0.0135:.2f}-" \
                                                      f"{0.021 / 0.0125:.2f}x)"      # a speedup of 0.65: 1.54x slower
    same = verdict.compare(row("sdpa", [0.01] * 3, memory=[1000] * 3), base, BY_NAME["memory"])
    assert same.verdict == NOISE


def test_the_verdict_names_the_winner_with_its_range_and_marks_it():
    results = [row("baseline", [0.010, 0.011, 0.012], ttfts=[0.020, 0.021, 0.022], memory=[1000] * 3),
               row("sdpa", [0.0050, 0.0052, 0.0055], ttfts=[0.019, 0.021, 0.023], memory=[1000] * 3),
               row("compiled", [0.0024, 0.0025, 0.0026], ttfts=[0.010, 0.011, 0.012], memory=[1100] * 3),
               row("bnb-4bit", [0.020, 0.021, 0.022], ttfts=[0.030, 0.031, 0.032], memory=[500, 510, 520])]
    judged = verdict.judge(results)
    assert judged["leaders"]["tpot"] == ["compiled"]
    assert judged["lines"]["tpot"] == (f"per token: compiled {0.011 / 0.0025:.2f}x faster than baseline (range "
                                       f"{0.010 / 0.0026:.2f}-{0.012 / 0.0024:.2f}x)")
    assert judged["text"] == ("per token: compiled 4.40x faster than baseline (range 3.85-5.00x); "
                              "first token: compiled 1.91x faster than baseline (range 1.67-2.20x); "
                              "tokens/s: compiled 4.40x more than baseline (range 3.85-5.00x); "
                              "memory: bnb-4bit 48% less than baseline (range 48-50%). "
                              "What each winner costs: compiled: 10% more memory, 4.40x faster per token; "
                              "bnb-4bit: 48% less memory, 1.91x slower per token.")
    assert verdict.marks(judged, "compiled") == ["fastest per token", "fastest first token", "most tokens/s"]
    assert verdict.marks(judged, "bnb-4bit") == ["least memory"]
    assert verdict.marks(judged, "baseline") == []
    assert results[1]["vs_reference"]["tpot"]["verdict"] == verdict.BETTER        # stored on the row for the JSON
    assert results[1]["vs_reference"]["ttft"]["verdict"] == NOISE
    assert "vs_reference" not in results[0]


def scored(agreement, kld_mean, status="measured", note=None):
    """A quality entry (engine/quality.py) of a variant against baseline's answer."""
    from engine import quality
    if status != "measured":
        return quality.unmeasured(status, note, "baseline")
    return {"status": "measured", "note": None, "reference": "baseline", "positions": 32,
            "top_token_agreement": agreement, "kld_mean": kld_mean, "kld_p99": None, "kld_max": kld_mean * 5,
            "kld_tail": "max", "perplexity": 3.2, "reference_perplexity": 3.0, "approximation": None}


def test_the_verdict_says_what_each_winner_costs_in_memory_speed_and_answers():
    base = row("baseline", [0.010, 0.011, 0.012], memory=[1000] * 3)
    small = dict(row("bnb-4bit", [0.0121, 0.0121, 0.0125], memory=[470, 480, 480]), quality=scored(0.9375, 0.0412))
    fast = dict(row("sdpa", [0.0050, 0.0052, 0.0055], memory=[1003, 1004, 1005]), quality=scored(1.0, 0.0))
    judged = verdict.judge([dict(base, quality=scored(None, None, "reference")), small, fast])
    assert judged["costs"]["bnb-4bit"] == ("52% less memory, 1.10x slower per token, same top token on 94%, "
                                           "mean KLD 0.041")
    assert judged["costs"]["sdpa"] == ("baseline's memory within noise, 2.12x faster per token, "
                                       "same top token on 100%, mean KLD 0")
    assert judged["text"].endswith(". What each winner costs: sdpa: baseline's memory within noise, 2.12x faster "
                                   "per token, same top token on 100%, mean KLD 0; bnb-4bit: 52% less "
                                   "memory, 1.10x slower per token, same top token on 94%, mean KLD 0.041.")
    # random weights: the cost in memory and speed stands, the answers' is not a number
    noise = dict(small, quality=scored(None, None, "not meaningful", "not meaningful: random weights"))
    judged = verdict.judge([base, noise])
    assert judged["text"].endswith(verdict.SEPARATE[0])             # it won memory alone: what would separate
    assert judged["text"][:-len(verdict.SEPARATE[0]) - 1].endswith("What each winner costs: bnb-4bit: 52% less "
                                                                   "memory, 1.10x slower per "
                                   "token, quality not meaningful: random weights.")
    # a report without quality entries (older, or its engine scored nothing) says memory and speed alone
    plain = {key: value for key, value in small.items() if key != "quality"}
    assert verdict.judge([base, plain])["costs"]["bnb-4bit"] == "52% less memory, 1.10x slower per token"
    # nobody won anything: no cost sentence
    assert "What each winner costs" not in verdict.judge([base, row("sdpa", [0.0105, 0.011, 0.0115])])["text"]


def test_ties_and_a_reference_within_noise_are_said_and_not_marked():
    results = [row("baseline", [0.010, 0.011, 0.013]), row("sdpa", [0.009, 0.0105, 0.012]),
               row("fa2", [0.0095, 0.0108, 0.0125])]
    judged = verdict.judge(results)
    assert judged["leaders"]["tpot"] == []
    assert judged["lines"]["tpot"] == ("per token: none faster than baseline beyond the noise (sdpa's and fa2's "
                                       "lower medians are within noise of baseline)")
    # a short prompt that separated nobody: the one action that would
    assert judged["text"].endswith(verdict.SEPARATE[0])
    assert verdict.marks(judged, "sdpa") == [] and verdict.marks(judged, "baseline") == []
    tied = [row("baseline", [0.010, 0.011, 0.012]), row("sdpa", [0.0050, 0.0052, 0.0055]),
            row("fa2", [0.0051, 0.0053, 0.0056])]
    judged = verdict.judge(tied)
    assert judged["leaders"]["tpot"] == ["sdpa", "fa2"]
    assert judged["lines"]["tpot"].endswith("faster than baseline (range 1.82-2.40x), tied within noise with fa2")
    assert verdict.marks(judged, "fa2")[0] == "fastest per token (tied)"


def test_a_slowed_reference_is_named_beside_the_gain():
    results = [row("baseline", [0.010, 0.011, 0.012], busy=True), row("sdpa", [0.004, 0.005, 0.006])]
    judged = verdict.judge(results)
    assert judged["lines"]["tpot"].startswith("per token: sdpa 2.20x")
    assert judged["text"].endswith(". Slowed by other processes on the CPU while timed: baseline (baseline is the "
                                   "reference: every gain above is overstated); rerun with less running beside it.")
    assert results[1]["vs_reference"]["slowed_by_others"] == ["baseline"]
    assert judged["slowed"] == ["baseline"]
    nothing = verdict.judge([row("baseline", [0.010, 0.011, 0.012], busy=True), row("sdpa", [0.010, 0.011, 0.012])])
    assert "overstated" not in nothing["text"] and "Slowed by other processes" in nothing["text"]    # no gain to inflate


def results_marks_nothing(judged):
    return all(verdict.marks(judged, name) == [] for name in ("baseline", "sdpa"))


def test_the_best_median_loses_to_a_variant_apart_from_the_reference_and_memory_needs_1_percent():
    # fa2 has the best median but overlaps baseline; sdpa is slower than fa2 yet wholly apart from baseline
    results = [row("baseline", [0.0046, 0.0048, 0.0090], memory=[1000] * 3),
               row("fa2", [0.0030, 0.0033, 0.0053], memory=[995] * 3), row("sdpa", [0.0028, 0.0035, 0.0035])]
    judged = verdict.judge(results)
    assert judged["leaders"]["tpot"] == ["sdpa"]
    assert judged["lines"]["tpot"].startswith("per token: sdpa 1.37x faster than baseline (range 1.31-3.21x)")
    assert results[1]["vs_reference"]["memory"]["verdict"] == NOISE               # 0.5% less: no difference
    assert judged["lines"]["tpot"].endswith("(fa2's lower median is within noise of baseline)")   # said why not fa2
    assert judged["lines"]["memory"] == ("memory: none uses less than baseline beyond the noise (fa2's lower peak is "
                                         "within noise of baseline)")


def test_one_request_each_calls_nothing_and_says_what_to_do():
    judged = verdict.judge([row("baseline", [0.010]), row("sdpa", [0.004])])
    assert judged["leaders"]["tpot"] == [] and judged["lines"]["tpot"] == ""
    assert results_marks_nothing(judged)
    assert judged["text"] == "One timed request each: no range to judge a difference by. Set Repeats to 3 or more."
    failed = verdict.judge([row("sdpa", [0.004] * 3), row("baseline", [0.01] * 3, status="failed")])
    assert failed["text"].startswith("No answer from baseline, the reference")


def test_the_command_line_prints_the_ratios_and_the_verdict():
    from engine.__main__ import table
    results = [row("baseline", [0.010, 0.011, 0.012], memory=[2 ** 30] * 3), row("sdpa", [0.004, 0.005, 0.006])]
    report = {"results": [dict(r, reason=None, weights_bytes=2 ** 20, mbu=None, first_diff_token=None,
                               placement="resident", tpot_min_s=min(r["tpot_repeats_s"]),
                               tpot_max_s=max(r["tpot_repeats_s"])) for r in results]}
    report["comparison"] = verdict.judge(report["results"])
    lines = table(report).splitlines()
    assert "2.20x faster (1.67-3.00x)" in lines[2] and "reference" in lines[1] and "1.00 GiB" in lines[1]
    assert lines[-1] == "verdict: " + report["comparison"]["text"]
    assert lines[-1].startswith("verdict: per token: sdpa 2.20x faster than baseline (range 1.67-3.00x)")


def test_a_better_median_within_noise_is_said_beside_the_winner_it_did_not_beat():
    # the case: sdpa's first token median is the lowest, but its range overlaps baseline's; sdpa-flash's
    # does not, so sdpa-flash wins, and the verdict says why sdpa does not
    results = [row("baseline", [0.010] * 3, ttfts=[0.030, 0.031, 0.032]),
               row("sdpa", [0.010] * 3, ttfts=[0.012, 0.020, 0.031]),
               row("sdpa-flash", [0.010] * 3, ttfts=[0.024, 0.025, 0.026])]
    judged = verdict.judge(results)
    assert judged["leaders"]["ttft"] == ["sdpa-flash"]
    assert judged["lines"]["ttft"] == (f"first token: sdpa-flash {0.031 / 0.025:.2f}x faster than baseline (range "
                                       f"{0.030 / 0.026:.2f}-{0.032 / 0.024:.2f}x) (sdpa's lower median is within "
                                       "noise of baseline)")
    # a variant whose median is worse than the winner's is not named; nor one that is slower than the reference
    assert "sdpa's" not in verdict.judge(results[:1] + results[2:] + [row("eager2", [0.010] * 3,
                                                                             ttfts=[0.028, 0.029, 0.040])])["text"]
    # someone won time per token: nothing to advise; a long prompt that separated nobody: more new tokens
    apart = [row("baseline", [0.010, 0.011, 0.012]), row("sdpa", [0.004, 0.005, 0.006])]
    assert not any(sentence in verdict.judge(apart)["text"] for sentence in verdict.SEPARATE)
    long = [dict(r, prompt_tokens=2048) for r in (row("baseline", [0.010, 0.011, 0.012]), row("sdpa", [0.010] * 3))]
    assert verdict.judge(long)["text"].endswith(verdict.SEPARATE[1])


def test_a_run_where_nobody_wins_says_so_once_and_what_it_does_not_call():
    results = [row("baseline", [0.010, 0.011, 0.013], ttfts=[0.020, 0.021, 0.022]),
               row("sdpa", [0.009, 0.0105, 0.012], ttfts=[0.019, 0.020, 0.022])]
    assert verdict.judge(results)["text"] == (
        "no variant beats baseline beyond the noise in time per token, first token, tokens/s or memory (better than "
        "baseline's but within noise, so not called: sdpa's per token, first token, tokens/s). " + verdict.SEPARATE[0])
