"""Figures. Everything here writes PNG files with labelled axes, units and legends."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

__all__ = ["EFFECT_LABELS", "finish", "plot_before_after", "plot_boxes", "plot_effect_curves", "plot_histograms", "plot_history",
           "plot_median_curves"]

EFFECT_LABELS = {"kl": "KL(p0 || p) (nats)", "l2": "L2 distance at output hook", "cos": "cosine distance at output hook"}


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
    return finish(fig, ax, path, xlabel, EFFECT_LABELS.get(effect, effect), title, legend_loc="upper left")


def finish(fig, ax, path: str | Path, xlabel: str, ylabel: str, title: str = "", legend_loc: str = "best") -> Path:
    """Label, legend, grid, save as PNG and close: the common tail of every figure here."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend(loc=legend_loc, fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_history(path: str | Path, history: list[dict]) -> Path:
    """Objective (soft blowup, mean and best over restarts) and median hard blowup per iteration."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    it = [h["iteration"] for h in history]
    if history:
        ax.plot(it, [h["objective_mean"] for h in history], label="soft blowup, mean over restarts")
        ax.plot(it, [h["objective_min"] for h in history], label="soft blowup, best restart")
        med = [h["blowup_median"] if isinstance(h["blowup_median"], (int, float)) else float("nan") for h in history]
        ax.plot(it, med, ls="--", label="hard blowup, median over restarts")
    return finish(fig, ax, path, "iteration", "blowup (deg, or step units in straight mode)",
                  "discovery objective per iteration")


def plot_histograms(path: str | Path, groups: dict, xlabel: str, title: str, lines: dict | None = None,
                    bins: int = 30) -> Path:
    """Overlaid density histograms of ``groups[name] = values`` (non-finite values dropped), with
    dashed vertical ``lines[name] = [x, ...]``."""
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
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(before, after, s=14, label="one item")
    lo = min(min(before), min(after), 0.0)
    ax.plot([lo, 1], [lo, 1], color="k", lw=1, ls="--", label="no change")
    return finish(fig, ax, path, xlabel, ylabel, title)


def plot_boxes(path: str | Path, groups: dict, ylabel: str, title: str, cap: float | None = None) -> Path:
    """One box (quartiles, whiskers to 1.5 IQR) per ``groups[name] = values`` with the values as jittered
    dots; non-finite values ("not reached") are drawn at ``cap`` (if given) and counted in the label."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
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
        labels.append(f"{name}\n(n={v.numel()}{med}" + (f", {n_inf} n.r." if n_inf else "") + ")")
    ax.set_xticks(range(len(labels)), labels, fontsize=7)
    if cap is not None:
        ax.axhline(cap, color="grey", lw=0.8, ls=":")
    ax.plot([], [], " ", label="dots at the dotted line: not reached" if cap is not None else "")
    return finish(fig, ax, path, "", ylabel, title)


def plot_median_curves(path: str | Path, steps, groups: dict, xlabel: str, effect: str, tau: float | None = None,
                       title: str = "") -> Path:
    """Median effect curve of each group with its 10-90% band. ``groups[name] = effects [R, K]`` at ``steps [K]``."""
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
    return finish(fig, ax, path, xlabel, EFFECT_LABELS.get(effect, effect), title, legend_loc="upper left")
