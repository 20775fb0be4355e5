"""Are the optima privileged whatever the threshold, the site and the prompt length?

The central result tests the mixture (Lp) p of every kind at one setting (τ = 0.5 nats, site
``blocks.1.hook_resid_pre``, 10-token prompts). This script changes one of the three at a time (variant
``central`` keeps all three) and, for each variant, runs ``sensfind sweep --work discover --controls`` over
held-out corpus prompts: discovery per prompt, the mixture test among its optima and on the controls at the
same τ (isotropic directions, the top eigenvectors of the linear response G, and the optima turned 15°, 30°
and 60° away from themselves), each also refitted with a per-pair cross term. It writes one sweep per variant under ``--out`` and a
table (``robustness.json``, ``robustness.md``) of the pooled p per kind and variant.

    python experiments/privileged_robustness.py --model smollm2-135m --prompts 8 --workers 2 --out runs/robustness

Nothing here is tuned on the prompts it reports: discovery is the central result's
(``sensfind.app.central.CENTRAL.discover_config``: 6,000 scan points, rounds of 16 restarts × 25 iterations,
16 scan steps, a 31-step final scan to 90°), with τ replaced in the τ variants.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

from sensfind.app.central import CENTRAL
from sensfind.app.site import DiscoverySiteConfig
from sensfind.app.sweep import SweepConfig, run_sweep
from sensfind.discovery.config import DiscoverConfig
from sensfind.errors import error_boundary
from sensfind.runio import save_json, write_atomic

# (name, what changes): each variant differs from the central result's setting in one thing
VARIANTS = {
    "central": {},
    "tau=0.1": {"tau": 0.1},
    "tau=2.0": {"tau": 2.0},
    "site=blocks.3": {"hook": "blocks.3.hook_resid_pre"},
    "length=24": {"length": 24},
}
CENTRAL_SETTING = {"tau": 0.5, "hook": "blocks.1.hook_resid_pre", "length": 10}


def variant_config(model: str, n: int, setting: dict, workers: int, discover: DiscoverConfig,
                   random_baseline: int) -> SweepConfig:
    s = CENTRAL_SETTING | setting
    return SweepConfig(site=DiscoverySiteConfig(model=model, hook=s["hook"]), prompts=f"corpus:{n}:{s['length']}",
                       discover=replace(discover, tau=s["tau"]),
                       random_baseline=random_baseline, controls=True, workers=workers)


def table(results: dict) -> str:
    """Markdown: per variant and kind, the pooled median p [95% interval over prompts] and the prompts whose
    own interval lies above 2 / contains 2 / lies below 2."""
    p = lambda v: "∞" if v is None else f"{v:.2f}"  # noqa: E731
    cross = lambda r: (f"{p(r['p_cross_median'])} [{p(r['p_cross_median_low'])}, {p(r['p_cross_median_high'])}]"  # noqa: E731
                       if "p_cross_median" in r else "–")
    lines = ["| variant | kind | prompts | median p [95% interval] | above 2 / contains 2 / below 2 | "
             "p with a cross term [95% interval] | threshold / quadratic onset | KL / quadratic at 2° |",
             "|---|---|---|---|---|---|---|---|"]
    for name, priv in results.items():
        for kind, r in priv.items():
            if not r["prompts"]:
                lines.append(f"| {name} | {kind} | 0 ({r['prompts_without_a_usable_pair']} without a usable pair) | – | – | – | – | – |")
                continue
            ratio, growth = r["ratio_to_quadratic_onset_median"], r["early_growth_2deg_median"]
            lines.append(f"| {name} | {kind} | {r['prompts']} | {p(r['p_median'])} [{p(r['p_median_low'])}, "
                         f"{p(r['p_median_high'])}] | {r['prompts_p_above_2']} / {r['prompts_containing_2']} / "
                         f"{r['prompts_p_below_2']} | {cross(r)} | {'–' if ratio is None else f'{ratio:.3g}'} | "
                         f"{'–' if growth is None else f'{growth:.3g}'} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompts", type=int, default=8, help="held-out corpus prompts per variant")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of: {', '.join(VARIANTS)}")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--random-baseline", type=int, default=16)
    ap.add_argument("--max-points", type=int, default=CENTRAL.max_points,
                    help="discovery's scan points per prompt (default: the central result's; smaller for a quick look)")
    ap.add_argument("--out", default="runs/privileged-robustness")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return error_boundary(lambda: run(args))


def run(args) -> int:
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in names if v not in VARIANTS]
    if bad or not names:
        raise ValueError(f"unknown variant(s) {bad or args.variants!r}; allowed: {', '.join(VARIANTS)}")
    discover = replace(CENTRAL.discover_config, max_points=args.max_points)
    configs = {v: variant_config(args.model, args.prompts, VARIANTS[v], args.workers, discover,
                                 args.random_baseline) for v in names}  # every config checked before any work
    out = Path(args.out)
    results = {}
    for name, cfg in configs.items():
        run_sweep(cfg, out / name.replace("=", "-"))
        results[name] = json.loads((out / name.replace("=", "-") / "results.json").read_text()).get("privileged", {})
    save_json(out / "robustness.json", {"central_setting": CENTRAL_SETTING, "variants": {v: VARIANTS[v] for v in names},
                                        "prompts": args.prompts, "discover": discover.to_dict(), "results": results})
    write_atomic(out / "robustness.md", table(results))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
