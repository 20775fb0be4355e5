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
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Literal

import geoopt
import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .baselines import cov_stats, isotropic
from .blowup import check_temperature, threshold_index, threshold_value
from .configs import ObjectiveConfig, check_bool, check_int, check_number
from .errors import CheckpointError
from .objective import adaptive_grid, flushed_subnormals, sensitivity_objective
from .geometry import check_directions, effective_directions
from .optima import Discovery, cluster_directions
from .scan import ScanConfig, scan
from .subjects import Subject

log = logging.getLogger(__name__)

__all__ = ["DiscoverConfig", "discover", "refine", "Refinement", "NonFiniteOutputError", "load_checkpoint"]

_SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed accepts


class NonFiniteOutputError(RuntimeError):
    """The subject returned NaN or inf during discovery."""


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


def _round_seed(seed: int, round_index: int) -> int:
    """Seed of a round's initial directions: the config's seed for the first, derived ones after."""
    if round_index == 0:
        return seed
    return int(np.random.SeedSequence([seed, round_index]).generate_state(1, dtype=np.uint64)[0] >> 1)


def initial_directions(
    subject: Subject, config: DiscoverConfig, init_directions: Tensor | None, activations: Tensor | None,
    round_index: int = 0, restarts: int | None = None,
) -> Tensor:
    """Starting directions ``[restarts, d]`` of a round (``init='given'`` applies to the first round;
    later rounds draw isotropic or covariance directions from their own seed)."""
    d = subject.base.shape[0]
    dtype = subject.base.dtype
    n = config.restarts if restarts is None else restarts
    seed = _round_seed(config.seed, round_index)
    if config.init == "given" and round_index == 0:
        if init_directions is None:
            raise ValueError("init='given' needs init_directions [restarts, d]")
        x = check_directions(init_directions, d, subject.base if config.mode == "sphere" else None,
                             what="initial direction").to(dtype)
        if x.shape[0] != config.restarts:
            raise ValueError(f"init_directions has {x.shape[0]} rows but restarts={config.restarts}; they must match")
        return (x / x.norm(dim=1, keepdim=True))[:n]
    if config.init == "covariance":
        if activations is None:
            raise ValueError("init='covariance' needs activations [M, d] to estimate the covariance from")
        stats = cov_stats(activations, d)
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, d, generator=g, dtype=torch.float64)
        x = z @ stats.factor.T
        return (x / x.norm(dim=1, keepdim=True)).to(dtype)
    if config.init == "metric":
        return metric_directions(subject, n, seed, config.effect, config.mode)
    return isotropic(n, d, seed=seed, dtype=dtype)


def metric_directions(subject: Subject, n: int, seed: int = 0, effect: str = "kl", mode: str = "sphere") -> Tensor:
    """``n`` unit directions drawn from N(0, H), where H = J^T M J is the effect's second-order growth at
    the base (J: the Jacobian of the output there; M: the effect's Hessian in output space, diag(p) - pp^T
    for ``kl``, the identity for ``l2``, the projection orthogonal to the base output for ``cos``).

    Each is J^T w for one Gaussian w with covariance M: one forward and one backward of the base. Such a
    direction points mostly along what the output is most sensitive to at the base, so a restart started
    there ends in one of the most sensitive optima rather than in whichever basin an isotropic start
    happens to lie in (in sphere mode the base is projected out). Rows without a usable gradient (zero,
    or not finite) are isotropic instead."""
    base = subject.base.detach()
    d = base.shape[0]
    g = torch.Generator().manual_seed(seed)
    x = base[None].repeat(n, 1).requires_grad_(True)
    with torch.enable_grad():
        out = subject.run(x)
        y0 = out[0].detach().double()
        xi = torch.randn(out.shape, generator=g, dtype=torch.float64)
        if effect == "kl":
            a = torch.softmax(y0, -1).sqrt()
            w = a * (xi - (xi @ a)[:, None] * a)
        elif effect == "cos":
            yhat = y0 / y0.norm()
            w = xi - (xi @ yhat)[:, None] * yhat
        else:
            w = xi
        (out * w.to(out.dtype)).sum().backward()
    z = x.grad.detach().double()
    if mode == "sphere":
        b = base.double() / base.double().norm()
        z = z - (z @ b)[:, None] * b
    norms = z.norm(dim=1, keepdim=True)
    usable = (torch.isfinite(norms) & (norms > 0))[:, 0]
    z = torch.where(usable[:, None], z / torch.where(usable[:, None], norms, 1.0),
                    isotropic(n, d, seed=seed, dtype=torch.float64))
    return z.to(base.dtype)


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


def _seed_cost(config: DiscoverConfig) -> int:
    """Points one restart's start costs: one forward and backward at the base for ``init='metric'``."""
    return 1 if config.init == "metric" else 0


def _round_cost(config: DiscoverConfig) -> int:
    """Scan points one restart can cost in a round: its start, its iterations and, if new, its final scan."""
    return _seed_cost(config) + config.iterations * config.scan_steps + config.final_steps


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
    if config.max_points is not None and config.max_points < _round_cost(config):
        raise ValueError(f"max_points={config.max_points} cannot pay for one restart "
                         f"(start + iterations * scan_steps + final_steps = {_round_cost(config)} scan points)")
    ckpt = Path(checkpoint) if checkpoint is not None else None
    state = _new_state(subject, config)
    if resume and ckpt is not None and ckpt.is_file():
        state = load_checkpoint(ckpt, config, (config.restarts, subject.base.shape[0]))
        log.info("resumed from %s at iteration %d (round %d)", ckpt, state["iteration"], state["rounds_done"])

    bar = _Bar(config, state["points"], progress)
    try:
        while state["stop_reason"] is None:
            if state["round"] is None:
                _start_round(subject, config, state, init_directions, activations)
                continue
            done = _iterate(subject, config, state)
            record = state["history"][-1] if state["history"] else {}
            bar.update(state["points"], round=state["round"]["index"], optima=len(state["found"]),
                       obj=f"{record.get('objective_mean', math.nan):.2f}")
            if callback is not None and not done:
                callback(state["iteration"] - 1, record)
            if done:
                _finish_round(subject, config, state)
                bar.update(state["points"], round=state["rounds_done"], optima=len(state["found"]))
                if ckpt is not None:
                    _save_checkpoint(ckpt, state)
            elif ckpt is not None and state["iteration"] % checkpoint_every == 0:
                _save_checkpoint(ckpt, state)
    finally:
        bar.close()
    return _result(config, state)


def _new_state(subject: Subject, config: DiscoverConfig) -> dict:
    d = subject.base.shape[0]
    empty = subject.base.new_zeros((0, d))
    return {
        "config": config.to_dict(), "iteration": 0, "history": [], "points": 0, "stopped_early": False,
        "stop_reason": None, "rounds_done": 0, "round": None,
        # distinct optima so far (in the order found) and their origin
        "found": empty, "found_blowup": torch.zeros(0, dtype=torch.float64),
        "found_round": torch.zeros(0, dtype=torch.long), "found_restart": torch.zeros(0, dtype=torch.long),
        # every finished restart (rows of all finished rounds)
        "restarts": empty, "inits": empty, "restart_blowup": torch.zeros(0, dtype=torch.float64),
        "restart_round": torch.zeros(0, dtype=torch.long), "restart_optimum": torch.zeros(0, dtype=torch.long),
    }


def _start_round(subject, config: DiscoverConfig, state: dict, init_directions, activations) -> None:
    """Size the next round to the budget left and draw its restarts, or set the reason to stop."""
    index = state["rounds_done"]
    limit = config.rounds if config.rounds is not None else (None if config.max_points is not None else 1)
    if limit is not None and index >= limit:
        state["stop_reason"] = "rounds"
        return
    n = config.restarts
    if config.max_points is not None:
        n = min(n, (config.max_points - state["points"]) // _round_cost(config))
        if n < 1:
            state["stop_reason"] = "budget"
            return
    found = state["found"]
    basis = _basis(found)
    if basis is not None and basis.shape[0] >= subject.base.shape[0] - 1:
        state["stop_reason"] = "space exhausted"
        return
    init = initial_directions(subject, config, init_directions, activations, round_index=index, restarts=n)
    state["points"] += n * _seed_cost(config)
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


def _iterate(subject, config: DiscoverConfig, state: dict) -> bool:
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
def _finish_round(subject, config: DiscoverConfig, state: dict) -> None:
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


_CHECKPOINT_KEYS = ("config", "iteration", "history", "points", "rounds_done", "round", "found", "restarts")


def _save_checkpoint(path: Path, state: dict) -> None:
    import io

    from .runio import write_atomic

    buf = io.BytesIO()  # serialised in memory: a full disk is then one clear OSError, not a torch stream error
    torch.save(state, buf)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, buf.getvalue())




def load_checkpoint(path: str | Path, config: DiscoverConfig | None = None, shape: tuple[int, int] | None = None) -> dict:
    """The state saved by ``discover(checkpoint=...)``, checked: ``CheckpointError`` (naming the file) if it
    is missing, empty, truncated or corrupt, or was written for another config (the differing keys named)
    or another width (``shape``: ``(restarts, d)``; the width is checked)."""
    import pickle
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {str(path)!r} is empty (was the disk full when it was written?)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, EOFError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError,
            AttributeError, ImportError, IndexError, KeyError, TypeError) as exc:
        why = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise CheckpointError(f"checkpoint {str(path)!r} is truncated or corrupt ({why}); "
                              "start over with --overwrite") from None
    missing = [k for k in _CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {str(path)!r} is not a sensfind discovery checkpoint (missing {missing})")
    width = state["found"].shape[1] if isinstance(state["found"], Tensor) and state["found"].ndim == 2 else None
    if width is None:
        raise CheckpointError(f"checkpoint {str(path)!r} holds no directions [optima, d]")
    if config is not None and state["config"] != config.to_dict():
        saved = state["config"] if isinstance(state["config"], dict) else {}
        diff = sorted(k for k in set(saved) | set(config.to_dict()) if saved.get(k) != config.to_dict().get(k))
        raise CheckpointError(f"checkpoint {str(path)!r} was written with a different config ({', '.join(diff)} "
                              "differ); cannot resume")
    if shape is not None and width != shape[1]:
        raise CheckpointError(f"checkpoint {str(path)!r} holds directions of width {width}, "
                              f"this run needs {shape[1]}; cannot resume")
    return state



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
    )


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


def refine(subject: Subject, directions: Tensor, config: DiscoverConfig = DiscoverConfig(), **kwargs) -> Refinement:
    """Run discovery from the given directions ``[R, d]`` (e.g. SAE decoder rows, real-other
    directions) and report how far each moved and how much earlier it blows up."""
    directions = check_directions(directions, subject.base.shape[0],
                                  subject.base if config.mode == "sphere" else None, what="direction")
    config = replace(config, init="given", restarts=directions.shape[0], abandon=False, max_points=None, rounds=1)
    found = discover(subject, config, init_directions=directions, **kwargs)
    with torch.no_grad():
        start = effective_directions(directions.to(subject.base.dtype), subject.base, config.mode)
        before = scan(subject, start, config.final_scan_config).threshold
        end = found.restart_directions
        after = scan(subject, end, config.final_scan_config).threshold
    return Refinement(start=start, end=end, cos_start_end=(start * end).sum(1), blowup_start=before,
                      blowup_end=after, discovery=found)
