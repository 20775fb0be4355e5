"""Discovery: optimise directions on the unit sphere to minimise the soft blowup distance, in rounds.

A round optimises a batch of restarts, one ``geoopt.ManifoldParameter`` ``[restarts, d]`` on
``geoopt.Sphere()`` moved by ``RiemannianSGD`` (or ``RiemannianAdam``); one iteration is one batched
scan of every live restart on its own adaptive grid (``sensfind.discovery.objective``), a backward pass and a
Riemannian step. The restarts that end the round in no known optimum's basin are clustered, each new
distinct optimum gets a fine full-range scan for its hard blowup value, and the next round starts.

Spending a budget on *new* optima (measured on toys of ``sensfind.core.toy``, see the README):

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

This module holds the settings and the loop; a round's steps are in ``sensfind.discovery.rounds``, the starts in
``sensfind.discovery.starts``, checkpoints in ``sensfind.discovery.checkpoint`` and ``refine`` in ``sensfind.discovery.refinement``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from sensfind.discovery.starts import initial_directions
from sensfind.discovery.checkpoint import load_checkpoint, save_checkpoint
from sensfind.discovery.objective import flushed_subnormals
from sensfind.discovery.optima import Discovery
from sensfind.discovery.rounds import finish_round, iterate, new_state, round_cost, start_round
from sensfind.discovery.config import DiscoverConfig
from sensfind.core.subject import Subject
from sensfind.progress import progress_bar

log = logging.getLogger(__name__)

__all__ = ["discover"]

class _Bar:
    """Progress over points (of the budget when there is one, else of the most the rounds can cost), with
    the round and optima found so far."""

    def __init__(self, config: DiscoverConfig, points: int, progress: bool | None):
        total = config.max_points or (config.rounds or 1) * config.restarts * round_cost(config)
        self.bar = progress_bar(total, "discover", progress, initial=points)

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
    progress: bool | None = None,
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
        progress: show a progress bar on stderr (points spent of the budget, round, optima found so far);
            ``None``: when stderr is a terminal.
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


