"""speed: the analytic FLOPs of a scan point, the matrix-product rate, paired medians, timing."""

import math
from types import SimpleNamespace

import pytest
import torch

from sensfind.lab.speed import flops_per_point, matmul_gflops, paired_median, peak_rss_gib, timed

GPT2_SMALL = SimpleNamespace(d_model=768, n_heads=12, d_head=64, n_key_value_heads=None, attn_only=False,
                             gated_mlp=False, d_mlp=3072, n_layers=12, d_vocab_out=50257)
SMOLLM2_135M = SimpleNamespace(d_model=576, n_heads=9, d_head=64, n_key_value_heads=3, attn_only=False,
                               gated_mlp=True, d_mlp=1536, n_layers=30, d_vocab_out=49152)


def test_flops_per_point_matches_the_documented_models():
    # the figures quoted in the module docstring (GFLOP forward, perturbed at layer 1 with 10 tokens)
    assert flops_per_point(GPT2_SMALL, 1, 10) / 1e9 == pytest.approx(0.233, abs=5e-4)
    assert flops_per_point(SMOLLM2_135M, 1, 10) / 1e9 == pytest.approx(0.263, abs=5e-4)


def test_flops_per_point_counts_each_term():
    cfg = SimpleNamespace(d_model=4, n_heads=2, d_head=2, n_key_value_heads=1, attn_only=False, gated_mlp=True,
                          d_mlp=8, n_layers=3, d_vocab_out=10)
    block = 2 * 4 * (4 + 2 * 2) + 2 * 4 * 4 + 2 * 2 * 4 * 5 + 3 * 2 * 4 * 8
    assert flops_per_point(cfg, 1, 5) == 2 * block + 2 * 4 * 10
    # one more key adds the scores and values of every remaining block; attention-only drops the MLP
    assert flops_per_point(cfg, 1, 6) - flops_per_point(cfg, 1, 5) == 2 * 2 * 2 * 4
    only = SimpleNamespace(**{**vars(cfg), "attn_only": True})
    assert flops_per_point(cfg, 0, 5) - flops_per_point(only, 0, 5) == 3 * 3 * 2 * 4 * 8


def test_matmul_gflops_is_a_positive_rate():
    rate = matmul_gflops(torch.float32, 16, 32, 24, min_time=0.001)
    assert math.isfinite(rate) and rate > 0


def test_paired_median_takes_ratios_within_repeats():
    # the ratio of medians would be 2 / 3; the median of per-repeat ratios is 1
    assert paired_median([1.0, 2.0, 9.0], [1.0, 2.0, 3.0]) == 1.0
    assert paired_median([1.0, 2.0, 9.0], [1.0, 2.0, 3.0], scale=4.0) == 4.0
    with pytest.raises(ValueError, match="equal, nonzero counts, got 2 and 1"):
        paired_median([1.0, 2.0], [1.0])


def test_timed_and_peak_rss():
    assert timed(lambda: sum(range(1000))) >= 0
    assert peak_rss_gib() > 0
