"""Synthetic activations made of SAE latents: the ``synthetic-baseline`` and ``synthetic-structured``
baselines of the LASR study (Giglemiani et al. 2024), as bases and as targets.

Both are decoded from a sparse latent code ``a [L]`` with the dictionary's own decoder
(``x = decode(a)``; ``a @ W_dec + b_dec`` when there is no SAELens SAE). What they copy from real
activations is measured once, by :func:`latent_stats`, on real activations encoded by the SAE:

- ``synthetic_baseline`` — a "bag of SAE latents": the number of active latents ``k`` is drawn from
  the real L0 distribution, the ``k`` latents are drawn without replacement with probability
  proportional to their real firing frequency, and each latent's value is one of that latent's own
  nonzero real values. Nothing ties the chosen latents to each other.
- ``synthetic_structured`` — also copies the geometry of real codes around their *top* latent (the
  one with the largest contribution ``a_i·|W_dec_i|``): a real activation is drawn, and its top latent,
  that latent's value and its L0 are kept; each of the other ``k - 1`` latents is chosen so that the
  cosine between its decoder row and the top latent's row follows the real distribution of those
  cosines (a target cosine is drawn from the pooled real ones, and a latent is picked among the
  ``candidates`` alive latents closest to it, with probability proportional to firing frequency).
  Values come from each latent's own real values, capped at the top latent's value so that it stays
  on top.

This module only needs ``Dictionary.encode`` and the decoder; it never imports ``sae_lens`` itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from sensfind.dictionaries.dictionary import Dictionary

__all__ = ["LatentStats", "Synthetic", "latent_stats", "synthetic_baseline", "synthetic_structured", "decode"]

_CHUNK = 256  # activations encoded / decoded at once (codes are [chunk, n_latents] dense)


@dataclass(frozen=True)
class LatentStats:
    """Statistics of real SAE codes that synthetic activations are matched to.

    Attributes:
        l0: ``[M]`` number of active latents of each real activation.
        frequency: ``[L]`` fraction of real activations on which each latent is active.
        values: ``[P]`` every nonzero real latent value, grouped by latent (ascending latent id).
        offsets: ``[L + 1]`` ``values[offsets[j]:offsets[j + 1]]`` are latent ``j``'s values.
        top_latent: ``[M]`` each real activation's top latent (largest ``a_i·|W_dec_i|``), -1 if none.
        top_value: ``[M]`` that latent's value.
        top_cos: ``[Q]`` cosines between the top latent's decoder row and every other active latent's
            row, pooled over real activations.
    """

    l0: Tensor
    frequency: Tensor
    values: Tensor
    offsets: Tensor
    top_latent: Tensor
    top_value: Tensor
    top_cos: Tensor

    @property
    def n_latents(self) -> int:
        return self.frequency.shape[0]

    @property
    def alive(self) -> Tensor:  # [L] bool: active on at least one real activation
        return self.frequency > 0

    def summary(self) -> dict:
        l0 = self.l0.double()
        return dict(
            n_activations=int(self.l0.shape[0]), n_latents=self.n_latents, n_alive=int(self.alive.sum()),
            l0_mean=float(l0.mean()), l0_std=float(l0.std()) if l0.numel() > 1 else 0.0,
            value_mean=float(self.values.double().mean()) if self.values.numel() else float("nan"),
            top_cos_mean=float(self.top_cos.double().mean()) if self.top_cos.numel() else float("nan"),
        )


class Synthetic(NamedTuple):
    acts: Tensor  # [n, d] decoded synthetic activations
    codes: Tensor  # [n, L] sparse COO latent codes they were decoded from


def _check(dictionary: Dictionary, acts: Tensor | None = None) -> None:
    if not isinstance(dictionary, Dictionary):
        raise TypeError(f"dictionary must be a sensfind Dictionary, got {type(dictionary).__name__}")
    if acts is not None:
        if not dictionary.can_encode:
            raise ValueError(
                f"dictionary {dictionary.source!r} has no encoder; latent statistics need an SAE that can encode"
            )
        if not isinstance(acts, Tensor) or acts.ndim != 2 or acts.shape[1] != dictionary.d or acts.shape[0] < 1:
            shape = tuple(acts.shape) if isinstance(acts, Tensor) else type(acts).__name__
            raise ValueError(f"activations must have shape [M >= 1, {dictionary.d}], got {shape}")


@torch.no_grad()
def latent_stats(dictionary: Dictionary, activations: Tensor) -> LatentStats:
    """Encode real ``activations [M, d]`` with the dictionary's SAE and measure what synthesis copies."""
    _check(dictionary, activations)
    n_lat = dictionary.n_latents
    norms = dictionary.decoder_norms.float()
    unit = dictionary.decoder.float()
    l0, rows, cols, vals, top_lat, top_val, cos = [], [], [], [], [], [], []
    for start in range(0, activations.shape[0], _CHUNK):
        codes = dictionary.encode(activations[start : start + _CHUNK]).float()  # [c, L]
        active = codes > 0
        l0.append(active.sum(1))
        r, c = active.nonzero(as_tuple=True)
        rows.append(r + start)
        cols.append(c)
        vals.append(codes[r, c])
        contrib = codes * norms
        best_val, best = contrib.max(dim=1)
        has = best_val > 0
        top_lat.append(torch.where(has, best, torch.full_like(best, -1)))
        top_val.append(torch.where(has, codes.gather(1, best[:, None])[:, 0], torch.zeros_like(best_val)))
        # cosine of every other active latent with its activation's top latent
        other = active & has[:, None]
        other[torch.arange(codes.shape[0]), best] = False
        orow, ocol = other.nonzero(as_tuple=True)
        cos.append((unit[ocol] * unit[best[orow]]).sum(1))
    cols_all, vals_all = torch.cat(cols), torch.cat(vals)
    order = torch.argsort(cols_all, stable=True)
    counts = torch.bincount(cols_all, minlength=n_lat)
    offsets = torch.zeros(n_lat + 1, dtype=torch.long)
    offsets[1:] = counts.cumsum(0)
    m = activations.shape[0]
    return LatentStats(
        l0=torch.cat(l0), frequency=counts.float() / m, values=vals_all[order], offsets=offsets,
        top_latent=torch.cat(top_lat), top_value=torch.cat(top_val), top_cos=torch.cat(cos),
    )


def _dense_rows(codes: Tensor, start: int, end: int) -> Tensor:
    """Rows ``start:end`` of a dense or sparse COO code matrix ``[n, L]``, dense."""
    if not codes.is_sparse:
        return codes[start:end]
    idx, val = codes.indices(), codes.values()
    keep = (idx[0] >= start) & (idx[0] < end)
    out = torch.zeros(end - start, codes.shape[1], dtype=val.dtype)
    out[idx[0, keep] - start, idx[1, keep]] = val[keep]
    return out


@torch.no_grad()
def decode(dictionary: Dictionary, codes: Tensor) -> Tensor:
    """Activations ``[n, d]`` of latent codes ``[n, L]`` (dense or sparse COO), by the SAE's own decoder."""
    codes = codes.coalesce() if codes.is_sparse else codes
    out = []
    for start in range(0, codes.shape[0], _CHUNK):
        chunk = _dense_rows(codes, start, min(start + _CHUNK, codes.shape[0]))
        if dictionary.sae is not None:
            out.append(dictionary.sae.decode(chunk.to(dictionary.sae.dtype)).float())
        else:
            x = chunk.float() @ dictionary.raw_decoder.float()
            out.append(x + dictionary.b_dec.float() if dictionary.b_dec is not None else x)
    return torch.cat(out)


def _draw_value(stats: LatentStats, latent: int, g: torch.Generator) -> float:
    lo, hi = int(stats.offsets[latent]), int(stats.offsets[latent + 1])
    return float(stats.values[lo + int(torch.randint(hi - lo, (1,), generator=g))])


def _draw_l0(stats: LatentStats, g: torch.Generator) -> int:
    k = int(stats.l0[int(torch.randint(stats.l0.shape[0], (1,), generator=g))])
    return max(1, min(k, int(stats.alive.sum())))


def _check_stats(dictionary: Dictionary, stats: LatentStats, n: int) -> None:
    _check(dictionary)
    if not isinstance(stats, LatentStats):
        raise TypeError(f"stats must be LatentStats (from latent_stats), got {type(stats).__name__}")
    if stats.n_latents != dictionary.n_latents:
        raise ValueError(f"stats describe {stats.n_latents} latents but the dictionary has {dictionary.n_latents}")
    if not stats.alive.any():
        raise ValueError("no latent was active on the real activations; cannot build synthetic activations")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"number of synthetic activations must be an integer >= 1, got {n!r}")


def _finish(dictionary: Dictionary, n: int, rows: list[int], cols: list[int], vals: list[float]) -> Synthetic:
    codes = torch.sparse_coo_tensor(
        torch.tensor([rows, cols], dtype=torch.long), torch.tensor(vals, dtype=torch.float32),
        (n, dictionary.n_latents), check_invariants=True,
    ).coalesce()
    return Synthetic(decode(dictionary, codes), codes)


def synthetic_baseline(dictionary: Dictionary, stats: LatentStats, n: int, seed: int = 0) -> Synthetic:
    """``n`` bag-of-latents activations with real-like L0, latent frequencies and values."""
    _check_stats(dictionary, stats, n)
    g = torch.Generator().manual_seed(seed)
    rows, cols, vals = [], [], []
    for i in range(n):
        k = _draw_l0(stats, g)
        chosen = torch.multinomial(stats.frequency, k, replacement=False, generator=g).tolist()
        for j in chosen:
            rows.append(i)
            cols.append(j)
            vals.append(_draw_value(stats, j, g))
    return _finish(dictionary, n, rows, cols, vals)


def synthetic_structured(
    dictionary: Dictionary, stats: LatentStats, n: int, seed: int = 0, candidates: int = 8
) -> Synthetic:
    """``n`` activations whose latents sit at real-like cosines from a real top latent."""
    _check_stats(dictionary, stats, n)
    if not isinstance(candidates, int) or candidates < 1:
        raise ValueError(f"candidates must be an integer >= 1, got {candidates!r}")
    with_top = (stats.top_latent >= 0).nonzero()[:, 0]
    if with_top.numel() == 0 or stats.top_cos.numel() == 0:
        # every real code has at most one latent: there is no structure to copy
        return synthetic_baseline(dictionary, stats, n, seed)
    g = torch.Generator().manual_seed(seed)
    unit = dictionary.decoder.float()
    alive = stats.alive
    rows, cols, vals = [], [], []
    for i in range(n):
        m = int(with_top[int(torch.randint(with_top.numel(), (1,), generator=g))])
        top, top_value = int(stats.top_latent[m]), float(stats.top_value[m])
        k = max(1, min(int(stats.l0[m]), int(alive.sum())))
        used = torch.zeros(stats.n_latents, dtype=torch.bool)
        used[top] = True
        rows.append(i)
        cols.append(top)
        vals.append(top_value)
        cos_to_top = unit @ unit[top]  # [L]
        targets = stats.top_cos[torch.randint(stats.top_cos.numel(), (k - 1,), generator=g)]
        for target in targets.tolist():
            free = (alive & ~used).nonzero()[:, 0]
            if free.numel() == 0:
                break
            near = (cos_to_top[free] - target).abs().topk(min(candidates, free.numel()), largest=False).indices
            pool = free[near]
            j = int(pool[torch.multinomial(stats.frequency[pool], 1, generator=g)])
            used[j] = True
            rows.append(i)
            cols.append(j)
            vals.append(min(_draw_value(stats, j, g), top_value))
    return _finish(dictionary, n, rows, cols, vals)
