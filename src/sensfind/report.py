"""Self-contained HTML reports: figures embedded as PNG data, a summary table, the best matches."""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

import torch

from .plots import plot_before_after, plot_effect_curves, plot_histograms, plot_history
from .scan import scan

__all__ = ["card_view", "comparison_figures", "html_page", "render_report", "svg_curve", "write_compare_report",
           "write_demo_report"]


def _fmt(v) -> str:
    if isinstance(v, float):
        return "not reached" if math.isinf(v) else f"{v:.3g}"
    return html.escape(str(v))


def table(rows: list[list], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c if str(c).startswith('<a ') else _fmt(c)}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def figure(path: Path, caption: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return (f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}"/>'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def html_page(title: str, sections: list[tuple[str, str]]) -> str:
    style = ("body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
             "th{background:#f3f3f3}figure{margin:1em 0}img{max-width:100%}figcaption{font-size:90%;color:#555}")
    body = "".join(f"<section><h2>{html.escape(h)}</h2>{content}</section>" for h, content in sections)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>")


def comparison_figures(directory: Path, subject, directions, comparison) -> list[tuple[Path, str]]:
    """The figures every comparison report shows; returns (path, caption) pairs."""
    fig_dir = Path(directory) / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    cfg = comparison.config.scan_config
    out = []
    sens = comparison.sensitivity
    with torch.no_grad():
        groups = {}
        from .baselines import isotropic

        rand = scan(subject, isotropic(32, subject.base.shape[0], seed=99, dtype=subject.base.dtype), cfg)
        groups["naive-random"] = (rand.steps, rand.effects)
        if sens.latents.numel():
            rows = comparison_rows(subject, comparison)
            sae = scan(subject, rows[:32], cfg)
            groups["SAE decoder rows (signed)"] = (sae.steps, sae.effects)
        opt = scan(subject, directions.to(subject.base.dtype), cfg)
        groups["discovered optima"] = (opt.steps, opt.effects)
    p = plot_effect_curves(fig_dir / "effect_curves.png", groups, xlabel=cfg.axis_label, effect=cfg.effect, tau=cfg.tau,
                           title="effect vs angle: optima, SAE rows and random directions")
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
    finite_opt = [float(x) for x in opt.threshold if math.isfinite(x)]  # the optima's scan from above
    p = plot_histograms(fig_dir / "threshold_angles.png", th, "threshold angle (deg)", "how early each kind of direction blows up",
              lines={"discovered optima": finite_opt})
    out.append((p, "Threshold angle (first angle with effect > τ) of SAE decoder rows, random and real-other "
                   "directions; discovered optima dashed."))
    return out


def comparison_rows(subject, comparison):
    """The scanned decoder rows with the base projected out and the sign that blows up earlier."""
    from .geometry import effective_directions

    sens = comparison.sensitivity
    dec = comparison.dictionary.decoder
    rows = effective_directions(dec[sens.latents].to(subject.base.dtype), subject.base, "sphere")
    return rows * sens.sign[:, None].to(rows.dtype)


def _match_rows(comparison, n: int = 20) -> list[list]:
    m = comparison.matches["isotropic"]
    rows = []
    for i in range(min(len(m), n)):
        url = m.urls[i][0]
        latent = f'<a href="{html.escape(url)}">{int(m.latents[i, 0])}</a>' if url else int(m.latents[i, 0])
        rows.append([i, latent, float(m.cos[i, 0]), "excites" if m.cos[i, 0] >= 0 else "dampens",
                     float(m.p_value[i, 0]), float(m.z[i, 0]) if math.isfinite(float(m.z[i, 0])) else "n/a"])
    return rows


def write_compare_report(directory: Path, subject, directions, comparison, title: str, extra: list | None = None) -> Path:
    directory = Path(directory)
    figs = comparison_figures(directory, subject, directions, comparison)
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
    sections = [("Summary", table(summary_rows + (extra or []), ["quantity", "value"]))]
    sections.append(("Best dictionary match of each direction",
                     table(_match_rows(comparison), ["direction", "latent", "cos", "effect", "p-value", "z"])))
    if comparison.refinement is not None:
        r = comparison.refinement
        rows = [[int(l), int(sg), float(c), float(b0), float(b1)] for l, sg, c, b0, b1 in
                zip(comparison.refined_latents, comparison.refined_sign, r.cos_start_end, r.blowup_start, r.blowup_end)]
        sections.append(("Refinement from decoder rows",
                         table(rows[:40], ["latent", "sign", "cos(start, end)", "blowup start (deg)", "blowup end (deg)"])))
    sections.append(("Figures", "".join(figure(p, c) for p, c in figs)))
    page = directory / "report.html"
    page.write_text(html_page(title, sections))
    return page


def write_demo_report(directory: Path, subject, found, comparison, summary: dict, sae_rec) -> Path:
    directory = Path(directory)
    (directory / "figures").mkdir(exist_ok=True)
    plot_history(directory / "figures" / "objective.png", found.history)
    extra = [
        ["SAE: mean best |cos| to planted features", summary["sae_mean_best_cos_to_planted"]],
        ["SAE: fraction of planted features learned (cos ≥ 0.9)", summary["sae_fraction_planted_learned"]],
        ["restarts reaching a planted feature (cos ≥ 0.9)", summary["restarts_reaching_planted"]],
        ["distinct optima / distinct planted features found",
         f"{summary['distinct_optima']} / {summary['distinct_planted_found']}"],
        ["optima whose planted feature the SAE learned", summary["optima_whose_feature_the_sae_learned"]],
        ["optima matching an SAE latent (cos ≥ 0.9, p < α)", summary["optima_matching_sae"]],
    ]
    page = write_compare_report(directory, subject, found.directions, comparison,
                                "sensfind demo: sensitivity optima on a toy model vs its SAE", extra)
    text = page.read_text()
    ref = summary.get("refinement_cos_to_planted")
    figs = [figure(directory / "figures" / "objective.png", "Discovery objective per iteration (soft and hard blowup).")]
    if ref:
        p = plot_before_after(directory / "figures" / "refinement.png", ref["before"], ref["after"],
                              "cos with nearest planted feature, before", "cos with nearest planted feature, after",
                              "refinement of SAE decoder rows")
        figs.append(figure(p, "Cosine with the nearest planted feature of each SAE decoder row before and after "
                              "refinement by discovery; points above the diagonal moved closer."))
    text = text.replace("</body>", f"<section><h2>Discovery and refinement</h2>{''.join(figs)}</section></body>")
    page.write_text(text)
    return page


# ---------------------------------------------------------------------------------------------------
# Reports on real models: summary first, figures, feature cards, folded details (a Jinja2 template)

def svg_curve(steps, curve, bands: dict, tau: float, width: int = 470, height: int = 150, threshold: float | None = None) -> str:
    """An inline SVG of one effect curve (thick) over the median and 10-90% band of each ``bands[name] =
    (effects [R, K], colour)``; y is KL on a symmetric-log scale (linear below 0.1 nats), dashed: ``tau``."""
    x = [float(s) for s in steps]
    pad_l, pad_r, pad_t, pad_b = 34, 8, 6, 20
    w, h = width - pad_l - pad_r, height - pad_t - pad_b
    ymax = max([float(max(curve))] + [float(torch.as_tensor(e).max()) for e, _ in bands.values() if len(e)] + [2 * tau])

    def fy(v: float) -> float:
        t = lambda u: u / 0.1 if u <= 0.1 else 1 + math.log10(u / 0.1)  # noqa: E731
        return pad_t + h - h * t(max(float(v), 0.0)) / t(ymax)

    def fx(v: float) -> float:
        return pad_l + w * (v - x[0]) / (x[-1] - x[0])

    def line(ys) -> str:
        return " ".join(f"{fx(a):.1f},{fy(b):.1f}" for a, b in zip(x, ys))

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" style="max-width:100%;height:auto;font:10px sans-serif">',
             f'<rect x="{pad_l}" y="{pad_t}" width="{w}" height="{h}" fill="#fcfcfc" stroke="#ccc"/>']
    for e, colour in bands.values():
        e = torch.as_tensor(e, dtype=torch.float64)
        if not e.numel():
            continue
        q = torch.quantile(e, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64), dim=0).tolist()
        poly = line(q[2]) + " " + " ".join(f"{fx(a):.1f},{fy(b):.1f}" for a, b in reversed(list(zip(x, q[0]))))
        parts.append(f'<polygon points="{poly}" fill="{colour}" fill-opacity="0.18" stroke="none"/>')
        parts.append(f'<polyline points="{line(q[1])}" fill="none" stroke="{colour}" stroke-width="1.3"/>')
    parts.append(f'<line x1="{pad_l}" x2="{pad_l + w}" y1="{fy(tau):.1f}" y2="{fy(tau):.1f}" stroke="#000" '
                 'stroke-dasharray="4,3" stroke-width="0.8"/>')
    if threshold is not None and math.isfinite(threshold):
        parts.append(f'<line x1="{fx(threshold):.1f}" x2="{fx(threshold):.1f}" y1="{pad_t}" y2="{pad_t + h}" '
                     'stroke="#d0482b" stroke-width="0.8" stroke-dasharray="2,2"/>')
    parts.append(f'<polyline points="{line(curve)}" fill="none" stroke="#d0482b" stroke-width="2.2"/>')
    for tick in range(int(x[0]), int(x[-1]) + 1, 15):
        parts.append(f'<text x="{fx(tick):.1f}" y="{height - 6}" text-anchor="middle">{tick}°</text>')
    for v in (0.0, 0.1, 1.0, 10.0):
        if v <= ymax:
            parts.append(f'<text x="{pad_l - 3}" y="{fy(v) + 3:.1f}" text-anchor="end">{v:g}</text>')
    names = list(bands)
    legend = " · ".join(f'<tspan fill="{bands[n][1]}">{html.escape(n)}</tspan>' for n in names)
    parts.append(f'<text x="{pad_l + 4}" y="{pad_t + 11}">{legend} · <tspan fill="#d0482b">this direction</tspan>'
                 ' · KL (nats)</text></svg>')
    return "".join(parts)


def _line(text: str) -> str:
    return text.replace("\r", "").replace("\n", "⏎")


def _p(v) -> str:
    return "–" if v is None else f"{v:.3g}"


def card_view(card, steps, bands: dict, tau: float) -> dict:
    """Template fields of one ``cards.FeatureCard``."""
    css = {"optimum": "optimum", "SAE active": "active", "SAE inactive": "inactive"}.get(card.kind, "")
    facts = [(k, f'<a href="{html.escape(v)}">{html.escape(v)}</a>' if k == "Neuronpedia" else html.escape(str(v)))
             for k, v in card.facts]
    thr = f"{card.threshold_deg:.1f}°" if math.isfinite(card.threshold_deg) else f"not reached by {float(steps[-1]):.0f}°"
    return dict(
        key=card.key, title=card.title, css=css, threshold=thr, facts=facts, angle=f"{card.angle:.0f}°",
        svg=svg_curve(steps, card.curve, bands, tau, threshold=card.threshold_deg),
        gains=[dict(token=repr(t.token), p=f"{t.p_before:.3f} → {t.p_after:.3f}") for t in card.gains],
        losses=[dict(token=repr(t.token), p=f"{t.p_before:.3f} → {t.p_after:.3f}") for t in card.losses],
        contexts=[dict(before=_line(c.before), token=_line(c.token), after=_line(c.after), projection=f"{c.projection:.2f}")
                  for c in card.contexts],
        matches=[dict(latent=m.latent, cos=f"{m.cos:+.3f}", p_iso=_p(m.p_isotropic), p_cov=_p(m.p_covariance), url=m.url)
                 for m in card.matches],
        has_cov=any(m.p_covariance is not None for m in card.matches),
    )


def render_report(path: Path, title: str, subtitle: str, lead: str, summary_tables: list, figures: list, cards: list,
                  details: list, prompt_html: str = "", null_note: str = "random directions") -> Path:
    """Write one self-contained HTML page from ``templates/report.html.j2``.

    ``summary_tables``/``details``: ``(title, html)`` pairs; ``figures``: ``(png path, caption)`` pairs
    (embedded); ``cards``: dicts from :func:`card_view`; ``lead`` and ``prompt_html`` are trusted HTML."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("sensfind", "templates"), autoescape=True)
    figs = [dict(data=base64.b64encode(Path(p).read_bytes()).decode(), caption=c) for p, c in figures]
    page = env.get_template("report.html.j2").render(
        title=title, subtitle=subtitle, lead=lead, prompt_html=prompt_html, null_note=null_note,
        summary_tables=[dict(title=t, html=h) for t, h in summary_tables], figures=figs, cards=cards,
        details=[dict(title=t, html=h) for t, h in details])
    path = Path(path)
    path.write_text(page, encoding="utf-8")
    return path


KIND_COLOURS = {"isotropic random": "#888888", "real-other": "#2e9d4f"}


def _deg(v) -> str:
    return "not reached" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.1f}°"


def threshold_table(analyses: list, kinds) -> str:
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
    from .plots import plot_boxes, plot_median_curves

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
    from .plots import plot_histograms

    out.append((plot_histograms(fig_dir / "cos_vs_null.png",
                                {"isotropic null": iso, "covariance null (cov-random directions)": cov},
                                "best |cos| with any SAE decoder row (base projected out)", "optima vs the nulls",
                                lines={"discovered optima": best}),
                "Best |cosine| of each discovered optimum with the SAE's decoder rows (dashed) against the same "
                "statistic for isotropic and covariance-matched random directions (histograms)."))
    return out


def refinement_table(analyses: list) -> str | None:
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


def demo_lead(summary: dict) -> str:
    s = summary["analysis"]
    k = s["kinds"]
    n = summary["n_optima"]
    alpha = summary["alpha"]
    med = lambda kind: _deg(k[kind]["median_deg"]) if kind in k else "–"  # noqa: E731
    iso, cov = s["matches_isotropic"], s["matches_covariance"]
    best = max(iso["best_abs_cos"]) if iso["best_abs_cos"] else float("nan")
    return (
        f"Discovery found <b>{n} distinct optim{'um' if n == 1 else 'a'}</b> on this prompt. "
        f"<b>{summary['optima_beating_real_other_median']} of {n}</b> blow up earlier than the median real-other "
        f"direction (median threshold angle: optima {med('optima')}, real-other {med('real-other')}, cov-random "
        f"{med('cov-random')}, isotropic {med('isotropic')}, active SAE latents {med('SAE active')}, inactive "
        f"{med('SAE inactive')}). <b>{summary['optima_matching_sae_isotropic']} of {n}</b> match an SAE latent at "
        f"p &lt; {alpha:g} against the isotropic null and <b>{summary['optima_matching_sae_covariance']} of {n}</b> "
        f"against the covariance null (best |cos| of any optimum {best:.3f}; null medians {iso['null_best_median']:.3f} "
        f"/ {cov['null_best_median']:.3f})."
        + _sae_sentence(summary.get("sae"))
    )


def _sae_sentence(sae: dict | None) -> str:
    if not sae or "quality" not in sae:
        return ""
    q = sae["quality"]
    return (f" The SAE ({sae['d_sae']} latents) explains {q['explained_variance']:.1%} of the variance on held-out "
            f"windows with L0 {q['l0']:.1f} and {q['dead_fraction']:.1%} dead latents; splicing in its reconstruction "
            f"raises the next-token loss by {q['ce_increase_sae']:+.3f} nats (a random error of the same norm: "
            f"{q['ce_increase_random']:+.3f}).")


def write_model_demo_report(directory: Path, analysis, cards: list, summary: dict) -> Path:
    """The demo's report on a real model: summary, figures, a card per optimum and latent, folded details."""
    from .analysis import KINDS
    from .plots import plot_history

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
               ("Configuration", f"<pre>{html.escape(json.dumps(summary.get('config', {}), indent=1))}</pre>")]
    bands = _bands(analysis)
    views = [card_view(c, analysis.steps, bands, analysis.config.tau) for c in cards]
    tokens = summary["prompt_tokens"]
    text = summary.get("prompt_html") or html.escape(summary.get("prompt_text") or str(tokens))
    return render_report(
        directory / "report.html", f"sensfind demo: sensitivity optima of {summary['model']} vs its SAE",
        f"site {summary['hook']}, last token of one corpus prompt; sphere mode; τ = {analysis.config.tau:g} nats of "
        f"next-token KL; scan 0–{float(analysis.steps[-1]):.0f}° in {len(analysis.steps)} steps",
        demo_lead(summary), tables, figs, views, details, prompt_html=text,
        null_note=f"{analysis.config.n_null} isotropic and {analysis.config.n_null} covariance-matched random directions")


def _bands(analysis) -> dict:
    return {"isotropic random": (analysis.effects["isotropic"].detach(), KIND_COLOURS["isotropic random"]),
            "real-other": (analysis.effects["real-other"].detach(), KIND_COLOURS["real-other"])}


def _matches_table(analysis) -> str:
    iso, cov = analysis.matches["isotropic"], analysis.matches["covariance"]
    rows = []
    for i in range(len(iso)):
        cp = {int(l): float(p) for l, p in zip(cov.latents[i], cov.p_value[i])}
        for j in range(iso.k):
            lat = int(iso.latents[i, j])
            rows.append([i, lat, float(iso.cos[i, j]), float(iso.p_value[i, j]), cp.get(lat, "–")])
    return table(rows, ["optimum", "latent", "cos", "p (isotropic)", "p (covariance)"])
