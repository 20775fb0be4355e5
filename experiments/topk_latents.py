"""Top-k latents: how much of the output does an SAE reconstruction keep with only its k largest latents?

For each real base, keep only the ``k`` largest active latents of its code, decode, substitute the result
at the site and report KL(p0 || p) and the next-token cross-entropy (where the next token is known)
against ``k`` (``k`` = all: the plain reconstruction). A second SAE of lower L0 (``--sae-low``; trained
with a larger L1 for local models) compares "a high-L0 SAE cut to its top k" with "an SAE of L0 ≈ k".

Claim tested: the smallest latents matter little (KL flattens well before k = L0), and cutting a
high-L0 SAE to its top k beats a low-L0 SAE at the same k (Nanda et al.).

    python experiments/topk_latents.py --model random:tiny
    python experiments/topk_latents.py --model gpt2 --sae-low disk:PATH_TO_LOW_L0_SAE
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import torch

from sensfind.configs import Config, check_int, check_number
from sensfind.effects import kl
from sensfind.experiment import run_experiment, sized
from sensfind.latents import substitution_kl as kl_at, topk_codes, topk_grid
from sensfind.plots import plot_topk
from sensfind.pool import PUBLISHED_MODEL, split_pool
from sensfind.pool_sae import dictionary_info
from sensfind.runio import save_json, save_tensors
from sensfind.scan import base_output
from sensfind.stats import describe, table
from sensfind.synthetic import decode

NAME = "topk_latents"


@dataclass(frozen=True)
class TopKConfig(Config):
    """The second SAE and the bases of the top-k experiment.

    Attributes:
        sae_low: SAE of lower L0 to compare with (same forms as --sae); auto: trained locally with --sae-low-l1 for
            local models, none for gpt2
        sae_low_l1: L1 coefficient of the locally trained low-L0 SAE
        n_bases: real bases
    """

    sae_low: str = "auto"
    sae_low_l1: float = 4.0
    n_bases: int = sized(64, 12)

    def __post_init__(self):
        check_number("sae_low_l1", self.sae_low_l1, lo=0.0)
        check_int("n_bases", self.n_bases, minimum=1)


def body(cfg: TopKConfig, site, run) -> str:
    dic = run.dictionary(required=True)
    low_spec = cfg.sae_low if cfg.sae_low != "auto" else "none" if site.name == PUBLISHED_MODEL else "train"
    low = run.dictionary(spec=low_spec, l1=cfg.sae_low_l1) if low_spec != "none" else None
    run.config["sae"], run.config["sae_low"] = dictionary_info(dic), dictionary_info(low)
    bases, _ = split_pool(site, cfg.n_bases)
    n = cfg.n_bases
    has_loss = site.next_tokens is not None and bool((site.next_tokens[bases] >= 0).all())
    nan = lambda *shape: torch.full(shape, math.nan, dtype=torch.float64)  # noqa: E731
    with torch.no_grad():
        codes = [dic.encode(site.pool[int(b)][None])[0].float() for b in bases]
        l0 = [int((a > 0).sum()) for a in codes]
        ks = topk_grid(max(max(l0), 1))
        kl_k, ce_k, ce_clean = nan(n, len(ks)), nan(n, len(ks)), nan(n)
        low_kl, low_ce, low_l0, cut_kl = nan(n), nan(n), torch.zeros(n), nan(n)  # cut: main SAE cut to low's L0
        for i in range(n):
            subj = site.subject(int(bases[i]))
            p0, a = base_output(subj), codes[i]
            out = subj.run(decode(dic, torch.stack([topk_codes(a, min(k, l0[i])) for k in ks])).to(subj.base.dtype))
            kl_k[i] = kl(p0, out).double()
            if has_loss:
                t = int(site.next_tokens[int(bases[i])])
                ce_k[i] = -torch.log_softmax(out.double(), -1)[:, t]
                ce_clean[i] = -torch.log_softmax(p0.double(), -1)[t]
            if low is not None:
                b = low.encode(subj.base.float()[None])[0].float()
                low_l0[i] = int((b > 0).sum())
                out_low = subj.run(decode(low, b[None]).to(subj.base.dtype))
                low_kl[i] = float(kl(p0, out_low)[0])
                if has_loss:
                    low_ce[i] = float(-torch.log_softmax(out_low.double(), -1)[0, t])
                cut_kl[i] = float(kl_at(subj, decode(dic, topk_codes(a, int(low_l0[i]))[None]))[0])

    curve = [dict(k=k, kl=describe(kl_k[:, j]), ce=describe(ce_k[:, j]) if has_loss else None) for j, k in enumerate(ks)]
    half = next((c["k"] for c in curve if c["kl"]["mean"] <= 2 * float(kl_k[:, -1].mean())), ks[-1])
    results = dict(k=ks, curve=curve, l0=describe(l0), clean_ce=describe(ce_clean) if has_loss else None,
                   k_within_2x_of_full_kl=half)
    tensors = {"k": torch.tensor(ks), "kl": kl_k, "ce": ce_k, "clean_ce": ce_clean, "l0": torch.tensor(l0)}
    if low is not None:
        results["low"] = dict(l0=describe(low_l0), kl=describe(low_kl), ce=describe(low_ce) if has_loss else None,
                              main_cut_to_low_l0_kl=describe(cut_kl),
                              frac_bases_cut_better=float((cut_kl < low_kl).double().mean()))
        tensors.update(low_kl=low_kl, low_ce=low_ce, low_l0=low_l0, cut_kl=cut_kl)
    save_json(run.path("results.json"), results)
    save_tensors(run.path("results.safetensors"), tensors)
    plot_topk(run.path("topk.png"), ks, kl_k, ce_k if has_loss else None, ce_clean,
              dict(l0=low_l0, kl=low_kl, ce=low_ce) if low is not None else None,
              f"{site.name}: SAE reconstruction with only the k largest latents")

    rows = [{"k": c["k"] if c["k"] < ks[-1] else f"{c['k']} (all)", "KL (nats)": f"{c['kl']['mean']:.3g} ± {c['kl']['se']:.2g}",
             **({"next-token CE (nats)": f"{c['ce']['mean']:.3g}"} if has_loss else {})} for c in curve]
    text = (f"{NAME}: {site.name}, {n} bases, SAE {dic.source} (L0 {results['l0']['mean']:.1f} ± "
            f"{results['l0']['sd']:.1f}); mean ± s.e. over bases (k beyond a base's L0 = all its latents)\n") + table(rows)
    if has_loss:
        text += f"\nclean next-token CE {results['clean_ce']['mean']:.3g} nats"
    if low is not None:
        lo = results["low"]
        text += (f"\nlow-L0 SAE {low.source}: L0 {lo['l0']['mean']:.1f}, KL {lo['kl']['mean']:.3g} nats; main SAE cut to "
                 f"the same k per base: KL {lo['main_cut_to_low_l0_kl']['mean']:.3g} nats "
                 f"(cut better on {lo['frac_bases_cut_better']:.0%} of bases)")
    return text


def main(argv=None) -> int:
    return run_experiment(NAME, __doc__.splitlines()[0], TopKConfig, body, argv, sae=True)


if __name__ == "__main__":
    sys.exit(main())
