"""Discovery: optimise directions on the unit sphere to minimise the soft blowup distance, in rounds.

A round optimises a batch of restarts, one ``geoopt.ManifoldParameter`` ``[restarts, d]`` on
``geoopt.Sphere()`` moved by ``RiemannianSGD`` (or ``RiemannianAdam``); one iteration is one batched
scan of every live restart on its own adaptive grid (``sensfind.objective``), a backward pass and a
Riemannian step. The restarts that end the round in no known optimum's basin are clustered, each new
distinct optimum gets a fine full-range scan for its hard blowup value, and the next round starts.

Spending a budget on *new* optima (measured on toys of ``sensfind.toy``, see the README):

* **Deflation.** From the second round on, restarts start orthogonal to every optimum found so far and
  are optimised inside that orthogonal complement (the gradient's component along the found optima is
  removed before it is normalised, and the point is projected back after each step). Without it, the
  basins of a few optima swallow almost every restart: on a toy with 768 features in 256 dimensions,
  64 isotropic restarts (115k scan points) reached 2 to 5 distinct features, 3 of them the (least
  sensitive) switch-offs of the active features, whose basins hold every isotropic direction.
* **Polish.** The optimum of the deflated objective is a feature's part orthogonal to the found optima,
  not the feature (cos ≈ 0.87 once ~120 optima are known in 256 dimensions), so the last
  ``polish_iterations`` iterations of a deflated round run unconstrained with a fresh learning-rate decay
  from ``polish_lr``; without it a third of the late optima missed their feature.
* **Starts.** Every round's restarts start from ``metric_directions``: Gaussian directions with the
  covariance J^T M J of the effect's growth at the base (one forward and backward per restart), then
  deflated. An isotropic start first blows up where the active features switch off (~58° on the toy,
  the same for every direction), and which feature's basin it then enters is decided there, where a
  feature's distance to its threshold counts little: 20 of ~120 optima found were among the 20 most
  sensitive only 35-85% of the time. The metric weights each direction by how fast the output already
  moves along it at the base, which is largest for the features nearest their thresholds: recall of
  the 20 most sensitive became 1.0 on five toy seeds at the same number of distinct features.
* **Abandonment.** A restart that comes within ``cluster_threshold`` of a known optimum, or of a
  concurrent restart that blows up earlier, would only duplicate it: it stops being scanned.
* **Budget.** ``max_points`` caps the scan points; a round is only started with as many restarts as
  the budget left can pay for in full, and discovery stops when a round finds nothing new.

This module holds the settings and the loop; a round's steps are in ``sensfind.rounds``, the starts in
``sensfind.starts``, checkpoints in ``sensfind.checkpoint`` and ``refine`` in ``sensfind.refinement``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .blowup import check_temperature
from .checkpoint import load_checkpoint, save_checkpoint
from .configs import ObjectiveConfig, check_bool, check_int, check_number
from .objective import flushed_subnormals
from .optima import Discovery
from .rounds import NonFiniteOutputError, finish_round, iterate, new_state, round_cost, start_round
from .scan import ScanConfig
from .starts import initial_directions, metric_directions  # noqa: F401  (re-exported: old import path)
from .subjects import Subject

log = logging.getLogger(__name__)

__all__ = ["DiscoverConfig", "discover", "refine", "Refinement", "NonFiniteOutputError", "load_checkpoint"]

_SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed accepts

# the old private names, kept for callers that imported them from here
_round_cost = round_cost
_save_checkpoint = save_checkpoint


@dataclass(frozen=True)
class DiscoverConfig(ObjectiveConfig):
    """Settings of a discovery run. Every default works on any subject.

    Objective (``effect``, ``tau``, ``mode``, ``start`` and ``stop`` are documented and checked by
    :class:`~sensfind.configs.ObjectiveConfig`):
        temperature: softness of the threshold in the soft blowup distance (effect units).
        temperature_final: anneal geometrically to this by the last iteration (``None``: constant).
        scan_steps: scan points per restart per iteration.
        adaptive: zoom each restart's grid around its current blowup (``objective.adaptive_grid``).
        zoom: half-width of the adaptive window relative to the current blowup value.
    Rounds and budget:
        max_points: budget of scan points (``None``: none). Discovery stops before exceeding it, or
            earlier when a round finds no new optimum; ``Discovery.points_evaluated`` is what it spent.
        rounds: maximum number of rounds (``None``: as many as ``max_points`` allows; one round when
            no budget is set either).
        polish_iterations: the last iterations of each deflated round (every round after the first;
            at most half of its iterations) run without deflation, so that each restart settles on the optimum itself rather than on
            its part orthogonal to the optima found before.
        polish_lr: learning rate the polish phase decays from (to ``lr_final``).
    Optimiser (per round):
        restarts: directions optimised together as one batch in each round.
        iterations: maximum optimisation steps per round (polish included).
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
        tol, patience: stop early once no restart moved more than ``tol`` radians for ``patience``
            consecutive iterations.
    Initialisation and results:
        init: ``metric`` (``metric_directions``: drawn from the effect's second-order growth at the
            base, one forward and backward per restart, counted in the budget) | ``isotropic`` |
            ``covariance`` (needs activations) | ``given`` (needs directions; the first round, later
            rounds are isotropic).
        seed: seeds the initial directions of every round.
        cluster_threshold: cosine at which two directions count as one optimum.
        abandon: stop optimising (and scanning) a restart once it comes within ``cluster_threshold`` of
            a known optimum or of a concurrent restart that blows up earlier: it would only duplicate it.
        final_steps: points of the fine full-range scan that measures each new optimum's blowup.
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
            check_int(name, getattr(self, name), minimum)

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


class _Bar:
    """Progress over points (of the budget when there is one), with the round and optima found so far."""

    def __init__(self, config: DiscoverConfig, points: int, enabled: bool):
        self.bar = tqdm(total=config.max_points, initial=points, disable=not enabled, desc="discover", unit="pt")

    def update(self, points: int, **postfix) -> None:
        self.bar.update(points - self.bar.n)
        self.bar.set_postfix(**postfix)

    def close(self) -> None:
        self.bar.close()


@flushed_subnormals()
def discover(
    subject: Subject,
    config: DiscoverConfig = DiscoverConfig(),
    *,
    init_directions: Tensor | None = None,
    activations: Tensor | None = None,
    progress: bool = False,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 10,
    resume: bool = False,
    callback: Callable[[int, dict], None] | None = None,
) -> Discovery:
    """Find distinct directions along which ``subject``'s output blows up earliest, in rounds.

    Args:
        subject: any ``Subject`` (``base [d]``, ``run([B, d]) -> [B, n_out]``).
        config: ``DiscoverConfig``; ``max_points`` sets the budget.
        init_directions: ``[restarts, d]`` starting directions of the first round for ``init='given'``.
        activations: ``[M, d]`` real activations for ``init='covariance'``.
        progress: show a progress bar (points spent of the budget, round, optima found so far).
        checkpoint: file to save the state to every ``checkpoint_every`` iterations and after each round.
        resume: continue from ``checkpoint`` if it exists (the result equals an uninterrupted run's).
        callback: called as ``callback(iteration, record)`` after each iteration (iterations counted
            over all rounds; ``record`` holds the round, points and optima so far); it may raise to stop.
    """
    if not isinstance(config, DiscoverConfig):
        raise TypeError(f"config must be a DiscoverConfig, got {type(config).__name__}")
    if not isinstance(checkpoint_every, int) or isinstance(checkpoint_every, bool) or checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be an integer >= 1 (iterations), got {checkpoint_every!r}")
    if config.init in ("given", "covariance"):
        initial_directions(subject, config, init_directions, activations)  # validates before any work
    if config.max_points is not None and config.max_points < round_cost(config):
        raise ValueError(f"max_points={config.max_points} cannot pay for one restart "
                         f"(start + iterations * scan_steps + final_steps = {round_cost(config)} scan points)")
    ckpt = Path(checkpoint) if checkpoint is not None else None
    state = new_state(subject, config)
    if resume and ckpt is not None and ckpt.is_file():
        state = load_checkpoint(ckpt, config, (config.restarts, subject.base.shape[0]))
        log.info("resumed from %s at iteration %d (round %d)", ckpt, state["iteration"], state["rounds_done"])

    bar = _Bar(config, state["points"], progress)
    try:
        while state["stop_reason"] is None:
            if state["round"] is None:
                start_round(subject, config, state, init_directions, activations)
                continue
            done = iterate(subject, config, state)
            record = state["history"][-1] if state["history"] else {}
            bar.update(state["points"], round=state["round"]["index"], optima=len(state["found"]),
                       obj=f"{record.get('objective_mean', math.nan):.2f}")
            if callback is not None and not done:
                callback(state["iteration"] - 1, record)
            if done:
                finish_round(subject, config, state)
                bar.update(state["points"], round=state["rounds_done"], optima=len(state["found"]))
                if ckpt is not None:
                    save_checkpoint(ckpt, state)
            elif ckpt is not None and state["iteration"] % checkpoint_every == 0:
                save_checkpoint(ckpt, state)
    finally:
        bar.close()
    return _result(config, state)


def _result(config: DiscoverConfig, state: dict) -> Discovery:
    """The distinct optima, most sensitive first, with where each came from."""
    order = torch.argsort(state["found_blowup"], stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order))
    restart_optimum = state["restart_optimum"]
    members = [[] for _ in range(len(order))]
    for i, k in enumerate(restart_optimum.tolist()):
        if k >= 0:
            members[int(rank[k])].append(i)
    for m, first in zip(members, state["found_restart"][order].tolist()):
        m.sort(key=lambda i: (i != first, i))  # the restart that found an optimum comes first
    return Discovery(
        directions=state["found"][order].contiguous(),
        blowup_deg=state["found_blowup"][order],
        counts=torch.tensor([len(m) for m in members], dtype=torch.long),
        members=members,
        restart_directions=state["restarts"],
        restart_blowup=state["restart_blowup"],
        init_directions=state["inits"],
        history=state["history"],
        config=config.to_dict(),
        points_evaluated=state["points"],
        stopped_early=state["stopped_early"],
        found_round=state["found_round"][order],
        found_restart=state["found_restart"][order],
        restart_round=state["restart_round"],
        rounds_run=state["rounds_done"],
        stop_reason=state["stop_reason"],
        final_effects=state["found_effects"][order] if "found_effects" in state else None,
    )


# refine runs discover, so its module imports this one: re-exported last, once discover exists
from .refinement import Refinement, refine  # noqa: E402
