"""Sensitivity landscapes: are real-other and discovered directions local optima of sensitivity?

For each real base, three corner directions span a 2-simplex of directions (sensfind.landscape):
a real-other direction and two random directions (towards cov-random targets). Every grid point gets
the threshold angle of a sphere-mode KL scan, refined to a fraction of a degree. A corner is a local
optimum when no adjacent grid point blows up earlier (Heimersheim & Mendel's "sensitivity optima" test).

The same is then done around discovered optima: ``sensfind.discover`` on the base, the best optimum
as the first corner, two random directions as the others.

Claim tested: real-other directions, and the optima that sensitivity maximisation finds, are local
optima of the threshold angle, and blow up earlier than every random mixture.

    python experiments/landscape.py --model toy
    python experiments/landscape.py --model gpt2 --n-bases 8
"""

from __future__ import annotations

import math
import sys

import numpy as np
import torch

import sensfind as sf
from sensfind.baselines import cov_random_targets
from sensfind.landscape import Landscape, landscape, simplex_grid
from sensfind.runio import save_json, save_tensors

from _common import (
    Site,
    check_positive,
    describe,
    experiment_parser,
    fmt,
    pick,
    run_experiment,
    split_pool,
    table,
)

NAME = "landscape"


def build_parser():
    parser, sizes = experiment_parser(__doc__.splitlines()[0])
    g = parser.add_argument_group(NAME)
    g.add_argument("--tau", type=float, default=0.5, help="KL threshold (nats)")
    g.add_argument("--no-discover", action="store_true", help="skip the landscapes around discovered optima")
    sizes.add("--n-bases", 8, 3, "real bases (one real-other landscape each)")
    sizes.add("--n-discover", 4, 2, "bases that also get a landscape around their best discovered optimum")
    sizes.add("--resolution", 10, 4, "grid steps per simplex edge")
    sizes.add("--angle-steps", 91, 46, "coarse scan points over 0-180 deg (refined 16x around the crossing)")
    sizes.add("--restarts", 16, 4, "discovery restarts")
    sizes.add("--iterations", 60, 12, "discovery iterations")
    return parser, sizes


def plot_simplex(path, land: Landscape, title: str, cap: float = 180.0) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.tri as mtri

    w = land.weights.numpy()
    corners = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3) / 2]])
    xy = w @ corners
    z = land.threshold.numpy().copy()
    unreached = ~np.isfinite(z)
    z[unreached] = cap
    fig, ax = plt.subplots(figsize=(6.2, 5.2))
    tri = mtri.Triangulation(xy[:, 0], xy[:, 1])
    pc = ax.tripcolor(tri, z, shading="gouraud", cmap="viridis")
    ax.scatter(xy[:, 0], xy[:, 1], c="k", s=4)
    if unreached.any():
        ax.scatter(xy[unreached, 0], xy[unreached, 1], marker="x", c="r", s=20, label="τ not reached")
        ax.legend(loc="upper right", fontsize=8)
    for (cx, cy), name, val in zip(corners, land.corner_names,
                                   [land.threshold[land.corner_index(c)] for c in range(3)]):
        ax.annotate(f"{name}\n{float(val):.1f}°", (cx, cy), ha="center", va="top" if cy == 0 else "bottom",
                    xytext=(0, -6 if cy == 0 else 6), textcoords="offset points", fontsize=9)
    fig.colorbar(pc, ax=ax, label="threshold angle (deg): first KL > τ")
    ax.set_xlabel("position on the simplex of directions (barycentric weights, dimensionless)")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_aspect("equal")
    ax.set_xlim(-0.1, 1.1)
    ax.set_ylim(-0.15, 1.0)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def body(args, site: Site, run) -> str:
    check_positive(args, "n_bases", "resolution", "angle_steps", "restarts")
    if args.n_discover > args.n_bases:
        raise ValueError(f"--n-discover ({args.n_discover}) must not exceed --n-bases ({args.n_bases})")
    bases, others = split_pool(site, args.n_bases)
    config = sf.ScanConfig(mode="sphere", steps=args.angle_steps, effect="kl", tau=args.tau)
    disc_cfg = sf.DiscoverConfig(tau=args.tau, restarts=args.restarts, iterations=args.iterations,
                                 seed=args.seed, final_steps=2 * args.angle_steps - 1)
    run.config.update(scan=config.to_dict(), discover=disc_cfg.to_dict())
    stats = site.cov()
    reports = {"real-other": [], "discovered": []}
    tensors = {}
    n_disc = 0 if args.no_discover else args.n_discover
    for i in range(args.n_bases):
        subj = site.subject(int(bases[i]))
        rand = sf.directions_from_targets(subj.base, cov_random_targets(stats, 2, seed=args.seed + 100 + i).float())
        other = sf.directions_from_targets(subj.base, pick(site.pool[others], 1, args.seed + 200 + i))
        corners = {"real-other": other}
        if i < n_disc:
            found = sf.discover(subj, disc_cfg)
            corners["discovered"] = found.directions[:1]
            save_tensors(run.path(f"discovery_{i}.safetensors"),
                         {"directions": found.directions, "blowup_deg": found.blowup_deg.double()})
        for kind, first in corners.items():
            land = landscape(subj, torch.cat([first.to(rand.dtype), rand]), config, resolution=args.resolution,
                             corner_names=(kind, "cov-random A", "cov-random B"))
            land.save(run.dir, prefix=f"landscape_{kind}_{i}")
            rep = land.corner_report(0)
            rep["random_corners"] = [land.corner_report(1)["threshold"], land.corner_report(2)["threshold"]]
            rep["base"] = i
            reports[kind].append(rep)
            tensors[f"threshold.{kind}.{i}"] = land.threshold.double()
            if i == 0:
                plot_simplex(run.path(f"landscape_{kind}.png"), land,
                             f"{site.name}, base 0: threshold angle over the simplex\n{kind} vs two cov-random directions")
    tensors["weights"] = simplex_grid(args.resolution)

    summary, rows = {}, []
    for kind, reps in reports.items():
        if not reps:
            continue
        corner = [r["threshold"] for r in reps]
        randoms = [t for r in reps for t in r["random_corners"]]
        summary[kind] = dict(
            n=len(reps), local_optimum_fraction=float(np.mean([r["local_optimum"] for r in reps])),
            global_optimum_fraction=float(np.mean([r["global_optimum"] for r in reps])),
            corner_threshold_deg=describe(corner, 180.0), random_corner_threshold_deg=describe(randoms, 180.0),
            margin_deg=describe([r["margin"] for r in reps]),
            neighbour_angle_deg=float(np.mean([r["neighbour_angle_deg"] for r in reps])),
        )
        s = summary[kind]
        rows.append({"corner": kind, "n": s["n"], "threshold (deg)": fmt(s["corner_threshold_deg"]),
                     "random corners (deg)": fmt(s["random_corner_threshold_deg"]),
                     "local optimum": f"{s['local_optimum_fraction']:.0%}",
                     "best on simplex": f"{s['global_optimum_fraction']:.0%}",
                     "margin to neighbours (deg)": fmt(s["margin_deg"], 2),
                     "neighbour tilt (deg)": f"{s['neighbour_angle_deg']:.1f}"})
    save_json(run.path("results.json"), dict(summary=summary, corners=reports))
    save_tensors(run.path("results.safetensors"), tensors)
    text = (f"{NAME}: {site.name}, {args.n_bases} bases, simplex resolution {args.resolution} "
            f"({(args.resolution + 1) * (args.resolution + 2) // 2} directions each), τ={args.tau:g} nats\n")
    return text + table(rows, list(rows[0]))


def main(argv=None) -> int:
    parser, sizes = build_parser()
    return run_experiment(NAME, parser, sizes, body, argv)


if __name__ == "__main__":
    sys.exit(main())
