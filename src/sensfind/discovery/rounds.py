"""One round of discovery, step by step: the state of a run, a round's start, its optimisation steps,
the abandonment of duplicate restarts, and its end (clustering and the fine scans of new optima).

``sensfind.discovery.loop.discover`` drives these; the state is a plain dict so that it can be checkpointed.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import geoopt
import torch
from torch import Tensor

from sensfind.errors import NonFiniteOutputError
from sensfind.core.blowup import threshold_index, threshold_value
from sensfind.core.geometry import effective_directions
from sensfind.discovery.objective import adaptive_grid, sensitivity_objective
from sensfind.discovery.optima import cluster_directions
from sensfind.core.scan import scan
from sensfind.discovery.starts import initial_directions
from sensfind.core.subject import Subject

if TYPE_CHECKING:
    from sensfind.discovery.config import DiscoverConfig

log = logging.getLogger(__name__)

__all__ = ["NonFiniteOutputError", "new_state", "start_round", "iterate", "finish_round", "round_cost", "seed_cost"]


@torch.no_grad()
def _normalize_rows(param) -> None:
    """Scale each restart's Riemannian gradient to unit norm (restarts are independent problems)."""
    g = param.manifold.egrad2rgrad(param, param.grad)
    norms = g.norm(dim=1, keepdim=True)
    param.grad.mul_(torch.where(norms > 0, 1 / norms, torch.zeros_like(norms)))


def _lr_scale(config: DiscoverConfig, d: int) -> float:
    return 1 / math.sqrt(d) if config.optimizer == "adam" else 1.0


def _make_optimizer(param, config: DiscoverConfig):
    lr = config.lr * _lr_scale(config, param.shape[1])
    if config.optimizer == "adam":
        return geoopt.optim.RiemannianAdam([param], lr=lr)
    return geoopt.optim.RiemannianSGD([param], lr=lr, momentum=config.momentum)


def _deflate(x: Tensor, basis: Tensor | None) -> Tensor:
    """Remove from rows ``[R, d]`` their components along the orthonormal rows of ``basis`` ``[k, d]``."""
    if basis is None:
        return x
    return x - (x @ basis.T) @ basis


def _basis(found: Tensor) -> Tensor | None:
    """Orthonormal rows spanning the found optima ``[k, d]`` (``None`` if there are none)."""
    if found.shape[0] == 0:
        return None
    q = torch.linalg.qr(found.double().T).Q.T  # [k, d]
    return q.to(found.dtype)


def seed_cost(config: DiscoverConfig) -> int:
    """Points one restart's start costs: one forward and backward at the base for ``init='metric'``."""
    return 1 if config.init == "metric" else 0


def round_cost(config: DiscoverConfig) -> int:
    """Scan points one restart can cost in a round: its start, its iterations and, if new, its final scan."""
    return seed_cost(config) + config.iterations * config.scan_steps + config.final_steps


def new_state(subject: Subject, config: DiscoverConfig) -> dict:
    """The state of a run before its first round (what a checkpoint holds)."""
    d = subject.base.shape[0]
    empty = subject.base.new_zeros((0, d))
    return {
        "config": config.to_dict(), "iteration": 0, "history": [], "points": 0, "stopped_early": False,
        "stop_reason": None, "rounds_done": 0, "round": None,
        # distinct optima so far (in the order found) and their origin
        "found": empty, "found_blowup": torch.zeros(0, dtype=torch.float64),
        "found_effects": subject.base.new_zeros((0, config.final_steps)),  # each optimum's final fine scan
        "found_round": torch.zeros(0, dtype=torch.long), "found_restart": torch.zeros(0, dtype=torch.long),
        # every finished restart (rows of all finished rounds)
        "restarts": empty, "inits": empty, "restart_blowup": torch.zeros(0, dtype=torch.float64),
        "restart_round": torch.zeros(0, dtype=torch.long), "restart_optimum": torch.zeros(0, dtype=torch.long),
    }


def start_round(subject, config: DiscoverConfig, state: dict, init_directions, activations) -> None:
    """Size the next round to the budget left and draw its restarts, or set the reason to stop."""
    index = state["rounds_done"]
    limit = config.rounds if config.rounds is not None else (None if config.max_points is not None else 1)
    if limit is not None and index >= limit:
        state["stop_reason"] = "rounds"
        return
    n = config.restarts
    if config.max_points is not None:
        n = min(n, (config.max_points - state["points"]) // round_cost(config))
        if n < 1:
            state["stop_reason"] = "budget"
            return
    found = state["found"]
    basis = _basis(found)
    if basis is not None and basis.shape[0] >= subject.base.shape[0] - 1:
        state["stop_reason"] = "space exhausted"
        return
    init = initial_directions(subject, config, init_directions, activations, round_index=index, restarts=n)
    state["points"] += n * seed_cost(config)
    if basis is not None:
        init = _deflate(effective_directions(init, subject.base, config.mode), basis)
        init = init / init.norm(dim=1, keepdim=True)
    param = geoopt.ManifoldParameter(init.clone(), manifold=geoopt.Sphere())
    state["round"] = {
        "index": index, "it": 0, "init": init, "param": param, "optimizer": _make_optimizer(param, config).state_dict(),
        "basis": basis, "alive": torch.ones(n, dtype=torch.bool),
        "current": torch.full((n,), math.inf, dtype=torch.float64), "grids": None, "first_crossed": None,
        "still": 0, "parent_found": torch.full((n,), -1, dtype=torch.long),
        "parent_restart": torch.full((n,), -1, dtype=torch.long),
    }


def iterate(subject, config: DiscoverConfig, state: dict) -> bool:
    """One optimisation step of the current round's live restarts; ``True`` when the round is over."""
    rnd = state["round"]
    it, alive = rnd["it"], rnd["alive"]
    if it >= config.iterations or not alive.any() or rnd["still"] >= config.patience:
        return True
    base = subject.base
    scan_cfg = config.scan_config
    lo, hi = scan_cfg.range
    param = rnd["param"]
    opt = _make_optimizer(param, config)
    opt.load_state_dict(rnd["optimizer"])
    basis = rnd["basis"]
    deflate = basis is not None and it < config.polish_start
    temperature = config.temperature_at(it)
    for group in opt.param_groups:
        group["lr"] = config.round_lr_at(it, basis is not None) * _lr_scale(config, param.shape[1])
    if config.adaptive:
        rnd["grids"] = adaptive_grid(scan_cfg, rnd["current"], rnd["grids"], rnd["first_crossed"],
                                     zoom=config.zoom).to(base.dtype)
    live = alive.nonzero()[:, 0]
    before = param.detach().clone()
    steps = rnd["grids"][live] if config.adaptive else None
    value = sensitivity_objective(subject, param[live], scan_cfg, temperature, steps=steps)
    effects = value.scan.effects
    state["points"] += effects.numel()
    if not torch.isfinite(effects).all():
        bad = live[(~torch.isfinite(effects)).any(dim=1)].tolist()
        raise NonFiniteOutputError(
            f"the subject's output became non-finite at iteration {state['iteration']} for restart(s) {bad} "
            f"of round {rnd['index']}; no directions were saved. Check the subject, or narrow the scan range / lower the lr."
        )
    loss = value.soft.sum() / (hi - lo)
    opt.zero_grad()
    loss.backward()
    with torch.no_grad():
        if deflate:
            param.grad.copy_(_deflate(param.grad, basis))
        if config.normalize:
            _normalize_rows(param)
        opt.step()
        if deflate:
            param.copy_(effective_directions(_deflate(param, basis), base, config.mode))
        e = effects.detach()
        idx = threshold_index(e, config.tau)
        rnd["current"][live] = threshold_value(e, value.scan.steps, config.tau)
        first = torch.zeros_like(alive)
        first[live] = idx == 0
        rnd["first_crossed"] = first
        moved = torch.arccos((before[live] * param.detach()[live]).sum(1).clamp(-1, 1)).max().item()
        if config.abandon:
            _abandon(config, state, base)
    rnd["optimizer"] = opt.state_dict()
    rnd["still"] = rnd["still"] + 1 if moved < config.tol else 0
    if rnd["still"] >= config.patience:
        state["stopped_early"] = True
        log.info("round %d stopped early at iteration %d: no restart moved more than %g rad for %d iterations",
                 rnd["index"], it, config.tol, config.patience)
    current = rnd["current"][live]
    state["history"].append({
        "iteration": state["iteration"], "round": rnd["index"], "round_iteration": it,
        "objective_mean": float(value.soft.detach().mean()), "objective_min": float(value.soft.detach().min()),
        "blowup_median": float(current.median()) if torch.isfinite(current).any() else math.inf,
        "n_reached": int(torch.isfinite(current).sum()), "restarts_scanned": len(live),
        "temperature": temperature, "lr": config.round_lr_at(it, basis is not None), "deflated": deflate,
        "max_move_rad": moved, "points": state["points"], "optima": len(state["found"]),
    })
    rnd["it"] = it + 1
    state["iteration"] += 1
    return False


@torch.no_grad()
def _abandon(config: DiscoverConfig, state: dict, base: Tensor) -> None:
    """Stop restarts within ``cluster_threshold`` of a known optimum or of a live restart that blows up earlier."""
    rnd = state["round"]
    live = rnd["alive"].nonzero()[:, 0]
    u = effective_directions(rnd["param"].detach()[live], base, config.mode)
    found = state["found"]
    if found.shape[0]:
        cos = u @ found.T
        best, k = cos.max(dim=1)
        hit = best >= config.cluster_threshold
        rnd["parent_found"][live[hit]] = k[hit]
        rnd["alive"][live[hit]] = False
        live, u = live[~hit], u[~hit]
    for cluster in cluster_directions(u, rnd["current"][live], config.cluster_threshold):
        for j in cluster[1:]:
            rnd["parent_restart"][live[j]] = live[cluster[0]]
            rnd["alive"][live[j]] = False


@torch.no_grad()
def finish_round(subject, config: DiscoverConfig, state: dict) -> None:
    """Cluster the round's surviving restarts, scan each new distinct optimum finely, and record them."""
    rnd = state["round"]
    base = subject.base
    u = effective_directions(rnd["param"].detach(), base, config.mode)
    n = u.shape[0]
    offset = state["restarts"].shape[0]
    optimum = torch.full((n,), -1, dtype=torch.long)
    optimum[rnd["parent_found"] >= 0] = rnd["parent_found"][rnd["parent_found"] >= 0]
    live = rnd["alive"].nonzero()[:, 0]
    new_reps = []
    for cluster in cluster_directions(u[live], rnd["current"][live], config.cluster_threshold):
        rows = live[cluster]
        found = state["found"]
        if found.shape[0]:
            cos = found @ u[rows[0]]
            k = int(cos.argmax())
            if float(cos[k]) >= config.cluster_threshold:
                optimum[rows] = k
                continue
        new_reps.append(rows)
    if new_reps:
        reps = torch.stack([rows[0] for rows in new_reps])
        result = scan(subject, u[reps], config.final_scan_config)
        if not torch.isfinite(result.effects).all():
            bad = reps[(~torch.isfinite(result.effects)).any(dim=1)].tolist()
            raise NonFiniteOutputError(f"the subject's output is non-finite on the final scan for restart(s) {bad} "
                                       f"of round {rnd['index']}")
        state["points"] += result.effects.numel()
        start = state["found"].shape[0]
        for i, rows in enumerate(new_reps):
            optimum[rows] = start + i
        state["found"] = torch.cat([state["found"], u[reps]])
        state["found_blowup"] = torch.cat([state["found_blowup"], result.threshold.double()])
        if "found_effects" in state:  # a checkpoint from before the curves were kept has none
            state["found_effects"] = torch.cat([state["found_effects"], result.effects.to(state["found_effects"].dtype)])
        state["found_round"] = torch.cat([state["found_round"], torch.full((len(reps),), rnd["index"])])
        state["found_restart"] = torch.cat([state["found_restart"], reps + offset])
    # restarts abandoned for a concurrent restart share its optimum (follow the chain)
    parent = rnd["parent_restart"]
    for i in range(n):
        j = i
        while optimum[j] < 0 and parent[j] >= 0:
            j = int(parent[j])
        optimum[i] = optimum[j]
    state["restarts"] = torch.cat([state["restarts"], u])
    state["inits"] = torch.cat([state["inits"], rnd["init"]])
    state["restart_blowup"] = torch.cat([state["restart_blowup"], rnd["current"]])
    state["restart_round"] = torch.cat([state["restart_round"], torch.full((n,), rnd["index"])])
    state["restart_optimum"] = torch.cat([state["restart_optimum"], optimum])
    state["rounds_done"] += 1
    state["round"] = None
    log.info("round %d: %d new optima (%d in all), %d scan points spent", rnd["index"], len(new_reps),
             state["found"].shape[0], state["points"])
    if not new_reps:
        state["stop_reason"] = "no new optima"

