"""Sensitivity landscapes on a 2-simplex of directions: is a direction a local optimum of sensitivity?

Three corner directions ``c_0, c_1, c_2`` (unit rows, ``[3, d]``) span a triangle of directions
``u(w) = Σ_i w_i c_i / |Σ_i w_i c_i|`` for barycentric weights ``w`` (``w_i >= 0``, ``Σ w_i = 1``) on a
grid of ``resolution`` steps per edge. Each point gets its hard threshold value (first step whose
effect exceeds τ; degrees in sphere mode), measured in two passes: a scan over the config's full
range, then a fine scan of ``refine_steps`` points between the last step below τ and the first one
above it, so the value is resolved to ``Δ/(refine_steps - 1)`` instead of the coarse step Δ.

A corner is a *local optimum* when its threshold is no larger than that of any grid point adjacent
to it (one grid step along either edge leaving the corner); ``margin`` reports by how much.
In sphere mode only the part of each direction orthogonal to the base moves the activation, so the
corners are projected off the base before they are combined.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from sensfind.core.geometry import check_directions, effective_directions
from sensfind.runio import load_json, load_tensors, save_json, save_tensors
from sensfind.core.scan import ScanConfig, scan
from sensfind.core.subject import Subject
from sensfind.reporting.stats import describe
import numpy as np

__all__ = ["Landscape", "corner_summary", "landscape", "random_corner_report", "simplex_grid", "simplex_directions"]


def simplex_grid(resolution: int) -> Tensor:
    """Barycentric weights ``[P, 3]`` with ``P = (r + 1)(r + 2)/2`` points, ``r = resolution``.

    Row ``w`` is ``(i, j, r - i - j)/r``; the corners ``(1, 0, 0)``, ``(0, 1, 0)``, ``(0, 0, 1)`` are included.
    """
    if not isinstance(resolution, int) or isinstance(resolution, bool) or resolution < 1:
        raise ValueError(f"resolution must be an integer >= 1, got {resolution!r}")
    pts = [(i, j, resolution - i - j) for i in range(resolution, -1, -1) for j in range(resolution - i, -1, -1)]
    return torch.tensor(pts, dtype=torch.float64) / resolution


def simplex_directions(corners: Tensor, weights: Tensor) -> Tensor:
    """Unit directions ``[P, d]``: ``w @ ĉ`` normalised, for unit corners ``ĉ`` of ``corners [3, d]``."""
    if corners.ndim != 2 or corners.shape[0] != 3:
        raise ValueError(f"corners must have shape [3, d], got {tuple(corners.shape)}")
    c = corners.double()
    c = c / c.norm(dim=1, keepdim=True)
    u = weights.double() @ c
    norms = u.norm(dim=1, keepdim=True)
    if (norms < 1e-9).any():
        raise ValueError("the corner directions cancel inside the simplex (e.g. a corner is minus another); "
                         "choose corners that are not opposite")
    return (u / norms).to(corners.dtype)


def _refined_threshold(subject: Subject, directions: Tensor, config: ScanConfig, refine_steps: int) -> Tensor:
    coarse = scan(subject, directions, config)
    thr = coarse.threshold  # [P] inf where not reached
    idx = coarse.threshold_index
    steps = coarse.steps.to(torch.float64)
    hit = (idx > 0).nonzero()[:, 0]
    if hit.numel() and refine_steps >= 2:
        lo, hi = steps[idx[hit] - 1], steps[idx[hit]]
        frac = torch.linspace(0, 1, refine_steps, dtype=torch.float64)
        grid = lo[:, None] + (hi - lo)[:, None] * frac  # [H, K2]
        fine = scan(subject, directions[hit], config, steps=grid.to(subject.base.dtype))
        fine_thr = fine.threshold
        # the fine grid ends at a point known to be above τ, so it always crosses; keep coarse otherwise
        thr[hit] = torch.where(torch.isfinite(fine_thr), fine_thr, thr[hit])
    return thr


@dataclass
class Landscape:
    """Threshold values on a simplex of directions.

    Attributes:
        weights: ``[P, 3]`` barycentric weights of the grid points.
        directions: ``[P, d]`` the unit directions scanned (effective: base projected out in sphere mode).
        threshold: ``[P]`` hard threshold value (config units), ``inf`` where not reached.
        corner_names: names of the three corners.
        resolution: grid steps per edge.
        config: the scan config as a dict.
    """

    weights: Tensor
    directions: Tensor
    threshold: Tensor
    corner_names: tuple[str, str, str]
    resolution: int
    config: dict = field(default_factory=dict)

    def corner_index(self, corner: int) -> int:
        return int(torch.nonzero(self.weights[:, corner] == 1)[0, 0])

    def neighbours(self, corner: int) -> Tensor:
        """Indices of the grid points one step away from ``corner`` (2 points)."""
        step = 1.0 / self.resolution
        return torch.nonzero((self.weights[:, corner] - (1 - step)).abs() < 1e-9)[:, 0]

    def corner_report(self, corner: int) -> dict:
        """The corner's threshold, its neighbours' (and how far they are, in degrees between
        directions), whether it is a local optimum, and its rank among all grid points."""
        i = self.corner_index(corner)
        val = float(self.threshold[i])
        nbi = self.neighbours(corner)
        nb = self.threshold[nbi]
        best_nb = float(nb.min())
        cos = (self.directions[nbi].double() @ self.directions[i].double()).clamp(-1, 1)
        finite = self.threshold[torch.isfinite(self.threshold)]
        rank = int((finite < val).sum()) if math.isfinite(val) else int(finite.numel())
        return dict(
            name=self.corner_names[corner], threshold=val, neighbour_min=best_nb,
            neighbour_angle_deg=float(torch.rad2deg(torch.arccos(cos)).mean()),
            local_optimum=bool(val <= best_nb), margin=best_nb - val,
            rank=rank, n_points=int(self.threshold.numel()),
            global_optimum=bool(math.isfinite(val) and val <= float(self.threshold.min())),
        )

    def to_dict(self) -> dict:
        return dict(
            corner_names=list(self.corner_names), resolution=self.resolution, config=self.config,
            corners=[self.corner_report(c) for c in range(3)],
            threshold_min=float(self.threshold.min()), threshold_max=float(self.threshold.max()),
        )

    def save(self, directory: str | Path, prefix: str = "landscape") -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_json(directory / f"{prefix}.json", self.to_dict())
        save_tensors(directory / f"{prefix}.safetensors",
                     {"weights": self.weights, "directions": self.directions, "threshold": self.threshold.double()})
        return directory

    @classmethod
    def load(cls, directory: str | Path, prefix: str = "landscape") -> "Landscape":
        directory = Path(directory)
        meta = load_json(directory / f"{prefix}.json")
        t = load_tensors(directory / f"{prefix}.safetensors")
        return cls(weights=t["weights"], directions=t["directions"], threshold=t["threshold"],
                   corner_names=tuple(meta["corner_names"]), resolution=meta["resolution"], config=meta["config"])


@torch.no_grad()
def landscape(
    subject: Subject,
    corners: Tensor,
    config: ScanConfig = ScanConfig(),
    resolution: int = 10,
    refine_steps: int = 16,
    corner_names: tuple[str, str, str] = ("c0", "c1", "c2"),
) -> Landscape:
    """Threshold values over the simplex spanned by ``corners [3, d]`` around ``subject``'s base."""
    base = subject.base
    corners = check_directions(corners, base.shape[0], base if config.mode == "sphere" else None, what="corner")
    if corners.shape[0] != 3:
        raise ValueError(f"need exactly 3 corner directions, got {corners.shape[0]}")
    if len(corner_names) != 3:
        raise ValueError(f"need 3 corner names, got {corner_names!r}")
    if not isinstance(refine_steps, int) or refine_steps < 0:
        raise ValueError(f"refine_steps must be an integer >= 0, got {refine_steps!r}")
    eff = effective_directions(corners.to(base.dtype), base, config.mode)
    weights = simplex_grid(resolution)
    dirs = simplex_directions(eff, weights)
    thr = _refined_threshold(subject, dirs, config, refine_steps)
    return Landscape(weights=weights, directions=dirs, threshold=thr, corner_names=tuple(corner_names),
                     resolution=resolution, config=config.to_dict())


def random_corner_report(land: Landscape) -> dict:
    """The report of corner 0 (the direction of interest) with ``random_corners``: the thresholds of
    corners 1 and 2 (the random directions it is compared with)."""
    return dict(land.corner_report(0), random_corners=[land.corner_report(1)["threshold"],
                                                       land.corner_report(2)["threshold"]])


def corner_summary(reports: list[dict], cap: float = 180.0) -> dict:
    """Over ``reports`` of :func:`random_corner_report` (one per landscape): how often the corner is a local
    and the global optimum, its and the random corners' thresholds (``sensfind.reporting.stats.describe``, never
    reached counted at ``cap``), its margin to its neighbours and their mean angle to it."""

    if not reports:
        raise ValueError("corner_summary needs at least one corner report")
    return dict(
        n=len(reports), local_optimum_fraction=float(np.mean([r["local_optimum"] for r in reports])),
        global_optimum_fraction=float(np.mean([r["global_optimum"] for r in reports])),
        corner_threshold_deg=describe([r["threshold"] for r in reports], cap),
        random_corner_threshold_deg=describe([t for r in reports for t in r["random_corners"]], cap),
        margin_deg=describe([r["margin"] for r in reports]),
        neighbour_angle_deg=float(np.mean([r["neighbour_angle_deg"] for r in reports])))
