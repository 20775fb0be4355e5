"""Every kind's mixture test, with and without the cross term, on the central result's prompts and on fresh ones.

A central sweep (``sensfind sweep --work analysis``) runs the mixture (Lp) test of every kind it scans
(optima, isotropic, cov-random, real-other, SAE latents, G's eigenvectors, PCA axes, contrastive
directions) on each prompt, and each row also carries ``p`` refitted with a per-pair cross term. This
script splits the sweep's units, in prompt order, into the first ``--first`` (the central result's prompts
when the sweep ran ``corpus:N`` with N > ``--first``: the corpus's test-split windows come in a fixed order)
and the rest (fresh prompts, the check of anything read off the first group), and pools each group per kind:
the median p over prompts with a 95% bootstrap interval, and how many prompts' own intervals lie above or
below 2, for the published model and with the cross term. Nothing is rescanned.

    sensfind sweep --work analysis --model smollm2-135m --prompts corpus:40 --workers 2 --out runs/kinds40
    python experiments/privileged_kinds.py --sweep runs/kinds40 --first 20 --out runs/privileged-kinds

Writes ``privileged_kinds.json`` (per group and kind, as ``results.json["privileged"]``),
``privileged_kinds.md`` and ``p_cross_by_kind.png`` (p with the cross term by kind, both groups).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

from sensfind.app.central import pooled_privileged
from sensfind.app.sweep import DONE, analysis_record, load_unit
from sensfind.configs import check_int
from sensfind.errors import error_boundary
from sensfind.reporting.plots import plot_p_by_kind
from sensfind.runio import check_output_dir, save_json, staged_dir, write_atomic


def groups(sweep: Path, first: int) -> dict[str, list[dict]]:
    """The finished units' mixture rows (each unit's kind -> row), split in prompt order into the first
    ``first`` prompts of the sweep and the rest. A unit that did not finish is left out of its group."""
    meta = analysis_record(sweep)
    units = sorted(meta["units"], key=lambda u: u["index"])
    if len(units) <= first:
        raise ValueError(f"--first {first} leaves no fresh prompts: the sweep has {len(units)} units")
    rows = {"first": [], "fresh": []}
    for i, u in enumerate(units):
        if (sweep / "units" / u["key"] / DONE).is_file():
            rows["first" if i < first else "fresh"].append(load_unit(sweep, u["key"]).privileged)
    for name, r in rows.items():
        if not r:
            raise ValueError(f"no finished units among the {name} prompts of {str(sweep)!r}")
    return rows


def _p(v) -> str:
    return "∞" if v is None else f"{v:.2f}"


def table(result: dict) -> str:
    lines = ["| prompts | kind | n | p, published model [95% interval] | prompts above 2 / below 2 | "
             "p with the cross term [95% interval] | prompts above 2 / below 2 |", "|---|---|---|---|---|---|---|"]
    for group, kinds in result["groups"].items():
        for kind, r in kinds.items():
            if not r["prompts"]:
                lines.append(f"| {group} | {kind} | 0 | – | – | – | – |")
                continue
            cross = (f"{_p(r['p_cross_median'])} [{_p(r['p_cross_median_low'])}, {_p(r['p_cross_median_high'])}] | "
                     f"{r['prompts_p_cross_above_2']} / {r['prompts_p_cross_below_2']}") if "p_cross_median" in r else "– | –"
            lines.append(f"| {group} | {kind} | {r['prompts']} | {_p(r['p_median'])} [{_p(r['p_median_low'])}, "
                         f"{_p(r['p_median_high'])}] | {r['prompts_p_above_2']} / {r['prompts_p_below_2']} | {cross} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sweep", required=True, help="a `sensfind sweep --work analysis` directory")
    ap.add_argument("--first", type=int, default=20, help="prompts in the first group (default 20: the central result's)")
    ap.add_argument("--out", default="runs/privileged-kinds")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return error_boundary(lambda: run(args))


def run(args) -> int:
    check_int("first", args.first, 1, maximum=100_000)
    sweep = Path(args.sweep)
    rows = groups(sweep, args.first)  # every check before the output directory is touched
    out = check_output_dir(args.out, overwrite=True)
    result = {"sweep": str(sweep), "first": args.first, "prompts": {g: len(r) for g, r in rows.items()},
              "groups": {g: pooled_privileged(r) for g, r in rows.items()}}
    inf = lambda v: math.inf if v is None else v  # noqa: E731  (JSON's null p is ∞)
    with staged_dir(out, overwrite=True) as tmp:  # whole or not at all
        save_json(tmp / "privileged_kinds.json", result)
        write_atomic(tmp / "privileged_kinds.md", table(result))
        groups_ = result["groups"]
        shown = {f"{k}\n({g})": groups_[g][k] for k in dict.fromkeys(k for g in groups_ for k in groups_[g])
                 for g in groups_ if "p_cross_median" in groups_[g].get(k, {})}  # each kind's groups side by side
        if shown:
            plot_p_by_kind(tmp / "p_cross_by_kind.png",
                           {k: (inf(v["p_cross_median"]), inf(v["p_cross_median_low"]), inf(v["p_cross_median_high"]))
                            for k, v in shown.items()},
                           "the mixture test with the cross term, by kind", "p with the cross term (median, 95% interval)")
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
