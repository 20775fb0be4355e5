"""The central result: discovery and comparison on a real model over many corpus prompts.

Each prompt (a test-split corpus window whose base is not a massive activation) gets the demo's analysis
(``sensfind.comparison.analysis.analyse_prompt``: discovered optima against isotropic, cov-random and real-other
directions and the SAE's active and inactive latents; matches; refinement), as
one unit of ``sensfind sweep --work analysis`` each (:mod:`sensfind.app.sweep` runs them, on any engine).
:func:`aggregate` pools them into ``results.json``, figures and ``report.html``.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor

from sensfind.models.loading import load_model
from sensfind.comparison.analysis import AnalysisConfig, PromptAnalysis, kinds_of
from sensfind.configs import MAX_SEED, Config, check_int
from sensfind.runio import json_float, save_json
from sensfind.app.demo import ModelDemoConfig
from sensfind.comparison.analysis import massive_last_token
from sensfind.models.prompts import prompt_activations
from sensfind.dictionaries.corpus_sae import clean_activations
from sensfind.dictionaries.corpus_sae import train_corpus_sae
from sensfind.models.prompts import load_corpus
from sensfind.models.transformer_subject import TransformerSubject
from sensfind.reporting.stats import ks
from sensfind.comparison.cards import build_cards
from sensfind.reporting.plots import plot_boxes, plot_p_by_kind
from sensfind.reporting.report import _bands, analysis_figures, card_view, refinement_table, render_report, table, threshold_table

__all__ = ["CENTRAL", "CHUNK", "SMOKE", "CentralConfig", "aggregate", "contexts", "pooled_results",
           "prompts_and_others", "settings"]

log = logging.getLogger("sensfind.app.central")
CHUNK = 1024  # points per forward call: on CPU the per-call cost dominates the per-point cost
# per-prompt sizes: the demo's (AnalysisConfig defaults), so the demo is one prompt of this run
# plus the mixture (Lp) test of every kind and the linear-response control (issue 19)
CENTRAL = AnalysisConfig(mixture_pairs=6)
SMOKE = AnalysisConfig(max_points=None, restarts=2, iterations=2, scan_steps=6, n_random=4, n_cov=4, n_real_other=4,
                       max_active=2, n_inactive=2, n_refine=1, refine_iterations=1, curve_steps=10, stop=90.0, n_null=100,
                       mixture_pairs=1)


@dataclass(frozen=True)
class CentralConfig(Config):
    """What the central run covers and where it is written.

    Attributes:
        model: the pretrained model
        out: run directory
        seed: seeds the prompts, the SAE and the analyses (at most 4294967295)
        no_cards: aggregate without the first prompt's cards (no model load)
        smoke: tiny sizes and the demo's quick SAE (for tests)
        cache_dir: default: sensfind's cache ($SENSFIND_CACHE or ~/.cache/sensfind)
        mixture_pairs: the analysis's ``mixture_pairs`` in place of the run's default (0: no privilege test,
            and no linear, PCA or contrastive kinds; at most 10000); ``None``: the default.
    """

    model: str = "smollm2-135m"
    out: str = "runs/central"
    seed: int = 0
    no_cards: bool = False
    smoke: bool = False
    cache_dir: str | None = None
    mixture_pairs: int | None = None

    def __post_init__(self):
        check_int("seed", self.seed, minimum=0, maximum=MAX_SEED)
        check_int("mixture_pairs", self.mixture_pairs, 0, optional=True, maximum=10_000)


def settings(config: CentralConfig):
    """The demo's settings (site, SAE, contexts) and the per-prompt analysis sizes of this run."""

    demo = (ModelDemoConfig.quick(model=config.model, seed=config.seed) if config.smoke
            else ModelDemoConfig(model=config.model, seed=config.seed))
    analysis = replace(SMOKE if config.smoke else CENTRAL, seed=config.seed)
    if config.mixture_pairs is not None:
        analysis = replace(analysis, mixture_pairs=config.mixture_pairs)
    return demo, analysis


def prompts_and_others(model, corpus, demo, n: int, n_others: int):
    """``n`` test-split windows whose base is not a massive activation (and how many were skipped), and
    the last-token activations ``[n_others, d]`` of further test windows (real-other targets)."""

    windows = corpus.windows(3 * n + n_others + 10, demo.prompt_length, seed=demo.seed, split="test")
    massive = massive_last_token(model, windows, demo.hook)
    ok = torch.nonzero(~massive)[:, 0]
    chosen = [windows[i].tolist() for i in ok[:n].tolist()]
    skipped = int(massive[: int(ok[n - 1]) + 1].sum())
    rest = [windows[i].tolist() for i in ok[n:].tolist()][-n_others:]
    return chosen, skipped, prompt_activations(model, rest, demo.hook)


def contexts(model, corpus, demo):
    """The demo's context windows and their site activations, massive ones excluded (the covariance pool
    and the cards' top contexts)."""

    tokens = corpus.windows(demo.context_windows, demo.context_length, seed=demo.seed + 2, split="train")
    return tokens, clean_activations(model, tokens, demo.hook, demo.sae.max_norm_ratio, demo.sae.exclude_first)


def _load(config: CentralConfig, demo):
    model = load_model(config.model)
    corpus = load_corpus(model)
    return model, corpus, train_corpus_sae(model, demo.sae, cache_dir=config.cache_dir or True)


def _ks(a, b, cap: float) -> dict:
    r = ks(a, b, cap)
    return {"statistic": r["statistic"], "p_value": r["pvalue"]}


def _median(t) -> float | None:
    f = t[torch.isfinite(t)]
    return float(f.median()) if f.numel() else None


def _median_interval(x: Tensor, seed: int, n_boot: int = 2000) -> tuple[float, float]:
    """A 95% bootstrap interval (over the entries: prompts) of the median of ``x`` (∞ allowed)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(x), (n_boot, len(x)), generator=g)
    meds = x[idx].median(dim=1).values.sort().values
    return float(meds[int(0.025 * n_boot)]), float(meds[int(0.975 * n_boot) - 1])


def pooled_privileged(per_prompt: list[dict]) -> dict:
    """Per kind, over the prompts (``per_prompt``: each prompt's kind -> mixture-test row, as
    ``PromptAnalysis.privileged``) that ran the mixture test: the median of the prompts' ``p``
    (∞ counted as the largest) with a 95% bootstrap interval over prompts, how many prompts' own 95%
    intervals lie above 2, contain 2 or lie below it, and the median threshold over quadratic onset and
    early growth (KL over the quadratic form's at 2° and 4°); where the rows have them, the same for ``p``
    refitted with a per-pair cross term (``p_cross_*``)."""
    out = {}
    for kind in dict.fromkeys(k for a in per_prompt for k in a):
        rows = [a[kind] for a in per_prompt if kind in a and a[kind].get("n_pairs")]  # p undefined: no usable pair
        if not rows:
            out[kind] = {"prompts": 0, "prompts_without_a_usable_pair": sum(kind in a for a in per_prompt)}
            continue
        p, lo, hi = (_column(rows, k) for k in ("p", "p_low", "p_high"))
        ratio = torch.tensor([math.nan if r.get("ratio_median") is None else r["ratio_median"] for r in rows])
        growth = {a: torch.tensor([math.nan if r.get(f"early_growth_{a}deg_median") is None
                                   else r[f"early_growth_{a}deg_median"] for r in rows]) for a in (2, 4)}
        p_low, p_high = _median_interval(p, seed=len(out))
        out[kind] = {"prompts": len(rows), "prompts_without_a_usable_pair": sum(kind in a for a in per_prompt) - len(rows),
                     "p_median": json_float(float(p.median())),
                     "p_median_low": json_float(p_low), "p_median_high": json_float(p_high),
                     "prompts_p_above_2": int((lo > 2).sum()), "prompts_p_below_2": int((hi < 2).sum()),
                     "prompts_containing_2": int(((lo <= 2) & (hi >= 2)).sum()),
                     "ratio_to_quadratic_onset_median": _median(ratio[torch.isfinite(ratio)]),
                     **{f"early_growth_{a}deg_median": _median(g[torch.isfinite(g)]) for a, g in growth.items()},
                     "scan_points": sum(int(r["scan_points"]) for r in rows)}
        crossed = [r for r in rows if "p_cross" in r]  # rows from before the cross-term refit have none
        if crossed:
            pc, pc_lo, pc_hi = (_column(crossed, k) for k in ("p_cross", "p_cross_low", "p_cross_high"))
            c_low, c_high = _median_interval(pc, seed=len(out) + 1000)
            out[kind] |= {"p_cross_median": json_float(float(pc.median())), "p_cross_median_low": json_float(c_low),
                          "p_cross_median_high": json_float(c_high), "prompts_p_cross_above_2": int((pc_lo > 2).sum()),
                          "prompts_p_cross_below_2": int((pc_hi < 2).sum())}
    return out


def _column(rows: list[dict], key: str) -> Tensor:
    """``[n]`` float64 of one field of the rows, ``None`` (p = ∞ as saved in JSON) read as ∞."""
    return torch.tensor([math.inf if r[key] is None else r[key] for r in rows], dtype=torch.float64)


def pooled_results(analyses: list, prompts_skipped: int) -> dict:
    """The numbers of ``results.json``: threshold angles pooled over prompts and compared by KS tests
    (not reached counted beyond the scan), matches, refinement and timing."""
    cap = float(analyses[0].steps[-1]) + 1.0
    kinds = kinds_of(analyses)
    pooled = {k: torch.cat([a.threshold(k) for a in analyses]) for k in kinds}
    sig = {k: [a.significant(k) for a in analyses] for k in ("isotropic", "covariance")}
    best = torch.cat([a.matches["isotropic"].cos[:, 0].abs() for a in analyses])
    ref = [a.refinement for a in analyses if a.refinement is not None]
    r_cos, r_b0, r_b1 = (torch.cat([getattr(r, name) for r in ref]).double() if ref else torch.empty(0)
                         for name in ("cos_start_end", "blowup_start", "blowup_end"))
    fin = torch.isfinite(r_b0) & torch.isfinite(r_b1)
    per_prompt = {k: torch.tensor([_median(a.threshold(k)) or math.inf for a in analyses]) for k in ("optima", "real-other")}
    beat = sum(int((a.threshold("optima") < (_median(a.threshold("real-other")) or math.inf)).sum()) for a in analyses)
    return {
        "n_prompts": len(analyses), "prompts_skipped_massive": prompts_skipped,
        "n_optima": sum(len(a.discovery) for a in analyses),
        "threshold_median_deg": {k: _median(v) for k, v in pooled.items()},
        "threshold_n": {k: int(v.numel()) for k, v in pooled.items()},
        "threshold_not_reached": {k: int((~torch.isfinite(v)).sum()) for k, v in pooled.items()},
        "ks_optima_vs": {k: _ks(pooled["optima"], pooled[k], cap) for k in kinds if k != "optima"},
        "ks_real_other_vs_cov_random": _ks(pooled["real-other"], pooled["cov-random"], cap),
        "ks_real_other_vs_isotropic": _ks(pooled["real-other"], pooled["isotropic"], cap),
        "ks_sae_active_vs_inactive": _ks(pooled["SAE active"], pooled["SAE inactive"], cap),
        "prompts_where_optima_median_below_real_other_median": int((per_prompt["optima"] < per_prompt["real-other"]).sum()),
        "optima_beating_their_prompts_real_other_median": beat,
        "alpha": analyses[0].config.alpha,
        "optima_matching_sae": {"isotropic": sum(int(s.sum()) for s in sig["isotropic"]),
                                "covariance": sum(int(s.sum()) for s in sig["covariance"]),
                                "both": sum(int((i & c).sum()) for i, c in zip(sig["isotropic"], sig["covariance"]))},
        "optima_best_abs_cos": {"median": float(best.median()), "max": float(best.max())},
        "null_best_abs_cos_median": {k: float(torch.cat([a.matches[k].null_best for a in analyses]).median())
                                     for k in ("isotropic", "covariance")},
        "refinement": {
            "n_latents": int(r_cos.numel()),
            "cos_start_end_median": float(r_cos.median()) if r_cos.numel() else None,
            "cos_start_end_min": float(r_cos.min()) if r_cos.numel() else None,
            "threshold_before_median_deg": _median(r_b0), "threshold_after_median_deg": _median(r_b1),
            "threshold_ratio_after_over_before_median": float((r_b1[fin] / r_b0[fin]).median()) if fin.any() else None,
            "fraction_earlier": float((r_b1[fin] < r_b0[fin]).double().mean()) if fin.any() else None,
        },
        "privileged": pooled_privileged([a.privileged for a in analyses]),
        "seconds_per_prompt_median": float(torch.tensor([a.timings["total_seconds"] for a in analyses]).median()),
    }


def _f(v) -> str:
    return "n.r." if v is None else f"{v:.1f}"


def _p(v) -> str:
    return "∞" if v is None else f"{v:.2f}"


def aggregate(config: CentralConfig, units: list[tuple[Path, list[int]]], prompts_skipped: int) -> dict:
    """Pool a sweep's analysed prompts into ``config.out``: ``results.json``, ``figures/*.png`` and
    ``report.html`` (with the cards of the first prompt unless ``no_cards``). Returns the results. ``units``:
    the (directory, prompt tokens) of the analyses; ``prompts_skipped``: the massive-activation bases skipped."""

    out = Path(config.out)
    dirs = [d for d, _ in units]
    analyses = [PromptAnalysis.load(d) for d in dirs]
    if not analyses:
        raise ValueError(f"no analysed prompts to aggregate into {str(out)!r}")
    r = pooled_results(analyses, prompts_skipped)
    save_json(out / "results.json", r)
    a0 = analyses[0]
    kinds = kinds_of(analyses)
    figs = analysis_figures(out, analyses, kinds)
    ref = [a.refinement for a in analyses if a.refinement is not None]
    if r["refinement"]["n_latents"]:
        b0, b1 = (torch.cat([getattr(x, n) for x in ref]).double() for n in ("blowup_start", "blowup_end"))
        optima = torch.cat([a.threshold("optima") for a in analyses])
        p = plot_boxes(out / "figures" / "refinement.png", {"SAE latent (start)": b0, "after refinement": b1,
                                                             "discovered optima": optima},
                       "threshold angle (deg)", "refining SAE latents by discovery", cap=float(a0.steps[-1]))
        figs.append((p, "Threshold angles of the most active SAE latents before and after refinement by discovery, "
                        "beside the discovered optima."))
    if r["privileged"]:
        inf = lambda v: math.inf if v is None else v  # noqa: E731  (JSON's null p is ∞ here)
        shown = {k: v for k, v in r["privileged"].items() if v["prompts"]}
        p = plot_p_by_kind(out / "figures" / "p_by_kind.png",
                           {k: (inf(v["p_median"]), inf(v["p_median_low"]), inf(v["p_median_high"])) for k, v in shown.items()},
                           "are the kinds privileged? the mixture (Lp) test", "p (median over prompts, 95% interval)",
                           dots={k: [inf(a.privileged[k]["p"]) for a in analyses if a.privileged.get(k, {}).get("n_pairs")]
                                 for k in shown})
        figs.append((p, "The mixture test's p per kind: the median over prompts with its 95% bootstrap interval over "
                        "prompts (bars) and each prompt's own p (dots; ∞ and values beyond the axis drawn at its top). "
                        "p = 2 is a quadratic form; p > 2 means pure directions exit the plateau sooner than their mixtures."))
    demo, _ = settings(config)
    first = int(dirs[0].name) if dirs[0].name.isdigit() else dirs[0].name
    views = []
    if not config.no_cards:  # cards of the first prompt: the model and corpus are needed again (tokens, contexts)

        model, corpus, sae = _load(config, demo)
        ctx_tokens, ctx = contexts(model, corpus, demo)
        cards = build_cards(a0, TransformerSubject(model, units[0][1], hook=demo.hook), sae, ctx, ctx_tokens,
                            model.tokenizer)
        views = [card_view(c, a0.steps, _bands(a0), a0.config.tau) for c in cards]
    tm, n_opt, m = r["threshold_median_deg"], r["n_optima"], r["optima_matching_sae"]
    lead = (f"On <b>{r['n_prompts']} corpus prompts</b> ({r['prompts_skipped_massive']} skipped as massive-activation "
            f"bases), discovery found {n_opt} optima. Median threshold angle: optima {_f(tm['optima'])}°, real-other "
            f"{_f(tm['real-other'])}°, cov-random {_f(tm['cov-random'])}°, isotropic {_f(tm['isotropic'])}°, active SAE "
            f"latents {_f(tm['SAE active'])}°, inactive {_f(tm['SAE inactive'])}°. "
            f"<b>{r['optima_beating_their_prompts_real_other_median']} of {n_opt}</b> optima blow up "
            f"earlier than their prompt's median real-other direction. <b>{m['isotropic']} of {n_opt}</b> match an SAE "
            f"latent at p &lt; {r['alpha']:g} against the isotropic null, <b>{m['covariance']} of {n_opt}</b> against the "
            f"covariance null (median best |cos| {r['optima_best_abs_cos']['median']:.3f}; null medians "
            f"{r['null_best_abs_cos_median']['isotropic']:.3f} / {r['null_best_abs_cos_median']['covariance']:.3f}).")
    ks_rows = [[f"optima vs {k}", v["statistic"], v["p_value"]] for k, v in r["ks_optima_vs"].items()]
    ks_rows += [["real-other vs cov-random", *r["ks_real_other_vs_cov_random"].values()],
                ["real-other vs isotropic", *r["ks_real_other_vs_isotropic"].values()],
                ["SAE active vs inactive", *r["ks_sae_active_vs_inactive"].values()]]
    tables = [("Threshold angles by kind (pooled over prompts)", threshold_table(analyses, kinds)),
              ("Two-sample KS tests of threshold angles (not reached counted beyond the scan)",
               table(ks_rows, ["comparison", "KS statistic", "p-value"]))]
    if rt := refinement_table(analyses):
        tables.append(("Refinement of SAE latents", rt))
    if priv := r["privileged"]:
        rows = [[k, v["prompts"], "∞" if v["p_median"] is None else v["p_median"],
                 f"[{_p(v['p_median_low'])}, {_p(v['p_median_high'])}]", v["prompts_p_above_2"],
                 v["prompts_containing_2"], v["prompts_p_below_2"], v["ratio_to_quadratic_onset_median"],
                 v["early_growth_2deg_median"], v["early_growth_4deg_median"]]
                for k, v in priv.items() if v["prompts"]]
        tables.append(("Privileged directions: the Lp mixture test per kind and prompt, and thresholds over their "
                       "quadratic (linear-response) onsets",
                       table(rows, ["kind", "prompts", "median p", "95% interval (over prompts)",
                                    "prompts: interval above 2", "contains 2", "below 2",
                                    "threshold / quadratic onset (median)", "KL / quadratic at 2°", "at 4°"])))
    render_report(out / "report.html", f"sensfind central result: {config.model}",
                  f"{r['n_prompts']} corpus prompts, site {demo.hook}, last token; cards below are for prompt {first}",
                  lead, tables, figs, views, [("results.json", f"<pre>{json.dumps(r, indent=1)}</pre>")])
    return r
