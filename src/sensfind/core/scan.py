"""Batched scans: perturb the base activation along many directions at many step sizes.

Sphere mode (slerp) keeps the norm: ``x(θ) = |x0| (cos θ x̂0 + sin θ t̂)`` with ``t̂`` the unit part of
the direction orthogonal to ``x0``; steps are angles in degrees. Straight mode moves in a line:
``x(α) = x0 + α |x0| u`` (``scale="relative"``) or ``x0 + α u`` (``scale="absolute"``, the LASR
variant with step 0.5).

A scan of ``R`` directions over ``K`` steps runs ``R·K`` points through the subject and returns effects
``[R, K]``. Autograd flows from the effects to the directions, which is what the optimiser needs. Without
gradients (final scans, baselines) the directions run in chunks sized so that the outputs of one chunk fit
a memory budget (``max_memory``), so peak memory does not grow with directions × steps × output width.
With gradients the points run as one batch while their outputs fit the larger ``DEFAULT_GRAD_MAX_MEMORY``
(GPT-2 and SmolLM2 at the optimiser's default 32 restarts × 16 steps: about 0.2 GB); past it (Gemma 3's
262,144-token vocabulary: 1 MB of logits per point) the directions run in chunks whose forward is
recomputed in the backward (``torch.utils.checkpoint``), so only the effects ``[R, K]`` are kept between
the two and memory stays within the budget, at the cost of a second forward of each chunk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from sensfind.core.geometry import directions_from_targets
from sensfind.core.objective_config import ObjectiveConfig
from sensfind.configs import check_int
from sensfind.core.blowup import max_slope_index, threshold_index, threshold_value
from sensfind.core.effects import get_effect
from sensfind.core.geometry import check_directions, is_base, perturb
from sensfind.runio import Result, load_json, load_tensors, save_json, save_tensors
from sensfind.core.subject import Subject
from sensfind.progress import progress_bar

__all__ = [
    "ScanConfig",
    "Scan",
    "scan",
    "step_grid",
    "scan_chunk_rows",
    "real_other_thresholds",
    "zoomed_threshold",
    "DEFAULT_MAX_MEMORY",
    "DEFAULT_GRAD_MAX_MEMORY",
]

DEFAULT_MAX_MEMORY = 256 * 2**20  # bytes of outputs (and their effect temporaries) per chunk of a gradient-free scan
DEFAULT_GRAD_MAX_MEMORY = 2 * 2**30  # the same with gradients (outputs kept for the backward): chunked and recomputed past it
_OUTPUT_COPIES = 2  # the logits and, in the backward, their gradient (the KL works in cache-sized row blocks)


@dataclass(frozen=True)
class ScanConfig(ObjectiveConfig):
    """How to scan (the objective's settings, ``effect``, ``tau``, ``mode``, ``start`` and ``stop``, are
    :class:`~sensfind.configs.ObjectiveConfig`'s).

    Attributes:
        steps: number of scan points, at least 2 and at most 100000.
        scale: straight mode only: ``relative`` (α·|x0|) or ``absolute`` (α).
    """

    steps: int = 91
    scale: Literal["relative", "absolute"] = "relative"

    def __post_init__(self):
        if self.mode not in ("sphere", "straight"):
            raise ValueError(f"mode must be 'sphere' or 'straight', got {self.mode!r}")
        if self.scale not in ("relative", "absolute"):
            raise ValueError(f"scale must be 'relative' or 'absolute', got {self.scale!r}")
        check_int("steps", self.steps, 2, maximum=100_000)
        super().__post_init__()


def step_grid(config: ScanConfig, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    lo, hi = config.range
    return torch.linspace(lo, hi, config.steps, dtype=dtype, device=device)


@dataclass
class Scan(Result):
    """Effects of a scan: ``effects[r, k]`` at ``steps[k]`` (or ``steps[r, k]``) for direction ``r``.

    ``save(directory)`` writes ``scan.json`` (summary and thresholds), ``scan.safetensors`` (steps,
    effects) and ``config.json``; ``Scan.load(directory)`` reads them back."""

    MARKER = "scan.safetensors"
    WHAT = "scan results"

    config: ScanConfig
    steps: Tensor  # [K] or [R, K]
    effects: Tensor  # [R, K]

    @property
    def threshold_index(self) -> Tensor:  # [R], -1 if not reached
        return threshold_index(self.effects, self.config.tau)

    @property
    def threshold(self) -> Tensor:  # [R], inf if not reached
        return threshold_value(self.effects, self.steps, self.config.tau)

    @property
    def max_slope_index(self) -> Tensor:  # [R]
        return max_slope_index(self.effects)

    @property
    def max_slope(self) -> Tensor:  # [R] step value at the max-slope index
        idx = self.max_slope_index
        return self.steps.expand_as(self.effects).gather(-1, idx[:, None])[:, 0]

    def summary(self) -> dict:
        thr = self.threshold
        reached = torch.isfinite(thr)
        out = {
            "n_directions": int(self.effects.shape[0]),
            "n_steps": int(self.effects.shape[1]),
            "unit": self.config.unit,
            "tau": self.config.tau,
            "n_reached": int(reached.sum()),
        }
        if reached.any():
            r = thr[reached]
            out.update(threshold_median=float(r.median()), threshold_mean=float(r.mean()), threshold_min=float(r.min()))
        ms = self.max_slope.double()
        out.update(max_slope_mean=float(ms.mean()), max_slope_std=float(ms.std()) if ms.numel() > 1 else 0.0)
        return out

    def config_dict(self) -> dict:
        return self.config.to_dict()

    def _write(self, directory: Path) -> None:
        save_json(directory / "scan.json", {"config": self.config.to_dict(), "summary": self.summary(),
                                            "threshold": self.threshold, "threshold_index": self.threshold_index})
        save_tensors(directory / "scan.safetensors", {"steps": self.steps, "effects": self.effects})

    @classmethod
    def _read(cls, directory: Path) -> "Scan":
        meta = load_json(directory / "scan.json")
        t = load_tensors(directory / "scan.safetensors")
        return cls(config=ScanConfig.from_dict(meta["config"]), steps=t["steps"], effects=t["effects"])


def scan_chunk_rows(n_steps: int, n_out: int, itemsize: int, max_memory: int = DEFAULT_MAX_MEMORY) -> int:
    """Directions per chunk of a gradient-free scan: as many as keep ``n_steps`` outputs of width ``n_out``
    (and the effect's temporaries) within ``max_memory`` bytes; at least one."""
    per_row = n_steps * max(n_out, 1) * itemsize * _OUTPUT_COPIES
    return max(1, int(max_memory // per_row))


def scan(
    subject: Subject,
    directions: Tensor,
    config: ScanConfig = ScanConfig(),
    steps: Tensor | None = None,
    max_memory: int | None = None,
    progress: bool | None = False,
    desc: str = "scan",
) -> Scan:
    """Scan ``subject`` along ``directions`` ``[R, d]``; differentiable in the directions.

    ``steps`` overrides the config's grid: ``[K]`` shared, or ``[R, K]`` per direction (adaptive grids).
    ``max_memory``: byte budget for one chunk's outputs (see the module doc); ``None``: ``DEFAULT_MAX_MEMORY``
    without gradients, ``DEFAULT_GRAD_MAX_MEMORY`` with them.
    ``progress``: a bar named ``desc`` over the ``R·K`` points (``None``: when stderr is a terminal).
    """
    if not isinstance(config, ScanConfig):
        raise TypeError(f"config must be a ScanConfig (e.g. ScanConfig(steps=4)), got {type(config).__name__}")
    if max_memory is not None and (not isinstance(max_memory, int) or isinstance(max_memory, bool) or max_memory < 1):
        raise ValueError(f"max_memory must be a positive number of bytes, got {max_memory!r}")
    base = subject.base
    d = base.shape[0]
    directions = check_directions(directions, d, base if config.mode == "sphere" else None)
    if steps is None:
        steps = step_grid(config, dtype=base.dtype, device=base.device)
    elif not isinstance(steps, Tensor) or steps.ndim not in (1, 2) or steps.shape[-1] < 2:
        shape = tuple(steps.shape) if isinstance(steps, Tensor) else type(steps).__name__
        raise ValueError(f"steps must be a tensor of shape [K] or [R, K] with K >= 2, got {shape}")
    base_out = base_output(subject)
    effect = get_effect(config.effect)
    r, k = directions.shape[0], steps.shape[-1]
    grad = torch.is_grad_enabled() and directions.requires_grad
    if max_memory is None:
        max_memory = DEFAULT_GRAD_MAX_MEMORY if grad else DEFAULT_MAX_MEMORY
    rows = min(r, scan_chunk_rows(k, base_out.numel(), base_out.element_size(), max_memory))
    rows = -(-r // -(-r // rows))  # as many chunks, of equal size

    def chunk_effects(part_dirs: Tensor, part_steps: Tensor) -> Tensor:  # [r', d] -> [r', K]
        acts = perturb(base, part_dirs, part_steps, config.mode, config.scale)  # [r', K, d]
        return effect(base_out, subject.run(acts.reshape(-1, d))).reshape(acts.shape[0], k)

    chunks = []
    bar = progress_bar(r * k, desc, progress)
    for i in range(0, r, rows):
        part_steps = steps if steps.ndim == 1 else steps[i : i + rows]
        if grad and rows < r:  # keep only the effects; the chunk's forward runs again in the backward
            chunks.append(checkpoint(chunk_effects, directions[i : i + rows], part_steps, use_reentrant=False))
        else:
            chunks.append(chunk_effects(directions[i : i + rows], part_steps))
        bar.update(min(rows, r - i) * k)
    bar.close()
    effects = chunks[0] if len(chunks) == 1 else torch.cat(chunks)
    return Scan(config=config, steps=steps.detach(), effects=effects)


@torch.no_grad()
def zoomed_threshold(subject: Subject, directions: Tensor, steps: Tensor, effects: Tensor, config: ScanConfig,
                     resolution: float = 0.5, progress: bool | None = False) -> Tensor:
    """Threshold values ``[R]`` of a coarse scan (``effects [R, K]`` at the shared ``steps [K]`` along
    ``directions [R, d]``), resolved to ``resolution`` (step units) by a second scan of each reached row
    between its last step below ``tau`` and its first above. Rows crossing at the first step, or never,
    keep the coarse value; a grid already that fine is returned as is. Costs ``ceil(Δ / resolution) + 1``
    points per reached row, ``Δ`` the coarse spacing."""
    coarse = threshold_value(effects, steps, config.tau)
    spacing = float((steps[1:] - steps[:-1]).max()) if steps.numel() > 1 else 0.0
    idx = threshold_index(effects, config.tau)
    rows = torch.nonzero(idx > 0)[:, 0]
    if spacing <= resolution or rows.numel() == 0:
        return coarse
    n = int(math.ceil(spacing / resolution)) + 1
    lo, hi = steps[idx[rows] - 1].to(directions.dtype), steps[idx[rows]].to(directions.dtype)
    grid = lo[:, None] + (hi - lo)[:, None] * torch.linspace(0, 1, n, dtype=directions.dtype)[None]  # [r, n]
    fine = scan(subject, directions[rows], config, steps=grid.to(subject.base.device), progress=progress,
                desc="zoomed thresholds")
    value = threshold_value(fine.effects, fine.steps, config.tau)
    out = coarse.clone()
    out[rows] = torch.where(torch.isfinite(value), value, coarse[rows])  # a rounding miss keeps the coarse step
    return out


@torch.no_grad()
def real_other_thresholds(subject: Subject, targets: Tensor, config: ScanConfig) -> Tensor:
    """Threshold values ``[M']`` of the directions from the subject's base towards ``targets`` ``[M, d]``
    (activations of other inputs at the site), scanned with ``config``. Targets equal to the base (the
    subject's own input among them) are dropped; at least one other must remain."""
    same = is_base(targets, subject.base)
    if same.all():
        raise ValueError(f"all {targets.shape[0]} real-other targets equal the base activation; give other inputs")
    return scan(subject, directions_from_targets(subject.base, targets[~same]), config).threshold


def base_output(subject: Subject) -> Tensor:
    """The subject's unperturbed output ``[n_out]``: its ``base_output`` if it keeps one, else a run."""
    out = getattr(subject, "base_output", None)
    if out is None:
        with torch.no_grad():
            out = subject.run(subject.base[None])[0]
    return out.detach()
