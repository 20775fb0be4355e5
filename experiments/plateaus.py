"""Activation plateaus: do real activations sit on a plateau that random activations lack?

Bases: real activations, cov-random and isotropic samples (scaled to the real norm) and synthetic
activations made of SAE latents, each in the same real prompt's context and perturbed towards the same
random directions; plateau = threshold angle of a sphere KL scan (Heimersheim & Mendel) and first step
above the threshold of a straight scan (LASR).

Claim tested: real bases plateau longer than random ones (and, per LASR, than synthetic ones).

    python experiments/plateaus.py --model toy
    python experiments/plateaus.py --model gpt2 --prompts openwebtext-10tok.txt --n-pool 1000
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Literal

from sensfind.configs import Config, check_int
from sensfind.lab.experiment import PUBLISHED, run_experiment, sized
from sensfind.lab.kind_scans import plateau_bases, scan_plateaus
from sensfind.reporting.plots import plot_distributions, plot_effect_curves
from sensfind.lab.pool import split_pool
from sensfind.runio import save_json, save_tensors
from sensfind.core.scan import step_grid
from sensfind.reporting.stats import fmt, table

NAME = "plateaus"


@dataclass(frozen=True)
class PlateausConfig(Config):
    """The bases and directions of the plateaus experiment.

    Attributes:
        directions: perturbation directions: towards cov-random targets, or isotropic
        no_synthetic: skip the synthetic bases (no SAE needed)
        n_bases: bases of each kind
        n_dirs: random directions per base
    """

    directions: Literal["cov-random", "isotropic"] = "cov-random"
    no_synthetic: bool = False
    n_bases: int = sized(32, 8)
    n_dirs: int = sized(16, 8)

    def __post_init__(self):
        check_int("n_bases", self.n_bases, minimum=1)
        check_int("n_dirs", self.n_dirs, minimum=1)


def body(cfg: PlateausConfig, site, run) -> str:
    scans = run.scans()
    split_pool(site, cfg.n_bases)
    n = cfg.n_bases
    bases = plateau_bases(site, n)  # real, cov-random, isotropic
    if not cfg.no_synthetic:
        bases.update(run.synthetic(n, seed=site.seed + 13))
    found = scan_plateaus(site, bases, cfg.directions, cfg.n_dirs, scans)

    angle_cap, step_cap = scans.sphere.range[1], float(scans.straight.steps)
    ang, alpha = step_grid(scans.sphere), step_grid(scans.straight)
    eff_sph, eff_str = found.sphere_effects(), found.straight_effects()
    results = found.plateau_summary(bases, angle_cap, step_cap)
    angle = {k: found.threshold_deg(k).numpy() for k in bases}  # [n·r] degrees, inf = not reached
    steps_len = {k: found.plateau_steps(k).numpy() for k in bases}
    tensors = {}
    for kind in bases:
        tensors.update({f"bases.{kind}": bases[kind], f"sphere_effects.{kind}": eff_sph[kind],
                        f"sphere_threshold_deg.{kind}": found.threshold_deg(kind), f"straight_effects.{kind}": eff_str[kind],
                        f"straight_plateau_steps.{kind}": found.plateau_steps(kind)})
    tensors.update(sphere_angles_deg=ang, straight_alpha=alpha)
    save_json(run.path("results.json"), dict(kinds=results, published=PUBLISHED["lasr_plateau"] if run.published else None))
    save_tensors(run.path("results.safetensors"), tensors)

    title = f"{site.name}: bases perturbed towards {cfg.directions} directions"
    scans.plot_means(run.dir, eff_sph, eff_str, title)
    plot_effect_curves(run.path("effect_vs_angle_base0.png"), {k: (ang, v[0].effects) for k, v in found.sphere.items()},
                       xlabel="angle θ (deg)", effect="kl", tau=scans.sphere.tau, title=title + ": first base")
    plot_distributions(run.path("plateau_angle.png"), angle, "plateau length: threshold angle (deg)", title, cap=angle_cap)
    plot_distributions(run.path("plateau_steps.png"), steps_len,
                       f"plateau length: first step above τ={scans.straight.tau:g} (steps)", title, cap=step_cap)

    rows = []
    for kind, res in results.items():
        pub = PUBLISHED["lasr_plateau"].get(kind)
        rows.append({"base": kind, "plateau (deg), sphere KL": fmt(res["sphere_threshold_deg"]),
                     "KS (deg) vs real": f"{res['ks_vs_real_sphere']['statistic']:.2f}",
                     f"plateau (steps), straight {scans.straight.effect}": fmt(res["straight_plateau_steps"]),
                     "KS (steps) vs real": f"{res['ks_vs_real_straight']['statistic']:.2f}",
                     **({"published (steps)": f"{pub[0]} ± {pub[1]}" if pub else ""} if run.published else {})})
    text = (f"{NAME}: {site.name}, {n} bases x {cfg.n_dirs} {cfg.directions} directions per kind; "
            f"sphere τ={scans.sphere.tau:g} nats, straight τ={scans.straight.tau:g} ({scans.straight.effect}), "
            f"step {scans.step:.3g}\n") + table(rows)
    if run.published:
        text += f"\npublished (Heimersheim & Mendel): real bases plateau until ~{PUBLISHED['heimersheim_plateau_deg']:.0f} deg"
    return text


def main(argv=None) -> int:
    return run_experiment(NAME, __doc__.splitlines()[0], PlateausConfig, body, argv, sae=True, scans=True)


if __name__ == "__main__":
    sys.exit(main())
