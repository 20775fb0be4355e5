"""Geometry of perturbations around a base activation, written once.

Every module that projects out the base, builds a perturbation path or rotates a direction calls
these functions. Shapes, batch first: base ``[d]``, directions ``[R, d]``, steps ``[K]`` or ``[R, K]``,
paths ``[R, K, d]``.

* **Base projection** (``reject``): the part of a vector orthogonal to the base, ``x − (x·x̂0) x̂0``.
  In sphere mode this is all that moves the activation.
* **Effective directions**: the unit direction that actually moves the activation: the base
  projected out (sphere mode) or the direction itself (straight mode).
* **Paths** (``perturb``): sphere mode (slerp) keeps the norm, ``x(θ) = |x0| (cos θ x̂0 + sin θ t̂)``
  with ``t̂`` the unit part of the direction orthogonal to ``x0`` (steps in degrees); straight mode
  moves in a line, ``x(α) = x0 + α |x0| u`` (``scale="relative"``) or ``x0 + α u`` (``"absolute"``).
* **Rotations** (``rotate``, ``tangent_rotations``): a unit row turned by an angle towards a unit
  tangent, the probes of a local-optimum test.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "Mode",
    "PARALLEL_TOL",
    "check_directions",
    "is_base",
    "directions_from_targets",
    "effective_directions",
    "perturb",
    "project_out",
    "reject",
    "rotate",
    "tangent_rotations",
    "unit",
]

Mode = Literal["sphere", "straight"]
MODES = ("sphere", "straight")

PARALLEL_TOL = 1e-6  # relative size of the orthogonal part below which a direction counts as parallel


def unit(x: Tensor) -> Tensor:
    """Rows of ``x`` ``[..., d]`` scaled to unit norm."""
    return x / x.norm(dim=-1, keepdim=True)


def reject(x: Tensor, base: Tensor) -> Tensor:
    """The part of ``x`` ``[..., d]`` orthogonal to ``base`` ``[d]``: ``x − (x·x̂0) x̂0``, in ``x``'s dtype.

    The base is normalised in the wider of the two dtypes, then cast to ``x``'s.
    """
    wide = torch.promote_types(base.dtype, x.dtype)
    b = base.to(wide)
    xhat = (b / b.norm()).to(x.dtype)
    return x - (x @ xhat)[..., None] * xhat


def check_directions(directions: Tensor, d: int, base: Tensor | None = None, what: str = "direction") -> Tensor:
    """Validate directions ``[R, d]`` (or ``[d]``): right width, finite, nonzero, and, when ``base`` is
    given (sphere mode), not parallel to it. Returns them as ``[R, d]`` (not normalised)."""
    if not isinstance(directions, Tensor):
        raise TypeError(f"{what}s must be a torch.Tensor of shape [R, {d}], got {type(directions).__name__}")
    if directions.is_complex() or not directions.is_floating_point():
        raise TypeError(f"{what}s must be a real floating-point tensor, got dtype {directions.dtype}; "
                        "convert with .float() (complex values have no meaning as activation directions)")
    if directions.ndim == 1:
        directions = directions[None]
    if directions.ndim != 2 or directions.shape[1] != d:
        raise ValueError(f"{what}s must have shape [R, {d}] (the site's width), got {tuple(directions.shape)}")
    if directions.shape[0] == 0:
        raise ValueError(f"no {what}s given: need at least one row")
    with torch.no_grad():
        finite = torch.isfinite(directions).all(dim=1)
        if not finite.all():
            i = int((~finite).nonzero()[0])
            raise ValueError(f"{what} {i} contains NaN or inf values")
        norms = directions.norm(dim=1)
        if (norms == 0).any():
            i = int((norms == 0).nonzero()[0])
            raise ValueError(f"{what} {i} is the zero vector; directions must be nonzero")
        if base is not None:
            b = base / base.norm()
            cos = (directions.to(b.dtype) @ b).abs() / norms.to(b.dtype)
            par = (1 - cos**2).clamp(min=0).sqrt() < PARALLEL_TOL
            if par.any():
                i = int(par.nonzero()[0])
                raise ValueError(
                    f"{what} {i} is parallel to the base activation (|cos| = {float(cos[i]):.8f}); in sphere "
                    "mode only the part orthogonal to the base moves the activation, and it is zero"
                )
    return directions


def is_base(acts: Tensor, base: Tensor) -> Tensor:
    """``[M]`` bool: which rows of ``acts`` ``[M, d]`` are the base activation itself (within 1e-6 of its
    norm), e.g. the subject's own prompt among the real-other activations."""
    return (acts - base).norm(dim=1) <= 1e-6 * base.norm()


def directions_from_targets(base: Tensor, targets: Tensor) -> Tensor:
    """Unit directions ``(x1 - x0)/|x1 - x0|`` ``[R, d]`` from the base ``[d]`` towards target activations ``[R, d]``."""
    targets = check_directions(targets, base.shape[0], what="target")
    diff = targets.to(base.dtype) - base
    norms = diff.norm(dim=1)
    if (norms == 0).any():
        i = int((norms == 0).nonzero()[0])
        raise ValueError(f"target {i} equals the base activation; its direction is undefined")
    return diff / norms[:, None]


def effective_directions(directions: Tensor, base: Tensor, mode: str) -> Tensor:
    """The unit direction that actually moves the activation: in sphere mode the part orthogonal to
    ``base``; in straight mode the direction itself. ``[R, d]``."""
    u = unit(directions)
    if mode == "sphere":
        u = reject(u, base)
        norms = u.norm(dim=1, keepdim=True)
        parallel = norms[:, 0] < PARALLEL_TOL
        if parallel.any():
            i = int(parallel.nonzero()[0])
            raise ValueError(f"direction {i} is parallel to the base; it has no part orthogonal to it")
        u = u / norms
    return u


def project_out(directions: Tensor, base: Tensor) -> Tensor:
    """Unit rows of the part of ``directions`` ``[N, d]`` orthogonal to ``base`` ``[d]``: ``[N, d]``.

    This is all that a sphere-mode scan sees of a direction. Raises ``ValueError`` for a row
    (numerically) parallel to the base.
    """
    if directions.ndim == 1:
        directions = directions[None]
    if directions.ndim != 2 or base.ndim != 1 or directions.shape[1] != base.shape[0]:
        raise ValueError(
            f"need directions [N, d] and base [d] of the same width, "
            f"got {tuple(directions.shape)} and {tuple(base.shape)}"
        )
    return effective_directions(directions, base.to(directions.dtype), "sphere")


def perturb(base: Tensor, directions: Tensor, steps: Tensor, mode: Mode = "sphere", scale: str = "relative") -> Tensor:
    """Perturbed activations ``[R, K, d]`` for directions ``[R, d]`` and steps ``[K]`` or ``[R, K]``.

    Sphere mode: steps in degrees. Straight mode: steps are α (times |x0| when ``scale='relative'``).
    """
    steps = steps.to(base.dtype)
    if steps.ndim == 1:
        steps = steps.expand(directions.shape[0], -1)
    norm = base.norm()
    if mode == "sphere":
        xhat = base / norm
        that = unit(reject(directions.to(base.dtype), base))  # unit part orthogonal to the base  [R, d]
        theta = torch.deg2rad(steps)[..., None]  # [R, K, 1]
        return norm * (theta.cos() * xhat + theta.sin() * that[:, None, :])
    if mode == "straight":
        u = unit(directions.to(base.dtype))
        size = norm if scale == "relative" else 1.0
        return base + size * steps[..., None] * u[:, None, :]
    raise ValueError(f"mode must be 'sphere' or 'straight', got {mode!r}")


def rotate(rows: Tensor, tangents: Tensor, deg: float) -> Tensor:
    """Unit ``rows`` ``[..., d]`` turned by ``deg`` degrees towards unit ``tangents`` orthogonal to them."""
    a = math.radians(deg)
    return math.cos(a) * rows + math.sin(a) * tangents


@torch.no_grad()
def tangent_rotations(rows: Tensor, base: Tensor, probes: int, deg: float, seed: int) -> Tensor:
    """``[L, P, d]``: each unit row of ``rows`` ``[L, d]`` rotated by ``deg`` towards ``P`` random tangent
    directions (orthogonal to the row and to the base, so the rotation stays within what a sphere scan sees)."""
    g = torch.Generator().manual_seed(seed)
    L, d = rows.shape
    noise = torch.randn(L, probes, d, generator=g, dtype=torch.float64).to(rows.dtype)
    noise = reject(noise, base)
    noise = noise - (noise * rows[:, None]).sum(-1, keepdim=True) * rows[:, None]
    return rotate(rows[:, None], unit(noise), deg)
