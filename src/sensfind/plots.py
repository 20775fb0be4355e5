"""Figures. Everything here writes PNG files with labelled axes, units and legends."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

__all__ = ["EFFECT_LABELS", "plot_effect_curves"]

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
