"""Figures. Everything here writes PNG files with labelled axes, units and legends."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from sensfind.core.mixture import MixtureTest

__all__ = ["EFFECT_LABELS", "finish", "plot_before_after", "plot_boxes", "plot_distributions", "plot_effect_curves",
           "plot_histograms", "plot_history", "plot_latent_geometry", "plot_mean_curves", "plot_mixture_curves", "plot_p_by_kind", "plot_median_curves",
           "plot_sae_errors", "plot_simplex", "plot_topk"]

EFFECT_LABELS = {"kl": "KL(p0 || p) (nats)", "l2": "L2 distance at output hook", "cos": "cosine distance at output hook"}


def _pyplot():
    """matplotlib's pyplot on the Agg backend, imported on first use (it takes about a second to import)."""
    import matplotlib  # lazy: a second to import; `import sensfind` stays fast

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: as above

    return plt


def plot_effect_curves(
    path: str | Path,
    groups: dict[str, tuple[torch.Tensor, torch.Tensor]],
    xlabel: str,
    effect: str,
    tau: float | None = None,
    title: str = "",
    max_lines: int = 64,
) -> Path:
    """Effect vs step, one colour per group. ``groups[name] = (steps [K] or [R, K], effects [R, K])``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (name, (steps, effects)) in enumerate(groups.items()):
        effects = effects.detach().cpu().double()
        steps = steps.detach().cpu().double().expand_as(effects)
        color = f"C{i}"
        for r in range(min(effects.shape[0], max_lines)):
            ax.plot(steps[r], effects[r], color=color, alpha=0.35 if effects.shape[0] > 1 else 1.0, lw=1)
        ax.plot([], [], color=color, label=f"{name} (n={effects.shape[0]})")
    if tau is not None:
        ax.axhline(tau, color="k", ls="--", lw=1, label=f"threshold τ = {tau:g}")
    _floor_at_zero(ax, [e for _, e in groups.values()])
    return finish(fig, ax, path, xlabel, EFFECT_LABELS.get(effect, effect), title, legend_loc=OUTSIDE)


OUTSIDE = "outside"  # ``finish``'s legend place right of the axes, where it hides no curve


ROUNDING = 1e-5  # relative: effects this far below 0 are float rounding of a 0


def _floor_at_zero(ax, effects) -> None:
    """Start the y axis at 0 when no effect is negative (KL, distances): no empty negative range. A KL
    computed in float32 can come out a rounding error below 0 (about -1e-7 at angle 0): values above
    ``-ROUNDING`` times the largest |effect| (at least 1) count as 0."""
    finite = [torch.as_tensor(e).detach().double() for e in effects]
    finite = [e[torch.isfinite(e)] for e in finite if e.numel()]
    finite = [e for e in finite if e.numel()]
    if finite:
        scale = max(1.0, max(float(e.abs().max()) for e in finite))
        if min(float(e.min()) for e in finite) >= -ROUNDING * scale:
            ax.set_ylim(bottom=0.0)


def finish(fig, ax, path: str | Path, xlabel: str, ylabel: str, title: str = "", legend_loc: str = "best") -> Path:
    """Label, legend (``OUTSIDE``: right of the axes), grid, save as PNG and close: the common tail of every
    figure here."""
    plt = _pyplot()
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if legend_loc == OUTSIDE:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8)
    else:
        ax.legend(loc=legend_loc, fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110, bbox_inches="tight" if legend_loc == OUTSIDE else None)
    plt.close(fig)
    return path


def plot_history(path: str | Path, history: list[dict]) -> Path:
    """Objective (soft blowup, mean and best over restarts) and median hard blowup per iteration; when the
    discovery ran in more than one round, a dotted vertical line (``gid`` ``round-start``) where each later
    round starts."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    it = [h["iteration"] for h in history]
    if history:
        ax.plot(it, [h["objective_mean"] for h in history], label="soft blowup, mean over restarts")
        ax.plot(it, [h["objective_min"] for h in history], label="soft blowup, best restart")
        med = [h["blowup_median"] if isinstance(h["blowup_median"], (int, float)) else float("nan") for h in history]
        ax.plot(it, med, ls="--", label="hard blowup, median over restarts")
    starts = [b["iteration"] for a, b in zip(history, history[1:]) if b.get("round", 0) != a.get("round", 0)]
    for j, x in enumerate(starts):
        ax.axvline(x - 0.5, color="grey", ls=":", lw=1.2, gid="round-start",
                   label="start of a discovery round" if j == 0 else None)
    return finish(fig, ax, path, "iteration", "blowup (deg, or step units in straight mode)",
                  "discovery objective per iteration")


def plot_histograms(path: str | Path, groups: dict, xlabel: str, title: str, lines: dict | None = None,
                    bins: int = 30) -> Path:
    """Overlaid density histograms of ``groups[name] = values`` (non-finite values dropped), with
    dashed vertical ``lines[name] = [x, ...]``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    finite = [v[torch.isfinite(v)].double() for v in groups.values()]
    finite = [v for v in finite if v.numel()]
    lo = min((float(v.min()) for v in finite), default=0.0)
    hi = max((float(v.max()) for v in finite), default=1.0)
    edges = torch.linspace(lo, hi if hi > lo else lo + 1, bins + 1).tolist()
    for i, (name, v) in enumerate(groups.items()):
        v = v[torch.isfinite(v)].double()
        if v.numel():
            ax.hist(v.tolist(), bins=edges, alpha=0.5, density=True, color=f"C{i}", label=f"{name} (n={v.numel()})")
    for j, (name, xs) in enumerate((lines or {}).items()):
        for k, x in enumerate(xs):
            ax.axvline(x, color=f"C{len(groups) + j}", lw=1, ls="--", label=name if k == 0 else None)
    return finish(fig, ax, path, xlabel, "density", title)


def plot_before_after(path: str | Path, before, after, xlabel: str, ylabel: str, title: str) -> Path:
    """Scatter of paired values with the no-change diagonal."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(before, after, s=14, label="one item")
    lo = min(min(before), min(after), 0.0)
    ax.plot([lo, 1], [lo, 1], color="k", lw=1, ls="--", label="no change")
    return finish(fig, ax, path, xlabel, ylabel, title)


def plot_boxes(path: str | Path, groups: dict, ylabel: str, title: str, cap: float | None = None) -> Path:
    """One box (quartiles, whiskers to 1.5 IQR) per ``groups[name] = values`` with the values as jittered
    dots; non-finite values ("not reached") are drawn at ``cap`` (if given) and counted in the label."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(8.0, 1.15 * len(groups)), 4.5))  # room for each group's three-line label
    g = torch.Generator().manual_seed(0)
    labels = []
    for i, (name, v) in enumerate(groups.items()):
        v = torch.as_tensor(v, dtype=torch.float64).flatten()
        fin = v[torch.isfinite(v)]
        n_inf = int((~torch.isfinite(v)).sum())
        if fin.numel():
            ax.boxplot([fin.tolist()], positions=[i], widths=0.55, showfliers=False)
        shown = torch.where(torch.isfinite(v), v, torch.full_like(v, cap if cap is not None else float("nan")))
        x = i + (torch.rand(v.numel(), generator=g, dtype=torch.float64) - 0.5) * 0.35
        ax.scatter(x.tolist(), shown.tolist(), s=9, alpha=0.45, color=f"C{i}")
        med = f", median {float(fin.median()):.1f}" if fin.numel() else ""
        labels.append(f"{name}\nn={v.numel()}" + (f", {n_inf} n.r." if n_inf else "") + (f"\n{med[2:]}" if med else ""))
    ax.set_xticks(range(len(labels)), labels, fontsize=7)
    if cap is not None:
        ax.axhline(cap, color="grey", lw=0.8, ls=":")
    ax.plot([], [], " ", label="dots at the dotted line: not reached" if cap is not None else "")
    return finish(fig, ax, path, "", ylabel, title)


def plot_median_curves(path: str | Path, steps, groups: dict, xlabel: str, effect: str, tau: float | None = None,
                       title: str = "") -> Path:
    """Median effect curve of each group with its 10-90% band. ``groups[name] = effects [R, K]`` at ``steps [K]``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    x = torch.as_tensor(steps, dtype=torch.float64).tolist()
    for i, (name, e) in enumerate(groups.items()):
        e = torch.as_tensor(e, dtype=torch.float64)
        if not e.numel():
            continue
        q = torch.quantile(e, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64), dim=0)
        ax.fill_between(x, q[0].tolist(), q[2].tolist(), color=f"C{i}", alpha=0.18)
        ax.plot(x, q[1].tolist(), color=f"C{i}", lw=1.8, label=f"{name} (n={e.shape[0]}): median, 10-90%")
    if tau is not None:
        ax.axhline(tau, color="k", ls="--", lw=1, label=f"threshold τ = {tau:g}")
    ax.set_yscale("symlog", linthresh=0.1)
    _floor_at_zero(ax, groups.values())
    return finish(fig, ax, path, xlabel, EFFECT_LABELS.get(effect, effect), title, legend_loc=OUTSIDE)


def plot_distributions(path: str | Path, groups: dict, xlabel: str, title: str, cap: float | None = None) -> Path:
    """Histogram (left) and empirical CDF (right) of ``groups[name] = values``; non-finite values ("not
    reached") are drawn at ``cap`` when given (and dropped otherwise) and counted in the legend."""
    plt = _pyplot()
    fig, (ax_h, ax_c) = plt.subplots(1, 2, figsize=(11, 4.2))
    arrays = [np.asarray(v, dtype=float) for v in groups.values()]
    allv = np.concatenate([np.where(np.isfinite(v), v, cap if cap is not None else np.nan) for v in arrays])
    allv = allv[np.isfinite(allv)]
    bins = np.linspace(allv.min(), allv.max(), 30) if allv.size and allv.max() > allv.min() else 10
    for i, (name, v) in enumerate(zip(groups, arrays)):
        n_inf = int((~np.isfinite(v)).sum())
        v = np.where(np.isfinite(v), v, cap) if cap is not None else v[np.isfinite(v)]
        label = f"{name} (n={v.size}" + (f", {n_inf} not reached" if n_inf else "") + ")"
        style = dict(color=f"C{i % 10}", ls="-" if i < 10 else "--", label=label)
        ax_h.hist(v, bins=bins, histtype="step", lw=1.5, **style)
        xs = np.sort(v)
        ax_c.step(xs, np.arange(1, xs.size + 1) / max(xs.size, 1), where="post", **style)
    ax_h.set_xlabel(xlabel)
    ax_h.set_ylabel("count")
    ax_h.grid(alpha=0.3)
    fig.suptitle(title)
    return finish(fig, ax_c, path, xlabel, "cumulative fraction", legend_loc="lower right")


def plot_mean_curves(path: str | Path, groups: dict, xlabel: str, ylabel: str, title: str,
                     tau: float | None = None) -> Path:
    """Mean effect ± 1 sd per group; ``groups[name] = (steps [K], effects [R, K])``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (name, (steps, effects)) in enumerate(groups.items()):
        e, x = effects.detach().double().cpu(), steps.detach().double().cpu()
        m, s = e.mean(0), e.std(0) if e.shape[0] > 1 else torch.zeros_like(e[0])
        color = f"C{i % 10}"
        ax.plot(x, m, color=color, ls="-" if i < 10 else "--", label=f"{name} (n={e.shape[0]})")
        ax.fill_between(x, m - s, m + s, color=color, alpha=0.15)
    if tau is not None:
        ax.axhline(tau, color="k", ls="--", lw=1, label=f"threshold τ = {tau:g}")
    return finish(fig, ax, path, xlabel, ylabel, title, legend_loc="upper left")


def plot_simplex(path: str | Path, land, title: str, cap: float = 180.0) -> Path:
    """Threshold angle over a 2-simplex of directions (a ``sensfind.Landscape``), corners annotated;
    points where τ was never reached are drawn at ``cap`` and marked."""
    plt = _pyplot()
    import matplotlib.tri as mtri  # lazy: only figures need it

    corners = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, np.sqrt(3) / 2]])
    xy = land.weights.numpy() @ corners
    z = land.threshold.numpy().copy()
    unreached = ~np.isfinite(z)
    z[unreached] = cap
    fig, ax = plt.subplots(figsize=(6.2, 5.2))
    pc = ax.tripcolor(mtri.Triangulation(xy[:, 0], xy[:, 1]), z, shading="gouraud", cmap="viridis")
    ax.scatter(xy[:, 0], xy[:, 1], c="k", s=4)
    if unreached.any():
        ax.scatter(xy[unreached, 0], xy[unreached, 1], marker="x", c="r", s=20, label="τ not reached")
        ax.legend(loc="upper right", fontsize=8)
    for c, ((cx, cy), name) in enumerate(zip(corners, land.corner_names)):
        ax.annotate(f"{name}\n{float(land.threshold[land.corner_index(c)]):.1f}°", (cx, cy), ha="center",
                    va="top" if cy == 0 else "bottom", xytext=(0, -6 if cy == 0 else 6), textcoords="offset points",
                    fontsize=9)
    fig.colorbar(pc, ax=ax, label="threshold angle (deg): first KL > τ")
    ax.set_xlabel("position on the simplex of directions (barycentric weights, dimensionless)")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_aspect("equal")
    ax.set_xlim(-0.1, 1.1)
    ax.set_ylim(-0.15, 1.0)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_latent_geometry(path: str | Path, de, log_density, alive, groups: dict, alpha: float, title: str) -> Path:
    """D/E cosine against log firing density per latent (left; the last group starred) and the D/E
    histogram of each group (right). ``groups[name] = latent ids``."""
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax1.scatter(log_density[alive], de[alive], s=6, alpha=0.4, color="C0", label="live latents")
    if (~alive).any():
        ax1.scatter(log_density[~alive], de[~alive], s=6, alpha=0.4, color="C7", label="dead on the pool (density floor)")
    sig = list(groups.values())[-1]
    if sig.numel():
        ax1.scatter(log_density[sig], de[sig], s=40, marker="*", color="C3", label=f"matched to optima (p < {alpha:g})")
    ax1.set_xlabel("log10 firing density on the prompt pool (fraction of activations)")
    ax1.set_ylabel("D/E projection: cos(encoder column, decoder row)")
    ax1.legend(fontsize=7)
    ax1.grid(alpha=0.3)
    bins = np.linspace(-1, 1, 41)
    for i, (name, ids) in enumerate(groups.items()):
        if ids.numel():
            ax2.hist(de[ids].numpy(), bins=bins, density=True, histtype="step", lw=1.5, color=f"C{i}",
                     label=f"{name} (n={ids.numel()})")
    fig.suptitle(title)
    return finish(fig, ax2, path, "D/E projection: cos(encoder column, decoder row)", "density (per unit cosine)")


def plot_sae_errors(path: str | Path, kl_sae, kl_iso, kl_cov, latent: dict, sigmas: list, title: str) -> Path:
    """Left: KL of substituting the SAE reconstruction per base, beside same-norm isotropic and
    covariance-shaped errors (``[n]``, ``[n, r]``, ``[n, r]``). Right: mean KL of latent noise against
    random noise of the same norm per noise level (``latent[str(sigma)][key] = describe(...)``)."""
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    order = np.argsort(kl_sae)
    x = np.arange(kl_sae.size)
    ax1.plot(x, kl_sae[order], "o", ms=4, label="SAE reconstruction x̂")
    ax1.errorbar(x, kl_iso.mean(1)[order], yerr=kl_iso.std(1)[order], fmt="s", ms=3, alpha=0.7,
                 label="x + ε, isotropic, |ε| = |x - x̂| (mean ± sd)")
    ax1.errorbar(x, kl_cov.mean(1)[order], yerr=kl_cov.std(1)[order], fmt="^", ms=3, alpha=0.7,
                 label="x + ε, cov-shaped (mean ± sd)")
    ax1.set_yscale("log")
    ax1.set_xlabel("base (sorted by SAE KL)")
    ax1.set_ylabel("KL(p0 || p) (nats)")
    ax1.set_title("substituting the reconstruction vs a random error")
    ax1.legend(fontsize=7)
    ax1.grid(alpha=0.3)
    for key, label, marker in (("kl_latent", "latent noise (L0 kept)", "o"), ("kl_isotropic", "isotropic, same norm", "s"),
                               ("kl_cov_shaped", "cov-shaped, same norm", "^")):
        ax2.errorbar(sigmas, [latent[str(s)][key]["mean"] for s in sigmas],
                     yerr=[latent[str(s)][key]["se"] for s in sigmas], marker=marker, capsize=3, label=label)
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    fig.suptitle(title)
    return finish(fig, ax2, path, "relative latent noise σ (dimensionless)", "mean KL(p0 || p) (nats), ± 1 s.e.",
                  "perturbing x̂ along its latents vs randomly")


def plot_topk(path: str | Path, ks: list, kl_k, ce_k, ce_clean, low: dict | None, title: str) -> Path:
    """KL (and next-token CE, when ``ce_k`` is given) of the top-k reconstruction against ``k`` (mean ±
    s.e. over bases, ``[n, K]``); ``low`` (``l0``, ``kl``, ``ce`` per base) adds a low-L0 SAE's point."""
    plt = _pyplot()
    panels = [(kl_k, "KL(p0 || p) (nats)", "kl")] + ([(ce_k, "next-token cross-entropy (nats)", "ce")] if ce_k is not None else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    x = np.array(ks, dtype=float)
    n = kl_k.shape[0]
    for ax, (vals, ylabel, key) in zip(axes[0], panels):
        se = (vals.std(0) / np.sqrt(max(n, 1))).numpy()
        ax.errorbar(x, vals.mean(0).numpy(), yerr=se, marker="o", capsize=3, label="main SAE, top-k latents kept (mean ± s.e.)")
        if low is not None:
            ax.errorbar([float(low["l0"].mean())], [float(low[key].mean())], yerr=[float(low[key].std() / np.sqrt(n))],
                        marker="*", ms=12, color="C3", ls="none", label="low-L0 SAE, all latents (at its mean L0)")
        if key == "ce":
            ax.axhline(float(ce_clean.mean()), color="k", ls="--", lw=1, label="clean model")
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlabel("k (active latents kept)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_mixture_curves(path: str | Path, test: MixtureTest, max_pairs: int = 6, title: str = "") -> Path:
    """Critical angle vs φ for up to ``max_pairs`` used pairs: measured (markers), the ``p = 2`` model
    (dashed) and the fitted ``p`` (solid); one colour per pair. Writes a PNG."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    fine = torch.linspace(0, 90, 91, dtype=torch.float64)
    fitted, quad = test.predicted(phi_deg=fine), test.predicted(2.0, fine)
    for c, i in enumerate(test.used.nonzero()[:, 0][:max_pairs].tolist()):
        a, b = test.pairs[i].tolist()
        ax.plot(test.phi_deg, test.thresholds[i], "o", color=f"C{c}", label=f"pair ({a}, {b})")
        ax.plot(fine, quad[i], "--", color=f"C{c}", lw=1)
        ax.plot(fine, fitted[i], "-", color=f"C{c}", lw=1.5)
    ax.plot([], [], "k--", lw=1, label="p = 2 (quadratic form)")
    ax.plot([], [], "k-", lw=1.5, label=f"fitted p = {test.p:.3g} [{test.p_low:.3g}, {test.p_high:.3g}]")
    return finish(fig, ax, path, "mixture angle φ (deg): cos φ·a + sin φ·b",
                  f"critical angle r*(φ) (deg, KL > {test.config.tau:g})", title or f"mixture test: {test.n_pairs} pairs")


def plot_p_by_kind(path: str | Path, intervals: dict[str, tuple[float, float, float]], title: str = "",
                   ylabel: str = "fitted p (95% interval)", dots: dict[str, list] | None = None,
                   cap: float = 96.0) -> Path:
    """``p`` with its 95% interval ``intervals[kind] = (p, low, high)`` for each kind of direction (log axis;
    values beyond ``cap``, ∞ included, drawn at ``cap`` with an arrow; a NaN ``p`` is left out), optional
    jittered ``dots[kind]`` (e.g. each prompt's own p), and the ``p = 2`` line. Writes a PNG."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(intervals) + 2), 4.5))
    g = torch.Generator().manual_seed(0)
    for i, (kind, (p, lo, hi)) in enumerate(intervals.items()):
        if dots and dots.get(kind):
            v = torch.tensor([min(float(x), cap) for x in dots[kind]], dtype=torch.float64)
            x = i + (torch.rand(len(v), generator=g, dtype=torch.float64) - 0.5) * 0.3
            ax.scatter(x.tolist(), v.tolist(), s=9, alpha=0.35, color=f"C{i}")
        if math.isnan(p):
            continue
        p, lo, hi = (min(v, cap) for v in (p, lo, hi))
        ax.errorbar([i], [p], yerr=[[p - lo], [hi - p]], fmt="o", color=f"C{i}", capsize=4, ms=7)
        if hi >= cap:
            ax.annotate("", (i, cap * 1.3), (i, cap), arrowprops={"arrowstyle": "->", "color": f"C{i}"})
    ax.axhline(2.0, color="k", ls="--", lw=1, label="p = 2 (quadratic form)")
    ax.set_xticks(range(len(intervals)), list(intervals), fontsize=8)
    ax.set_yscale("log")
    ax.set_title(title or "mixture test: p by kind of direction")
    ax.grid(alpha=0.3, which="both")
    return finish(fig, ax, path, "", ylabel, ax.get_title(), legend_loc="upper left")
