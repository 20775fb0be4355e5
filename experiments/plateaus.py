"""Activation plateaus: do real activations sit on a plateau that random activations lack?

Bases: real activations of the prompt pool, covariance-matched Gaussian samples (cov-random),
isotropic Gaussian samples scaled to the real base's norm, and synthetic activations made of SAE
latents (synthetic-baseline / synthetic-structured). Every base is put in the context of the same
real prompt and perturbed towards the same random directions (towards cov-random targets by default),
in two modes:

- sphere (Heimersheim & Mendel): slerp 0-180°, KL of the next-token distribution; plateau length =
  threshold angle (first angle with KL > τ);
- straight (LASR): absolute steps (0.5 on GPT-2), L2 at the last block's residual stream on GPT-2
  (KL elsewhere); plateau length = first step index above the threshold.

Claim tested: real bases plateau longer than random ones (and, per LASR, than synthetic ones).

    python experiments/plateaus.py --model toy
    python experiments/plateaus.py --model gpt2 --prompts openwebtext-10tok.txt --n-pool 1000
"""

from __future__ import annotations

import math
import sys

import torch

import sensfind as sf
from sensfind.baselines import cov_random_targets, isotropic
from sensfind.plots import plot_effect_curves
from sensfind.runio import save_json, save_tensors

from _common import (
    PUBLISHED,
    Site,
    add_scan_args,
    check_positive,
    describe,
    experiment_parser,
    fmt,
    ks,
    plot_distributions,
    plot_mean_curves,
    run_experiment,
    scan_configs,
    split_pool,
    synthetic_activations,
    table,
)

NAME = "plateaus"


def build_parser():
    parser, sizes = experiment_parser(__doc__.splitlines()[0], sae=True)
    add_scan_args(parser, sizes)
    g = parser.add_argument_group(NAME)
    g.add_argument("--directions", choices=["cov-random", "isotropic"], default="cov-random",
                   help="perturbation directions: towards cov-random targets (default) or isotropic")
    g.add_argument("--no-synthetic", action="store_true", help="skip the synthetic bases (no SAE needed)")
    sizes.add("--n-bases", 32, 8, "bases of each kind")
    sizes.add("--n-dirs", 16, 8, "random directions per base")
    return parser, sizes


def make_bases(site: Site, args, run) -> dict[str, torch.Tensor]:
    n = args.n_bases
    real = site.pool[:n]
    stats = site.cov()
    bases = {
        "real": real,
        "cov-random": cov_random_targets(stats, n, seed=args.seed + 11).float(),
        "isotropic": isotropic(n, site.d, seed=args.seed + 12) * real.norm(dim=1, keepdim=True),
    }
    if not args.no_synthetic:
        bases.update(synthetic_activations(site, args, n, seed=args.seed + 13, run=run))
    return bases


def body(args, site: Site, run) -> str:
    check_positive(args, "n_bases", "n_dirs")
    scans = scan_configs(args, site, run)
    split_pool(site, args.n_bases)
    n, r, d = args.n_bases, args.n_dirs, site.d
    bases = make_bases(site, args, run)
    if args.directions == "cov-random":
        targets = cov_random_targets(site.cov(), n * r, seed=args.seed + 21).float().reshape(n, r, d)
    else:
        iso = isotropic(n * r, d, seed=args.seed + 21).reshape(n, r, d)

    sphere = {k: [] for k in bases}
    straight = {k: [] for k in bases}
    with torch.no_grad():
        for i in range(n):
            ctx = site.subject(i)
            ctx_out = ctx if scans.straight_output_hook is None else site.subject(i, scans.straight_output_hook)
            for kind, b in bases.items():
                s_sph = ctx if kind == "real" else Site.with_base(ctx, b[i])
                s_str = ctx_out if kind == "real" else Site.with_base(ctx_out, b[i])
                dirs = sf.directions_from_targets(s_sph.base, targets[i]) if args.directions == "cov-random" else iso[i]
                sphere[kind].append(sf.scan(s_sph, dirs, scans.sphere))
                straight[kind].append(sf.scan(s_str, dirs, scans.straight))

    angle_cap = scans.sphere.range[1]
    step_cap = float(scans.straight.steps)
    results, tensors, angle, steps_len = {}, {}, {}, {}
    for kind in bases:
        thr = torch.cat([s.threshold for s in sphere[kind]])  # [n·r] degrees, inf = not reached
        idx = torch.cat([s.threshold_index for s in straight[kind]])
        plateau = torch.where(idx >= 0, idx.double(), torch.full(idx.shape, math.inf, dtype=torch.float64))
        angle[kind], steps_len[kind] = thr.numpy(), plateau.numpy()
        eff_sph = torch.cat([s.effects for s in sphere[kind]])
        eff_str = torch.cat([s.effects for s in straight[kind]])
        tensors.update({f"bases.{kind}": bases[kind], f"sphere_effects.{kind}": eff_sph,
                        f"sphere_threshold_deg.{kind}": thr, f"straight_effects.{kind}": eff_str,
                        f"straight_plateau_steps.{kind}": plateau})
        results[kind] = dict(
            base_norm=float(bases[kind].norm(dim=1).mean()),
            sphere_threshold_deg=describe(thr, angle_cap), straight_plateau_steps=describe(plateau, step_cap),
            ks_vs_real_sphere=ks(thr, angle["real"], angle_cap), ks_vs_real_straight=ks(plateau, steps_len["real"], step_cap),
        )
    tensors["sphere_angles_deg"] = sf.step_grid(scans.sphere)
    tensors["straight_alpha"] = sf.step_grid(scans.straight)
    save_json(run.path("results.json"), dict(kinds=results, published=PUBLISHED["lasr_plateau"] if run.published else None))
    save_tensors(run.path("results.safetensors"), tensors)

    title = f"{site.name}: bases perturbed towards {args.directions} directions"
    ang = sf.step_grid(scans.sphere)
    alpha = sf.step_grid(scans.straight)
    straight_label = f"step α (absolute, steps of {scans.step:.3g})"
    straight_ylabel = "KL(p0 || p) (nats)" if scans.straight.effect == "kl" else f"L2 distance at {scans.straight_output_hook}"
    plot_mean_curves(run.path("effect_vs_angle.png"),
                     {k: (ang, torch.cat([s.effects for s in v])) for k, v in sphere.items()},
                     "angle θ (deg)", "KL(p0 || p) (nats)", title + " (sphere, mean ± sd)", scans.sphere.tau)
    plot_mean_curves(run.path("effect_vs_distance.png"),
                     {k: (alpha, torch.cat([s.effects for s in v])) for k, v in straight.items()},
                     straight_label, straight_ylabel, title + " (straight, mean ± sd)", scans.straight.tau)
    plot_effect_curves(run.path("effect_vs_angle_base0.png"),
                       {k: (ang, v[0].effects) for k, v in sphere.items()},
                       xlabel="angle θ (deg)", effect="kl", tau=scans.sphere.tau, title=title + ": first base")
    plot_distributions(run.path("plateau_angle.png"), angle, "plateau length: threshold angle (deg)",
                       title, cap=angle_cap)
    plot_distributions(run.path("plateau_steps.png"), steps_len,
                       f"plateau length: first step above τ={scans.straight.tau:g} (steps)", title, cap=step_cap)

    rows = []
    for kind, res in results.items():
        row = {"base": kind, "plateau (deg), sphere KL": fmt(res["sphere_threshold_deg"]),
               "KS (deg) vs real": f"{res['ks_vs_real_sphere']['statistic']:.2f}",
               f"plateau (steps), straight {scans.straight.effect}": fmt(res["straight_plateau_steps"]),
               "KS (steps) vs real": f"{res['ks_vs_real_straight']['statistic']:.2f}"}
        if run.published:
            pub = PUBLISHED["lasr_plateau"].get(kind)
            row["published (steps)"] = f"{pub[0]} ± {pub[1]}" if pub else ""
        rows.append(row)
    text = (f"{NAME}: {site.name}, {n} bases x {args.n_dirs} {args.directions} directions per kind; "
            f"sphere τ={scans.sphere.tau:g} nats, straight τ={scans.straight.tau:g} ({scans.straight.effect}), "
            f"step {scans.step:.3g}\n")
    text += table(rows, list(rows[0]))
    if run.published:
        text += f"\npublished (Heimersheim & Mendel): real bases plateau until ~{PUBLISHED['heimersheim_plateau_deg']:.0f} deg"
    return text


def main(argv=None) -> int:
    parser, sizes = build_parser()
    return run_experiment(NAME, parser, sizes, body, argv)


if __name__ == "__main__":
    sys.exit(main())
