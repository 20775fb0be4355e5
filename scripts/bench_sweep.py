"""Sweep throughput: units per minute with 1 and 2 workers on the local and Ray engines, in one run.

Each configuration sweeps the same prompts into a fresh directory (nothing is skipped) with the same
per-prompt discovery; its wall time includes the driver's model load and keying, the workers' start and
model loads and the aggregation, i.e. what a user waits for. Ray's cluster start is timed once and
reported apart (a sweep on a running cluster does not pay it). ``seconds_per_unit`` is the median time
a worker spent on one unit (compute only). ``steady_units_per_minute`` leaves out the start: with W
workers, the units finished after the W-th completion over the time from it to the last completion (their
``unit.json`` times), i.e. the rate once every worker has loaded its model and run a unit, which is what a
long sweep runs at (with few units per worker it is a noisy estimate). Ray's
overhead is its wall time over local's at the same number of workers, per unit.

    python scripts/bench_sweep.py --model random:tiny --prompts corpus:16
    python scripts/bench_sweep.py --model smollm2-135m --prompts corpus:6 --restarts 8 --iterations 10

Writes ``bench.json`` into ``--out`` and logs a table. Not a test: timings depend on the machine's load.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

from sensfind.discovery.config import DiscoverConfig
from sensfind.runio import save_json
from sensfind.app.site import DiscoverySiteConfig
from sensfind.app.sweep import SweepConfig, local_ray_options, run_sweep

log = logging.getLogger("sensfind.bench_sweep")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="random:tiny")
    p.add_argument("--prompts", default="corpus:16", help="the sweep's prompt source (inputs:N for the toy)")
    p.add_argument("--engines", default="local,ray")
    p.add_argument("--workers", default="1,2")
    p.add_argument("--restarts", type=int, default=8)
    p.add_argument("--iterations", type=int, default=15)
    p.add_argument("--final-steps", type=int, default=181)
    p.add_argument("--random-baseline", type=int, default=16)
    p.add_argument("--chunk", type=int, default=None)
    p.add_argument("--out", default=None, help="where bench.json goes (default: a temporary directory, removed)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("sensfind").setLevel(logging.WARNING)
    log.setLevel(logging.INFO)
    engines, workers = args.engines.split(","), [int(w) for w in args.workers.split(",")]
    site = DiscoverySiteConfig(model=args.model, device="cpu")
    discover = DiscoverConfig(restarts=args.restarts, iterations=args.iterations, final_steps=args.final_steps)
    work = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    rows, ray_start = [], None
    try:
        if "ray" in engines:
            import ray  # the ray engine's optional dependency

            if not ray.is_initialized():
                t = time.perf_counter()
                ray.init(**local_ray_options(max(workers)))
                ray_start = time.perf_counter() - t
        for engine in engines:
            for w in workers:
                config = SweepConfig(site=site, prompts=args.prompts, discover=discover, engine=engine, workers=w,
                                     chunk=args.chunk, random_baseline=args.random_baseline)
                t = time.perf_counter()
                s = run_sweep(config, work / f"{engine}-{w}", progress=False)
                wall = time.perf_counter() - t
                ends = sorted(f.stat().st_mtime for f in (work / f"{engine}-{w}").glob("units/*/unit.json"))
                # after the w-th completion every worker has loaded and run a unit: the rate from there on
                steady = (60 * (len(ends) - w) / (ends[-1] - ends[w - 1])
                          if len(ends) > w and ends[-1] > ends[w - 1] else None)
                rows.append({"engine": engine, "workers": w, "units": s.ran, "failed": s.failed, "wall_seconds": wall,
                             "units_per_minute": 60 * s.ran / wall, "steady_units_per_minute": steady,
                             "seconds_per_unit": s.seconds_per_unit.get("median")})
                log.info("%-5s workers %d: %d units in %.1f s = %.1f units/min (worker time per unit %.2f s)", engine,
                         w, s.ran, wall, rows[-1]["units_per_minute"], rows[-1]["seconds_per_unit"] or 0)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if ray_start is not None:  # the cluster this run started
            ray.shutdown()
    by = {(r["engine"], r["workers"]): r for r in rows}
    pairs = [e for e in engines if (e, min(workers)) in by and (e, max(workers)) in by and len(workers) > 1]
    speedup = {e: by[e, max(workers)]["units_per_minute"] / by[e, min(workers)]["units_per_minute"] for e in pairs}
    steady = {e: by[e, max(workers)]["steady_units_per_minute"] / by[e, min(workers)]["steady_units_per_minute"]
              for e in pairs if by[e, max(workers)]["steady_units_per_minute"] and by[e, min(workers)]["steady_units_per_minute"]}
    overhead = {w: {"seconds_per_unit": (by["ray", w]["wall_seconds"] - by["local", w]["wall_seconds"]) / by["ray", w]["units"],
                    "fraction": by["ray", w]["wall_seconds"] / by["local", w]["wall_seconds"] - 1}
                for w in workers if ("ray", w) in by and ("local", w) in by and by["ray", w]["units"]}
    result = {"model": args.model, "prompts": args.prompts, "discover": discover.to_dict(), "rows": rows,
              "speedup_max_over_min_workers": speedup, "steady_speedup_max_over_min_workers": steady,
              "ray_overhead_over_local": overhead,
              "ray_cluster_start_seconds": ray_start}
    for e, v in speedup.items():
        log.info("%s: %d workers give %.2fx the units per minute of %d (%.2fx once loaded)", e, max(workers), v,
                 min(workers), steady.get(e, float("nan")))
    for w, v in overhead.items():
        log.info("ray over local, %d worker(s): %+.2f s per unit (%+.0f%% wall)", w, v["seconds_per_unit"],
                 100 * v["fraction"])
    if ray_start is not None:
        log.info("ray cluster start (not in the rows): %.1f s", ray_start)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        save_json(Path(args.out) / "bench.json", result)
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=1, default=str))
    sys.exit(0)
