"""Sensitive directions: which perturbation directions make the output blow up earliest?

From each real base, perturb towards (or along) directions of several kinds:

- real-other: towards the activation of another prompt;
- cov-random: towards a Gaussian sample with the real mean and covariance;
- cov-mixture (Lee & Heimersheim): a covariance-shaped direction that does not involve the base,
  ``(x1 - μ)/|x1 - μ|`` with ``x1 ~ N(μ, Σ)``;
- naive-random: isotropic;
- sae-active± / sae-inactive±: SAE decoder rows of latents active / inactive on the base, added (+,
  exciting) or subtracted (−, dampening);
- synthetic-baseline / synthetic-structured: towards synthetic activations made of SAE latents;
- feature (toy only): a planted feature, signed so that it flips that feature's gate.

Two measurements per direction: the threshold angle of a sphere-mode KL scan (first angle with
KL > τ, Heimersheim & Mendel) and the max-slope step of a straight-mode scan with absolute steps
(LASR: 100 steps of 0.5, L2 at blocks.11.hook_resid_post on GPT-2). Each kind is compared with
real-other by a two-sample KS test.

Claim tested: real-other (and feature) directions blow up earlier than cov-random; naive random far
later; synthetic-structured is closer to real-other than synthetic-baseline (LASR).

    python experiments/sensitive_directions.py --model toy
    python experiments/sensitive_directions.py --model gpt2 --prompts openwebtext-10tok.txt --n-pool 1100 --n-bases 100
"""

from __future__ import annotations

import sys

import torch

import sensfind as sf
from sensfind.baselines import cov_random_targets, isotropic
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
    load_dictionary,
    pick,
    plot_distributions,
    plot_mean_curves,
    run_experiment,
    scan_configs,
    split_pool,
    synthetic_activations,
    table,
)

NAME = "sensitive_directions"
REFERENCE = "real-other"
TARGET_KINDS = ("real-other", "cov-random", "synthetic-baseline", "synthetic-structured")
SAE_KINDS = ("sae-active+", "sae-active-", "sae-inactive+", "sae-inactive-")
ALL_KINDS = ("real-other", "feature", "cov-random", "cov-mixture", "naive-random", *SAE_KINDS,
             "synthetic-baseline", "synthetic-structured")


def build_parser():
    parser, sizes = experiment_parser(__doc__.splitlines()[0], sae=True)
    add_scan_args(parser, sizes)
    g = parser.add_argument_group(NAME)
    g.add_argument("--kinds", default="all",
                   help=f"comma-separated direction kinds, or all (those this site supports): {', '.join(ALL_KINDS)}")
    sizes.add("--n-bases", 24, 8, "real bases")
    sizes.add("--n-dirs", 16, 8, "directions of each kind per base")
    return parser, sizes


def resolve_kinds(spec: str, site: Site, args) -> list[str]:
    if spec == "all":
        kinds = [k for k in ALL_KINDS if k != "feature" or site.is_toy]
        return [k for k in kinds if args.sae != "none" or not (k in SAE_KINDS or k.startswith("synthetic"))]
    kinds = [k.strip() for k in spec.split(",") if k.strip()]
    bad = [k for k in kinds if k not in ALL_KINDS]
    if bad or not kinds:
        raise ValueError(f"unknown direction kind(s) {bad or spec!r}; allowed: {', '.join(ALL_KINDS)}")
    if "feature" in kinds and not site.is_toy:
        raise ValueError("direction kind 'feature' needs the ground-truth toy (--model toy)")
    if REFERENCE not in kinds:
        kinds.insert(0, REFERENCE)
    return kinds


def sae_rows(dic, base: torch.Tensor, active: bool, n: int, seed: int) -> torch.Tensor | None:
    """Unit decoder rows ``[≤n, d]`` of latents active (or inactive) on ``base``; None if there are none."""
    with torch.no_grad():
        on = dic.encode(base[None].float())[0] > 0
    ids = on.nonzero()[:, 0] if active else (~on).nonzero()[:, 0]
    if ids.numel() == 0:
        return None
    return dic.decoder[pick(ids, n, seed)].to(base.dtype)


def body(args, site: Site, run) -> str:
    check_positive(args, "n_bases", "n_dirs")
    scans = scan_configs(args, site, run)
    kinds = resolve_kinds(args.kinds, site, args)
    bases, others = split_pool(site, args.n_bases)
    n, r, d = args.n_bases, args.n_dirs, site.d
    stats = site.cov()
    dic = load_dictionary(site, args) if any(k in SAE_KINDS for k in kinds) else None
    synth = {}
    if any(k.startswith("synthetic") for k in kinds):
        synth = synthetic_activations(site, args, n * r, seed=args.seed + 31, run=run)
        synth = {k: v.reshape(n, r, d) for k, v in synth.items()}
    cov_t = cov_random_targets(stats, n * r, seed=args.seed + 32).float().reshape(n, r, d)
    mix = (cov_random_targets(stats, n * r, seed=args.seed + 33) - stats.mean).float().reshape(n, r, d)
    naive = isotropic(n * r, d, seed=args.seed + 34).reshape(n, r, d)
    run.config["kinds"] = kinds

    thr = {k: [] for k in kinds}
    slope = {k: [] for k in kinds}
    eff_sph = {k: [] for k in kinds}
    eff_str = {k: [] for k in kinds}
    n_dirs_used = {k: 0 for k in kinds}
    with torch.no_grad():
        for i in range(n):
            subj = site.subject(int(bases[i]))
            subj_out = subj if scans.straight_output_hook is None else site.subject(int(bases[i]), scans.straight_output_hook)
            x0 = subj.base
            for kind in kinds:
                seed = args.seed + 1000 * i + kinds.index(kind)
                if kind == "real-other":
                    dirs = sf.directions_from_targets(x0, site.pool[pick(others, r, seed)])
                elif kind == "cov-random":
                    dirs = sf.directions_from_targets(x0, cov_t[i])
                elif kind == "cov-mixture":
                    dirs = mix[i]
                elif kind == "naive-random":
                    dirs = naive[i]
                elif kind in synth:
                    dirs = sf.directions_from_targets(x0, synth[kind][i])
                elif kind == "feature":
                    dirs = pick(subj.signed_features(), r, seed)
                else:  # sae-(in)active±
                    rows = sae_rows(dic, x0, kind.startswith("sae-active"), r, seed)
                    if rows is None:
                        continue
                    dirs = rows if kind.endswith("+") else -rows
                s1 = sf.scan(subj, dirs, scans.sphere)
                s2 = sf.scan(subj_out, dirs, scans.straight)
                thr[kind].append(s1.threshold)
                slope[kind].append(s2.max_slope_index.double())
                eff_sph[kind].append(s1.effects)
                eff_str[kind].append(s2.effects)
                n_dirs_used[kind] += dirs.shape[0]

    kinds = [k for k in kinds if thr[k]]  # e.g. an SAE with no active latent on any base
    angle_cap = scans.sphere.range[1]
    thr = {k: torch.cat(thr[k]) for k in kinds}
    slope = {k: torch.cat(slope[k]) for k in kinds}
    results, tensors = {}, {}
    for k in kinds:
        results[k] = dict(
            n_directions=n_dirs_used[k],
            threshold_deg=describe(thr[k], angle_cap), max_slope_step=describe(slope[k]),
            ks_vs_real_other_threshold=ks(thr[k], thr[REFERENCE], angle_cap),
            ks_vs_real_other_max_slope=ks(slope[k], slope[REFERENCE]),
        )
        tensors.update({f"threshold_deg.{k}": thr[k], f"max_slope_step.{k}": slope[k],
                        f"sphere_effects.{k}": torch.cat(eff_sph[k]), f"straight_effects.{k}": torch.cat(eff_str[k])})
    tensors["sphere_angles_deg"] = sf.step_grid(scans.sphere)
    tensors["straight_alpha"] = sf.step_grid(scans.straight)
    published = PUBLISHED["lasr_max_slope"] if run.published else None
    save_json(run.path("results.json"), dict(kinds=results, reference=REFERENCE, published=published))
    save_tensors(run.path("results.safetensors"), tensors)

    title = f"{site.name}: {n} real bases, directions by kind"
    plot_distributions(run.path("threshold_angle.png"), {k: thr[k].numpy() for k in kinds},
                       f"threshold angle (deg), first KL > {scans.sphere.tau:g} nats", title, cap=angle_cap)
    plot_distributions(run.path("max_slope_step.png"), {k: slope[k].numpy() for k in kinds},
                       f"max-slope step (steps of {scans.step:.3g}, straight {scans.straight.effect})", title)
    plot_mean_curves(run.path("effect_vs_angle.png"),
                     {k: (sf.step_grid(scans.sphere), torch.cat(eff_sph[k])) for k in kinds},
                     "angle θ (deg)", "KL(p0 || p) (nats)", title + " (sphere, mean ± sd)", scans.sphere.tau)
    ylabel = "KL(p0 || p) (nats)" if scans.straight.effect == "kl" else f"L2 distance at {scans.straight_output_hook}"
    plot_mean_curves(run.path("effect_vs_distance.png"),
                     {k: (sf.step_grid(scans.straight), torch.cat(eff_str[k])) for k in kinds},
                     f"step α (absolute, steps of {scans.step:.3g})", ylabel, title + " (straight, mean ± sd)")

    rows = []
    for k in kinds:
        res = results[k]
        row = {"direction": k, "n": res["n_directions"], "threshold angle (deg)": fmt(res["threshold_deg"]),
               "KS vs real-other": f"{res['ks_vs_real_other_threshold']['statistic']:.2f}",
               "max-slope step": fmt(res["max_slope_step"]),
               "KS vs real-other (slope)": f"{res['ks_vs_real_other_max_slope']['statistic']:.2f}"}
        if published:
            pub = published.get(k)
            row["LASR max-slope (KS)"] = (f"{pub[0]} ± {pub[1]}" + (f" ({pub[2]})" if pub[2] is not None else "")
                                          if pub else "")
        rows.append(row)
    text = (f"{NAME}: {site.name}, {n} bases x up to {r} directions per kind; sphere τ={scans.sphere.tau:g} nats; "
            f"straight {scans.straight.effect}, step {scans.step:.3g} x {scans.straight.steps - 1}\n")
    return text + table(rows, list(rows[0]))


def main(argv=None) -> int:
    parser, sizes = build_parser()
    return run_experiment(NAME, parser, sizes, body, argv)


if __name__ == "__main__":
    sys.exit(main())
