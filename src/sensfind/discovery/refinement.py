"""Refinement: discovery started from given directions, and how far each moved and how much earlier it
blows up."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from sensfind.core.geometry import check_directions, effective_directions
from sensfind.discovery.optima import Discovery
from sensfind.discovery.config import DiscoverConfig
from sensfind.discovery.loop import discover
from sensfind.core.scan import scan
from sensfind.core.subject import Subject

__all__ = ["Refinement", "refine"]


@dataclass
class Refinement:
    """Where each given direction went under discovery: start and end (effective directions), their
    cosine, and the hard blowup value before and after."""

    start: Tensor  # [R, d]
    end: Tensor  # [R, d]
    cos_start_end: Tensor  # [R]
    blowup_start: Tensor  # [R]
    blowup_end: Tensor  # [R]
    discovery: Discovery

    def to_dict(self) -> dict:
        return {
            "cos_start_end": self.cos_start_end.tolist(),
            "blowup_start": self.blowup_start.tolist(),
            "blowup_end": self.blowup_end.tolist(),
        }


def refine(subject: Subject, directions: Tensor, config: DiscoverConfig = DiscoverConfig(),
           progress: bool | None = None, **kwargs) -> Refinement:
    """Run discovery from the given directions ``[R, d]`` (e.g. SAE decoder rows, real-other
    directions) and report how far each moved and how much earlier it blows up. ``progress``: bars on
    stderr (``None``: when stderr is a terminal); ``kwargs`` go to ``discover``."""
    directions = check_directions(directions, subject.base.shape[0],
                                  subject.base if config.mode == "sphere" else None, what="direction")
    config = replace(config, init="given", restarts=directions.shape[0], abandon=False, max_points=None, rounds=1)
    found = discover(subject, config, init_directions=directions, progress=progress, **kwargs)
    with torch.no_grad():
        start = effective_directions(directions.to(subject.base.dtype), subject.base, config.mode)
        before = scan(subject, start, config.final_scan_config, progress=progress, desc="refine: before").threshold
        end = found.restart_directions
        after = scan(subject, end, config.final_scan_config, progress=progress, desc="refine: after").threshold
    return Refinement(start=start, end=end, cos_start_end=(start * end).sum(1), blowup_start=before,
                      blowup_end=after, discovery=found)
