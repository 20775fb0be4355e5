"""The settings of a discovery run: :class:`DiscoverConfig` with its learning-rate and temperature
schedules (cosine decays, a fresh one for a deflated round's polish phase)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

from sensfind.core.objective_config import ObjectiveConfig
from sensfind.configs import check_bool, check_int, check_number
from sensfind.core.blowup import check_temperature
from sensfind.core.scan import ScanConfig

__all__ = ["DiscoverConfig"]

_SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed accepts
# upper bounds of the counts (documented with each field): memory and days of work, never an overflow
_LIMITS = {"restarts": 4096, "iterations": 10_000, "scan_steps": 1024, "final_steps": 100_000, "patience": 10_000,
           "polish_iterations": 10_000, "max_points": 10**9, "rounds": 10_000}


@dataclass(frozen=True)
class DiscoverConfig(ObjectiveConfig):
    """Settings of a discovery run. Every default works on any subject.

    Objective (``effect``, ``tau``, ``mode``, ``start`` and ``stop`` are documented and checked by
    :class:`~sensfind.configs.ObjectiveConfig`):
        temperature: softness of the threshold in the soft blowup distance (effect units).
        temperature_final: anneal geometrically to this by the last iteration (``None``: constant).
        scan_steps: scan points per restart per iteration (at most 1024: restarts x scan_steps rows run as
            one batch with gradients).
        adaptive: zoom each restart's grid around its current blowup (``objective.adaptive_grid``).
        zoom: half-width of the adaptive window relative to the current blowup value.
    Rounds and budget:
        max_points: budget of scan points (``None``: none; at most 1000000000, days of CPU time). Discovery
            stops before exceeding it, or earlier when a round finds no new optimum;
            ``Discovery.points_evaluated`` is what it spent.
        rounds: maximum number of rounds (``None``: as many as ``max_points`` allows; one round when
            no budget is set either; at most 10000).
        polish_iterations: the last iterations of each deflated round (every round after the first;
            at most half of its iterations) run without deflation, so that each restart settles on the optimum itself rather than on
            its part orthogonal to the optima found before (at most 10000).
        polish_lr: learning rate the polish phase decays from (to ``lr_final``).
    Optimiser (per round):
        restarts: directions optimised together as one batch in each round (at most 4096: memory).
        iterations: maximum optimisation steps per round (polish included; at most 10000: hours per round).
        optimizer: ``adam`` (RiemannianAdam) or ``sgd`` (RiemannianSGD).
        lr: learning rate. For Adam it is divided by sqrt(d) internally, because Adam moves every
            coordinate by about lr: the direction then turns by about ``lr`` radians per step whatever
            the width. For SGD it is used as given.
        lr_final: cosine-decay the learning rate to this by the last iteration (``None``: constant).
        momentum: RiemannianSGD momentum.
        normalize: scale each restart's Riemannian gradient to unit norm before the step, so that SGD
            turns every direction by ``lr`` radians whatever the scale of the effect. With it, plain
            RiemannianSGD is the default: on the toy it brings every restart to a planted feature,
            while Adam's per-coordinate scaling (which ignores the sphere's isotropy) stalls far from them.
        tol: stop early once no restart moved more than this many radians for ``patience`` consecutive
            iterations.
        patience: consecutive iterations without a restart moving more than ``tol`` radians after which
            a round stops early (at most 10000).
    Initialisation and results:
        init: ``metric`` (``metric_directions``: drawn from the effect's second-order growth at the
            base, one forward and backward per restart, counted in the budget) | ``isotropic`` |
            ``covariance`` (needs activations) | ``given`` (needs directions; the first round, later
            rounds are isotropic).
        seed: seeds the initial directions of every round.
        cluster_threshold: cosine at which two directions count as one optimum.
        abandon: stop optimising (and scanning) a restart once it comes within ``cluster_threshold`` of
            a known optimum or of a concurrent restart that blows up earlier: it would only duplicate it.
        final_steps: points of the fine full-range scan that measures each new optimum's blowup (at most
            100000).
    """

    temperature: float = 0.05
    temperature_final: float | None = None
    scan_steps: int = 16
    adaptive: bool = True
    zoom: float = 0.5
    max_points: int | None = None
    rounds: int | None = None
    polish_iterations: int = 10
    polish_lr: float = 0.05
    restarts: int = 32
    iterations: int = 35
    optimizer: Literal["adam", "sgd"] = "sgd"
    lr: float = 0.1
    lr_final: float | None = 0.005
    momentum: float = 0.5
    normalize: bool = True
    tol: float = 1e-4
    patience: int = 5
    init: Literal["metric", "isotropic", "covariance", "given"] = "metric"
    seed: int = 0
    cluster_threshold: float = 0.9
    abandon: bool = True
    final_steps: int = 361

    def __post_init__(self):
        def positive_int(name, minimum=1):
            check_int(name, getattr(self, name), minimum, maximum=_LIMITS[name])

        def finite(name, lo=None, hi=None, lo_open=False):
            check_number(name, getattr(self, name), lo, hi, lo_open=lo_open)

        positive_int("restarts")
        positive_int("iterations", 0)
        positive_int("scan_steps", 2)
        positive_int("final_steps", 2)
        positive_int("patience")
        positive_int("polish_iterations", 0)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not _SEED_RANGE[0] <= self.seed <= _SEED_RANGE[1]:
            raise ValueError(f"seed must be an integer in [{_SEED_RANGE[0]}, {_SEED_RANGE[1]}], got {self.seed!r}")
        if self.max_points is not None:
            positive_int("max_points")
        if self.rounds is not None:
            positive_int("rounds")
        super().__post_init__()  # effect, tau, mode, range
        check_temperature(self.temperature)
        if self.temperature_final is not None:
            check_temperature(self.temperature_final)
        finite("lr", 0, lo_open=True)
        if self.lr_final is not None:
            finite("lr_final", 0, lo_open=True)
        finite("momentum", 0, 1)
        finite("tol", 0)
        finite("polish_lr", 0, lo_open=True)
        finite("zoom", 0, 1, lo_open=True)
        finite("cluster_threshold", 0, 1, lo_open=True)
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if self.init not in ("metric", "isotropic", "covariance", "given"):
            raise ValueError(f"init must be 'metric', 'isotropic', 'covariance' or 'given', got {self.init!r}")
        for name in ("adaptive", "normalize", "abandon"):
            check_bool(name, getattr(self, name))

    @property
    def scan_config(self) -> ScanConfig:
        return ScanConfig(mode=self.mode, start=self.start, stop=self.stop, steps=self.scan_steps,
                          effect=self.effect, tau=self.tau)

    @property
    def final_scan_config(self) -> ScanConfig:
        return replace(self.scan_config, steps=self.final_steps)

    def temperature_at(self, iteration: int) -> float:
        if self.temperature_final is None or self.iterations <= 1:
            return self.temperature
        frac = iteration / (self.iterations - 1)
        return self.temperature * (self.temperature_final / self.temperature) ** frac

    def lr_at(self, iteration: int) -> float:
        """Learning rate at ``iteration`` of a round without deflation (the first)."""
        return self._cosine(self.lr, iteration, self.iterations)

    @property
    def polish_start(self) -> int:
        """Iteration of a deflated round at which its polish phase starts."""
        return self.iterations - min(self.polish_iterations, self.iterations // 2)

    def round_lr_at(self, iteration: int, deflated: bool) -> float:
        """Learning rate at ``iteration`` of a round: one cosine decay, or for a deflated round one
        over the deflated phase and a fresh one from ``polish_lr`` over the polish phase."""
        if not deflated:
            return self.lr_at(iteration)
        p0 = self.polish_start
        if iteration < p0:
            return self._cosine(self.lr, iteration, p0)
        return self._cosine(self.polish_lr, iteration - p0, self.iterations - p0)

    def _cosine(self, lr: float, iteration: int, n: int) -> float:
        if self.lr_final is None or n <= 1:
            return lr
        frac = iteration / (n - 1)
        return self.lr_final + (lr - self.lr_final) * 0.5 * (1 + math.cos(math.pi * frac))

    # to_dict / from_dict (strict: unknown keys are named with the allowed ones) come from Config
