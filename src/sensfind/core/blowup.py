"""Blowup metrics on a scan ``D(θ_1..θ_K)``: where the output starts to change a lot.

- ``threshold_index`` / ``threshold_value``: first scan step whose effect exceeds ``tau``.
  Not reached is reported as index -1 and value ``inf``, never as the last step.
- ``max_slope_index``: the step that ends the steepest rise ``D_{k+1} - D_k`` (the LASR metric).
- ``soft_blowup``: a differentiable surrogate of the threshold value, the expected first crossing
  ``θ_0 + Σ_k (θ_{k+1} - θ_k) · Π_{j≤k} (1 - σ((D_j - τ)/T))``. As ``T → 0`` it tends to the
  threshold value when the threshold is reached, and to the last step otherwise.

Effects have shape ``[..., K]``; steps have shape ``[K]`` or the same shape as the effects.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn.functional import logsigmoid

__all__ = ["check_tau", "threshold_index", "threshold_value", "max_slope_index", "soft_blowup"]


def check_tau(tau: float) -> float:
    if not isinstance(tau, (int, float)) or not math.isfinite(tau) or tau <= 0:
        raise ValueError(f"tau must be a finite number > 0, got {tau!r}")
    return float(tau)


def check_temperature(temperature: float) -> float:
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return float(temperature)


def threshold_index(effects: Tensor, tau: float = 0.5) -> Tensor:
    """Index of the first step with ``effect > tau``, or -1 where it is never exceeded. ``[...]`` long."""
    tau = check_tau(tau)
    above = effects > tau
    first = above.float().argmax(dim=-1)
    return torch.where(above.any(dim=-1), first, torch.full_like(first, -1))


def threshold_value(effects: Tensor, steps: Tensor, tau: float = 0.5) -> Tensor:
    """Step value (angle or distance) of the first crossing of ``tau``; ``inf`` where not reached."""
    idx = threshold_index(effects, tau)
    steps = steps.expand_as(effects)
    val = steps.gather(-1, idx.clamp(min=0)[..., None])[..., 0].to(torch.float64)
    return torch.where(idx >= 0, val, torch.full_like(val, math.inf))


def max_slope_index(effects: Tensor, floor: float = 0.0) -> Tensor:
    """Index ``k + 1`` of the steepest rise ``D_{k+1} - D_k``.

    Where no rise exceeds ``floor`` the last index is returned, as the LASR code does; compare with
    ``threshold_index`` to tell "no blowup" apart.
    """
    if effects.shape[-1] < 2:
        raise ValueError(f"a scan needs at least 2 steps, got {effects.shape[-1]}")
    diff = effects.diff(dim=-1)
    best, arg = diff.max(dim=-1)
    last = torch.full_like(arg, effects.shape[-1] - 1)
    return torch.where(best > floor, arg + 1, last)


def soft_blowup(effects: Tensor, steps: Tensor, tau: float = 0.5, temperature: float = 0.05) -> Tensor:
    """Differentiable expected first-crossing step, ``[...]``. Lower means more sensitive."""
    tau = check_tau(tau)
    temperature = check_temperature(temperature)
    if effects.shape[-1] < 2:
        raise ValueError(f"a scan needs at least 2 steps, got {effects.shape[-1]}")
    steps = steps.to(effects.dtype).expand_as(effects)
    # log survival: log Π_{j≤k} (1 - σ(z_j)) = Σ_{j≤k} logσ(-z_j)
    log_survive = logsigmoid(-(effects - tau) / temperature).cumsum(dim=-1)
    widths = steps.diff(dim=-1)  # [..., K-1]
    return steps[..., 0] + (widths * log_survive[..., :-1].exp()).sum(dim=-1)
