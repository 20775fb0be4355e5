"""Score discovery settings by metric ``sensitive`` on prompts a tuning search never saw (issue 12).

For each settings file (``best_config.json`` from ``sensfind tune``, or ``defaults``) and each prompt
index: distinct optima (pairwise |cos| < 0.5) that blow up before the median real-other direction
(towards the other prompts' activations at the site), per 100k scan points.

    python scripts/eval_sensitive.py --model smollm2-135m --prompts corpus:64 --subjects 2,3,4,5 \\
        --max-points 2000 defaults runs/tune-issue12/best_config.json
"""

from __future__ import annotations

import argparse
import json
import statistics

import sensfind as sf
from sensfind import tuning as tn


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("configs", nargs="+", help="'defaults' or a DiscoverConfig JSON file")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--prompts", default="corpus:64")
    p.add_argument("--subjects", type=tn._int_list, required=True, help="prompt indices (held out from the search)")
    p.add_argument("--hook", default="blocks.1.hook_resid_pre")
    p.add_argument("--max-points", type=int, default=None, help="budget of every run (overrides the files')")
    args = p.parse_args()
    targets = tn.transformer_targets(args.model, None, args.subjects, prompts=args.prompts, hook=args.hook,
                                     metric="sensitive")
    rows = []
    for name in args.configs:
        values = {} if name == "defaults" else json.loads(open(name).read())
        values = values.get("config", values)
        if args.max_points is not None:
            values["max_points"] = args.max_points
        ev = tn.evaluate(sf.DiscoverConfig.from_dict(values), targets)
        rows.append({"config": name, "median": statistics.median(ev.scores.values()), "mean": ev.quality,
                     "scores": ev.scores, "optima": ev.n_optima, "points": ev.points, "seconds": ev.seconds})
        print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()
