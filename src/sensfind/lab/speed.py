"""Measuring speed: the FLOPs of one scan point, the machine's matrix-product rate (the roofline), paired
timing on a shared machine, and the process's memory.

FLOP model (analytic, per point; multiply-adds count 2). Perturbing the last position at layer L of an
n-token prompt and reading the logits there, each of the N - L remaining blocks runs one position:

    block   = 2·d·(H + 2·H_kv)·d_head QKV projections (H_kv = H without grouped-query attention)
            + 2·(H·d_head)·d          attention output projection
            + m·2·d·d_mlp             MLP in and out (m = 2), or gate, up and down (gated MLP: m = 3)
            + 2·2·H·d_head·n          attention scores and weighted values over the n keys
    forward = (N - L)·block + 2·d·V   plus the unembedding
    total   = 2·forward               the input-gradient backward repeats every matmul once
                                      (grad_input = grad_output · Wᵀ; no weight gradients)

GPT-2 small from layer 1 with 10 tokens: 0.233 GFLOP forward. SmolLM2-135M (9 query / 3 key-value
heads, gated MLP, vocabulary 49152): 0.263 GFLOP forward. Norms, softmax, rotary, the activation and the
KL over the vocabulary are not counted (memory-bound, a few % of the matmul FLOPs).

The roofline fraction of a measurement is that FLOP count times the measured points/s over the FLOP/s of
a representative matmul (:func:`matmul_gflops`) timed in the same run, interleaved with the measured
steps so that both see the same load: :func:`paired_median` takes the ratio within each repeat and the
median over repeats.
"""

from __future__ import annotations

import ctypes
import logging
import resource
import statistics
import time
from typing import Callable, Sequence

import torch

log = logging.getLogger(__name__)

__all__ = ["flops_per_point", "matmul_gflops", "paired_median", "peak_rss_gib", "timed", "tune_malloc"]


def flops_per_point(cfg, layer: int, n_keys: int) -> float:
    """Forward FLOPs of one scan point of a TransformerLens model config ``cfg`` perturbed at ``layer``
    with ``n_keys`` keys (see the module docstring); the backward doubles it."""
    d, hd = cfg.d_model, cfg.n_heads * cfg.d_head
    kv = (cfg.n_key_value_heads or cfg.n_heads) * cfg.d_head
    block = 2 * d * (hd + 2 * kv) + 2 * hd * d + 2 * 2 * hd * n_keys
    if not cfg.attn_only:
        block += (3 if cfg.gated_mlp else 2) * 2 * d * cfg.d_mlp
    return (cfg.n_layers - layer) * block + 2 * d * cfg.d_vocab_out


def matmul_gflops(dtype: torch.dtype, m: int, k: int, n: int, min_time: float = 0.05) -> float:
    """FLOP/s (in GFLOP/s) of ``[m, k] @ [k, n]`` in ``dtype``, timed over at least ``min_time`` s."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=gen).to(dtype)
    b = torch.randn(k, n, generator=gen).to(dtype)
    a @ b
    reps, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < min_time or reps < 3:
        a @ b
        reps += 1
    return 2 * m * k * n * reps / elapsed / 1e9


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn()`` takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def paired_median(num: Sequence[float], den: Sequence[float], scale: float = 1.0) -> float:
    """Median over repeats of ``scale * num[i] / den[i]``: each ratio is taken within one repeat, whose
    two measurements saw the same machine load."""
    if len(num) != len(den) or not num:
        raise ValueError(f"paired measurements need equal, nonzero counts, got {len(num)} and {len(den)}")
    return statistics.median(scale * a / b for a, b in zip(num, den))


def tune_malloc() -> bool:
    """glibc only: keep freed large blocks in the heap rather than unmapping them, so that large tensors
    freed and allocated again every step are not page-faulted in anew. ``False`` where it cannot."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError as exc:
        log.warning("malloc tuning needs glibc (%s); running untuned", exc)
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from <malloc.h>
    return libc.mallopt(m_mmap_threshold, 2**30) == 1 and libc.mallopt(m_trim_threshold, 2**31 - 1) == 1


def peak_rss_gib() -> float:
    """Peak resident memory of this process so far, in GiB (Linux: ``ru_maxrss`` is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
