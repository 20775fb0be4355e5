"""A stronger comparison SAE: do the central result's optima match its latents where the default's did not?

The central result compares the optima with the default corpus SAE (``ModelDemoConfig().sae``: 1,024
training windows of 64 tokens, 2 epochs, about 64k activations). This script trains, once and cached like
every corpus SAE, one on ``--windows`` windows (default 16,384: about 1M activations, 16× the default) with
otherwise the default's settings, measures both SAEs on the same held-out test-split windows (explained
variance, L0, dead latents, relative error, the next-token cost of splicing the reconstruction in), and
matches the optima of every finished unit of a central sweep (``sensfind sweep --work analysis``) against
both, with the analysis's own nulls (isotropic and covariance-matched) and significance level. Matching
reads the saved optima; nothing is rescanned, so the SAE-latent kinds' thresholds are still the default
SAE's.

    python experiments/strong_sae.py --sweep runs/central-smollm2 --out runs/strong-sae

Writes ``strong_sae.json`` (configs, both qualities, per-unit and pooled matches) and ``strong_sae.md``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path

import torch

from sensfind.app.central import _load, contexts, settings
from sensfind.app.site import DiscoverySiteConfig
from sensfind.app.sweep import DONE, SweepConfig, analysis_record, load_unit
from sensfind.comparison.compare import project_dictionary
from sensfind.comparison.match import NullConfig, match_directions
from sensfind.configs import check_int
from sensfind.dictionaries.corpus_sae import sae_quality, train_corpus_sae
from sensfind.errors import error_boundary
from sensfind.models.transformer_subject import TransformerSubject
from sensfind.runio import check_output_dir, load_json, save_json, staged_dir, write_atomic

QUALITY = ("explained_variance", "l0", "dead_fraction", "relative_error", "ce_clean", "ce_sae", "kl_sae")


def match_unit(analysis, base: torch.Tensor, dictionary, pool: torch.Tensor) -> dict:
    """The optima of one unit against ``dictionary`` (base projected out) with the analysis's nulls."""
    cfg = analysis.config
    opt = analysis.directions["optima"].to(base.dtype)
    target = project_dictionary(dictionary, base)
    out = {"n_optima": int(opt.shape[0])}
    for null in ("isotropic", "covariance"):
        extra = {"activations": pool.to(base.dtype), "base": base} if null == "covariance" else {}
        m = match_directions(opt, target, cfg.k, NullConfig(null, cfg.n_null, cfg.seed), **extra)
        out[null] = int((m.p_value[:, 0] < cfg.alpha).sum())
        if null == "isotropic":
            out["best_abs_cos"] = m.cos[:, 0].abs().tolist()
            out["null_best_median"] = float(m.null_best.median())
    return out


def pooled(rows: list[dict]) -> dict:
    best = torch.tensor([c for r in rows for c in r["best_abs_cos"]], dtype=torch.float64)
    return {"n_optima": sum(r["n_optima"] for r in rows),
            "matching_isotropic_null": sum(r["isotropic"] for r in rows),
            "matching_covariance_null": sum(r["covariance"] for r in rows),
            "best_abs_cos_median": float(best.median()), "best_abs_cos_max": float(best.max()),
            "null_best_median": float(torch.tensor([r["null_best_median"] for r in rows]).median())}


def table(result: dict) -> str:
    lines = ["| SAE | activations trained on | latents | explained variance | L0 | dead (held-out) | CE with SAE − clean (nats) "
             "| optima matching: isotropic null / covariance null | median best abs cos (null's) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in result["saes"].items():
        q, m = r["quality"], result["pooled"][name]
        lines.append(f"| {name} | {r['activations']:,} | {r['latents']:,} | {q['explained_variance']:.3f} | {q['l0']:.1f} | "
                     f"{q['dead_fraction']:.1%} | {q['ce_sae'] - q['ce_clean']:.3f} | "
                     f"{m['matching_isotropic_null']} / {m['matching_covariance_null']} of {m['n_optima']} | "
                     f"{m['best_abs_cos_median']:.3f} ({m['null_best_median']:.3f}) |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sweep", required=True, help="a finished `sensfind sweep --work analysis` directory")
    ap.add_argument("--windows", type=int, default=16_384, help="training windows of the stronger SAE (default 16384)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--eval-windows", type=int, default=128, help="held-out test-split windows both SAEs are measured on")
    ap.add_argument("--out", default="runs/strong-sae")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return error_boundary(lambda: run(args))


def run(args) -> int:
    check_int("windows", args.windows, 1, maximum=100_000)
    check_int("epochs", args.epochs, 1, maximum=1000)
    check_int("eval_windows", args.eval_windows, 1, maximum=10_000)
    sweep = Path(args.sweep)
    meta = analysis_record(sweep)
    config = SweepConfig.from_dict(meta["config"])
    done = [u["key"] for u in meta["units"] if (sweep / "units" / u["key"] / DONE).is_file()]
    if not done:
        raise ValueError(f"no finished units in {str(sweep / 'units')!r}")
    out = check_output_dir(args.out, overwrite=True)
    central = config.central(sweep)
    demo, _ = settings(central)
    strong_cfg = replace(demo.sae, n_windows=args.windows, epochs=args.epochs)  # checked before any work
    model, corpus, default = _load(central, demo)
    strong = train_corpus_sae(model, strong_cfg, cache_dir=central.cache_dir or True)
    pool = contexts(model, corpus, demo)[1].acts
    held_out = corpus.windows(args.eval_windows, demo.sae.window, demo.sae.seed + 7, split="test")
    saes = {"default": (default, demo.sae), "stronger": (strong, strong_cfg)}
    result = {"sweep": str(sweep), "units": len(done), "eval_windows": args.eval_windows, "saes": {}, "pooled": {},
              "per_unit": {name: [] for name in saes}}
    for name, (dic, cfg) in saes.items():
        q = sae_quality(model, dic, held_out, max_norm_ratio=cfg.max_norm_ratio, exclude_first=cfg.exclude_first).to_dict()
        result["saes"][name] = {"config": cfg.to_dict(), "activations": int(dic.info.get("exclusion", {}).get("kept", 0))
                                or cfg.n_windows * cfg.window, "latents": int(dic.n_latents),
                                "quality": {k: q[k] for k in QUALITY}, "trained": dic.info.get("trained")}
    for key in done:
        analysis = load_unit(sweep, key)
        site = DiscoverySiteConfig.from_dict(load_json(sweep / "units" / key / DONE)["site"])
        base = TransformerSubject(model, site.token_ids, hook=demo.hook).base
        for name, (dic, _) in saes.items():
            result["per_unit"][name].append({"key": key, **match_unit(analysis, base, dic, pool)})
    for name in saes:
        result["pooled"][name] = pooled(result["per_unit"][name])
    with staged_dir(out, overwrite=True) as tmp:  # whole or not at all
        save_json(tmp / "strong_sae.json", result)
        write_atomic(tmp / "strong_sae.md", table(result))
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
