"""Benchmark discovery: cost of an optimisation step, and distinct sensitive optima found per budget.

On GPT-2's architecture (random weights; blocks.1.hook_resid_pre, last token of a 10-token prompt)
one discovery iteration of R restarts x K scan steps is timed against a plain forward+backward of the
same batch (scan, soft blowup, backward; no optimiser, no grid update). The ratio shows what the
optimiser and its bookkeeping add.

On the toy of issue 12 (768 planted features in 256 dimensions, 3 active), per seed and budget, with
default settings and only ``max_points`` set: distinct planted features reached, recall of the 20 most
sensitive signed planted features (smallest threshold angles, ``ToySubject.signed_thresholds``),
precision (fraction of optima within cos >= 0.9 of a planted feature) and scan points per distinct
feature; and the same for rounds with isotropic starts (``init='isotropic'``, the default before metric
starts) and for one round of 64 isotropic restarts without deflation (the strategy before rounds).

With ``--smollm2`` (needs the SmolLM2 loader and its weights): discovery at blocks.1.hook_resid_pre of
one builtin prompt with the budget, distinct optima at pairwise |cos| < 0.5, and how many of them blow
up before the median real-other direction (towards the other builtin prompts' activations).

Random-weight GPT-2 outputs are nearly uniform, so KL stays small: τ is set in the run to half the
median KL of isotropic directions at 90°, and reported.

    python scripts/bench_discover.py --json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch

import sensfind as sf
from sensfind.core import baselines
from sensfind.core.recovery import recovery
from sensfind.core.blowup import soft_blowup
from sensfind.core.toy import ToyConfig, ToyModel

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
        probe = sf.scan(subject, baselines.isotropic(16, subject.d, seed=1), sf.ScanConfig(steps=2, stop=90.0))
    tau = 0.5 * float(probe.effects[:, -1].median())
    cfg = sf.DiscoverConfig(restarts=restarts, scan_steps=steps, iterations=iterations, tau=tau,
                            temperature=tau / 10, tol=0.0, final_steps=steps, init="isotropic")  # iterations only
    scan_cfg = cfg.scan_config
    u = baselines.isotropic(restarts, subject.d, seed=2)

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


def toy_scores(subject, found, top: int = 20) -> dict:
    """Distinct planted features, recall of the ``top`` most sensitive signed ones, precision, cost."""
    thresholds = subject.signed_thresholds()
    rec = recovery(found.directions, subject.signed_features(), subject.base)
    distinct = set(rec.distinct_features)
    most_sensitive = set(torch.argsort(thresholds, stable=True)[:top].tolist())
    return {
        "distinct_features": len(distinct), "recall_top20_signed": len(most_sensitive & distinct) / top,
        "precision": rec.fraction_reached, "optima": len(found), "points": found.points_evaluated,
        "points_per_distinct_feature": found.points_evaluated / max(1, len(distinct)),
        "distinct_per_100k_points": len(distinct) * 1e5 / found.points_evaluated,
        "rounds": found.rounds_run, "stop_reason": found.stop_reason,
    }


ONE_ROUND = dict(restarts=64, iterations=60, scan_steps=24, polish_iterations=0, abandon=False,
                 init="isotropic")  # before rounds
ISOTROPIC_ROUNDS = dict(init="isotropic")  # rounds with deflation, before metric starts


def bench_toy(seeds: list[int], budgets: list[int], toy: dict, reference: bool) -> dict:
    runs = []
    for seed in seeds:
        subject = ToyModel(ToyConfig(seed=seed, **toy)).subject(0)
        for budget in budgets:
            found = sf.discover(subject, sf.DiscoverConfig(max_points=budget, seed=seed))
            runs.append({"seed": seed, "budget": budget, "strategy": "rounds (defaults)"} | toy_scores(subject, found))
            if reference:
                found = sf.discover(subject, sf.DiscoverConfig(max_points=budget, seed=seed, **ISOTROPIC_ROUNDS))
                runs.append({"seed": seed, "budget": budget, "strategy": "rounds, isotropic starts"}
                            | toy_scores(subject, found))
        if reference:
            found = sf.discover(subject, sf.DiscoverConfig(seed=seed, **ONE_ROUND))
            runs.append({"seed": seed, "budget": None, "strategy": "one round, 64 restarts"} | toy_scores(subject, found))
    return {"toy": toy, "runs": runs}


def bench_smollm2(budget: int, prompt_index: int = 0) -> dict:
    from sensfind.models.prompts import load_prompts, prompt_activations
    from sensfind.core.scan import real_other_thresholds

    try:
        model = sf.load_model("smollm2-135m")
    except Exception as exc:  # noqa: BLE001 - reported, not raised: the model is optional here
        return {"skipped": f"{type(exc).__name__}: {exc}"}
    hook = "blocks.1.hook_resid_pre"
    prompts = load_prompts("builtin", model)
    subject = sf.TransformerSubject(model, prompts[prompt_index], hook=hook)
    acts = prompt_activations(model, prompts, hook)
    others = torch.cat([acts[:prompt_index], acts[prompt_index + 1 :]])
    cfg = sf.DiscoverConfig(max_points=budget)
    t0 = time.perf_counter()
    found = sf.discover(subject, cfg)
    seconds = time.perf_counter() - t0
    median = float(real_other_thresholds(subject, others, cfg.final_scan_config).median())
    apart = sf.distinct_sensitive(found.directions, found.blowup_deg, math.inf)
    before = sf.distinct_sensitive(found.directions, found.blowup_deg, median)
    return {"prompt": prompts[prompt_index], "hook": hook, "budget": budget, "points": found.points_evaluated,
            "seconds": seconds, "rounds": found.rounds_run, "optima": len(found),
            "distinct_at_cos_0.5": len(apart), "distinct_at_cos_0.5_before_real_other_median": len(before),
            "real_other_median_deg": median, "best_blowup_deg": float(found.blowup_deg.min()),
            "optima_blowup_deg": found.blowup_deg.tolist()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seeds", type=lambda t: [int(x) for x in t.split(",")], default=[0, 1, 2], help="toy seeds")
    p.add_argument("--budgets", type=lambda t: [int(x) for x in t.split(",")], default=[30_000, 120_000],
                   help="scan-point budgets (max_points)")
    p.add_argument("--smollm2", action="store_true", help="also run SmolLM2-135M (needs its loader and weights)")
    p.add_argument("--no-gpt2", action="store_true", help="skip the GPT-2 step timing (toy and SmolLM2 only)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        gpt2 = bench_gpt2(restarts=4, steps=8, iterations=3, repeats=2, arch="tiny")
        toy = bench_toy([0], [6000], {}, reference=False)
    else:
        gpt2 = None if args.no_gpt2 else bench_gpt2(restarts=16, steps=16, iterations=8, repeats=5, arch="gpt2")
        toy = bench_toy(args.seeds, args.budgets, {"d": 256, "n_features": 768}, reference=True)
    result = {"threads": torch.get_num_threads(), "gpt2_arch": gpt2, "toy": toy}
    if args.smollm2:
        result["smollm2"] = bench_smollm2(max(args.budgets))
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
