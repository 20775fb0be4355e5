"""Latent geometry: encoder–decoder alignment and firing density, and which latents sensitivity finds.

Per SAE latent: the D/E projection, the cosine between its encoder column and its decoder row
(Anthropic's "D/E projection"; near 1 for latents that autoencode a signal, broad around 0 for the
ultra-rare cluster), and its firing density on the prompt pool. Then, on a few real bases,
``sensfind.discover`` finds sensitivity optima, each is matched to its closest decoder row
(``sensfind.match_directions``, p-value against the best |cos| of isotropic random directions), and the
matched latents' D/E and density are compared with those of all live latents and of the latents
active on the same bases.

Claim tested: latents that match sensitivity optima have high D/E projections and are not rare.

    python experiments/latent_geometry.py --model toy
    python experiments/latent_geometry.py --model gpt2 --n-bases 8
"""

from __future__ import annotations

import sys

import numpy as np
import torch

import sensfind as sf
from sensfind.runio import save_json, save_tensors

from _common import (
    Site,
    check_positive,
    describe,
    dictionary_info,
    experiment_parser,
    fmt,
    ks,
    load_dictionary,
    run_experiment,
    split_pool,
    table,
)

NAME = "latent_geometry"


def build_parser():
    parser, sizes = experiment_parser(__doc__.splitlines()[0], sae=True)
    g = parser.add_argument_group(NAME)
    g.add_argument("--tau", type=float, default=0.5, help="KL threshold of discovery (nats)")
    g.add_argument("--alpha", type=float, default=0.05, help="a match counts when its p-value is below this")
    sizes.add("--n-bases", 6, 2, "real bases to discover optima on")
    sizes.add("--restarts", 16, 6, "discovery restarts per base")
    sizes.add("--iterations", 60, 15, "discovery iterations")
    sizes.add("--n-null", 1000, 200, "random directions in the matching null")
    return parser, sizes


@torch.no_grad()
def latent_properties(dic, pool: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """D/E cosine ``[L]``, firing density on ``pool`` ``[L]`` and the codes' activity ``[M, L]`` (bool)."""
    enc = dic.encoder.float()  # [d, L]
    de = torch.nn.functional.cosine_similarity(enc.T, dic.raw_decoder.float(), dim=1)
    active = torch.cat([dic.encode(chunk.float()) > 0 for chunk in pool.split(256)])
    return de, active.float().mean(0), active


def body(args, site: Site, run) -> str:
    check_positive(args, "n_bases", "restarts", "n_null")
    dic = load_dictionary(site, args)
    if dic is None:
        raise ValueError("latent_geometry needs an SAE; --sae none is not allowed here")
    run.config["sae"] = dictionary_info(dic)
    de, density, active = latent_properties(dic, site.pool)
    alive = density > 0
    bases, _ = split_pool(site, args.n_bases)
    cfg = sf.DiscoverConfig(tau=args.tau, restarts=args.restarts, iterations=args.iterations, seed=args.seed)
    run.config["discover"] = cfg.to_dict()

    matched, matched_cos, matched_p, blowups, base_active = [], [], [], [], set()
    for i in range(args.n_bases):
        b = int(bases[i])
        subj = site.subject(b)
        found = sf.discover(subj, cfg)
        m = sf.match_directions(found.directions, dic, k=1, null=sf.NullConfig(n_null=args.n_null, seed=args.seed + i))
        matched += m.latents[:, 0].tolist()
        matched_cos += m.cos[:, 0].tolist()
        matched_p += m.p_value[:, 0].tolist()
        blowups += found.blowup_deg.tolist()
        base_active.update(active[b].nonzero()[:, 0].tolist())
    matched_t = torch.tensor(matched, dtype=torch.long)
    sig = torch.tensor(matched_p) < args.alpha
    sig_ids = matched_t[sig]
    groups = {
        "all live latents": alive.nonzero()[:, 0],
        "active on the bases": torch.tensor(sorted(base_active), dtype=torch.long),
        f"matched to optima (p < {args.alpha:g})": sig_ids,
    }
    log_density = torch.log10(density.clamp(min=1.0 / (10 * site.pool.shape[0])))
    results = {}
    ref_de, ref_dens = de[groups["all live latents"]], log_density[groups["all live latents"]]
    for name, ids in groups.items():
        results[name] = dict(
            n=int(ids.numel()), de_cos=describe(de[ids]), log10_density=describe(log_density[ids]),
            ks_de_vs_all=ks(de[ids], ref_de), ks_density_vs_all=ks(log_density[ids], ref_dens),
        )
    dead = (~alive).nonzero()[:, 0]
    results["dead on the pool"] = dict(n=int(dead.numel()), de_cos=describe(de[dead]), log10_density=None,
                                       ks_de_vs_all=ks(de[dead], ref_de), ks_density_vs_all=None)
    results["optima"] = dict(n=len(matched), n_significant=int(sig.sum()), abs_cos=describe(np.abs(matched_cos)),
                             blowup_deg=describe(blowups, 180.0), latents=matched, cos=matched_cos, p_value=matched_p)
    save_json(run.path("results.json"), results)
    save_tensors(run.path("results.safetensors"), {"de_cos": de, "density": density, "matched_latents": matched_t,
                                                     "matched_cos": torch.tensor(matched_cos),
                                                     "matched_p": torch.tensor(matched_p)})
    plot(run, site, de, log_density, alive, groups, args.alpha)

    rows = [{"latents": name, "n": r["n"], "D/E cosine": fmt(r["de_cos"], 2),
             "log10 firing density": fmt(r["log10_density"], 2) if r["log10_density"] else "-",
             "KS D/E vs all": f"{r['ks_de_vs_all']['statistic']:.2f}",
             "KS density vs all": f"{r['ks_density_vs_all']['statistic']:.2f}" if r["ks_density_vs_all"] else "-"}
            for name, r in results.items() if name in groups or name == "dead on the pool"]
    opt = results["optima"]
    text = (f"{NAME}: {site.name}, SAE {dic.source} ({dic.n_latents} latents, {int(dead.numel())} dead on "
            f"{site.pool.shape[0]} pool activations); {opt['n']} optima on {args.n_bases} bases, "
            f"{opt['n_significant']} matched (p < {args.alpha:g}), mean |cos| {opt['abs_cos']['mean']:.2f}\n")
    return text + table(rows, list(rows[0]))


def plot(run, site, de, log_density, alive, groups, alpha) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax1.scatter(log_density[alive], de[alive], s=6, alpha=0.4, color="C0", label="live latents")
    if (~alive).any():
        ax1.scatter(log_density[~alive], de[~alive], s=6, alpha=0.4, color="C7", label="dead on the pool (density floor)")
    sig = list(groups.values())[-1]
    if sig.numel():
        ax1.scatter(log_density[sig], de[sig], s=40, marker="*", color="C3", label=f"matched to optima (p < {alpha:g})")
    ax1.set_xlabel("log10 firing density on the prompt pool (fraction of activations)")
    ax1.set_ylabel("D/E projection: cos(encoder column, decoder row)")
    ax1.legend(fontsize=7)
    bins = np.linspace(-1, 1, 41)
    for i, (name, ids) in enumerate(groups.items()):
        if ids.numel():
            ax2.hist(de[ids].numpy(), bins=bins, density=True, histtype="step", lw=1.5, color=f"C{i}",
                     label=f"{name} (n={ids.numel()})")
    ax2.set_xlabel("D/E projection: cos(encoder column, decoder row)")
    ax2.set_ylabel("density (per unit cosine)")
    ax2.legend(fontsize=7)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.suptitle(f"{site.name}: SAE latent geometry")
    fig.tight_layout()
    fig.savefig(run.path("latent_geometry.png"), dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser, sizes = build_parser()
    return run_experiment(NAME, parser, sizes, body, argv)


if __name__ == "__main__":
    sys.exit(main())
