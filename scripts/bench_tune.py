"""Benchmarks of ``sensfind tune`` on the ground-truth toy.

Pruning (default mode): the same study budget (trials, sampler seed, search space, subjects) run twice,
with a ``MedianPruner`` and without; reports the compute each spent (scan points, summed over all
trials, pruned ones up to where they stopped), the best value each found, and the saving::

    python scripts/bench_tune.py --json --trials 24

Held-out check (``--holdout``): tune on training toy seeds, then run the tuned settings and
``DiscoverConfig()`` on held-out toy seeds that tuning never saw, and print both scores::

    python scripts/bench_tune.py --holdout --trials 20

The held-out space fixes ``restarts`` at the default 16 and caps ``iterations`` at the default 60, so
that tuning cannot buy a higher ``distinct`` count with more restarts. Results and the two studies
are written under ``--out`` (default ``runs/bench-tune``).
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path

from sensfind.discovery.config import DiscoverConfig
from sensfind.tuning import SearchSpace, TuneConfig, evaluate, toy_targets, tune

HOLDOUT_SPACE = {"restarts": 16, "iterations": {"type": "int", "low": 10, "high": 60}}


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(t) for t in text.split(",") if t.strip())


def pruning(args, space: SearchSpace) -> dict:
    runs = {}
    for pruner in ("median", "none"):
        config = TuneConfig(study_name=f"bench-{pruner}", storage=str(args.out / pruner / "study.db"),
                            n_trials=args.trials, metric=args.metric, sampler=args.sampler, sampler_seed=args.seed,
                            pruner=pruner, subjects=args.subjects)
        if (args.out / pruner).exists():
            raise SystemExit(f"{args.out / pruner} exists; choose another --out")
        t0 = time.perf_counter()
        result = tune(config, space, out=args.out / pruner)
        runs[pruner] = {
            "trials": len(result.trials),
            "states": result.counts(),
            "points": result.points_spent,
            "best_value": result.best[0]["quality"] if result.best else None,
            "best_trial": result.best[0]["number"] if result.best else None,
            "seconds": time.perf_counter() - t0,
        }
    saving = 1 - runs["median"]["points"] / runs["none"]["points"]
    return {"metric": args.metric, "trials": args.trials, "subjects": list(args.subjects), "sampler": args.sampler,
            "sampler_seed": args.seed, "runs": runs, "points_saving": saving}


def holdout(args, space: SearchSpace) -> dict:
    config = TuneConfig(study_name="bench-holdout", storage=str(args.out / "study.db"), n_trials=args.trials,
                        metric=args.metric, sampler=args.sampler, sampler_seed=args.seed, subjects=args.subjects)
    if args.out.exists() and any(args.out.iterdir()):
        raise SystemExit(f"{args.out} is not empty; choose another --out")
    result = tune(config, space, out=args.out)
    if result.best_config is None:
        raise SystemExit(f"no trial completed ({result.counts()}); nothing to compare")
    tuned = DiscoverConfig.from_dict(result.best_config)
    held = toy_targets(args.holdout_seeds, args.metric)
    scores = {}
    for name, cfg in (("defaults", DiscoverConfig()), ("tuned", tuned)):
        ev = evaluate(cfg, held)
        scores[name] = {"quality": ev.quality, "points": ev.points, "per_seed": ev.scores, "config": asdict(cfg)}
    return {"metric": args.metric, "train_seeds": list(args.subjects), "holdout_seeds": list(args.holdout_seeds),
            "trials": len(result.trials), "train_best": result.best[0]["quality"], "holdout": scores}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--holdout", action="store_true", help="tune on --subjects, compare with defaults on --holdout-seeds")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--trials", type=int, default=24, help="trials per study")
    p.add_argument("--metric", choices=["reached", "distinct"], default="distinct")
    p.add_argument("--subjects", type=_ints, default=(0, 1, 2), help="training toy seeds")
    p.add_argument("--holdout-seeds", type=_ints, default=(100, 101, 102, 103, 104, 105))
    p.add_argument("--space", default=None, help="search space file (default: the default space; with --holdout: "
                   f"the default space with {json.dumps(HOLDOUT_SPACE)})")
    p.add_argument("--sampler", choices=["tpe", "random"], default="tpe")
    p.add_argument("--seed", type=int, default=0, help="sampler seed")
    p.add_argument("--out", type=Path, default=Path("runs/bench-tune"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.space:
        space = SearchSpace.load(args.space)
    else:
        space = SearchSpace.from_dict(HOLDOUT_SPACE if args.holdout else {})
    command = "python scripts/bench_tune.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    report = (holdout if args.holdout else pruning)(args, space) | {"command": command}
    if args.json:
        print(json.dumps(report, indent=2))
    elif args.holdout:
        h = report["holdout"]
        print(f"command: {command}")
        print(f"held-out toy seeds {report['holdout_seeds']}, metric {report['metric']} (mean per seed):")
        for name in ("defaults", "tuned"):
            print(f"  {name:8s} {h[name]['quality']:.3f}  ({h[name]['points']} points)")
        print(f"tuned on seeds {report['train_seeds']} with {report['trials']} trials (train best "
              f"{report['train_best']:.3f}); settings in {args.out / 'best_config.json'}")
    else:
        print(f"command: {command}")
        for name, run in report["runs"].items():
            print(f"  pruner {name:6s}: {run['trials']} trials {run['states']}, {run['points']} points, best "
                  f"{report['metric']} {run['best_value']}, {run['seconds']:.0f}s")
        print(f"points saved by pruning: {report['points_saving']:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
