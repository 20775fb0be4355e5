"""Sensitivity landscapes: are real-other and discovered directions local optima of sensitivity?

For each real base, a real-other direction and two random directions (towards cov-random targets) span a
2-simplex of directions (sensfind.lab.landscape); every grid point gets the threshold angle of a refined
sphere-mode KL scan. A corner is a local optimum when no adjacent grid point blows up earlier (Heimersheim
& Mendel's test). The same is done around the best optimum that ``sensfind.discover`` finds on the base.

Claim tested: real-other directions, and the optima that sensitivity maximisation finds, are local
optima of the threshold angle, and blow up earlier than every random mixture.

    python experiments/landscape.py --model toy
    python experiments/landscape.py --model gpt2 --n-bases 8
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

import sensfind as sf
from sensfind.core.geometry import directions_from_targets
from sensfind.core.baselines import cov_random_targets
from sensfind.configs import Config, check_int, check_number
from sensfind.lab.experiment import run_experiment, sized
from sensfind.lab.landscape import corner_summary, landscape, random_corner_report, simplex_grid
from sensfind.reporting.plots import plot_simplex
from sensfind.lab.pool import pick, split_pool
from sensfind.runio import save_json, save_tensors
from sensfind.reporting.stats import fmt, table

NAME = "landscape"


@dataclass(frozen=True)
class LandscapeConfig(Config):
    """The bases, grids and discovery of the landscape experiment.

    Attributes:
        tau: KL threshold (nats)
        no_discover: skip the landscapes around discovered optima
        n_bases: real bases (one real-other landscape each)
        n_discover: bases that also get a landscape around their best discovered optimum
        resolution: grid steps per simplex edge
        angle_steps: coarse scan points over 0-180 deg (refined 16x around the crossing)
        restarts: discovery restarts
        iterations: discovery iterations
    """

    tau: float = 0.5
    no_discover: bool = False
    n_bases: int = sized(8, 3)
    n_discover: int = sized(4, 2)
    resolution: int = sized(10, 4)
    angle_steps: int = sized(91, 46)
    restarts: int = sized(16, 4)
    iterations: int = sized(60, 12)

    def __post_init__(self):
        check_number("tau", self.tau, lo=0.0, lo_open=True)
        for name in ("n_bases", "resolution", "angle_steps", "restarts", "iterations"):
            check_int(name, getattr(self, name), minimum=1)
        check_int("n_discover", self.n_discover, minimum=0)
        if self.n_discover > self.n_bases:
            raise ValueError(f"n_discover ({self.n_discover}) must not exceed n_bases ({self.n_bases})")


def body(cfg: LandscapeConfig, site, run) -> str:
    bases, others = split_pool(site, cfg.n_bases)
    scan = sf.ScanConfig(mode="sphere", steps=cfg.angle_steps, effect="kl", tau=cfg.tau)
    disc = sf.DiscoverConfig(tau=cfg.tau, restarts=cfg.restarts, iterations=cfg.iterations, seed=site.seed,
                             final_steps=2 * cfg.angle_steps - 1)
    run.config.update(scan=scan.to_dict(), discover=disc.to_dict())
    stats, seed = site.cov(), site.seed
    reports, tensors = {"real-other": [], "discovered": []}, {}
    for i in range(cfg.n_bases):
        subj = site.subject(int(bases[i]))
        rand = directions_from_targets(subj.base, cov_random_targets(stats, 2, seed=seed + 100 + i).float())
        corners = {"real-other": directions_from_targets(subj.base, pick(site.pool[others], 1, seed + 200 + i))}
        if i < (0 if cfg.no_discover else cfg.n_discover):
            found = sf.discover(subj, disc)
            corners["discovered"] = found.directions[:1]
            save_tensors(run.path(f"discovery_{i}.safetensors"),
                         {"directions": found.directions, "blowup_deg": found.blowup_deg.double()})
        for kind, first in corners.items():  # each corner against the same two cov-random directions
            land = landscape(subj, torch.cat([first.to(rand.dtype), rand]), scan, resolution=cfg.resolution,
                             corner_names=(kind, "cov-random A", "cov-random B"))
            land.save(run.dir, prefix=f"landscape_{kind}_{i}")
            reports[kind].append(dict(random_corner_report(land), base=i))
            tensors[f"threshold.{kind}.{i}"] = land.threshold.double()
            if i == 0:
                plot_simplex(run.path(f"landscape_{kind}.png"), land,
                             f"{site.name}, base 0: threshold angle over the simplex\n{kind} vs two cov-random directions")
    tensors["weights"] = simplex_grid(cfg.resolution)

    summary = {kind: corner_summary(reps) for kind, reps in reports.items() if reps}
    rows = [{"corner": kind, "n": s["n"], "threshold (deg)": fmt(s["corner_threshold_deg"]),
             "random corners (deg)": fmt(s["random_corner_threshold_deg"]),
             "local optimum": f"{s['local_optimum_fraction']:.0%}", "best on simplex": f"{s['global_optimum_fraction']:.0%}",
             "margin to neighbours (deg)": fmt(s["margin_deg"], 2), "neighbour tilt (deg)": f"{s['neighbour_angle_deg']:.1f}"}
            for kind, s in summary.items()]
    save_json(run.path("results.json"), dict(summary=summary, corners=reports))
    save_tensors(run.path("results.safetensors"), tensors)
    text = (f"{NAME}: {site.name}, {cfg.n_bases} bases, simplex resolution {cfg.resolution} "
            f"({(cfg.resolution + 1) * (cfg.resolution + 2) // 2} directions each), τ={cfg.tau:g} nats\n")
    return text + table(rows)


def main(argv=None) -> int:
    return run_experiment(NAME, __doc__.splitlines()[0], LandscapeConfig, body, argv)


if __name__ == "__main__":
    sys.exit(main())
