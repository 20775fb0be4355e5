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

from sensfind.configs import Config, check_int
from sensfind.lab.experiment import PUBLISHED, run_experiment, sized
from sensfind.lab.kind_scans import (REFERENCE, SAE_KINDS, DirectionKinds, check_direction_kinds, resolve_direction_kinds,
                                 scan_direction_kinds)
from sensfind.reporting.plots import plot_distributions
from sensfind.lab.pool import split_pool
from sensfind.runio import save_json, save_tensors
from sensfind.core.scan import step_grid
from sensfind.reporting.stats import fmt, table

NAME = "sensitive_directions"


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
        check_direction_kinds(self.kinds)


def body(cfg: DirectionsConfig, site, run) -> str:
    scans = run.scans()
    kinds = resolve_direction_kinds(cfg.kinds, site.is_toy, with_sae=run.sae.sae != "none")
    bases, others = split_pool(site, cfg.n_bases)
    n, r = cfg.n_bases, cfg.n_dirs
    dic = run.dictionary() if any(k in SAE_KINDS for k in kinds) else None
    synth = run.synthetic(n * r, seed=site.seed + 31) if any(k.startswith("synthetic") for k in kinds) else {}
    source = DirectionKinds.build(site, kinds, others, n, r, dictionary=dic, synthetic=synth)
    run.config["kinds"] = kinds
    found = scan_direction_kinds(site, bases, source, scans)  # kinds with no direction on any base are dropped

    kinds, cap = found.kinds, scans.sphere.range[1]
    thr, slope = ({k: get(k) for k in kinds} for get in (found.threshold_deg, found.max_slope_step))
    eff_sph, eff_str = found.sphere_effects(), found.straight_effects()
    results = found.direction_summary(cap)
    tensors = {f"{name}.{k}": v[k] for k in kinds for name, v in (("threshold_deg", thr), ("max_slope_step", slope),
                                                                   ("sphere_effects", eff_sph), ("straight_effects", eff_str))}
    tensors.update(sphere_angles_deg=step_grid(scans.sphere), straight_alpha=step_grid(scans.straight))
    published = PUBLISHED["lasr_max_slope"] if run.published else None
    save_json(run.path("results.json"), dict(kinds=results, reference=REFERENCE, published=published))
    save_tensors(run.path("results.safetensors"), tensors)

    title = f"{site.name}: {n} real bases, directions by kind"
    plot_distributions(run.path("threshold_angle.png"), {k: thr[k].numpy() for k in kinds},
                       f"threshold angle (deg), first KL > {scans.sphere.tau:g} nats", title, cap=cap)
    plot_distributions(run.path("max_slope_step.png"), {k: slope[k].numpy() for k in kinds},
                       f"max-slope step (steps of {scans.step:.3g}, straight {scans.straight.effect})", title)
    scans.plot_means(run.dir, eff_sph, eff_str, title, straight_tau=False)
    rows = [{"direction": k, "n": res["n_directions"], "threshold angle (deg)": fmt(res["threshold_deg"]),
             "KS vs real-other": f"{res['ks_vs_real_other_threshold']['statistic']:.2f}",
             "max-slope step": fmt(res["max_slope_step"]),
             "KS vs real-other (slope)": f"{res['ks_vs_real_other_max_slope']['statistic']:.2f}",
             **({"LASR max-slope (KS)": published_cell(published.get(k))} if published else {})}
            for k, res in results.items()]
    text = (f"{NAME}: {site.name}, {n} bases x up to {r} directions per kind; sphere τ={scans.sphere.tau:g} nats; "
            f"straight {scans.straight.effect}, step {scans.step:.3g} x {scans.straight.steps - 1}\n")
    return text + table(rows)


def published_cell(pub: tuple | None) -> str:
    """``mean ± sd (KS)`` of a published LASR row, empty where LASR has none."""
    if not pub:
        return ""
    return f"{pub[0]} ± {pub[1]}" + (f" ({pub[2]})" if pub[2] is not None else "")


def main(argv=None) -> int:
    return run_experiment(NAME, __doc__.splitlines()[0], DirectionsConfig, body, argv, sae=True, scans=True)


if __name__ == "__main__":
    sys.exit(main())
