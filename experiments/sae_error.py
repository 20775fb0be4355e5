"""SAE errors vs random errors of the same size: does the output care *which* way the SAE errs?

Two comparisons on real bases, KL(p0 || p) of the next-token distribution against the clean output:

1. Substitution (Gurnee): replace the activation ``x`` by its SAE reconstruction ``x̂`` and compare with
   ``x + ε``, ``ε`` a random error of the same norm ``|x - x̂|``, isotropic (Gurnee's baseline) or
   covariance-shaped (a direction from N(0, Σ), the baseline Lee & Heimersheim argue for).
2. L0-preserving latent noise (the prediction in the comment thread that started this line of work):
   perturb the active latents of ``x̂`` multiplicatively, ``a_i → a_i (1 + σ z_i)`` with ``z ~ N(0, 1)``
   and the nonzero pattern kept (values floored at 1% of the original), decode to ``x̂_δ``, and compare
   with ``x̂ + ε``, ``|ε| = |x̂_δ - x̂|``; both KLs are taken against the output at ``x̂``, so they measure
   the perturbation alone. If SAE latents are the model's features, moving along them should matter
   more than a random move of the same size.

Claim tested: the SAE reconstruction costs 2.2-4.5x the KL of a same-norm isotropic error (GPT-2,
Gurnee); the ratio shrinks against the covariance-shaped baseline; latent noise beats random noise.

    python experiments/sae_error.py --model toy
    python experiments/sae_error.py --model gpt2 --n-bases 200
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from sensfind.baselines import cov_random_targets, isotropic
from sensfind.effects import kl
from sensfind.runio import save_json, save_tensors
from sensfind.scan import base_output
from sensfind.synthetic import decode

from _common import (
    PUBLISHED,
    Site,
    check_positive,
    describe,
    dictionary_info,
    experiment_parser,
    ks,
    load_dictionary,
    run_experiment,
    split_pool,
    table,
)

NAME = "sae_error"


def build_parser():
    parser, sizes = experiment_parser(__doc__.splitlines()[0], sae=True)
    g = parser.add_argument_group(NAME)
    g.add_argument("--latent-noise", default="0.05,0.1,0.2,0.5",
                   help="comma-separated relative noise levels σ for the L0-preserving latent perturbation")
    sizes.add("--n-bases", 64, 12, "real bases")
    sizes.add("--n-random", 16, 6, "random errors per base and comparison")
    return parser, sizes


def _kl(subject, acts: torch.Tensor) -> torch.Tensor:  # [B, d] -> [B] nats against the clean output
    return kl(base_output(subject), subject.run(acts.to(subject.base.dtype)))


def _same_norm(directions: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """Rows of ``directions [R, d]`` scaled to ``norms`` (a scalar or ``[R]``)."""
    u = directions / directions.norm(dim=1, keepdim=True)
    return u * torch.as_tensor(norms, dtype=u.dtype).reshape(-1, 1)


def ratio(a, b) -> float:
    return float(np.mean(a) / np.mean(b)) if np.mean(b) > 0 else float("nan")


def body(args, site: Site, run) -> str:
    check_positive(args, "n_bases", "n_random")
    try:
        sigmas = [float(s) for s in args.latent_noise.split(",") if s.strip()]
    except ValueError as exc:
        raise ValueError(f"--latent-noise must be comma-separated numbers, got {args.latent_noise!r}") from exc
    if not sigmas or any(s <= 0 for s in sigmas):
        raise ValueError(f"--latent-noise needs positive noise levels, got {args.latent_noise!r}")
    dic = load_dictionary(site, args)
    if dic is None:
        raise ValueError("sae_error needs an SAE; --sae none is not allowed here")
    run.config["sae"] = dictionary_info(dic)
    bases, _ = split_pool(site, args.n_bases)
    stats = site.cov()
    n, r, d = args.n_bases, args.n_random, site.d
    g_seed = args.seed + 41

    rec = {"sae": [], "isotropic": [], "cov-shaped": []}  # [n] and [n, r]
    lat = {s: {"latent": [], "isotropic": [], "cov-shaped": []} for s in sigmas}
    err_norm, x_norm, l0 = [], [], []
    with torch.no_grad():
        for i in range(n):
            subj = site.subject(int(bases[i]))
            x = subj.base.float()
            a = dic.encode(x[None])[0].float()
            x_hat = decode(dic, a[None])[0]
            e = float((x - x_hat).norm())
            err_norm.append(e)
            x_norm.append(float(x.norm()))
            l0.append(int((a > 0).sum()))
            iso = isotropic(r, d, seed=g_seed + 2 * i)
            cov = (cov_random_targets(stats, r, seed=g_seed + 2 * i + 1) - stats.mean).float()
            rec["sae"].append(float(_kl(subj, x_hat[None])[0]))
            rec["isotropic"].append(_kl(subj, x + _same_norm(iso, e)))
            rec["cov-shaped"].append(_kl(subj, x + _same_norm(cov, e)))
            gen = torch.Generator().manual_seed(g_seed + 10_000 + i)
            on = a > 0
            at_hat = Site.with_base(subj, x_hat)  # effects of the latent noise itself: KL against p(x̂)
            for s in sigmas:
                z = torch.randn(r, a.shape[0], generator=gen)
                a_d = torch.where(on, torch.maximum(a * (1 + s * z), 0.01 * a), a)  # [r, L], same support
                x_d = decode(dic, a_d)
                delta = (x_d - x_hat).norm(dim=1)
                lat[s]["latent"].append(_kl(at_hat, x_d))
                lat[s]["isotropic"].append(_kl(at_hat, x_hat + _same_norm(iso, delta)))
                lat[s]["cov-shaped"].append(_kl(at_hat, x_hat + _same_norm(cov, delta)))

    kl_sae = np.array(rec["sae"])
    kl_iso = torch.stack(rec["isotropic"]).numpy()  # [n, r]
    kl_cov = torch.stack(rec["cov-shaped"]).numpy()
    substitution = dict(
        kl_sae=describe(kl_sae), kl_isotropic=describe(kl_iso), kl_cov_shaped=describe(kl_cov),
        ratio_vs_isotropic=ratio(kl_sae, kl_iso), ratio_vs_cov_shaped=ratio(kl_sae, kl_cov),
        median_base_ratio_vs_isotropic=float(np.median(kl_sae / kl_iso.mean(1).clip(min=1e-12))),
        ks_sae_vs_isotropic=ks(kl_sae, kl_iso.mean(1)), ks_sae_vs_cov_shaped=ks(kl_sae, kl_cov.mean(1)),
        frac_bases_sae_worse_than_isotropic=float((kl_sae > kl_iso.mean(1)).mean()),
        error_norm=describe(err_norm), error_norm_relative=float(np.mean(np.array(err_norm) / np.array(x_norm))),
        l0=describe(l0),
    )
    latent = {}
    tensors = {"kl_sae": torch.tensor(kl_sae), "kl_isotropic": torch.tensor(kl_iso), "kl_cov_shaped": torch.tensor(kl_cov),
               "error_norm": torch.tensor(err_norm), "l0": torch.tensor(l0)}
    for s in sigmas:
        k_lat, k_iso, k_cov = (torch.stack(lat[s][k]).numpy() for k in ("latent", "isotropic", "cov-shaped"))
        latent[str(s)] = dict(
            kl_latent=describe(k_lat), kl_isotropic=describe(k_iso), kl_cov_shaped=describe(k_cov),
            ratio_vs_isotropic=ratio(k_lat, k_iso), ratio_vs_cov_shaped=ratio(k_lat, k_cov),
            ks_latent_vs_isotropic=ks(k_lat, k_iso), frac_pairs_latent_worse=float((k_lat > k_iso).mean()),
        )
        tensors.update({f"latent_noise.{s}.latent": torch.tensor(k_lat), f"latent_noise.{s}.isotropic": torch.tensor(k_iso),
                        f"latent_noise.{s}.cov_shaped": torch.tensor(k_cov)})
    published = dict(gurnee_kl_ratio=PUBLISHED["gurnee_kl_ratio"]) if run.published else None
    save_json(run.path("results.json"), dict(substitution=substitution, latent_noise=latent, published=published))
    save_tensors(run.path("results.safetensors"), tensors)
    plot(run, site, kl_sae, kl_iso, kl_cov, latent, sigmas)

    rows = [
        {"comparison": "substitute x̂ vs x + ε (isotropic)", "KL along SAE (nats)": f"{kl_sae.mean():.3g}",
         "KL random (nats)": f"{kl_iso.mean():.3g}", "ratio": f"{substitution['ratio_vs_isotropic']:.2f}",
         "KS": f"{substitution['ks_sae_vs_isotropic']['statistic']:.2f}"},
        {"comparison": "substitute x̂ vs x + ε (cov-shaped)", "KL along SAE (nats)": f"{kl_sae.mean():.3g}",
         "KL random (nats)": f"{kl_cov.mean():.3g}", "ratio": f"{substitution['ratio_vs_cov_shaped']:.2f}",
         "KS": f"{substitution['ks_sae_vs_cov_shaped']['statistic']:.2f}"},
    ]
    for s in sigmas:
        res = latent[str(s)]
        rows.append({"comparison": f"latent noise σ={s:g} vs same-norm isotropic",
                     "KL along SAE (nats)": f"{res['kl_latent']['mean']:.3g}", "KL random (nats)": f"{res['kl_isotropic']['mean']:.3g}",
                     "ratio": f"{res['ratio_vs_isotropic']:.2f}", "KS": f"{res['ks_latent_vs_isotropic']['statistic']:.2f}"})
    text = (f"{NAME}: {site.name}, {n} bases, SAE {dic.source} (L0 {substitution['l0']['mean']:.1f}, "
            f"|x - x̂|/|x| = {substitution['error_norm_relative']:.2f}), {r} random errors per base\n")
    text += table(rows, list(rows[0]))
    if run.published:
        lo, hi = PUBLISHED["gurnee_kl_ratio"]
        text += f"\npublished (Gurnee, residual SAEs): ratio {lo}-{hi}x against isotropic errors"
    return text


def plot(run, site, kl_sae, kl_iso, kl_cov, latent, sigmas) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    order = np.argsort(kl_sae)
    x = np.arange(kl_sae.size)
    ax1.plot(x, kl_sae[order], "o", ms=4, label="SAE reconstruction x̂")
    ax1.errorbar(x, kl_iso.mean(1)[order], yerr=kl_iso.std(1)[order], fmt="s", ms=3, alpha=0.7,
                 label="x + ε, isotropic, |ε| = |x - x̂| (mean ± sd)")
    ax1.errorbar(x, kl_cov.mean(1)[order], yerr=kl_cov.std(1)[order], fmt="^", ms=3, alpha=0.7,
                 label="x + ε, cov-shaped (mean ± sd)")
    ax1.set_yscale("log")
    ax1.set_xlabel("base (sorted by SAE KL)")
    ax1.set_ylabel("KL(p0 || p) (nats)")
    ax1.set_title("substituting the reconstruction vs a random error")
    ax1.legend(fontsize=7)
    for key, label, marker in (("kl_latent", "latent noise (L0 kept)", "o"), ("kl_isotropic", "isotropic, same norm", "s"),
                               ("kl_cov_shaped", "cov-shaped, same norm", "^")):
        m = [latent[str(s)][key]["mean"] for s in sigmas]
        se = [latent[str(s)][key]["se"] for s in sigmas]
        ax2.errorbar(sigmas, m, yerr=se, marker=marker, capsize=3, label=label)
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("relative latent noise σ (dimensionless)")
    ax2.set_ylabel("mean KL(p0 || p) (nats), ± 1 s.e.")
    ax2.set_title("perturbing x̂ along its latents vs randomly")
    ax2.legend(fontsize=7)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.suptitle(f"{site.name}: SAE errors vs random errors")
    fig.tight_layout()
    fig.savefig(run.path("sae_error.png"), dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser, sizes = build_parser()
    return run_experiment(NAME, parser, sizes, body, argv)


if __name__ == "__main__":
    sys.exit(main())
