"""Self-contained HTML reports rendered from the Jinja2 templates in ``templates/`` (autoescape on).

Reports are fed by result objects (``Comparison``, ``Discovery``, ``PromptAnalysis``, feature cards) and
never run the model: every curve they plot is one the result already holds. Figures are embedded as PNG
data; ``table`` and ``figure`` give escaped HTML pieces for pages assembled elsewhere.
"""

from __future__ import annotations

import base64
import json
import math
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import torch
from markupsafe import Markup, escape

from sensfind.reporting.plots import plot_before_after, plot_effect_curves, plot_histograms, plot_history
from sensfind.reporting.plots import plot_boxes, plot_median_curves
from sensfind.comparison.analysis import KINDS
from sensfind.comparison.cards import decode_token

__all__ = ["Link", "card_view", "comparison_figures", "figure", "html_page", "prompt_markup", "render_report", "svg_curve",
           "svg_histogram", "table",
           "compare_lead", "write_compare_report", "write_demo_report", "write_model_demo_report"]

CURVES_SHOWN = 32  # random directions and decoder rows drawn in a comparison's effect-curve figure


@lru_cache(maxsize=1)
def _env():
    import jinja2  # lazy: only reports need it

    return jinja2.Environment(loader=jinja2.PackageLoader("sensfind.reporting", "templates"), autoescape=True)


def _render(name: str, **values) -> str:
    return _env().get_template(name).render(**values)


class Link(NamedTuple):
    """A table cell that links ``text`` to ``href``."""

    text: str
    href: str


def _fmt(v):
    if isinstance(v, (Link, Markup)):
        return v
    if isinstance(v, float):
        return "not reached" if math.isinf(v) else f"{v:.3g}"
    return str(v)


def table(rows: list[list], header: list[str]) -> Markup:
    """An HTML table; cells are escaped text (floats to 3 digits, inf as "not reached") or ``Link``s."""
    return _env().get_template("_parts.html.j2").module.table(header, [[_fmt(c) for c in r] for r in rows])


def figure(path: Path, caption: str) -> Markup:
    """A PNG file embedded as data, with its caption."""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return _env().get_template("_parts.html.j2").module.figure(data, caption)


def html_page(title: str, sections: list[tuple[str, list]]) -> str:
    """A page of ``(heading, parts)`` sections; parts are ``table``/``figure`` pieces (plain text is escaped)."""
    return _render("page.html.j2", title=title, sections=[dict(heading=h, parts=p) for h, p in sections])


# ---------------------------------------------------------------------------------------------------
# The comparison report (``sensfind compare``) and the toy demo's report


def comparison_figures(directory: Path, comparison) -> list[tuple[Path, str]]:
    """The figures every comparison report shows, drawn from the curves ``compare`` kept; (path, caption) pairs."""
    fig_dir = Path(directory) / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    cfg = comparison.config.scan_config
    sens = comparison.sensitivity
    out = []
    if comparison.steps is not None:
        groups = {}
        if sens.random_effects is not None:
            groups["naive-random"] = (comparison.steps, sens.random_effects[:CURVES_SHOWN])
        if sens.effects is not None and sens.effects.numel():
            groups["SAE decoder rows (signed)"] = (comparison.steps, sens.effects[:CURVES_SHOWN])
        groups["discovered optima"] = (comparison.steps, comparison.optima_effects)
        p = plot_effect_curves(fig_dir / "effect_curves.png", groups, xlabel=cfg.axis_label, effect=cfg.effect,
                               tau=cfg.tau, title="effect vs angle: optima, SAE rows and random directions")
        out.append((p, "Effect (KL in nats) against slerp angle for discovered optima, signed SAE decoder rows and "
                       "isotropic random directions; the dashed line is the threshold τ."))
    m = comparison.matches["isotropic"]
    nulls = {f"null: best |cos| of {k} random directions": v.null_best for k, v in comparison.matches.items()}
    p = plot_histograms(fig_dir / "cos_vs_null.png", nulls, "best |cos| with any decoder row", "optima vs the null",
                        lines={"discovered optima": m.cos[:, 0].abs().tolist()})
    out.append((p, "Best |cosine| of each discovered optimum with the dictionary (dashed) against the same statistic "
                   "for random directions (histograms)."))
    th = {"SAE decoder rows": sens.blowup, "naive-random": sens.random_blowup}
    if sens.real_other_blowup.numel():
        th["real-other"] = sens.real_other_blowup
    opt = comparison.optima_blowup
    finite_opt = [] if opt is None else [float(x) for x in opt if math.isfinite(x)]
    p = plot_histograms(fig_dir / "threshold_angles.png", th, "threshold angle (deg)",
                        "how early each kind of direction blows up", lines={"discovered optima": finite_opt})
    out.append((p, "Threshold angle (first angle with effect > τ) of SAE decoder rows, random and real-other "
                   "directions; discovered optima dashed."))
    return out


def _match_rows(comparison, n: int = 20) -> list[list]:
    m = comparison.matches["isotropic"]
    rows = []
    for i in range(min(len(m), n)):
        url, latent = m.urls[i][0], int(m.latents[i, 0])
        z = float(m.z[i, 0])
        rows.append([i, Link(str(latent), url) if url else latent, float(m.cos[i, 0]),
                     "excites" if m.cos[i, 0] >= 0 else "dampens", float(m.p_value[i, 0]), z if math.isfinite(z) else "n/a"])
    return rows


def _compare_tables(comparison, extra: list | None) -> list[tuple[str, Markup]]:
    """The comparison's summary, best-match and refinement tables: (title, table) pairs."""
    s = comparison.summary()
    sens = s["dictionary_sensitivity"]
    summary_rows = [
        ["directions compared", len(comparison.matches["isotropic"])],
        [f"fraction matching a latent (p < {comparison.config.alpha}, isotropic null)",
         s["matches_isotropic"]["fraction_significant"]],
        ["median best |cos|, isotropic null", s["matches_isotropic"]["null_best_median"]],
        ["latents scanned", sens["n_latents"]],
        ["fraction of scanned latents that are local optima", sens["fraction_local_optima"]],
        ["median threshold angle of latents (deg)", sens["latent_blowup_median"]],
        ["median threshold angle of random directions (deg)", sens["random_blowup_median"]],
        ["median threshold angle of real-other directions (deg)", sens["real_other_blowup_median"]],
    ]
    tables = [("Summary", table(summary_rows + (extra or []), ["quantity", "value"])),
              ("Best dictionary match of each direction",
               table(_match_rows(comparison), ["direction", "latent", "cos", "effect", "p-value", "z"]))]
    if comparison.refinement is not None:
        r = comparison.refinement
        rows = [[int(l), int(sg), float(c), float(b0), float(b1)] for l, sg, c, b0, b1 in
                zip(comparison.refined_latents, comparison.refined_sign, r.cos_start_end, r.blowup_start, r.blowup_end)]
        tables.append(("Refinement from decoder rows",
                       table(rows[:40], ["latent", "sign", "cos(start, end)", "blowup start (deg)", "blowup end (deg)"])))
    return tables


def _compare_sections(directory: Path, comparison, extra: list | None) -> list[tuple[str, list]]:
    figs = comparison_figures(directory, comparison)
    return [(t, [h]) for t, h in _compare_tables(comparison, extra)] + [("Figures", [figure(p, c) for p, c in figs])]


def _write_page(directory: Path, title: str, sections: list) -> Path:
    page = Path(directory) / "report.html"
    page.write_text(html_page(title, sections), encoding="utf-8")
    return page


def compare_lead(comparison) -> Markup:
    """The comparison report's summary paragraph."""
    s = comparison.summary()
    n, sens = len(comparison.matches["isotropic"]), s["dictionary_sensitivity"]
    n_match = int(comparison.significant("isotropic").sum())
    deg = lambda v: _deg(float(v))  # noqa: E731
    opt = comparison.optima_blowup
    fin = [] if opt is None else [float(x) for x in opt if math.isfinite(x)]
    return Markup("<b>{} of {}</b> compared directions match a dictionary latent at p &lt; {:g} against the isotropic "
                  "null. Median threshold angle: the directions {}, {} scanned latents {}, isotropic random {}, "
                  "real-other {}; {} of the scanned latents are local optima of the threshold angle.").format(
        n_match, n, comparison.config.alpha, deg(torch.tensor(fin).median()) if fin else "not reached",
        sens["n_latents"], deg(sens["latent_blowup_median"]), deg(sens["random_blowup_median"]),
        deg(sens["real_other_blowup_median"]), f"{sens['fraction_local_optima']:.0%}")


def write_compare_report(directory: Path, comparison, title: str, extra: list | None = None, cards: list = (),
                         prompt: str = "") -> Path:
    """``report.html`` (and ``figures/``) in ``directory`` for a ``Comparison``: summary tables (``extra``: more
    summary rows), figures, the ``cards.FeatureCard``s of ``cards`` (``comparison_cards``) and the prompt
    (trusted HTML, ``prompt_markup``), in the dashboard layout of ``templates/report.html.j2``."""
    directory = Path(directory)
    cfg = comparison.config
    sens = comparison.sensitivity
    bands = {} if sens.random_effects is None else \
        {"isotropic random": (sens.random_effects.detach(), KIND_COLOURS["isotropic random"])}
    views = [card_view(c, comparison.steps, bands, cfg.tau) for c in cards]
    details = [("Configuration", Markup("<pre>{}</pre>").format(json.dumps(cfg.to_dict(), indent=1)))]
    if comparison.budget is not None:
        details.append(("Budget", Markup("<pre>{}</pre>").format(json.dumps(comparison.budget, indent=1))))
    return render_report(
        directory / "report.html", title,
        f"sphere mode; τ = {cfg.tau:g} ({cfg.effect}); scan 0–{cfg.stop:g}° in {cfg.scan_steps} steps",
        compare_lead(comparison), _compare_tables(comparison, extra), comparison_figures(directory, comparison), views,
        details, prompt_html=prompt, null_note=f"{cfg.n_null} isotropic random directions")


def write_demo_report(directory: Path, found, comparison, summary: dict) -> Path:
    """The toy demo's report: the comparison report, the demo's summary rows, discovery and refinement figures."""
    directory = Path(directory)
    (directory / "figures").mkdir(exist_ok=True)
    extra = [
        ["SAE: mean best |cos| to planted features", summary["sae_mean_best_cos_to_planted"]],
        ["SAE: fraction of planted features learned (cos ≥ 0.9)", summary["sae_fraction_planted_learned"]],
        ["restarts reaching a planted feature (cos ≥ 0.9)", summary["restarts_reaching_planted"]],
        ["distinct optima / distinct planted features found",
         f"{summary['distinct_optima']} / {summary['distinct_planted_found']}"],
        ["optima whose planted feature the SAE learned", summary["optima_whose_feature_the_sae_learned"]],
        ["optima matching an SAE latent (cos ≥ 0.9, p < α)", summary["optima_matching_sae"]],
    ]
    sections = _compare_sections(directory, comparison, extra)
    p = plot_history(directory / "figures" / "objective.png", found.history)
    figs = [figure(p, "Discovery objective per iteration (soft and hard blowup).")]
    ref = summary.get("refinement_cos_to_planted")
    if ref:
        p = plot_before_after(directory / "figures" / "refinement.png", ref["before"], ref["after"],
                              "cos with nearest planted feature, before", "cos with nearest planted feature, after",
                              "refinement of SAE decoder rows")
        figs.append(figure(p, "Cosine with the nearest planted feature of each SAE decoder row before and after "
                              "refinement by discovery; points above the diagonal moved closer."))
    sections.append(("Discovery and refinement", figs))
    return _write_page(directory, "sensfind demo: sensitivity optima on a toy model vs its SAE", sections)


# ---------------------------------------------------------------------------------------------------
# Reports on real models: summary first, figures, feature cards, folded details (templates/report.html.j2)


def svg_curve(steps, curve, bands: dict, tau: float, width: int = 470, height: int = 150,
              threshold: float | None = None) -> Markup:
    """An inline SVG of one effect curve (thick) over the median and 10-90% band of each ``bands[name] =
    (effects [R, K], colour)``; y is KL on a symmetric-log scale (linear below 0.1 nats), dashed: ``tau``."""
    x = [float(s) for s in steps]
    left, right, top, bottom = 34, 8, 6, 20
    w, h = width - left - right, height - top - bottom
    ymax = max([float(max(curve))] + [float(torch.as_tensor(e).max()) for e, _ in bands.values() if len(e)] + [2 * tau])

    def fy(v: float) -> float:
        t = lambda u: u / 0.1 if u <= 0.1 else 1 + math.log10(u / 0.1)  # noqa: E731
        return top + h - h * t(max(float(v), 0.0)) / t(ymax)

    def fx(v: float) -> float:
        return left + w * (v - x[0]) / (x[-1] - x[0])

    def line(xs, ys) -> str:
        return " ".join(f"{fx(a):.1f},{fy(b):.1f}" for a, b in zip(xs, ys))

    drawn = []
    for name, (e, colour) in bands.items():
        e = torch.as_tensor(e, dtype=torch.float64)
        if e.numel():
            q = torch.quantile(e, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64), dim=0).tolist()
            drawn.append(dict(name=name, colour=colour, median=line(x, q[1]),
                              band=line(x, q[2]) + " " + line(reversed(x), reversed(q[0]))))
    finite = threshold is not None and math.isfinite(threshold)
    return Markup(_render(
        "curve.svg.j2", width=width, height=height, left=left, top=top, w=w, h=h, bands=drawn, tau_y=f"{fy(tau):.1f}",
        threshold_x=f"{fx(threshold):.1f}" if finite else None, curve=line(x, curve),
        xticks=[(f"{fx(t):.1f}", t) for t in range(int(x[0]), int(x[-1]) + 1, 15)],
        yticks=[(f"{fy(v) + 3:.1f}", f"{v:g}") for v in (0.0, 0.1, 1.0, 10.0) if v <= ymax]))


def svg_histogram(hist, xlabel: str, width: int = 470, height: int = 118) -> Markup:
    """An inline SVG of a card's ``cards.Histogram`` (bars: corpus tokens per bin), the base's value marked."""
    left, right, top, bottom = 34, 8, 6, 30
    w, h = width - left - right, height - top - bottom
    lo, hi = hist.edges[0], hist.edges[-1]
    cmax = max(max(hist.counts, default=0), 1)
    fx = lambda v: left + w * (v - lo) / (hi - lo)  # noqa: E731
    bars = []
    for a, b, c in zip(hist.edges[:-1], hist.edges[1:], hist.counts):
        bh = h * c / cmax
        bars.append(dict(x=f"{fx(a):.1f}", y=f"{top + h - bh:.1f}", w=f"{max(fx(b) - fx(a) - 0.5, 0.5):.1f}",
                         h=f"{bh:.1f}", title=f"{a:.3g} to {b:.3g}: {c} tokens"))
    ticks = [lo, hi] + ([0.0] if lo < 0 < hi and min(-lo, hi) > 0.12 * (hi - lo) else [])
    return Markup(_render(
        "histogram.svg.j2", width=width, height=height, left=left, top=top, w=w, h=h, bars=bars,
        base_x=f"{fx(hist.base):.1f}", base=f"{hist.base:.3g}", n=sum(hist.counts), ymax=cmax, xlabel=xlabel,
        xticks=[(f"{fx(t):.1f}", f"{t:.3g}") for t in ticks]))


def prompt_markup(tokens, position: int, tokenizer=None) -> Markup:
    """The prompt's text with the token at ``position`` (the perturbed one) highlighted."""
    ids = [int(t) for t in tokens]
    pos = position % len(ids)
    text = lambda xs: escape("".join(decode_token(tokenizer, t) for t in xs))  # noqa: E731
    return Markup("{}<mark>{}</mark>{}").format(text(ids[:pos]), text(ids[pos : pos + 1]), text(ids[pos + 1 :]))


def _line(text: str) -> str:
    return text.replace("\r", "").replace("\n", "⏎")


BAND_TITLES = {"top": "top", "p75": "near the 75th percentile", "p50": "near the median"}
MEASURE_TITLES = {"projection": "projection on the direction (minus the corpus mean)",
                  "latent activation": "the latent's activation"}


def _shade(v, vmax: float) -> str:
    """A token's background: orange for positive values, blue for negative ones, opacity by size."""
    if v is None:
        return ""
    a = min(abs(v) / vmax, 1.0) * 0.8
    return f"background:rgba({'240,140,0' if v > 0 else '60,110,220'},{a:.2f})"


def _context_views(contexts: list) -> list:
    """Contexts grouped by band, each a list of shaded token pieces (old cards: before, token, after)."""
    vals = [abs(p[1]) for c in contexts for p in (c.pieces or []) if p[1] is not None]
    vmax = max(vals + [abs(c.value) for c in contexts] + [1e-12])
    groups: dict = {}
    for c in contexts:
        if c.pieces is None:
            pieces = [dict(text=_line(c.before), style="", title="", center=False),
                      dict(text=_line(c.token), style="", title="", center=True),
                      dict(text=_line(c.after), style="", title="", center=False)]
        else:
            pieces = [dict(text=_line(t), style=_shade(v, vmax), title="–" if v is None else f"{v:.3g}",
                           center=j == c.center) for j, (t, v) in enumerate(c.pieces)]
        groups.setdefault(c.band, []).append(dict(pieces=pieces, value=f"{c.value:.2f}"))
    return [dict(title=BAND_TITLES.get(b, b), contexts=items) for b, items in groups.items()]


def _p(v) -> str:
    return "–" if v is None else f"{v:.3g}"


def card_view(card, steps, bands: dict, tau: float) -> dict:
    """Template fields of one ``cards.FeatureCard``."""
    css = {"optimum": "optimum", "SAE active": "active", "SAE inactive": "inactive", "SAE latent": "latent"}.get(card.kind, "")
    facts = [(k, Markup('<a href="{0}">{0}</a>').format(v) if k == "Neuronpedia" else str(v)) for k, v in card.facts]
    thr = f"{card.threshold_deg:.1f}°" if math.isfinite(card.threshold_deg) else f"not reached by {float(steps[-1]):.0f}°"
    return dict(
        key=card.key, title=card.title, css=css, threshold=thr, facts=facts, angle=f"{card.angle:.0f}°",
        svg=svg_curve(steps, card.curve, bands, tau, threshold=card.threshold_deg),
        gains=[dict(token=repr(t.token), p=f"{t.p_before:.3f} → {t.p_after:.3f}") for t in card.gains],
        losses=[dict(token=repr(t.token), p=f"{t.p_before:.3f} → {t.p_after:.3f}") for t in card.losses],
        bands=_context_views(card.contexts), measure=MEASURE_TITLES.get(card.context_measure, card.context_measure),
        histogram=None if card.histogram is None else svg_histogram(card.histogram, "projection − corpus mean"),
        logits_up=[dict(token=repr(t.token), logit=f"{t.logit:+.3g}") for t in card.logits_up],
        logits_down=[dict(token=repr(t.token), logit=f"{t.logit:+.3g}") for t in card.logits_down],
        notes=list(card.notes),
        matches=[dict(latent=m.latent, cos=f"{m.cos:+.3f}", p_iso=_p(m.p_isotropic), p_cov=_p(m.p_covariance), url=m.url)
                 for m in card.matches],
        has_cov=any(m.p_covariance is not None for m in card.matches),
    )


def render_report(path: Path, title: str, subtitle: str, lead: str, summary_tables: list, figures: list, cards: list,
                  details: list, prompt_html: str = "", null_note: str = "random directions") -> Path:
    """Write one self-contained HTML page from ``templates/report.html.j2``.

    ``summary_tables``/``details``: ``(title, html)`` pairs; ``figures``: ``(png path, caption)`` pairs
    (embedded); ``cards``: dicts from :func:`card_view`; ``lead`` and ``prompt_html`` are trusted HTML.
    A nearest latent links to its card where the page has one, else to its Neuronpedia page, if any."""
    figs = [dict(data=base64.b64encode(Path(p).read_bytes()).decode(), caption=c) for p, c in figures]
    page = _render("report.html.j2",
                   title=title, subtitle=subtitle, lead=lead, prompt_html=prompt_html, null_note=null_note,
                   anchors={c["key"] for c in cards},
                   summary_tables=[dict(title=t, html=h) for t, h in summary_tables], figures=figs, cards=cards,
                   details=[dict(title=t, html=h) for t, h in details])
    path = Path(path)
    path.write_text(page, encoding="utf-8")
    return path


KIND_COLOURS = {"isotropic random": "#888888", "real-other": "#2e9d4f"}


def _deg(v) -> str:
    return "not reached" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.1f}°"


def threshold_table(analyses: list, kinds) -> Markup:
    """Per kind: directions, reached within the scan, median threshold angle (pooled over ``analyses``)."""
    rows = []
    for kind in kinds:
        t = torch.cat([a.threshold(kind) for a in analyses])
        fin = t[torch.isfinite(t)]
        rows.append([kind, int(t.numel()), int(fin.numel()), _deg(float(fin.median())) if fin.numel() else "not reached",
                     _deg(float(fin.quantile(0.25))) if fin.numel() else "–", _deg(float(fin.quantile(0.75))) if fin.numel() else "–"])
    return table(rows, ["kind", "directions", "reached τ", "median threshold", "25%", "75%"])


def analysis_figures(directory: Path, analyses: list, kinds) -> list[tuple[Path, str]]:
    """Threshold angles by kind, median curves by kind, optima's best |cos| vs both nulls (pooled)."""

    fig_dir = Path(directory) / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    a0 = analyses[0]
    stop = float(a0.steps[-1])
    groups = {k: torch.cat([a.threshold(k) for a in analyses]) for k in kinds}
    out = [(plot_boxes(fig_dir / "threshold_angles.png", groups, "threshold angle (deg; KL > τ)",
                       "how early each kind of direction blows up", cap=stop),
            f"Threshold angle (first slerp angle with next-token KL > τ = {a0.config.tau:g} nats) of each kind of "
            f"direction; dots at the dotted line did not reach τ by {stop:.0f}°.")]
    curves = {k: torch.cat([a.effects[k].detach().double() for a in analyses]) for k in kinds}
    out.append((plot_median_curves(fig_dir / "effect_curves.png", a0.steps, curves, "slerp angle (deg)", "kl",
                                   a0.config.tau, "effect vs angle by kind"),
                "Median next-token KL against slerp angle for each kind of direction, with the 10–90% band."))
    iso = torch.cat([a.matches["isotropic"].null_best for a in analyses])
    cov = torch.cat([a.matches["covariance"].null_best for a in analyses])
    best = torch.cat([a.matches["isotropic"].cos[:, 0].abs() for a in analyses]).tolist()
    out.append((plot_histograms(fig_dir / "cos_vs_null.png",
                                {"isotropic null": iso, "covariance null (cov-random directions)": cov},
                                "best |cos| with any SAE decoder row (base projected out)", "optima vs the nulls",
                                lines={"discovered optima": best}),
                "Best |cosine| of each discovered optimum with the SAE's decoder rows (dashed) against the same "
                "statistic for isotropic and covariance-matched random directions (histograms)."))
    return out


def refinement_table(analyses: list) -> Markup | None:
    rows = []
    for i, a in enumerate(analyses):
        r = a.refinement
        if r is None:
            continue
        for j, lat in enumerate(a.refined_latents.tolist()):
            rows.append(([i] if len(analyses) > 1 else []) +
                        [lat, float(r.cos_start_end[j]), float(r.blowup_start[j]), float(r.blowup_end[j])])
    if not rows:
        return None
    head = (["prompt"] if len(analyses) > 1 else []) + ["latent", "cos(start, end)", "threshold before (deg)",
                                                        "threshold after (deg)"]
    return table(rows, head)


def demo_lead(summary: dict) -> Markup:
    """The summary paragraph of the demo on a real model (``templates/lead.html.j2``)."""
    s = summary["analysis"]
    k = s["kinds"]
    iso, cov = s["matches_isotropic"], s["matches_covariance"]
    best = max(iso["best_abs_cos"]) if iso["best_abs_cos"] else float("nan")
    sae = summary.get("sae")
    q = sae.get("quality") if sae else None
    sae_view = q and dict(d_sae=sae["d_sae"], explained=f"{q['explained_variance']:.1%}", l0=f"{q['l0']:.1f}",
                          dead=f"{q['dead_fraction']:.1%}", ce=f"{q['ce_increase_sae']:+.3f}",
                          ce_random=f"{q['ce_increase_random']:+.3f}")
    return Markup(_render(
        "lead.html.j2", n=summary["n_optima"], beating=summary["optima_beating_real_other_median"],
        med={kind: _deg(k[kind]["median_deg"]) if kind in k else "–"
             for kind in ("optima", "real-other", "cov-random", "isotropic", "SAE active", "SAE inactive")},
        matching_iso=summary["optima_matching_sae_isotropic"], matching_cov=summary["optima_matching_sae_covariance"],
        alpha=f"{summary['alpha']:g}", best=f"{best:.3f}", iso_median=f"{iso['null_best_median']:.3f}",
        cov_median=f"{cov['null_best_median']:.3f}", sae=sae_view))


def write_model_demo_report(directory: Path, analysis, cards: list, summary: dict) -> Path:
    """The demo's report on a real model: summary, figures, a card per optimum and latent, folded details."""

    directory = Path(directory)
    figs = analysis_figures(directory, [analysis], KINDS)
    figs.append((plot_history(directory / "figures" / "objective.png", analysis.discovery.history),
                 "Discovery objective per iteration (soft blowup, mean and best restart; hard blowup median)."))
    sae = summary["sae"]
    fmt = lambda v, f="{:.3f}": "–" if v is None else f.format(v)  # noqa: E731
    q, ex = sae["quality"], sae["exclusion"]
    sae_rows = [["latents", sae["d_sae"]],
                ["trained on activations (massive ones excluded)", f"{ex['kept']} of {ex['positions']}"],
                ["explained variance (held-out windows)", fmt(q["explained_variance"])],
                ["L0 (active latents per activation)", fmt(q["l0"], "{:.1f}")],
                ["dead fraction (held-out / training activations)",
                 f"{fmt(q['dead_fraction'])} / {fmt(ex.get('train_dead_fraction'))}"],
                ["next-token loss increase, reconstruction spliced in (nats)", fmt(q["ce_increase_sae"], "{:+.3f}")],
                ["same, random error of the same norm (nats)", fmt(q["ce_increase_random"], "{:+.3f}")],
                ["KL with SAE error / with random error", fmt(q["kl_ratio"], "{:.2f}")],
                ["held-out tokens evaluated", q["n_tokens"]], ["source", sae["source"]]]
    tables = [("Threshold angles by kind", threshold_table([analysis], KINDS)),
              ("The SAE", table(sae_rows, ["quantity", "value"]))]
    ref = refinement_table([analysis])
    if ref:
        tables.append(("Refinement of the most active latents by discovery", ref))
    t = summary.get("timings") or analysis.timings
    details = [("Timings (s)", table([[k, float(v)] for k, v in t.items()], ["stage", "seconds"])),
               ("Matches of every optimum (top 5, both nulls)", _matches_table(analysis)),
               ("Configuration", Markup("<pre>{}</pre>").format(json.dumps(summary.get("config", {}), indent=1)))]
    bands = _bands(analysis)
    views = [card_view(c, analysis.steps, bands, analysis.config.tau) for c in cards]
    text = summary.get("prompt_html") or escape(summary.get("prompt_text") or str(summary["prompt_tokens"]))
    return render_report(
        directory / "report.html", f"sensfind demo: sensitivity optima of {summary['model']} vs its SAE",
        f"site {summary['hook']}, last token of one corpus prompt; sphere mode; τ = {analysis.config.tau:g} nats of "
        f"next-token KL; scan 0–{float(analysis.steps[-1]):.0f}° in {len(analysis.steps)} steps",
        demo_lead(summary), tables, figs, views, details, prompt_html=text,
        null_note=f"{analysis.config.n_null} isotropic and {analysis.config.n_null} covariance-matched random directions")


def _bands(analysis) -> dict:
    return {"isotropic random": (analysis.effects["isotropic"].detach(), KIND_COLOURS["isotropic random"]),
            "real-other": (analysis.effects["real-other"].detach(), KIND_COLOURS["real-other"])}


def _matches_table(analysis) -> Markup:
    iso, cov = analysis.matches["isotropic"], analysis.matches["covariance"]
    rows = []
    for i in range(len(iso)):
        cp = {int(l): float(p) for l, p in zip(cov.latents[i], cov.p_value[i])}
        for j in range(iso.k):
            lat = int(iso.latents[i, j])
            rows.append([i, lat, float(iso.cos[i, j]), float(iso.p_value[i, j]), cp.get(lat, "–")])
    return table(rows, ["optimum", "latent", "cos", "p (isotropic)", "p (covariance)"])
