"""The objective's settings, declared, documented and checked once and inherited:
:class:`EffectConfig` (``effect``, ``tau``; the comparison's config) and :class:`ObjectiveConfig` (those
plus ``mode``, ``start``, ``stop``; the scan's and discovery's configs). A subclass's dict stays flat.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sensfind.configs import Config
from sensfind.core.blowup import check_tau
from sensfind.core.effects import EffectName, get_effect
from sensfind.core.geometry import Mode

__all__ = ["EffectConfig", "ObjectiveConfig"]


@dataclass(frozen=True)
class EffectConfig(Config):
    """What is measured along a direction, and when it counts as blown up.

    Attributes:
        effect: ``kl`` (next-token KL, nats), ``l2`` or ``cos`` (distance of output vectors).
        tau: effect threshold defining "blown up" (same units as the effect: nats for ``kl``); the
            threshold step of a direction is where its effect first reaches it.
    """

    effect: EffectName = "kl"
    tau: float = 0.5

    def __post_init__(self):
        get_effect(self.effect)
        check_tau(self.tau)


@dataclass(frozen=True)
class ObjectiveConfig(EffectConfig):
    """The effect and threshold, and the path and range along which a direction is scanned.

    Attributes:
        mode: ``sphere`` (slerp, norm kept; steps are degrees) or ``straight`` (steps are α).
        start: first step of the scan. ``None``: 0 (degrees for sphere, α for straight).
        stop: last step of the scan. ``None`` means the mode's default: 180° for sphere, 1 for straight
            (relative), 50 for straight (absolute).
    """

    mode: Mode = "sphere"
    start: float | None = None
    stop: float | None = None

    scale = "relative"  # straight mode's step scale; ScanConfig makes it a field

    def __post_init__(self):
        if self.mode not in ("sphere", "straight"):
            raise ValueError(f"mode must be 'sphere' or 'straight', got {self.mode!r}")
        super().__post_init__()
        lo, hi = self.range
        for name, v in (("start", lo), ("stop", hi)):
            if not math.isfinite(v):
                raise ValueError(f"{name} must be finite, got {v!r}")
        if not lo < hi:
            raise ValueError(f"start must be < stop, got start={lo} stop={hi}")
        if lo < 0:
            raise ValueError(f"start must be >= 0, got {lo}")
        if self.mode == "sphere" and hi > 180:
            raise ValueError(f"sphere-mode angles are in degrees within [0, 180], got stop={hi}")

    @property
    def range(self) -> tuple[float, float]:
        """(start, stop) with the mode's defaults filled in."""
        if self.mode == "sphere":
            default = (0.0, 180.0)
        else:
            default = (0.0, 1.0) if self.scale == "relative" else (0.0, 50.0)
        lo = default[0] if self.start is None else float(self.start)
        hi = default[1] if self.stop is None else float(self.stop)
        return lo, hi

    @property
    def unit(self) -> str:
        return "deg" if self.mode == "sphere" else ("alpha (x |x0|)" if self.scale == "relative" else "alpha")

    @property
    def axis_label(self) -> str:
        """Label for the step axis of a figure."""
        return "angle θ (deg)" if self.mode == "sphere" else f"step α ({self.unit})"
