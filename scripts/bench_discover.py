"""Benchmark discovery: cost of an optimisation step against the plain scan it is built on.

On GPT-2's architecture (random weights; blocks.1.hook_resid_pre, last token of a 10-token prompt)
one discovery iteration of R restarts x K scan steps is timed against a plain forward+backward of the
same batch (scan, soft blowup, backward; no optimiser, no grid update). The ratio shows what the
optimiser and its bookkeeping add. On the toy, compute per distinct optimum (scan points evaluated
per distinct planted feature found) is measured, with and without the diversity penalty.

Random-weight GPT-2 outputs are nearly uniform, so KL stays small: τ is set in the run to half the
median KL of isotropic directions at 90°, and reported.

    python scripts/bench_discover.py --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import sensfind as sf
from sensfind.blowup import soft_blowup
from sensfind.toy import ToyConfig, ToyModel

PROMPT = [464, 168, 157, 423, 11, 290, 257, 131, 373, 95]  # 10 ids, valid for every local vocabulary


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_gpt2(restarts: int, steps: int, iterations: int, repeats: int, arch: str) -> dict:
    model = sf.load_model(f"random:{arch}", seed=0)
    subject = sf.TransformerSubject(model, PROMPT, hook="blocks.1.hook_resid_pre")
    with torch.no_grad():
        probe = sf.scan(subject, sf.baselines.isotropic(16, subject.d, seed=1), sf.ScanConfig(steps=2, stop=90.0))
    tau = 0.5 * float(probe.effects[:, -1].median())
    cfg = sf.DiscoverConfig(restarts=restarts, scan_steps=steps, iterations=iterations, tau=tau,
                            temperature=tau / 10, tol=0.0, final_steps=steps)
    scan_cfg = cfg.scan_config
    u = sf.baselines.isotropic(restarts, subject.d, seed=2)

    def plain():
        x = u.clone().requires_grad_(True)
        res = sf.scan(subject, x, scan_cfg)
        soft_blowup(res.effects, res.steps, tau, cfg.temperature).sum().backward()

    t_plain = _median_time(plain, repeats)
    t0 = time.perf_counter()
    found = sf.discover(subject, cfg)
    t_disc = time.perf_counter() - t0
    # discover = iterations x step + one final scan (forward only) of restarts x final_steps
    with torch.no_grad():
        t_final = _median_time(lambda: sf.scan(subject, u, sf.ScanConfig(steps=steps, tau=tau)), max(1, repeats // 2))
    t_step = (t_disc - t_final) / iterations
    return {
        "arch": arch, "restarts": restarts, "scan_steps": steps, "points_per_step": restarts * steps,
        "iterations": iterations, "tau": tau,
        "plain_scan_fwd_bwd_s": t_plain, "discover_step_s": t_step,
        "step_over_scan_ratio": t_step / t_plain, "distinct_optima": len(found),
        "points_evaluated": found.points_evaluated,
    }


def bench_toy(restarts: int, iterations: int, seeds: list[int], diversity: float) -> dict:
    out = []
    for seed in seeds:
        subject = ToyModel(ToyConfig(seed=seed)).subject(0)
        found = sf.discover(subject, sf.DiscoverConfig(restarts=restarts, iterations=iterations, seed=seed,
                                                       diversity=diversity))
        rec = sf.recovery(found.restart_directions, subject.signed_features(), subject.base)
        n = max(1, len(rec.distinct_features))
        random = sf.scan(subject, sf.baselines.isotropic(64, subject.d, seed=seed + 100),
                         sf.ScanConfig(steps=361)).threshold
        out.append({"seed": seed, "fraction_reached": rec.fraction_reached,
                    "distinct_features": len(rec.distinct_features), "points": found.points_evaluated,
                    "points_per_distinct_feature": found.points_evaluated / n,
                    "worst_optimum_blowup_deg": float(found.blowup_deg.max()),
                    "random_median_blowup_deg": float(random.median()),
                    "worst_optimum_over_random_median": float(found.blowup_deg.max() / random.median())})
    return {
        "diversity": diversity, "restarts": restarts, "iterations": iterations, "runs": out,
        "mean_distinct_features": statistics.mean(r["distinct_features"] for r in out),
        "mean_points_per_distinct_feature": statistics.mean(r["points_per_distinct_feature"] for r in out),
        "mean_fraction_reached": statistics.mean(r["fraction_reached"] for r in out),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        gpt2 = bench_gpt2(restarts=4, steps=8, iterations=3, repeats=2, arch="tiny")
        toy = [bench_toy(8, 15, [0], d) for d in (0.0, 1.0)]
    else:
        gpt2 = bench_gpt2(restarts=16, steps=16, iterations=8, repeats=5, arch="gpt2")
        toy = [bench_toy(32, 60, [0, 1, 2], d) for d in (0.0, 1.0)]
    sweep = {r: bench_toy(r, 15 if args.quick else 60, [0] if args.quick else [0, 1, 2], 0.0)["mean_distinct_features"]
             for r in ((2, 8) if args.quick else (4, 16, 64))}
    result = {"threads": torch.get_num_threads(), "gpt2_arch": gpt2, "toy_no_diversity": toy[0], "toy_diversity": toy[1],
              "toy_distinct_features_by_restarts": sweep}
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
