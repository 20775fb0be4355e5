"""Score a saved discovery run on a real model: how many of its optima are distinct and sensitive.

Reads a ``sensfind discover`` results directory (``config.json`` for the site and the final scan,
the saved ``Discovery``), scans the directions towards the activations of ``--prompts`` (real-other
directions; prompts identical to the subject's are dropped) on the discovery's own final scan grid, and
counts the optima that are pairwise |cos| < ``--max-cos`` and blow up before the median real-other
direction (``sensfind.distinct_sensitive``, the quantity issue 12 asks for).

    python scripts/score_discovery.py runs/smol120k --prompts corpus:64

Prints one JSON object (``--out FILE`` also writes it).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


import sensfind as sf
from sensfind.errors import error_boundary
from sensfind.discovery.config import DiscoverConfig
from sensfind.models.prompts import load_prompts, prompt_activations
from sensfind.core.scan import real_other_thresholds


def score(run: Path, prompts: str, max_cos: float = 0.5) -> dict:
    config = json.loads((run / "config.json").read_text())
    site, dconf = config["site"], DiscoverConfig.from_dict(config["discover"])
    found = sf.Discovery.load(run)
    model = sf.load_model(site["model"], seed=site.get("seed") or 0, device="cpu")
    prompt = [int(t) for t in site["tokens"].split(",")] if site.get("tokens") else site["prompt"]
    position = -1 if site.get("position") is None else site["position"]
    subject = sf.TransformerSubject(model, prompt, hook=site["hook"], position=position)
    targets = prompt_activations(model, load_prompts(prompts, model), site["hook"], position)
    real = real_other_thresholds(subject, targets, dconf.final_scan_config)
    median = float(real.median())
    apart = sf.distinct_sensitive(found.directions, found.blowup_deg, math.inf, max_cos)
    before = sf.distinct_sensitive(found.directions, found.blowup_deg, median, max_cos)
    return {"run": str(run), "prompts": prompts, "real_other": int(real.numel()), "real_other_median": median,
            "points": found.points_evaluated, "rounds": found.rounds_run, "stop_reason": found.stop_reason,
            "optima": len(found), f"distinct_at_cos_{max_cos}": len(apart),
            f"distinct_at_cos_{max_cos}_before_real_other_median": len(before),
            "per_100k_points": 1e5 * len(before) / found.points_evaluated,
            "best_blowup": float(found.blowup_deg.min()), "worst_kept_blowup": float(found.blowup_deg[before].max())
            if before else math.nan}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="a `sensfind discover` results directory")
    p.add_argument("--prompts", default="corpus:64", help="real-other prompts (default corpus:64)")
    p.add_argument("--max-cos", type=float, default=0.5, help="pairwise |cos| below which optima count as distinct")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if not (args.run / "config.json").is_file():
        print(f"score_discovery: {args.run} is not a discover results directory (no config.json)", file=sys.stderr)
        return 2
    return error_boundary(lambda: _report(args))


def _report(args) -> int:
    result = score(args.run, args.prompts, args.max_cos)
    text = json.dumps(result)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
