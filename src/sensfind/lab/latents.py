"""Operations on an SAE's latent codes and decoder rows that the experiments measure with.

Top-k truncation of a code, noise that keeps a code's support, the D/E alignment and firing density of
each latent, decoder rows of active or inactive latents, and the KL of substituting activations at a
subject's site.
"""

from __future__ import annotations

import torch
from torch import Tensor
from sensfind.reporting.stats import describe, ks
from sensfind.lab.pool import pick
from sensfind.core.effects import kl
from sensfind.core.scan import base_output

__all__ = ["K_GRID", "decoder_rows", "describe_latent_groups", "latent_noise", "latent_properties", "log10_density",
           "same_norm", "substitution_kl", "topk_codes", "topk_grid"]

K_GRID = (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)


def topk_grid(max_l0: int) -> list[int]:
    """The values of ``K_GRID`` below ``max_l0``, then ``max_l0`` itself (all latents)."""
    return [k for k in K_GRID if k < max_l0] + [max_l0]


def topk_codes(a: Tensor, k: int) -> Tensor:
    """``a [L]`` with all but its ``k`` largest entries zeroed (and negatives clamped to 0)."""
    out = torch.zeros_like(a)
    if k > 0:
        idx = a.topk(min(k, a.shape[0])).indices
        out[idx] = a[idx]
    return out.clamp(min=0)


def latent_noise(a: Tensor, sigma: float, n: int, generator: torch.Generator) -> Tensor:
    """``n`` noisy copies ``[n, L]`` of the code ``a [L]``: ``a_i (1 + σ z_i)``, ``z ~ N(0, 1)``, on its
    active latents only and floored at 1% of the original value, so the support (L0) is kept."""
    z = torch.randn(n, a.shape[0], generator=generator)
    return torch.where(a > 0, torch.maximum(a * (1 + sigma * z), 0.01 * a), a)


@torch.no_grad()
def latent_properties(dic, pool: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per latent: the cosine between its encoder column and decoder row ``[L]`` (the D/E projection), its
    firing density on ``pool [M, d]`` ``[L]``, and which pool rows it fires on ``[M, L]`` (bool)."""
    de = torch.nn.functional.cosine_similarity(dic.encoder.float().T, dic.raw_decoder.float(), dim=1)
    active = torch.cat([dic.encode(chunk.float()) > 0 for chunk in pool.split(256)])
    return de, active.float().mean(0), active


def log10_density(density: Tensor, n_pool: int) -> Tensor:
    """``log10`` of firing densities ``[L]`` measured on ``n_pool`` activations; latents that never fired
    are put at a tenth of one firing, ``1 / (10 n_pool)``."""
    return torch.log10(density.clamp(min=1.0 / (10 * n_pool)))


def describe_latent_groups(de: Tensor, log_density: Tensor, groups: dict[str, Tensor], reference: Tensor) -> dict:
    """Per group of latent ids: its size, D/E cosines and log densities (``sensfind.reporting.stats.describe``) and KS
    tests of both against the latents ``reference``."""

    ref_de, ref_dens = de[reference], log_density[reference]
    return {name: dict(n=int(ids.numel()), de_cos=describe(de[ids]), log10_density=describe(log_density[ids]),
                       ks_de_vs_all=ks(de[ids], ref_de), ks_density_vs_all=ks(log_density[ids], ref_dens))
            for name, ids in groups.items()}


@torch.no_grad()
def decoder_rows(dic, base: Tensor, active: bool, n: int, seed: int) -> Tensor | None:
    """Up to ``n`` unit decoder rows ``[≤n, d]`` of latents active (or inactive) on ``base [d]``, drawn with
    ``seed``; None when there is no such latent."""

    on = dic.encode(base[None].float())[0] > 0
    ids = on.nonzero()[:, 0] if active else (~on).nonzero()[:, 0]
    if ids.numel() == 0:
        return None
    return dic.decoder[pick(ids, n, seed)].to(base.dtype)


def same_norm(directions: Tensor, norms) -> Tensor:
    """Rows of ``directions [R, d]`` rescaled to ``norms`` (a scalar or ``[R]``)."""
    u = directions / directions.norm(dim=1, keepdim=True)
    return u * torch.as_tensor(norms, dtype=u.dtype).reshape(-1, 1)


def substitution_kl(subject, acts: Tensor) -> Tensor:
    """KL(p0 || p) ``[B]`` in nats of the subject's output with ``acts [B, d]`` in place of its base."""

    return kl(base_output(subject), subject.run(acts.to(subject.base.dtype)))
