"""What an SAE reconstruction costs at the output: the measurements of the sae_error and topk_latents experiments.

:func:`measure_sae_errors` compares, on real bases, the next-token KL of substituting the reconstruction
``x̂`` with that of random errors of the same norm (isotropic, covariance-shaped), and the KL of noise on
``x̂``'s latents that keeps the L0 (``sensfind.lab.latents.latent_noise``) with that of same-norm random moves.
:func:`measure_topk` records the KL (and next-token cross-entropy, where the next token is known) of
decoding only the ``k`` largest latents of each base's code, and compares a second, lower-L0 SAE with
the first one cut to the same ``k``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from sensfind.core.baselines import cov_random_targets, isotropic
from sensfind.lab.latents import latent_noise, same_norm, substitution_kl, topk_codes, topk_grid
from sensfind.reporting.stats import describe, ks, ratio_of_means
from sensfind.lab.synthetic import decode
from sensfind.core.effects import kl
from sensfind.core.scan import base_output

__all__ = ["ERROR_KINDS", "SAEErrors", "TopK", "measure_sae_errors", "measure_topk", "nan_tensor"]

ERROR_KINDS = ("isotropic", "cov-shaped")  # random errors compared with the SAE's


def nan_tensor(*shape: int) -> Tensor:
    """A float64 tensor of ``shape`` filled with NaN (a value not measured)."""
    return torch.full(shape, math.nan, dtype=torch.float64)


# -- SAE errors vs random errors ----------------------------------------------------------------------------
@dataclass
class SAEErrors:
    """Next-token KLs (nats) on ``n`` bases with ``r`` random errors each.

    Attributes:
        kl_sae: ``[n]`` KL of substituting ``x̂`` for ``x``.
        kl_random: per kind of :data:`ERROR_KINDS`, ``[n, r]`` KL of ``x + ε`` with ``|ε| = |x - x̂|``.
        latent: per noise level σ, ``[n, r]`` KLs against the output at ``x̂``: ``latent`` (noise on the
            latents) and each kind of random move of the same norm.
        error_norm, x_norm: ``|x - x̂|`` and ``|x|`` per base.
        l0: active latents per base.
    """

    kl_sae: np.ndarray
    kl_random: dict[str, np.ndarray]
    latent: dict[float, dict[str, np.ndarray]]
    error_norm: list[float]
    x_norm: list[float]
    l0: list[int]

    def substitution_summary(self) -> dict:
        """Means, ratios and KS tests of the SAE's KL against the random errors', error norms and L0."""
        kl_sae, kl_iso, kl_cov = self.kl_sae, self.kl_random["isotropic"], self.kl_random["cov-shaped"]
        return dict(
            kl_sae=describe(kl_sae), kl_isotropic=describe(kl_iso), kl_cov_shaped=describe(kl_cov),
            ratio_vs_isotropic=ratio_of_means(kl_sae, kl_iso), ratio_vs_cov_shaped=ratio_of_means(kl_sae, kl_cov),
            median_base_ratio_vs_isotropic=float(np.median(kl_sae / kl_iso.mean(1).clip(min=1e-12))),
            ks_sae_vs_isotropic=ks(kl_sae, kl_iso.mean(1)), ks_sae_vs_cov_shaped=ks(kl_sae, kl_cov.mean(1)),
            frac_bases_sae_worse_than_isotropic=float((kl_sae > kl_iso.mean(1)).mean()),
            error_norm=describe(self.error_norm),
            error_norm_relative=float(np.mean(np.array(self.error_norm) / np.array(self.x_norm))),
            l0=describe(self.l0))

    def latent_summary(self) -> dict:
        """Per noise level (keyed ``str(σ)``): the latent noise's KL against the same-norm random moves'."""
        out = {}
        for s, kls in self.latent.items():
            k_lat, k_iso, k_cov = kls["latent"], kls["isotropic"], kls["cov-shaped"]
            out[str(s)] = dict(
                kl_latent=describe(k_lat), kl_isotropic=describe(k_iso), kl_cov_shaped=describe(k_cov),
                ratio_vs_isotropic=ratio_of_means(k_lat, k_iso), ratio_vs_cov_shaped=ratio_of_means(k_lat, k_cov),
                ks_latent_vs_isotropic=ks(k_lat, k_iso), frac_pairs_latent_worse=float((k_lat > k_iso).mean()))
        return out

    def tensors(self) -> dict[str, Tensor]:
        t = {"kl_sae": torch.tensor(self.kl_sae), "kl_isotropic": torch.tensor(self.kl_random["isotropic"]),
             "kl_cov_shaped": torch.tensor(self.kl_random["cov-shaped"]), "error_norm": torch.tensor(self.error_norm),
             "l0": torch.tensor(self.l0)}
        for s, kls in self.latent.items():
            t.update({f"latent_noise.{s}.latent": torch.tensor(kls["latent"]),
                      f"latent_noise.{s}.isotropic": torch.tensor(kls["isotropic"]),
                      f"latent_noise.{s}.cov_shaped": torch.tensor(kls["cov-shaped"])})
        return t


@torch.no_grad()
def measure_sae_errors(site, dic, bases: Tensor, n_random: int, sigmas: list[float]) -> SAEErrors:
    """:class:`SAEErrors` of ``dic`` on the pool rows ``bases`` of ``site`` (random draws seeded by the site)."""
    r, d, g_seed = n_random, site.d, site.seed + 41
    stats = site.cov()
    rec = {"sae": [], **{k: [] for k in ERROR_KINDS}}
    lat = {s: {"latent": [], **{k: [] for k in ERROR_KINDS}} for s in sigmas}
    err_norm, x_norm, l0 = [], [], []
    for i, b in enumerate(bases.tolist()):
        subj = site.subject(b)
        x = subj.base.float()
        a = dic.encode(x[None])[0].float()
        x_hat = decode(dic, a[None])[0]
        err_norm.append(float((x - x_hat).norm()))
        x_norm.append(float(x.norm()))
        l0.append(int((a > 0).sum()))
        noise = dict(zip(ERROR_KINDS, (isotropic(r, d, seed=g_seed + 2 * i),
                                       (cov_random_targets(stats, r, seed=g_seed + 2 * i + 1) - stats.mean).float())))
        rec["sae"].append(float(substitution_kl(subj, x_hat[None])[0]))
        for kind, e in noise.items():
            rec[kind].append(substitution_kl(subj, x + same_norm(e, err_norm[-1])))
        gen = torch.Generator().manual_seed(g_seed + 10_000 + i)
        at_hat = site.with_base(subj, x_hat)  # effects of the latent noise itself: KL against p(x̂)
        for s in sigmas:
            x_d = decode(dic, latent_noise(a, s, r, gen))  # [r, d], same support as a
            delta = (x_d - x_hat).norm(dim=1)
            lat[s]["latent"].append(substitution_kl(at_hat, x_d))
            for kind, e in noise.items():
                lat[s][kind].append(substitution_kl(at_hat, x_hat + same_norm(e, delta)))
    return SAEErrors(kl_sae=np.array(rec["sae"]), kl_random={k: torch.stack(rec[k]).numpy() for k in ERROR_KINDS},
                     latent={s: {k: torch.stack(v).numpy() for k, v in kls.items()} for s, kls in lat.items()},
                     error_norm=err_norm, x_norm=x_norm, l0=l0)


# -- top-k latents ------------------------------------------------------------------------------------------
@dataclass
class TopK:
    """The output with only the ``k`` largest latents of each base's code (``n`` bases).

    Attributes:
        k: the ``k`` grid (``sensfind.lab.latents.topk_grid``; the last is the largest L0: all latents).
        kl, ce: ``[n, K]`` KL(p0 || p) and next-token cross-entropy (NaN where the next token is unknown).
        clean_ce: ``[n]`` cross-entropy of the clean output.
        l0: active latents per base.
        has_loss: whether every base's next token is known.
        low_kl, low_ce, low_l0: ``[n]`` the same for the second SAE's full reconstruction (None without one).
        cut_kl: ``[n]`` KL of the first SAE cut to the second one's L0 on each base (None without one).
    """

    k: list[int]
    kl: Tensor
    ce: Tensor
    clean_ce: Tensor
    l0: list[int]
    has_loss: bool
    low_kl: Tensor | None = None
    low_ce: Tensor | None = None
    low_l0: Tensor | None = None
    cut_kl: Tensor | None = None

    def summary(self) -> dict:
        """The KL (and CE) curve over ``k``, the L0, the smallest ``k`` within 2× of the full reconstruction's
        KL and, with a second SAE, how it compares with the cut."""
        curve = [dict(k=k, kl=describe(self.kl[:, j]), ce=describe(self.ce[:, j]) if self.has_loss else None)
                 for j, k in enumerate(self.k)]
        half = next((c["k"] for c in curve if c["kl"]["mean"] <= 2 * float(self.kl[:, -1].mean())), self.k[-1])
        out = dict(k=self.k, curve=curve, l0=describe(self.l0),
                   clean_ce=describe(self.clean_ce) if self.has_loss else None, k_within_2x_of_full_kl=half)
        if self.low_kl is not None:
            out["low"] = dict(l0=describe(self.low_l0), kl=describe(self.low_kl),
                              ce=describe(self.low_ce) if self.has_loss else None,
                              main_cut_to_low_l0_kl=describe(self.cut_kl),
                              frac_bases_cut_better=float((self.cut_kl < self.low_kl).double().mean()))
        return out

    def tensors(self) -> dict[str, Tensor]:
        t = {"k": torch.tensor(self.k), "kl": self.kl, "ce": self.ce, "clean_ce": self.clean_ce, "l0": torch.tensor(self.l0)}
        if self.low_kl is not None:
            t.update(low_kl=self.low_kl, low_ce=self.low_ce, low_l0=self.low_l0, cut_kl=self.cut_kl)
        return t


@torch.no_grad()
def measure_topk(site, dic, bases: Tensor, low=None) -> TopK:
    """:class:`TopK` of ``dic`` on the pool rows ``bases`` of ``site``, with ``low`` as the second SAE."""

    n = bases.shape[0]
    has_loss = site.next_tokens is not None and bool((site.next_tokens[bases] >= 0).all())
    codes = [dic.encode(site.pool[int(b)][None])[0].float() for b in bases]
    l0 = [int((a > 0).sum()) for a in codes]
    ks = topk_grid(max(max(l0), 1))
    out = TopK(k=ks, kl=nan_tensor(n, len(ks)), ce=nan_tensor(n, len(ks)), clean_ce=nan_tensor(n), l0=l0,
               has_loss=has_loss)
    if low is not None:
        out.low_kl, out.low_ce, out.low_l0, out.cut_kl = nan_tensor(n), nan_tensor(n), torch.zeros(n), nan_tensor(n)
    for i, b in enumerate(bases.tolist()):
        subj = site.subject(b)
        p0, a = base_output(subj), codes[i]
        logits = subj.run(decode(dic, torch.stack([topk_codes(a, min(k, l0[i])) for k in ks])).to(subj.base.dtype))
        out.kl[i] = kl(p0, logits).double()
        if has_loss:
            t = int(site.next_tokens[b])
            out.ce[i] = -torch.log_softmax(logits.double(), -1)[:, t]
            out.clean_ce[i] = -torch.log_softmax(p0.double(), -1)[t]
        if low is not None:
            c = low.encode(subj.base.float()[None])[0].float()
            out.low_l0[i] = int((c > 0).sum())
            logits_low = subj.run(decode(low, c[None]).to(subj.base.dtype))
            out.low_kl[i] = float(kl(p0, logits_low)[0])
            if has_loss:
                out.low_ce[i] = float(-torch.log_softmax(logits_low.double(), -1)[0, t])
            out.cut_kl[i] = float(substitution_kl(subj, decode(dic, topk_codes(a, int(out.low_l0[i]))[None]))[0])
    return out
