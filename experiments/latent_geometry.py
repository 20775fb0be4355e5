"""Latent geometry: encoder–decoder alignment and firing density, and which latents sensitivity finds.

Per SAE latent: the D/E projection (cosine between its encoder column and decoder row; near 1 for latents
that autoencode a signal, broad around 0 for the ultra-rare cluster) and its firing density on the pool.
On a few real bases ``sensfind.discover`` finds sensitivity optima; each is matched to its closest decoder
row (``sensfind.match_directions``, p-value against isotropic random directions), and the matched latents'
D/E and density are compared with those of all live latents and of the latents active on the bases.

Claim tested: latents that match sensitivity optima have high D/E projections and are not rare.

    python experiments/latent_geometry.py --model toy
    python experiments/latent_geometry.py --model gpt2 --n-bases 8
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import torch

import sensfind as sf
from sensfind.comparison.match import NullConfig
from sensfind.configs import Config, check_int, check_number
from sensfind.lab.experiment import run_experiment, sized
from sensfind.lab.latents import describe_latent_groups, latent_properties, log10_density
from sensfind.reporting.plots import plot_latent_geometry
from sensfind.lab.pool import split_pool
from sensfind.lab.pool_sae import dictionary_info
from sensfind.runio import save_json, save_tensors
from sensfind.reporting.stats import describe, fmt, ks, table

NAME = "latent_geometry"


@dataclass(frozen=True)
class LatentGeometryConfig(Config):
    """Discovery and matching settings of the latent-geometry experiment.

    Attributes:
        tau: KL threshold of discovery (nats)
        alpha: a match counts when its p-value is below this
        n_bases: real bases to discover optima on
        restarts: discovery restarts per base
        iterations: discovery iterations
        n_null: random directions in the matching null
    """

    tau: float = 0.5
    alpha: float = 0.05
    n_bases: int = sized(6, 2)
    restarts: int = sized(16, 6)
    iterations: int = sized(60, 15)
    n_null: int = sized(1000, 200)

    def __post_init__(self):
        check_number("tau", self.tau, lo=0.0, lo_open=True)
        check_number("alpha", self.alpha, lo=0.0, hi=1.0, lo_open=True)
        for name in ("n_bases", "restarts", "iterations", "n_null"):
            check_int(name, getattr(self, name), minimum=1)


def body(cfg: LatentGeometryConfig, site, run) -> str:
    dic = run.dictionary(required=True)
    run.config["sae"] = dictionary_info(dic)
    de, density, active = latent_properties(dic, site.pool)
    alive = density > 0
    bases, _ = split_pool(site, cfg.n_bases)
    disc = sf.DiscoverConfig(tau=cfg.tau, restarts=cfg.restarts, iterations=cfg.iterations, seed=site.seed)
    run.config["discover"] = disc.to_dict()
    matched, matched_cos, matched_p, blowups, base_active = [], [], [], [], set()
    for i in range(cfg.n_bases):
        b = int(bases[i])
        found = sf.discover(site.subject(b), disc)
        m = sf.match_directions(found.directions, dic, k=1, null=NullConfig(n_null=cfg.n_null, seed=site.seed + i))
        matched += m.latents[:, 0].tolist()
        matched_cos += m.cos[:, 0].tolist()
        matched_p += m.p_value[:, 0].tolist()
        blowups += found.blowup_deg.tolist()
        base_active.update(active[b].nonzero()[:, 0].tolist())
    matched_t = torch.tensor(matched, dtype=torch.long)
    sig = torch.tensor(matched_p) < cfg.alpha
    groups = {"all live latents": alive.nonzero()[:, 0],
              "active on the bases": torch.tensor(sorted(base_active), dtype=torch.long),
              f"matched to optima (p < {cfg.alpha:g})": matched_t[sig]}
    log_density = log10_density(density, site.pool.shape[0])
    results = describe_latent_groups(de, log_density, groups, reference=groups["all live latents"])
    dead = (~alive).nonzero()[:, 0]
    results["dead on the pool"] = dict(n=int(dead.numel()), de_cos=describe(de[dead]), log10_density=None,
                                       ks_de_vs_all=ks(de[dead], de[groups["all live latents"]]), ks_density_vs_all=None)
    results["optima"] = dict(n=len(matched), n_significant=int(sig.sum()), abs_cos=describe(np.abs(matched_cos)),
                             blowup_deg=describe(blowups, 180.0), latents=matched, cos=matched_cos, p_value=matched_p)
    save_json(run.path("results.json"), results)
    save_tensors(run.path("results.safetensors"), {"de_cos": de, "density": density, "matched_latents": matched_t,
                                                     "matched_cos": torch.tensor(matched_cos),
                                                     "matched_p": torch.tensor(matched_p)})
    plot_latent_geometry(run.path("latent_geometry.png"), de, log_density, alive, groups, cfg.alpha,
                         f"{site.name}: SAE latent geometry")

    rows = [{"latents": name, "n": r["n"], "D/E cosine": fmt(r["de_cos"], 2),
             "log10 firing density": fmt(r["log10_density"], 2) if r["log10_density"] else "-",
             "KS D/E vs all": f"{r['ks_de_vs_all']['statistic']:.2f}",
             "KS density vs all": f"{r['ks_density_vs_all']['statistic']:.2f}" if r["ks_density_vs_all"] else "-"}
            for name, r in results.items() if name != "optima"]
    opt = results["optima"]
    text = (f"{NAME}: {site.name}, SAE {dic.source} ({dic.n_latents} latents, {int(dead.numel())} dead on "
            f"{site.pool.shape[0]} pool activations); {opt['n']} optima on {cfg.n_bases} bases, "
            f"{opt['n_significant']} matched (p < {cfg.alpha:g}), mean |cos| {opt['abs_cos']['mean']:.2f}\n")
    return text + table(rows)


def main(argv=None) -> int:
    return run_experiment(NAME, __doc__.splitlines()[0], LatentGeometryConfig, body, argv, sae=True)


if __name__ == "__main__":
    sys.exit(main())
