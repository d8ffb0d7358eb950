"""Metrics on hand-written timestamps, with exact expected values."""
import pytest

from engine import metrics

# request starts at t=10.0; tokens at +0.5, +0.6, +0.8, +0.9, +1.3 seconds
T_START = 10.0
TOKENS = [10.5, 10.6, 10.8, 10.9, 11.3]


def times():
    return metrics.relative_times(T_START, TOKENS)


def test_ttft_tpot_e2e_follow_the_definitions():
    t = times()
    assert metrics.ttft_s(t) == pytest.approx(0.5)
    assert metrics.e2e_s(t) == pytest.approx(1.3)
    # (1.3 - 0.5) / (5 - 1): the first token is excluded
    assert metrics.tpot_s(t) == pytest.approx(0.2)
    assert metrics.e2e_s(t) == pytest.approx(metrics.ttft_s(t) + metrics.tpot_s(t) * (len(t) - 1))


def test_inter_token_latencies_and_percentiles():
    gaps = metrics.itl_s(times())
    assert gaps == pytest.approx([0.1, 0.2, 0.1, 0.4])
    # sorted 0.1 0.1 0.2 0.4; linear interpolation between ranks as numpy does
    assert metrics.percentile(gaps, 50) == pytest.approx(0.15)
    assert metrics.percentile(gaps, 90) == pytest.approx(0.34)      # rank 2.7: 0.2 + 0.7 * (0.4 - 0.2)
    assert metrics.percentile([1, 2, 3, 4, 5], 90) == pytest.approx(4.6)
    assert metrics.percentile([1, 2, 3, 4, 5], 99) == pytest.approx(4.96)
    assert metrics.percentile([7.0], 99) == 7.0
    assert metrics.percentile([], 50) is None
    with pytest.raises(ValueError):
        metrics.percentile([1.0], 101)


def test_single_token_has_no_tpot():
    assert metrics.tpot_s([0.25]) is None
    assert metrics.itl_s([0.25]) == []
    assert metrics.ttft_s([]) is None


def test_throughput_counts_every_sequence():
    assert metrics.tokens_per_s(5, 1.25) == pytest.approx(4.0)
    assert metrics.tokens_per_s(4 * 5, 1.25) == pytest.approx(16.0)   # batch of 4
    assert metrics.tokens_per_s(0, 1.0) is None
    assert metrics.tokens_per_s(3, None) is None


def test_kv_cache_bytes_and_mean_context():
    # Llama-3.1-8B: 32 layers, 8 KV heads of 128, bf16: 128 KiB per position
    assert metrics.kv_cache_bytes(32, 8, 128, 1, 1, 2) == 131072
    assert metrics.kv_cache_bytes(32, 8, 128, 1000, 2, 2) == 262144000
    assert metrics.mean_decode_context(100, 50) == 125.0
    assert metrics.mean_decode_context(100, 1) == 100.0


def test_mbu_matches_the_worked_example():
    # 14 GB of weights at TPOT 14 ms moves 1 TB/s: 50% of a 2 TB/s device
    assert metrics.mbu(14_000_000_000, 0, 0.014, 2e12) == pytest.approx(0.5)
    assert metrics.mbu(10, 0, 0.01, None) is None
    assert metrics.mbu(10, 0, None, 1e9) is None


def test_first_difference():
    assert metrics.first_difference([1, 2, 3], [1, 2, 3]) is None
    assert metrics.first_difference([1, 2, 3], [1, 9, 3]) == 1
    assert metrics.first_difference([1, 2, 3], [1, 2]) == 2
    assert metrics.first_difference([], []) is None


def test_identical_share_counts_matching_positions_over_the_longer_output():
    assert metrics.identical_share([1, 2, 3, 4], [1, 2, 3, 4]) == 1.0
    assert metrics.identical_share([1, 2, 3, 4], [1, 9, 3, 9]) == 0.5
    assert metrics.identical_share([1, 2, 3, 4], [1, 2]) == 0.5
    assert metrics.identical_share([], []) is None
