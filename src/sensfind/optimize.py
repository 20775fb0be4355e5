"""Discovery: optimise directions on the unit sphere to minimise the soft blowup distance.

All restarts are one ``geoopt.ManifoldParameter`` ``[restarts, d]`` on ``geoopt.Sphere()``, moved by
``RiemannianAdam`` or ``RiemannianSGD``; one iteration is one batched scan of every restart on its
own adaptive grid (``sensfind.objective``), a backward pass, and a Riemannian step. After the loop,
every restart gets a fine full-range scan for its hard blowup value, and the restarts are clustered
into distinct optima (``sensfind.optima``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Callable, Literal

import geoopt
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .baselines import cov_stats, isotropic
from .blowup import check_tau, check_temperature, threshold_index, threshold_value
from .effects import get_effect
from .errors import CheckpointError
from .objective import adaptive_grid, sensitivity_objective
from .optima import Discovery, cluster_directions, effective_directions
from .scan import ScanConfig, check_directions, scan
from .subjects import Subject

log = logging.getLogger(__name__)

__all__ = ["DiscoverConfig", "discover", "refine", "Refinement", "NonFiniteOutputError", "load_checkpoint"]

_SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed accepts


class NonFiniteOutputError(RuntimeError):
    """The subject returned NaN or inf during discovery."""


@dataclass(frozen=True)
class DiscoverConfig:
    """Settings of a discovery run. Every default works on any subject.

    Objective:
        tau: effect threshold defining "blown up" (nats for ``kl``).
        temperature: softness of the threshold in the soft blowup distance (effect units).
        temperature_final: anneal geometrically to this by the last iteration (``None``: constant).
        mode: ``sphere`` (angles, norm kept) or ``straight``.
        effect: ``kl`` | ``l2`` | ``cos``.
        scan_steps: scan points per restart per iteration.
        start, stop: range of the scan (``None``: the mode's default, 0–180° for sphere).
        adaptive: zoom each restart's grid around its current blowup (``objective.adaptive_grid``).
        zoom: half-width of the adaptive window relative to the current blowup value.
    Optimiser:
        restarts: directions optimised together as one batch.
        iterations: maximum optimisation steps.
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
        diversity: weight of a penalty on positive pairwise cosines between restarts (0: off).
    Initialisation and results:
        init: ``isotropic`` | ``covariance`` (needs activations) | ``given`` (needs directions).
        seed: seeds the initial directions.
        cluster_threshold: cosine at which two converged directions count as one optimum.
        final_steps: points of the fine full-range scan that measures each result's blowup.
    """

    tau: float = 0.5
    temperature: float = 0.05
    temperature_final: float | None = None
    mode: Literal["sphere", "straight"] = "sphere"
    effect: Literal["kl", "l2", "cos"] = "kl"
    scan_steps: int = 24
    start: float | None = None
    stop: float | None = None
    adaptive: bool = True
    zoom: float = 0.5
    restarts: int = 16
    iterations: int = 60
    optimizer: Literal["adam", "sgd"] = "sgd"
    lr: float = 0.1
    lr_final: float | None = 0.005
    momentum: float = 0.5
    normalize: bool = True
    tol: float = 1e-4
    patience: int = 5
    diversity: float = 0.0
    init: Literal["isotropic", "covariance", "given"] = "isotropic"
    seed: int = 0
    cluster_threshold: float = 0.9
    final_steps: int = 361

    def __post_init__(self):
        def positive_int(name, minimum=1):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {v!r}")

        def finite(name, lo=None, hi=None, lo_open=False):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
            if lo is not None and (v <= lo if lo_open else v < lo):
                raise ValueError(f"{name} must be {'>' if lo_open else '>='} {lo}, got {v!r}")
            if hi is not None and v > hi:
                raise ValueError(f"{name} must be <= {hi}, got {v!r}")

        positive_int("restarts")
        positive_int("iterations", 0)
        positive_int("scan_steps", 2)
        positive_int("final_steps", 2)
        positive_int("patience")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not _SEED_RANGE[0] <= self.seed <= _SEED_RANGE[1]:
            raise ValueError(f"seed must be an integer in [{_SEED_RANGE[0]}, {_SEED_RANGE[1]}], got {self.seed!r}")
        check_tau(self.tau)
        check_temperature(self.temperature)
        if self.temperature_final is not None:
            check_temperature(self.temperature_final)
        finite("lr", 0, lo_open=True)
        if self.lr_final is not None:
            finite("lr_final", 0, lo_open=True)
        finite("momentum", 0, 1)
        finite("tol", 0)
        finite("diversity", 0)
        finite("zoom", 0, 1, lo_open=True)
        finite("cluster_threshold", 0, 1, lo_open=True)
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if self.init not in ("isotropic", "covariance", "given"):
            raise ValueError(f"init must be 'isotropic', 'covariance' or 'given', got {self.init!r}")
        for name in ("adaptive", "normalize"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        get_effect(self.effect)
        self.scan_config  # validates mode, range

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
        if self.lr_final is None or self.iterations <= 1:
            return self.lr
        frac = iteration / (self.iterations - 1)
        return self.lr_final + (self.lr - self.lr_final) * 0.5 * (1 + math.cos(math.pi * frac))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DiscoverConfig":
        if not isinstance(d, dict):
            raise TypeError(f"DiscoverConfig.from_dict needs a dict of field -> value, got {type(d).__name__}")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown DiscoverConfig field(s) {unknown}; allowed: {sorted(names)}")
        return cls(**d)


def initial_directions(
    subject: Subject, config: DiscoverConfig, init_directions: Tensor | None, activations: Tensor | None
) -> Tensor:
    d = subject.base.shape[0]
    dtype = subject.base.dtype
    if config.init == "given":
        if init_directions is None:
            raise ValueError("init='given' needs init_directions [restarts, d]")
        x = check_directions(init_directions, d, subject.base if config.mode == "sphere" else None,
                             what="initial direction").to(dtype)
        if x.shape[0] != config.restarts:
            raise ValueError(f"init_directions has {x.shape[0]} rows but restarts={config.restarts}; they must match")
        return x / x.norm(dim=1, keepdim=True)
    if config.init == "covariance":
        if activations is None:
            raise ValueError("init='covariance' needs activations [M, d] to estimate the covariance from")
        stats = cov_stats(activations, d)
        g = torch.Generator().manual_seed(config.seed)
        z = torch.randn(config.restarts, d, generator=g, dtype=torch.float64)
        x = z @ stats.factor.T
        return (x / x.norm(dim=1, keepdim=True)).to(dtype)
    return isotropic(config.restarts, d, seed=config.seed, dtype=dtype)


def _diversity_penalty(u: Tensor) -> Tensor:
    if u.shape[0] < 2:
        return u.new_zeros(())
    cos = u @ u.T
    off = cos - torch.diag(torch.diag(cos))
    return off.clamp(min=0).pow(2).sum() / (u.shape[0] * (u.shape[0] - 1))


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
    """Find directions along which ``subject``'s output blows up earliest.

    Args:
        subject: any ``Subject`` (``base [d]``, ``run([B, d]) -> [B, n_out]``).
        config: ``DiscoverConfig``.
        init_directions: ``[restarts, d]`` starting directions for ``init='given'`` (refinement).
        activations: ``[M, d]`` real activations for ``init='covariance'``.
        progress: show a progress bar.
        checkpoint: file to save the optimiser state to every ``checkpoint_every`` iterations.
        resume: continue from ``checkpoint`` if it exists.
        callback: called as ``callback(iteration, record)`` after each iteration (e.g. for pruning);
            it may raise to stop the run.
    """
    if not isinstance(config, DiscoverConfig):
        raise TypeError(f"config must be a DiscoverConfig, got {type(config).__name__}")
    if not isinstance(checkpoint_every, int) or isinstance(checkpoint_every, bool) or checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be an integer >= 1 (iterations), got {checkpoint_every!r}")
    base = subject.base
    scan_cfg = config.scan_config
    lo, hi = scan_cfg.range
    span = hi - lo

    start_iter, history = 0, []
    current = torch.full((config.restarts,), math.inf, dtype=torch.float64)
    grids, first_crossed = None, None
    init = initial_directions(subject, config, init_directions, activations)
    param = geoopt.ManifoldParameter(init.clone(), manifold=geoopt.Sphere())
    opt = _make_optimizer(param, config)
    still, points = 0, 0
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if resume and ckpt is not None and ckpt.is_file():
        state = load_checkpoint(ckpt, config, tuple(param.shape))
        with torch.no_grad():
            param.copy_(state["param"])
        opt.load_state_dict(state["optimizer"])
        start_iter, history, current = state["iteration"], state["history"], state["current"]
        grids, first_crossed, still, points = state["grids"], state["first_crossed"], state["still"], state["points"]
        init = state["init"]
        log.info("resumed from %s at iteration %d", ckpt, start_iter)

    stopped_early = False
    bar = tqdm(range(start_iter, config.iterations), initial=start_iter, total=config.iterations,
               disable=not progress, desc="discover", unit="it")
    for it in bar:
        temperature = config.temperature_at(it)
        for group in opt.param_groups:
            group["lr"] = config.lr_at(it) * _lr_scale(config, param.shape[1])
        steps = None
        if config.adaptive:
            grids = adaptive_grid(scan_cfg, current, grids, first_crossed, zoom=config.zoom).to(base.dtype)
            steps = grids
        before = param.detach().clone()
        value = sensitivity_objective(subject, param, scan_cfg, temperature, steps=steps)
        effects = value.scan.effects
        points += effects.numel()
        if not torch.isfinite(effects).all():
            bad = (~torch.isfinite(effects)).any(dim=1).nonzero()[:, 0].tolist()
            raise NonFiniteOutputError(
                f"the subject's output became non-finite at iteration {it} for restart(s) {bad}; "
                "no directions were saved. Check the subject, or narrow the scan range / lower the lr."
            )
        loss = value.soft.sum() / span
        if config.diversity > 0:
            u_eff = effective_directions(param, base, config.mode)
            loss = loss + config.diversity * config.restarts * _diversity_penalty(u_eff)
        opt.zero_grad()
        loss.backward()
        if config.normalize:
            _normalize_rows(param)
        opt.step()
        with torch.no_grad():
            idx = threshold_index(effects.detach(), config.tau)
            current = threshold_value(effects.detach(), value.scan.steps, config.tau)
            first_crossed = idx == 0
            moved = torch.arccos((before * param.detach()).sum(1).clamp(-1, 1)).max().item()
        record = {
            "iteration": it,
            "objective_mean": float(value.soft.detach().mean()),
            "objective_min": float(value.soft.detach().min()),
            "blowup_median": float(current.median()) if torch.isfinite(current).any() else math.inf,
            "n_reached": int(torch.isfinite(current).sum()),
            "temperature": temperature,
            "lr": config.lr_at(it),
            "max_move_rad": moved,
            "points": points,
        }
        history.append(record)
        bar.set_postfix(obj=f"{record['objective_mean']:.2f}", move=f"{moved:.1e}")
        if callback is not None:
            callback(it, record)
        still = still + 1 if moved < config.tol else 0
        if ckpt is not None and ((it + 1) % checkpoint_every == 0 or it + 1 == config.iterations):
            _save_checkpoint(ckpt, config, param, opt, it + 1, history, current, grids, first_crossed, still, points, init)
        if still >= config.patience:
            stopped_early = True
            log.info("stopped early at iteration %d: no restart moved more than %g rad for %d iterations",
                     it, config.tol, config.patience)
            break
    bar.close()

    return _finish(subject, config, param.detach(), init, history, points, stopped_early)


_CHECKPOINT_KEYS = ("config", "param", "optimizer", "iteration", "history", "current", "grids", "first_crossed",
                    "still", "points", "init")


def _save_checkpoint(path: Path, config, param, opt, iteration, history, current, grids, first_crossed, still, points, init):
    import io

    from .runio import write_atomic

    state = {
        "config": config.to_dict(), "param": param.detach().clone(), "optimizer": opt.state_dict(),
        "iteration": iteration, "history": history, "current": current, "grids": grids,
        "first_crossed": first_crossed, "still": still, "points": points, "init": init,
    }
    buf = io.BytesIO()  # serialised in memory: a full disk is then one clear OSError, not a torch stream error
    torch.save(state, buf)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, buf.getvalue())


def load_checkpoint(path: str | Path, config: DiscoverConfig | None = None, shape: tuple[int, int] | None = None) -> dict:
    """The state saved by ``discover(checkpoint=...)``, checked: ``CheckpointError`` (naming the file) if it
    is missing, empty, truncated or corrupt, or was written for another config (the differing keys named)
    or another width."""
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
    if not isinstance(state["param"], Tensor) or state["param"].ndim != 2:
        raise CheckpointError(f"checkpoint {str(path)!r} holds no directions [restarts, d]")
    if config is not None and state["config"] != config.to_dict():
        saved = state["config"] if isinstance(state["config"], dict) else {}
        diff = sorted(k for k in set(saved) | set(config.to_dict()) if saved.get(k) != config.to_dict().get(k))
        raise CheckpointError(f"checkpoint {str(path)!r} was written with a different config ({', '.join(diff)} "
                              "differ); cannot resume")
    if shape is not None and tuple(state["param"].shape) != tuple(shape):
        raise CheckpointError(f"checkpoint {str(path)!r} holds directions of shape {tuple(state['param'].shape)}, "
                              f"this run needs {tuple(shape)}; cannot resume")
    return state


@torch.no_grad()
def _finish(subject, config: DiscoverConfig, directions: Tensor, init: Tensor, history, points, stopped_early) -> Discovery:
    final_cfg = config.final_scan_config
    result = scan(subject, directions, final_cfg)
    if not torch.isfinite(result.effects).all():
        bad = (~torch.isfinite(result.effects)).any(dim=1).nonzero()[:, 0].tolist()
        raise NonFiniteOutputError(f"the subject's output is non-finite on the final scan for restart(s) {bad}")
    points += result.effects.numel()
    blowup = result.threshold
    eff = effective_directions(directions, subject.base, config.mode)
    clusters = cluster_directions(eff, blowup, config.cluster_threshold)
    reps = [c[0] for c in clusters]
    return Discovery(
        directions=eff[reps].contiguous(),
        blowup_deg=blowup[reps],
        counts=torch.tensor([len(c) for c in clusters]),
        members=clusters,
        restart_directions=eff,
        restart_blowup=blowup,
        init_directions=init,
        history=history,
        config=config.to_dict(),
        points_evaluated=points,
        stopped_early=stopped_early,
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
    config = replace(config, init="given", restarts=directions.shape[0])
    found = discover(subject, config, init_directions=directions, **kwargs)
    with torch.no_grad():
        start = effective_directions(directions.to(subject.base.dtype), subject.base, config.mode)
        before = scan(subject, start, config.final_scan_config).threshold
    end = found.restart_directions
    return Refinement(start=start, end=end, cos_start_end=(start * end).sum(1), blowup_start=before,
                      blowup_end=found.restart_blowup, discovery=found)
