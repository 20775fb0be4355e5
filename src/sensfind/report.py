"""Self-contained HTML reports: figures embedded as PNG data, a summary table, the best matches."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import torch

from .plots import plot_before_after, plot_effect_curves, plot_histograms, plot_history
from .scan import scan

__all__ = ["comparison_figures", "html_page", "write_compare_report", "write_demo_report"]


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
    from .optima import effective_directions

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
