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

import sys
from dataclasses import dataclass

from sensfind.configs import Config, check_int, check_number
from sensfind.lab.experiment import run_experiment, sized
from sensfind.reporting.plots import plot_topk
from sensfind.lab.pool import PUBLISHED_MODEL, split_pool
from sensfind.lab.pool_sae import dictionary_info
from sensfind.lab.reconstruction import measure_topk
from sensfind.runio import save_json, save_tensors
from sensfind.reporting.stats import table

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
    top = measure_topk(site, dic, bases, low=low)
    results, ks = top.summary(), top.k
    save_json(run.path("results.json"), results)
    save_tensors(run.path("results.safetensors"), top.tensors())
    plot_topk(run.path("topk.png"), ks, top.kl, top.ce if top.has_loss else None, top.clean_ce,
              dict(l0=top.low_l0, kl=top.low_kl, ce=top.low_ce) if low is not None else None,
              f"{site.name}: SAE reconstruction with only the k largest latents")

    rows = [{"k": c["k"] if c["k"] < ks[-1] else f"{c['k']} (all)", "KL (nats)": f"{c['kl']['mean']:.3g} ± {c['kl']['se']:.2g}",
             **({"next-token CE (nats)": f"{c['ce']['mean']:.3g}"} if top.has_loss else {})} for c in results["curve"]]
    text = (f"{NAME}: {site.name}, {cfg.n_bases} bases, SAE {dic.source} (L0 {results['l0']['mean']:.1f} ± "
            f"{results['l0']['sd']:.1f}); mean ± s.e. over bases (k beyond a base's L0 = all its latents)\n") + table(rows)
    if top.has_loss:
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
