"""Starting directions of a discovery round: given, isotropic, covariance-shaped or metric.

``metric_directions`` draws from the effect's second-order growth at the base (see ``sensfind.discovery.loop``
for why discovery starts there by default); ``initial_directions`` picks the kind a ``DiscoverConfig``
asks for and seeds each round from the config's seed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from sensfind.core.baselines import cov_stats, isotropic
from sensfind.core.geometry import check_directions, reject
from sensfind.core.subject import Subject

if TYPE_CHECKING:
    from sensfind.discovery.config import DiscoverConfig

__all__ = ["initial_directions", "metric_directions"]


def _round_seed(seed: int, round_index: int) -> int:
    """Seed of a round's initial directions: the config's seed for the first, derived ones after."""
    if round_index == 0:
        return seed
    return int(np.random.SeedSequence([seed, round_index]).generate_state(1, dtype=np.uint64)[0] >> 1)


def initial_directions(
    subject: Subject, config: DiscoverConfig, init_directions: Tensor | None, activations: Tensor | None,
    round_index: int = 0, restarts: int | None = None,
) -> Tensor:
    """Starting directions ``[restarts, d]`` of a round (``init='given'`` applies to the first round;
    later rounds draw isotropic or covariance directions from their own seed)."""
    d = subject.base.shape[0]
    dtype = subject.base.dtype
    n = config.restarts if restarts is None else restarts
    seed = _round_seed(config.seed, round_index)
    if config.init == "given" and round_index == 0:
        if init_directions is None:
            raise ValueError("init='given' needs init_directions [restarts, d]")
        x = check_directions(init_directions, d, subject.base if config.mode == "sphere" else None,
                             what="initial direction").to(dtype)
        if x.shape[0] != config.restarts:
            raise ValueError(f"init_directions has {x.shape[0]} rows but restarts={config.restarts}; they must match")
        return (x / x.norm(dim=1, keepdim=True))[:n]
    if config.init == "covariance":
        if activations is None:
            raise ValueError("init='covariance' needs activations [M, d] to estimate the covariance from")
        stats = cov_stats(activations, d)
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, d, generator=g, dtype=torch.float64)
        x = z @ stats.factor.T
        return (x / x.norm(dim=1, keepdim=True)).to(dtype)
    if config.init == "metric":
        return metric_directions(subject, n, seed, config.effect, config.mode)
    return isotropic(n, d, seed=seed, dtype=dtype)


def metric_directions(subject: Subject, n: int, seed: int = 0, effect: str = "kl", mode: str = "sphere") -> Tensor:
    """``n`` unit directions drawn from N(0, H), where H = J^T M J is the effect's second-order growth at
    the base (J: the Jacobian of the output there; M: the effect's Hessian in output space, diag(p) - pp^T
    for ``kl``, the identity for ``l2``, the projection orthogonal to the base output for ``cos``).

    Each is J^T w for one Gaussian w with covariance M: one forward and one backward of the base. Such a
    direction points mostly along what the output is most sensitive to at the base, so a restart started
    there ends in one of the most sensitive optima rather than in whichever basin an isotropic start
    happens to lie in (in sphere mode the base is projected out). Rows without a usable gradient (zero,
    or not finite) are isotropic instead."""
    base = subject.base.detach()
    d = base.shape[0]
    g = torch.Generator().manual_seed(seed)
    x = base[None].repeat(n, 1).requires_grad_(True)
    with torch.enable_grad():
        out = subject.run(x)
        y0 = out[0].detach().double()
        xi = torch.randn(out.shape, generator=g, dtype=torch.float64)
        if effect == "kl":
            a = torch.softmax(y0, -1).sqrt()  # unit norm; the KL Hessian diag(p) - p p^T = diag(a)(I - a a^T)diag(a)
            w = a * reject(xi, a)
        elif effect == "cos":
            w = reject(xi, y0)
        else:
            w = xi
        (out * w.to(out.dtype)).sum().backward()
    z = x.grad.detach().double()
    if mode == "sphere":
        z = reject(z, base)
    norms = z.norm(dim=1, keepdim=True)
    usable = (torch.isfinite(norms) & (norms > 0))[:, 0]
    z = torch.where(usable[:, None], z / torch.where(usable[:, None], norms, 1.0),
                    isotropic(n, d, seed=seed, dtype=torch.float64))
    return z.to(base.dtype)

