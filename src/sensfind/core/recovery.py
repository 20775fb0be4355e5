"""Scoring directions against ground truth: which planted features were reached, and how closely.

Used with subjects whose features are known (``sensfind.core.toy``). A direction *reaches* a feature when
their cosine, with the base activation projected out of both (all a sphere-mode scan sees), is at
least ``threshold``; nothing is claimed below it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sensfind.core.geometry import effective_directions

__all__ = ["Recovery", "recovery"]


@dataclass
class Recovery:
    best_cos: Tensor  # [R] best signed cosine of each direction with any planted feature
    best_feature: Tensor  # [R] that feature's id, -1 where below the threshold
    threshold: float

    @property
    def reached(self) -> Tensor:  # [R] bool
        return self.best_feature >= 0

    @property
    def fraction_reached(self) -> float:
        return float(self.reached.float().mean())

    @property
    def distinct_features(self) -> list[int]:
        return sorted(set(self.best_feature[self.reached].tolist()))

    def to_dict(self) -> dict:
        return {
            "threshold": self.threshold,
            "fraction_reached": self.fraction_reached,
            "n_distinct_features": len(self.distinct_features),
            "distinct_features": self.distinct_features,
            "best_cos": self.best_cos.tolist(),
            "best_feature": self.best_feature.tolist(),
        }


def recovery(directions: Tensor, features: Tensor, base: Tensor, threshold: float = 0.9, mode: str = "sphere") -> Recovery:
    """Match directions ``[R, d]`` to planted (signed) features ``[n, d]``.

    In sphere mode the base is projected out of both before the cosine. Features are taken with
    their sign (``+f`` turns a feature on, ``-f`` off); pass both signs if either counts.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    dirs = effective_directions(directions.double(), base.double(), mode)
    feats = effective_directions(features.double(), base.double(), mode)
    cos = dirs @ feats.T
    best, idx = cos.max(dim=1)
    return Recovery(best_cos=best, best_feature=torch.where(best >= threshold, idx, torch.full_like(idx, -1)),
                    threshold=threshold)
