"""Figures. Everything here writes PNG files with labelled axes, units and legends."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

__all__ = ["EFFECT_LABELS", "plot_effect_curves", "plot_history"]

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
    ax.set_xlabel(xlabel)
    ax.set_ylabel(EFFECT_LABELS.get(effect, effect))
    if title:
        ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
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
    ax.set_xlabel("iteration")
    ax.set_ylabel("blowup (deg, or step units in straight mode)")
    ax.set_title("discovery objective per iteration")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
