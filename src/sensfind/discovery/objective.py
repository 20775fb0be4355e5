"""The sensitivity objective and its adaptive scan grid.

The objective of a batch of directions is their soft blowup distance (``sensfind.core.blowup``) over a
scan: a differentiable stand-in for "how early does the output blow up". Minimising it maximises
sensitivity. It is a pure function of the directions; the optimiser loop lives in ``optimize``.

Adaptive grid rule (``adaptive_grid``). A fixed grid over 0–180° spends most of its points after
the blowup. Each direction instead keeps its own window around its current hard blowup value θ*:

* while θ* is unknown (first iteration, or the last scan never crossed τ), scan the full range;
* when the last scan crossed τ at its very first point (the blowup moved below the window), scan
  from the range start up to the window's old upper end, so the crossing is bracketed again;
* otherwise scan ``[θ* (1 - zoom), θ* (1 + zoom)]`` clipped to the range, with at least
  ``min_width`` (in step units) between its ends.

The soft distance measured on a window that brackets the crossing approximates the threshold value
with resolution ``width / (K - 1)`` instead of ``range / (K - 1)``.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import NamedTuple

import torch
from torch import Tensor

from sensfind.core.blowup import soft_blowup
from sensfind.core.scan import Scan, ScanConfig, scan
from sensfind.core.subject import Subject

__all__ = ["ObjectiveValue", "sensitivity_objective", "adaptive_grid"]


class ObjectiveValue(NamedTuple):
    soft: Tensor  # [R] soft blowup distance (step units), differentiable
    scan: Scan  # the scan it was computed on (effects [R, K], steps [R, K])


def _subnormals_flushed() -> bool:
    tiny = torch.full((8,), 1e-39)  # a float32 subnormal
    return float((tiny * 1.0)[0]) == 0.0


@contextmanager
def flushed_subnormals():
    """Treat subnormal floats as zero on the CPU while the block runs, then restore the previous setting.

    At scan points far past the threshold the soft blowup's gradient is ``exp(-(D - τ)/T)``-small;
    through the KL's backward such rows fill the unembedding's input gradient with subnormal numbers,
    which x86 CPUs multiply many times slower than normal ones (discovery on SmolLM2: 1.7× the points
    per second with them flushed, same machine and run, one thread). Values that small do not move the
    optimiser. The setting is per thread: BLAS worker threads keep theirs, which is why the objective
    also drops negligible gradient weights at the source (:func:`_drop_negligible`). Also a decorator
    (``@flushed_subnormals()``).
    """
    was = _subnormals_flushed()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if not was:
            torch.set_flush_denormal(False)


# per-point gradient weights below this fraction of their restart's largest are dropped (see below)
NEGLIGIBLE_GRADIENT = 1e-12


def _drop_negligible(grad: Tensor | None) -> Tensor | None:
    """Zero the entries of ``d objective / d effects`` ``[R, K]`` below ``NEGLIGIBLE_GRADIENT`` times their
    row's largest. Points far past a restart's crossing get ``exp(-(D - τ)/T)``-small weights; through
    the KL's backward they fill whole rows of the unembedding's input gradient with subnormal floats,
    which x86 CPUs multiply hundreds of times slower than normal ones. Flushing them
    (:func:`flushed_subnormals`) only reaches the calling thread, not the BLAS worker threads, so the
    weights are dropped at the source; they change no restart's step by more than that fraction."""
    if grad is None:
        return None
    scale = grad.abs().amax(dim=-1, keepdim=True)
    return torch.where(grad.abs() >= NEGLIGIBLE_GRADIENT * scale, grad, torch.zeros_like(grad))


def sensitivity_objective(
    subject: Subject, directions: Tensor, config: ScanConfig, temperature: float, steps: Tensor | None = None
) -> ObjectiveValue:
    """Soft blowup distance of each direction ``[R, d]`` under ``config`` (lower = more sensitive)."""
    result = scan(subject, directions, config, steps=steps)
    if result.effects.requires_grad:
        result.effects.register_hook(_drop_negligible)
    steps_used = result.steps.to(result.effects.dtype)
    return ObjectiveValue(soft_blowup(result.effects, steps_used, config.tau, temperature), result)


def adaptive_grid(
    config: ScanConfig,
    current: Tensor,
    previous: Tensor | None = None,
    first_crossed: Tensor | None = None,
    zoom: float = 0.5,
    min_width: float | None = None,
) -> Tensor:
    """Per-direction scan grids ``[R, K]`` following the rule in the module docstring.

    Args:
        current: ``[R]`` current hard blowup value per direction (``inf`` if unknown / not reached).
        previous: ``[R, K]`` the grids used last time (for the "crossed at first point" case).
        first_crossed: ``[R]`` bool, the last scan crossed τ at its first point.
    """
    lo_range, hi_range = config.range
    k = config.steps
    if min_width is None:
        min_width = (hi_range - lo_range) / 30
    r = current.shape[0]
    lo = torch.full((r,), lo_range, dtype=torch.float64)
    hi = torch.full((r,), hi_range, dtype=torch.float64)
    cur = current.detach().double().cpu()
    known = torch.isfinite(cur)
    zlo = (cur * (1 - zoom)).clamp(min=lo_range)
    zhi = (cur * (1 + zoom)).clamp(max=hi_range)
    # keep at least min_width between the ends
    short = (zhi - zlo) < min_width
    zlo = torch.where(short, (cur - min_width / 2).clamp(min=lo_range), zlo)
    zhi = torch.where(short, (zlo + min_width).clamp(max=hi_range), zhi)
    lo = torch.where(known, zlo, lo)
    hi = torch.where(known, zhi, hi)
    if previous is not None and first_crossed is not None:
        fc = first_crossed.detach().cpu() & known
        lo = torch.where(fc, torch.full_like(lo, lo_range), lo)
        hi = torch.where(fc, previous.detach().double().cpu()[:, -1].clamp(max=hi_range), hi)
    frac = torch.linspace(0, 1, k, dtype=torch.float64)
    return lo[:, None] + (hi - lo)[:, None] * frac
