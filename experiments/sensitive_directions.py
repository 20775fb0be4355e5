"""Sensitive directions: which perturbation directions make the output blow up earliest?

From each real base, perturb along directions of several kinds (experiments/README.md describes each):
towards other prompts' activations, Gaussian samples or synthetic activations, covariance-shaped or
isotropic, SAE decoder rows of active / inactive latents (±) and, on the toy, planted features. Each
direction gets the threshold angle of a sphere KL scan and the max-slope step of a straight scan (LASR);
each kind is compared with real-other by a KS test.

Claim tested: real-other (and feature) directions blow up earlier than cov-random; naive random far
later; synthetic-structured is closer to real-other than synthetic-baseline (LASR).

    python experiments/sensitive_directions.py --model toy
    python experiments/sensitive_directions.py --model gpt2 --prompts openwebtext-10tok.txt --n-pool 1100 --n-bases 100
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

import sensfind as sf
from sensfind.baselines import cov_random_targets, isotropic
from sensfind.configs import Config, check_int
from sensfind.experiment import PUBLISHED, run_experiment, sized
from sensfind.latents import decoder_rows
from sensfind.plots import plot_distributions
from sensfind.pool import pick, split_pool
from sensfind.runio import save_json, save_tensors
from sensfind.stats import describe, fmt, ks, table

NAME, REFERENCE = "sensitive_directions", "real-other"
SAE_KINDS = ("sae-active+", "sae-active-", "sae-inactive+", "sae-inactive-")
ALL_KINDS = ("real-other", "feature", "cov-random", "cov-mixture", "naive-random", *SAE_KINDS,
             "synthetic-baseline", "synthetic-structured")


@dataclass(frozen=True)
class DirectionsConfig(Config):
    """The direction kinds and how many of each.

    Attributes:
        kinds: comma-separated direction kinds, or all (those this site supports): real-other, feature, cov-random,
            cov-mixture, naive-random, sae-(in)active+/-, synthetic-baseline, synthetic-structured
        n_bases: real bases
        n_dirs: directions of each kind per base
    """

    kinds: str = "all"
    n_bases: int = sized(24, 8)
    n_dirs: int = sized(16, 8)

    def __post_init__(self):
        check_int("n_bases", self.n_bases, minimum=1)
        check_int("n_dirs", self.n_dirs, minimum=1)
        bad = [k.strip() for k in self.kinds.split(",") if k.strip() not in ALL_KINDS] if self.kinds != "all" else []
        if bad or not self.kinds.strip(","):
            raise ValueError(f"unknown direction kind(s) {bad or self.kinds!r}; allowed: {', '.join(ALL_KINDS)}")

    def resolve(self, site, with_sae: bool) -> list[str]:
        """The kinds to run on ``site``, real-other first."""
        if self.kinds == "all":
            return [k for k in ALL_KINDS if (k != "feature" or site.is_toy)
                    and (with_sae or not (k in SAE_KINDS or k.startswith("synthetic")))]
        kinds = [k.strip() for k in self.kinds.split(",") if k.strip()]
        if "feature" in kinds and not site.is_toy:
            raise ValueError("direction kind 'feature' needs the ground-truth toy (--model toy)")
        return kinds if REFERENCE in kinds else [REFERENCE, *kinds]


def body(cfg: DirectionsConfig, site, run) -> str:
    scans = run.scans()
    kinds = cfg.resolve(site, run.sae.sae != "none")
    bases, others = split_pool(site, cfg.n_bases)
    n, r, d, seed = cfg.n_bases, cfg.n_dirs, site.d, site.seed
    dic = run.dictionary() if any(k in SAE_KINDS for k in kinds) else None
    synth = {}
    if any(k.startswith("synthetic") for k in kinds):
        synth = {k: v.reshape(n, r, d) for k, v in run.synthetic(n * r, seed=seed + 31).items()}
    stats = site.cov()
    fixed = {"cov-random": cov_random_targets(stats, n * r, seed=seed + 32).float().reshape(n, r, d),  # targets
             "cov-mixture": (cov_random_targets(stats, n * r, seed=seed + 33) - stats.mean).float().reshape(n, r, d),
             "naive-random": isotropic(n * r, d, seed=seed + 34).reshape(n, r, d), **synth}
    run.config["kinds"] = kinds
    thr, slope, eff_sph, eff_str = ({k: [] for k in kinds} for _ in range(4))
    n_used = {k: 0 for k in kinds}
    with torch.no_grad():
        for i in range(n):
            subj = site.subject(int(bases[i]))
            subj_out = subj if scans.straight_output_hook is None else site.subject(int(bases[i]), scans.straight_output_hook)
            for kind in kinds:
                s = seed + 1000 * i + kinds.index(kind)
                if kind == "real-other":
                    dirs = sf.directions_from_targets(subj.base, site.pool[pick(others, r, s)])
                elif kind in ("cov-mixture", "naive-random"):
                    dirs = fixed[kind][i]
                elif kind in fixed:  # cov-random and synthetic targets
                    dirs = sf.directions_from_targets(subj.base, fixed[kind][i])
                elif kind == "feature":
                    dirs = pick(subj.signed_features(), r, s)
                else:  # sae-(in)active±
                    if (rows := decoder_rows(dic, subj.base, kind.startswith("sae-active"), r, s)) is None:
                        continue
                    dirs = rows if kind.endswith("+") else -rows
                s1, s2 = sf.scan(subj, dirs, scans.sphere), sf.scan(subj_out, dirs, scans.straight)
                thr[kind].append(s1.threshold)
                slope[kind].append(s2.max_slope_index.double())
                eff_sph[kind].append(s1.effects)
                eff_str[kind].append(s2.effects)
                n_used[kind] += dirs.shape[0]

    kinds = [k for k in kinds if thr[k]]  # e.g. an SAE with no active latent on any base
    cap = scans.sphere.range[1]
    thr, slope = ({k: torch.cat(v[k]) for k in kinds} for v in (thr, slope))
    eff_sph, eff_str = ({k: torch.cat(v[k]) for k in kinds} for v in (eff_sph, eff_str))
    results = {k: dict(n_directions=n_used[k], threshold_deg=describe(thr[k], cap), max_slope_step=describe(slope[k]),
                       ks_vs_real_other_threshold=ks(thr[k], thr[REFERENCE], cap),
                       ks_vs_real_other_max_slope=ks(slope[k], slope[REFERENCE])) for k in kinds}
    tensors = {f"{name}.{k}": v[k] for k in kinds for name, v in (("threshold_deg", thr), ("max_slope_step", slope),
                                                                   ("sphere_effects", eff_sph), ("straight_effects", eff_str))}
    tensors.update(sphere_angles_deg=sf.step_grid(scans.sphere), straight_alpha=sf.step_grid(scans.straight))
    published = PUBLISHED["lasr_max_slope"] if run.published else None
    save_json(run.path("results.json"), dict(kinds=results, reference=REFERENCE, published=published))
    save_tensors(run.path("results.safetensors"), tensors)

    title = f"{site.name}: {n} real bases, directions by kind"
    plot_distributions(run.path("threshold_angle.png"), {k: thr[k].numpy() for k in kinds},
                       f"threshold angle (deg), first KL > {scans.sphere.tau:g} nats", title, cap=cap)
    plot_distributions(run.path("max_slope_step.png"), {k: slope[k].numpy() for k in kinds},
                       f"max-slope step (steps of {scans.step:.3g}, straight {scans.straight.effect})", title)
    scans.plot_means(run.dir, eff_sph, eff_str, title, straight_tau=False)
    rows = []
    for k, res in results.items():
        pub = (published or {}).get(k)
        rows.append({"direction": k, "n": res["n_directions"], "threshold angle (deg)": fmt(res["threshold_deg"]),
                     "KS vs real-other": f"{res['ks_vs_real_other_threshold']['statistic']:.2f}",
                     "max-slope step": fmt(res["max_slope_step"]),
                     "KS vs real-other (slope)": f"{res['ks_vs_real_other_max_slope']['statistic']:.2f}",
                     **({"LASR max-slope (KS)": (f"{pub[0]} ± {pub[1]}" + (f" ({pub[2]})" if pub[2] is not None else "")
                                                 if pub else "")} if published else {})})
    text = (f"{NAME}: {site.name}, {n} bases x up to {r} directions per kind; sphere τ={scans.sphere.tau:g} nats; "
            f"straight {scans.straight.effect}, step {scans.step:.3g} x {scans.straight.steps - 1}\n")
    return text + table(rows)


def main(argv=None) -> int:
    return run_experiment(NAME, __doc__.splitlines()[0], DirectionsConfig, body, argv, sae=True, scans=True)


if __name__ == "__main__":
    sys.exit(main())
