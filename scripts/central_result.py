"""The central result: discovery and comparison on a real model over many corpus prompts.

For each of ``--prompts`` corpus windows (test split, massive-activation bases skipped and counted):
discovered optima against isotropic, cov-random and real-other directions and the SAE's active and
inactive latents (threshold angles on one shared scan grid); the optima matched with the SAE's latents
against an isotropic and a covariance-matched null; the most active latents refined by discovery.
The SAE is the demo's (``sensfind.train_corpus_sae`` with its default config: SAELens on corpus activations
at the site, massive ones excluded, cached).

    python scripts/central_result.py --out runs/central --prompts 20
    python scripts/central_result.py --out runs/central --prompts 20 --shard 0/2   # two processes, then
    python scripts/central_result.py --out runs/central --prompts 20 --aggregate    # figures and report

Writes ``config.json``, ``prompts/NNN/`` (one analysis per prompt), ``results.json``, ``figures/*.png``
and ``report.html`` (summary, figures, the cards of the first prompt) into ``--out``. Prompts already
done in ``--out`` are kept (a stopped run continues).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

import sensfind as sf
from sensfind.analysis import KINDS, AnalysisConfig, analyse_prompt, massive_last_token
from sensfind.corpus_sae import clean_activations, train_corpus_sae
from sensfind.demo import ModelDemoConfig
from sensfind.prompts import load_corpus
from sensfind.prompts import prompt_activations as last_token_activations
from sensfind.runio import save_json

log = logging.getLogger("central")
CHUNK = 1024  # points per forward call: on CPU the per-call cost dominates the per-point cost

# per-prompt sizes: the demo's (AnalysisConfig defaults), so the demo is one prompt of this run
CENTRAL = AnalysisConfig()
SMOKE = AnalysisConfig(max_points=None, restarts=2, iterations=2, scan_steps=6, n_random=4, n_cov=4, n_real_other=4, max_active=2,
                       n_inactive=2, n_refine=1, refine_iterations=1, curve_steps=10, stop=90.0, n_null=100)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--out", default="runs/central")
    p.add_argument("--prompts", type=int, default=20, help="corpus prompts analysed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shard", default="0/1", help="I/N: this process does prompts i with i %% N == I")
    p.add_argument("--reverse", action="store_true", help="take this shard's prompts last first (a second worker)")
    p.add_argument("--aggregate", action="store_true", help="only aggregate the prompts already in --out")
    p.add_argument("--no-cards", action="store_true", help="aggregate without the first prompt's cards (no model load)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes and the demo's quick SAE (for tests)")
    p.add_argument("--cache-dir", default=None, help="default: sensfind's cache ($SENSFIND_CACHE or ~/.cache/sensfind)")
    return p.parse_args(argv)


def setup(args):
    demo = ModelDemoConfig.quick(model=args.model, seed=args.seed) if args.smoke else ModelDemoConfig(model=args.model,
                                                                                                    seed=args.seed)
    analysis = SMOKE if args.smoke else CENTRAL
    return demo, replace(analysis, seed=args.seed)


def prompts_and_others(model, corpus, demo: ModelDemoConfig, n: int, n_others: int):
    """``n`` test-split windows whose base is not a massive activation (and how many were skipped), and
    the last-token activations of ``n_others`` further test windows (real-other targets)."""
    windows = corpus.windows(3 * n + n_others + 10, demo.prompt_length, seed=demo.seed, split="test")
    massive = massive_last_token(model, windows, demo.hook)
    ok = torch.nonzero(~massive)[:, 0]
    chosen = [windows[i].tolist() for i in ok[:n].tolist()]
    skipped = int(massive[: int(ok[n - 1]) + 1].sum())
    rest = [windows[i].tolist() for i in ok[n:].tolist()][-n_others:]
    return chosen, skipped, last_token_activations(model, rest, demo.hook)


def contexts(model, corpus, demo: ModelDemoConfig):
    """The demo's context windows and their activations at the site, massive ones excluded (the
    covariance pool and the cards' top contexts)."""
    tokens = corpus.windows(demo.context_windows, demo.context_length, seed=demo.seed + 2, split="train")
    return tokens, clean_activations(model, tokens, demo.hook, demo.sae.max_norm_ratio, demo.sae.exclude_first)


def run(args) -> None:
    out = Path(args.out)
    demo, acfg = setup(args)
    index, count = (int(x) for x in args.shard.split("/"))
    log.info("loading %s, the corpus and the SAE", args.model)
    model = sf.load_model(args.model)
    corpus = load_corpus(model)
    sae = train_corpus_sae(model, demo.sae, cache_dir=args.cache_dir or True)
    log.info("prompts, real-other and context activations")
    n_others = max(acfg.n_real_other, 64 if not args.smoke else 8)
    prompts, skipped, others = prompts_and_others(model, corpus, demo, args.prompts, n_others)
    pool = contexts(model, corpus, demo)[1].acts
    out.mkdir(parents=True, exist_ok=True)
    save_json(out / "config.json", {"command": "scripts/central_result.py", "argv": sys.argv[1:], "model": args.model,
                                    "demo": demo.to_dict(), "analysis": acfg.to_dict(), "prompts": prompts,
                                    "prompts_skipped_massive": skipped, "n_others": len(others),
                                    "sae": {"source": sae.source, "d_sae": sae.n_latents, "quality": sae.info["quality"],
                                            "exclusion": sae.info["exclusion"]}})
    order = [i for i in range(len(prompts)) if i % count == index]
    for i in reversed(order) if args.reverse else order:
        prompt = prompts[i]
        d = out / "prompts" / f"{i:03d}"
        if (d / "analysis.pt").is_file() or (d / "started").is_file():  # done, or another worker is on it
            continue
        d.mkdir(parents=True, exist_ok=True)
        (d / "started").touch()
        t = time.perf_counter()
        log.info("prompt %d/%d: start", i + 1, len(prompts))
        subject = sf.TransformerSubject(model, prompt, hook=demo.hook, chunk_size=CHUNK)
        a = analyse_prompt(subject, sae, others, pool, acfg)
        a.save(d, overwrite=True)  # d already holds the "started" marker
        torch.save(a, d / "analysis.pt")
        s = a.summary()
        log.info("prompt %d/%d %r: %d optima, median threshold optima %s / real-other %s deg, %d match (iso) in %.0f s",
                 i + 1, len(prompts), model.tokenizer.decode(prompt), len(a.discovery), s["kinds"]["optima"]["median_deg"],
                 s["kinds"]["real-other"]["median_deg"], s["matches_isotropic"]["n_significant"], time.perf_counter() - t)


def ks(a: torch.Tensor, b: torch.Tensor, cap: float) -> dict:
    """Two-sample KS statistic and p-value, with "not reached" counted as ``cap`` (beyond the scan)."""
    from scipy.stats import ks_2samp

    a = torch.where(torch.isfinite(a), a, torch.full_like(a, cap)).tolist()
    b = torch.where(torch.isfinite(b), b, torch.full_like(b, cap)).tolist()
    r = ks_2samp(a, b)
    return {"statistic": float(r.statistic), "p_value": float(r.pvalue)}


def aggregate(args) -> dict:
    from sensfind.cards import build_cards
    from sensfind.plots import plot_boxes
    from sensfind.report import (analysis_figures, card_view, refinement_table, render_report, table,
                                 threshold_table, _bands)

    out = Path(args.out)
    cfg = json.loads((out / "config.json").read_text())
    dirs = sorted((out / "prompts").glob("*/analysis.pt"))
    analyses = [torch.load(p, weights_only=False) for p in dirs]
    if not analyses:
        raise SystemExit(f"no analysed prompts in {out / 'prompts'}")
    a0 = analyses[0]
    cap = float(a0.steps[-1]) + 1.0
    alpha = a0.config.alpha
    pooled = {k: torch.cat([a.threshold(k) for a in analyses]) for k in KINDS}

    def med(t):
        f = t[torch.isfinite(t)]
        return float(f.median()) if f.numel() else None

    n_opt = sum(len(a.discovery) for a in analyses)
    beat = sum(int((a.threshold("optima") < (med(a.threshold("real-other")) or math.inf)).sum()) for a in analyses)
    iso = sum(int(a.significant("isotropic").sum()) for a in analyses)
    cov = sum(int(a.significant("covariance").sum()) for a in analyses)
    both = sum(int((a.significant("isotropic") & a.significant("covariance")).sum()) for a in analyses)
    best = torch.cat([a.matches["isotropic"].cos[:, 0].abs() for a in analyses])
    ref = [a for a in analyses if a.refinement is not None]
    r_cos = torch.cat([a.refinement.cos_start_end for a in ref]) if ref else torch.empty(0)
    r_b0 = torch.cat([a.refinement.blowup_start for a in ref]).double() if ref else torch.empty(0)
    r_b1 = torch.cat([a.refinement.blowup_end for a in ref]).double() if ref else torch.empty(0)
    fin = torch.isfinite(r_b0) & torch.isfinite(r_b1)
    per_prompt_opt = torch.tensor([med(a.threshold("optima")) or math.inf for a in analyses])
    per_prompt_real = torch.tensor([med(a.threshold("real-other")) or math.inf for a in analyses])
    results = {
        "n_prompts": len(analyses), "prompts_skipped_massive": cfg["prompts_skipped_massive"], "n_optima": n_opt,
        "threshold_median_deg": {k: med(v) for k, v in pooled.items()},
        "threshold_n": {k: int(v.numel()) for k, v in pooled.items()},
        "threshold_not_reached": {k: int((~torch.isfinite(v)).sum()) for k, v in pooled.items()},
        "ks_optima_vs": {k: ks(pooled["optima"], pooled[k], cap) for k in KINDS if k != "optima"},
        "ks_real_other_vs_cov_random": ks(pooled["real-other"], pooled["cov-random"], cap),
        "ks_real_other_vs_isotropic": ks(pooled["real-other"], pooled["isotropic"], cap),
        "ks_sae_active_vs_inactive": ks(pooled["SAE active"], pooled["SAE inactive"], cap),
        "prompts_where_optima_median_below_real_other_median": int((per_prompt_opt < per_prompt_real).sum()),
        "optima_beating_their_prompts_real_other_median": beat,
        "alpha": alpha,
        "optima_matching_sae": {"isotropic": iso, "covariance": cov, "both": both},
        "optima_best_abs_cos": {"median": float(best.median()), "max": float(best.max())},
        "null_best_abs_cos_median": {k: float(torch.cat([a.matches[k].null_best for a in analyses]).median())
                                     for k in ("isotropic", "covariance")},
        "refinement": {
            "n_latents": int(r_cos.numel()),
            "cos_start_end_median": float(r_cos.median()) if r_cos.numel() else None,
            "cos_start_end_min": float(r_cos.min()) if r_cos.numel() else None,
            "threshold_before_median_deg": med(r_b0), "threshold_after_median_deg": med(r_b1),
            "threshold_ratio_after_over_before_median": float((r_b1[fin] / r_b0[fin]).median()) if fin.any() else None,
            "fraction_earlier": float((r_b1[fin] < r_b0[fin]).double().mean()) if fin.any() else None,
        },
        "seconds_per_prompt_median": float(torch.tensor([a.timings["total_seconds"] for a in analyses]).median()),
    }
    save_json(out / "results.json", results)

    figs = analysis_figures(out, analyses, KINDS)
    if r_cos.numel():
        p = plot_boxes(out / "figures" / "refinement.png", {"SAE latent (start)": r_b0, "after refinement": r_b1,
                                                             "discovered optima": pooled["optima"]},
                       "threshold angle (deg)", "refining SAE latents by discovery", cap=cap - 1)
        figs.append((p, "Threshold angles of the most active SAE latents before and after refinement by discovery, "
                        "beside the discovered optima."))
    demo, _ = setup(args)
    first = int(dirs[0].parent.name)
    views = []
    if not args.no_cards:  # cards of the first prompt: the model and corpus are needed again (tokens, contexts)
        model = sf.load_model(args.model)
        corpus = load_corpus(model)
        sae = train_corpus_sae(model, demo.sae, cache_dir=args.cache_dir or True)
        ctx_tokens, ctx = contexts(model, corpus, demo)
        subject = sf.TransformerSubject(model, cfg["prompts"][first], hook=demo.hook)
        cards = build_cards(a0, subject, sae, ctx, ctx_tokens, model.tokenizer)
        views = [card_view(c, a0.steps, _bands(a0), a0.config.tau) for c in cards]
    r = results
    tm = r["threshold_median_deg"]
    lead = (f"On <b>{r['n_prompts']} corpus prompts</b> ({r['prompts_skipped_massive']} skipped as massive-activation "
            f"bases), discovery found {n_opt} optima. Median threshold angle: optima {tm['optima']:.1f}°, real-other "
            f"{tm['real-other']:.1f}°, cov-random {tm['cov-random']:.1f}°, isotropic {tm['isotropic']:.1f}°, active SAE "
            f"latents {_f(tm['SAE active'])}°, inactive {_f(tm['SAE inactive'])}°. <b>{beat} of {n_opt}</b> optima blow up "
            f"earlier than their prompt's median real-other direction. <b>{iso} of {n_opt}</b> match an SAE latent at "
            f"p &lt; {alpha:g} against the isotropic null, <b>{cov} of {n_opt}</b> against the covariance null "
            f"(median best |cos| {r['optima_best_abs_cos']['median']:.3f}; null medians "
            f"{r['null_best_abs_cos_median']['isotropic']:.3f} / {r['null_best_abs_cos_median']['covariance']:.3f}).")
    ks_rows = [[f"optima vs {k}", v["statistic"], v["p_value"]] for k, v in r["ks_optima_vs"].items()]
    ks_rows += [["real-other vs cov-random", *r["ks_real_other_vs_cov_random"].values()],
                ["real-other vs isotropic", *r["ks_real_other_vs_isotropic"].values()],
                ["SAE active vs inactive", *r["ks_sae_active_vs_inactive"].values()]]
    tables = [("Threshold angles by kind (pooled over prompts)", threshold_table(analyses, KINDS)),
              ("Two-sample KS tests of threshold angles (not reached counted beyond the scan)",
               table(ks_rows, ["comparison", "KS statistic", "p-value"]))]
    rt = refinement_table(analyses)
    if rt:
        tables.append(("Refinement of SAE latents", rt))
    details = [("results.json", f"<pre>{json.dumps(results, indent=1)}</pre>")]
    render_report(out / "report.html", f"sensfind central result: {args.model}",
                  f"{r['n_prompts']} corpus prompts, site {demo.hook}, last token; cards below are for prompt "
                  f"{first}", lead, tables, figs, views, details)
    return results


def _f(v):
    return "n.r." if v is None else f"{v:.1f}"


def main(argv=None) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("sensfind").setLevel(logging.WARNING)
    torch.set_num_threads(1)
    if not args.aggregate:
        run(args)
    if args.aggregate or args.shard == "0/1":
        print(json.dumps(aggregate(args), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
