"""Linear response: the pullback metric of next-token KL at a subject's base, and what it predicts.

To second order the KL of a small perturbation ``δ`` of the base activation ``x0`` is

    KL(p0 ‖ p(x0 + δ)) = ½ δᵀ G δ + O(|δ|³),     G = Jᵀ M J,     M = diag(p0) − p0 p0ᵀ

with ``J = ∂logits/∂x`` at the base (``[n_out, d]``) and ``M`` the Hessian of KL in logit space (the
Fisher information of the softmax). In sphere mode only the tangent part of a direction moves the
activation, and ``x(θ) − x0 = θ|x0| t̂ + O(θ²) x̂0`` with the radial part entering KL at third order, so
the metric of sphere mode is ``P G P`` with ``P = I − x̂0 x̂0ᵀ`` (``x̂0`` is in its null space).

Matrix-free: ``G V`` for a block ``V`` ``[b, d]`` is one batched Jacobian-vector product
(``torch.func.jvp`` of ``subject.run`` at ``b`` copies of the base) and one batched vector-Jacobian
product (``torch.func.vjp``, whose backward is reused across calls). The quadratic form ``uᵀGu`` needs
only the JVP: ``(Ju)ᵀ M (Ju)``. Everything runs in the subject's dtype; the small dense algebra
(orthogonalisation, Rayleigh–Ritz) in float64.

Top-k eigenpairs (:func:`linear_response`):

* ``exact`` (``d <= exact_max_d`` under ``method="auto"``): ``G`` applied to an orthonormal basis of the
  tangent space (``d − 1`` products in sphere mode, ``d`` in straight mode), then ``eigh``. Exact to
  rounding; eigenvectors are tangent by construction.
* ``krylov``: block Lanczos with full reorthogonalisation (block Krylov subspace ``[V, GV, G²V, ...]``
  from a seeded random tangent block, Rayleigh–Ritz on it). Products come in blocks, which is what a
  batched subject (and an accelerator) runs fastest. It stops when every wanted Ritz pair's residual
  ``‖G y − θ y‖`` is below ``tol · |θ|``, when the Krylov space spans the whole (tangent) space (then it
  is exact), or at ``max_products`` (``converged=False``, logged as a warning).

Predictions for any directions ``u`` (unit, tangent part in sphere mode; :func:`linear_predictions`):

* Rayleigh quotient ``q = uᵀGu``;
* quadratic onset ``θ_quad = sqrt(2τ / (|x0|² q))`` (degrees): where ``½ θ²|x0|² q`` reaches τ;
* early-growth ratio ``KL(θ) / (½ θ²|x0|² q)`` at small angles (default 2° and 4°), KL measured with
  :func:`sensfind.core.scan.scan` in sphere mode: ≈ 1 for a smooth response, > 1 where a non-linear mechanism
  starts before the quadratic term dominates;
* measured-to-predicted threshold ratio, when measured thresholds are given.

:func:`linear_directions` is the direction kind ``linear``: the top eigenvectors with both signs.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from sensfind.configs import Config, check_choice, check_int, check_number
from sensfind.core.geometry import check_directions, reject
from sensfind.runio import Result, load_json, load_tensors, save_json, save_tensors
from sensfind.core.scan import ScanConfig, base_output, scan
from sensfind.core.subject import Subject

log = logging.getLogger(__name__)

__all__ = [
    "LinearPredictions",
    "LinearResponse",
    "LinearResponseConfig",
    "PullbackMetric",
    "early_growth",
    "linear_directions",
    "linear_predictions",
    "linear_response",
    "quadratic_onset_deg",
    "rayleigh_quotients",
]

Method = Literal["auto", "exact", "krylov"]

_EIGEN_FLOOR = 1e-6  # eigenvalues below this fraction of the top one are converged once their residual is below it
_NOISE_EPS = 100  # ... or below this many machine epsilons of the subject's dtype (float32: 1.2e-5)


@dataclass(frozen=True)
class LinearResponseConfig(Config):
    """How the top eigenpairs of the pullback metric are computed.

    Attributes:
        mode: ``sphere`` (the metric on the tangent space of the sphere, ``P G P``) or ``straight`` (``G``).
        method: ``exact`` (dense ``G`` on a basis, then ``eigh``), ``krylov`` (matrix-free block Lanczos)
            or ``auto`` (exact when ``d <= exact_max_d``).
        exact_max_d: largest width that ``auto`` computes exactly (``d`` products instead of a few per
            eigenpair).
        block: vectors per Krylov block (``None``: ``k + 8``, at most the space's dimension).
        tol: Krylov stops when every wanted Ritz residual ``‖G y − θ y‖`` is at most ``tol · |θ|`` (eigenvalues
            below ``1e-6 · λ1``, or below ``100 ε · λ1`` of the subject's dtype, count at that floor).
        max_products: Krylov gives up (``converged=False``) after this many ``G·v`` products.
        batch: largest number of vectors run through the subject at once.
        seed: seeds the Krylov start block.
    """

    mode: Literal["sphere", "straight"] = "sphere"
    method: Method = "auto"
    exact_max_d: int = 256
    block: int | None = None
    tol: float = 1e-3
    max_products: int = 4000
    batch: int = 64
    seed: int = 0

    def __post_init__(self):
        check_choice("mode", self.mode, ("sphere", "straight"))
        check_choice("method", self.method, ("auto", "exact", "krylov"))
        check_int("exact_max_d", self.exact_max_d, 1, maximum=16_384)
        check_int("block", self.block, 1, optional=True, maximum=4096)
        check_number("tol", self.tol, 0, 1, lo_open=True, hi_open=True)
        check_int("max_products", self.max_products, 1, maximum=1_000_000)
        check_int("batch", self.batch, 1, maximum=65_536)
        check_int("seed", self.seed, 0, maximum=2**32 - 1)


class PullbackMetric:
    """Matrix-free ``G`` of next-token KL at ``subject.base``: ``metric(V [b, d]) -> G V [b, d]``.

    Args:
        subject: any :class:`~sensfind.core.subject.Subject` whose outputs are logits; ``run`` must be
            differentiable by ``torch.func`` (forward and reverse mode).
        mode: ``sphere`` projects inputs and outputs onto the tangent space (``P G P``); ``straight`` does not.
        batch: largest number of vectors run through the subject at once.

    Attributes:
        products: ``G·v`` products computed so far (vectors, not batches).
        jvps: Jacobian-vector products computed so far (each ``G·v`` takes one; a quadratic form only one).
    """

    def __init__(self, subject: Subject, mode: str = "sphere", batch: int = 64):
        check_choice("mode", mode, ("sphere", "straight"))
        check_int("batch", batch, 1)
        self.subject, self.mode, self.batch = subject, mode, batch
        self.base = subject.base.detach()
        self.dtype = self.base.dtype
        self.d = self.base.shape[0]
        self.p0 = torch.softmax(base_output(subject).to(self.dtype), -1)  # [n_out]
        self.products = 0
        self.jvps = 0
        self._vjp: tuple[int, object] | None = None  # (batch size, reusable vjp function)

    def _tangent(self, v: Tensor) -> Tensor:
        return reject(v, self.base) if self.mode == "sphere" else v

    def _acts(self, b: int) -> Tensor:
        return self.base.expand(b, self.d).clone()

    def _jvp(self, v: Tensor) -> Tensor:
        """``J v`` ``[b, n_out]`` for ``v`` ``[b, d]`` (one batch)."""
        _, jv = torch.func.jvp(self.subject.run, (self._acts(v.shape[0]),), (v,))
        self.jvps += v.shape[0]
        return jv

    def _m(self, jv: Tensor) -> Tensor:
        """``M w = p0 ⊙ w − p0 (p0 · w)`` row-wise."""
        return self.p0 * (jv - (jv @ self.p0)[:, None])

    def _vjp_fn(self, b: int):
        if self._vjp is None or self._vjp[0] != b:
            self._vjp = (b, torch.func.vjp(self.subject.run, self._acts(b))[1])
        return self._vjp[1]

    def __call__(self, v: Tensor) -> Tensor:
        """``G v`` for rows ``v`` ``[b, d]`` (any float dtype; the result has ``v``'s dtype)."""
        out = []
        for part in v.split(self.batch):
            x = self._tangent(part.to(self.dtype))
            with torch.no_grad():
                w = self._m(self._jvp(x))
            (g,) = self._vjp_fn(x.shape[0])(w)
            out.append(self._tangent(g.detach()).to(v.dtype))
            self.products += x.shape[0]
        return torch.cat(out)

    def quadratic(self, v: Tensor) -> Tensor:
        """``vᵀ G v`` ``[b]`` for rows ``v`` ``[b, d]`` (as given: not normalised), by JVPs only; float64."""
        out = []
        for part in v.split(self.batch):
            x = self._tangent(part.to(self.dtype))
            with torch.no_grad():
                jv = self._jvp(x)
                out.append((jv * self._m(jv)).sum(-1).double())
        return torch.cat(out)


@dataclass
class LinearResponse(Result):
    """The top eigenpairs of the pullback metric at a subject's base.

    Attributes:
        eigenvalues: ``[k]`` float64, descending; KL(δ) ≈ ½ δᵀGδ (nats per squared activation unit).
        eigenvectors: ``[k, d]`` unit rows (tangent to the sphere in sphere mode), the subject's dtype.
        residuals: ``[k]`` ``‖G y − λ y‖ / |λ|`` of each pair (``|λ|`` floored as for ``tol``; 0 up to
            rounding for ``exact``).
        base_norm: ``|x0|``.
        config: the :class:`LinearResponseConfig`.
        method: ``exact`` or ``krylov`` (what ``auto`` chose).
        products: ``G·v`` products spent.
        seconds: wall time.
        converged: every residual within ``config.tol`` (always true for ``exact``).

    ``save(directory)`` writes ``linear_response.json``, ``linear_response.safetensors`` and ``config.json``.
    """

    MARKER = "linear_response.safetensors"
    WHAT = "linear-response results"

    eigenvalues: Tensor
    eigenvectors: Tensor
    residuals: Tensor
    base_norm: float
    config: LinearResponseConfig = field(default_factory=LinearResponseConfig)
    method: str = "exact"
    products: int = 0
    seconds: float = 0.0
    converged: bool = True

    @property
    def k(self) -> int:
        return int(self.eigenvalues.shape[0])

    def onset_deg(self, tau: float = 0.5) -> Tensor:
        """``[k]`` quadratic onset angle (degrees) of each eigenvector."""
        return quadratic_onset_deg(self.eigenvalues, self.base_norm, tau)

    def summary(self) -> dict:
        return {"k": self.k, "method": self.method, "products": self.products, "seconds": self.seconds,
                "converged": self.converged, "base_norm": self.base_norm, "eigenvalues": self.eigenvalues,
                "residuals": self.residuals, "onset_deg_tau_0.5": self.onset_deg(0.5)}

    def config_dict(self) -> dict:
        return self.config.to_dict()

    def _write(self, directory: Path) -> None:
        save_json(directory / "linear_response.json", {"config": self.config.to_dict(), **self.summary()})
        save_tensors(directory / "linear_response.safetensors",
                     {"eigenvalues": self.eigenvalues, "eigenvectors": self.eigenvectors, "residuals": self.residuals})

    @classmethod
    def _read(cls, directory: Path) -> LinearResponse:
        meta = load_json(directory / "linear_response.json")
        t = load_tensors(directory / "linear_response.safetensors")
        return cls(eigenvalues=t["eigenvalues"], eigenvectors=t["eigenvectors"], residuals=t["residuals"],
                   base_norm=float(meta["base_norm"]), config=LinearResponseConfig.from_dict(meta["config"]),
                   method=meta["method"], products=int(meta["products"]), seconds=float(meta["seconds"]),
                   converged=bool(meta["converged"]))


def _tangent_basis(base: Tensor, mode: str) -> Tensor:
    """Orthonormal columns ``[d, d − 1]`` spanning the tangent space (sphere) or ``I`` (straight), float64."""
    d = base.shape[0]
    eye = torch.eye(d, dtype=torch.float64)
    if mode == "straight":
        return eye
    xhat = (base.double() / base.double().norm())[:, None]
    q, _ = torch.linalg.qr(torch.cat([xhat, eye], dim=1))  # first column ±x̂0, the rest span its complement
    return q[:, 1:d]


def _exact(metric: PullbackMetric, k: int) -> tuple[Tensor, Tensor, Tensor]:
    basis = _tangent_basis(metric.base, metric.mode)  # [d, m]
    g = metric(basis.T.contiguous()).double().T  # [d, m]: G b_j
    h = basis.T @ g  # [m, m]
    h = (h + h.T) / 2
    vals, vecs = torch.linalg.eigh(h)
    vals, vecs = vals.flip(0)[:k], vecs.flip(1)[:, :k]
    y = basis @ vecs  # [d, k]
    return vals, y.T, _relative_residuals(g @ vecs, y, vals, metric.dtype)


def _relative_residuals(gy: Tensor, y: Tensor, vals: Tensor, dtype: torch.dtype = torch.float64) -> Tensor:
    """``[k]`` ``‖G y − θ y‖ / max(|θ|, floor · |θ1|)`` of Ritz pairs (columns of ``y``, ``gy = G y``): relative
    to each eigenvalue, with eigenvalues below ``floor`` of the top one counted at that floor. The floor is
    ``1e-6``, or ``100 ε`` of the subject's dtype where that is larger (products in float32 carry errors
    of about ``ε · λ1``, so smaller eigenvalues cannot be resolved to a relative tolerance)."""
    floor = max(_EIGEN_FLOOR, _NOISE_EPS * torch.finfo(dtype).eps) * vals[0].abs()
    floor = floor.clamp(min=torch.finfo(torch.float64).tiny)
    return (gy - y * vals).norm(dim=0) / torch.maximum(vals.abs(), floor)


def _orthonormalize(v: Tensor, q: Tensor, base: Tensor, mode: str, rtol: float = 1e-8) -> Tensor:
    """Columns of ``v`` ``[d, b]`` made orthonormal and orthogonal to ``q`` ``[d, m]`` (and to the base in
    sphere mode); columns that are (numerically) in the span already are dropped."""
    scale = v.norm(dim=0).clamp(min=torch.finfo(torch.float64).tiny)
    for _ in range(2):  # twice is enough (Kahan–Parlett)
        if mode == "sphere":
            v = reject(v.T, base.double()).T
        if q.shape[1]:
            v = v - q @ (q.T @ v)
    keep = v.norm(dim=0) > rtol * scale
    v = v[:, keep]
    if not v.shape[1]:
        return v
    qv, r = torch.linalg.qr(v)
    return qv[:, r.diagonal().abs() > rtol * r.diagonal().abs().max()]


def _krylov(metric: PullbackMetric, k: int, config: LinearResponseConfig) -> tuple[Tensor, Tensor, Tensor, bool]:
    d, mode, base = metric.d, metric.mode, metric.base
    dim = d - 1 if mode == "sphere" else d
    b = min(config.block or k + 8, dim)
    g = torch.Generator().manual_seed(config.seed)
    q = torch.empty(d, 0, dtype=torch.float64)
    w = torch.empty(d, 0, dtype=torch.float64)
    v = _orthonormalize(torch.randn(d, b, generator=g, dtype=torch.float64), q, base, mode)
    converged = False
    while True:
        gv = metric(v.T.contiguous()).double().T  # [d, b']
        q, w = torch.cat([q, v], 1), torch.cat([w, gv], 1)
        h = q.T @ w
        vals, vecs = torch.linalg.eigh((h + h.T) / 2)
        vals, vecs = vals.flip(0)[:k], vecs.flip(1)[:, :k]
        y = q @ vecs
        res = _relative_residuals(w @ vecs, y, vals, metric.dtype)
        log.debug("krylov: %d products, top eigenvalue %.4g, largest wanted residual %.2e",
                  metric.products, float(vals[0]), float(res.max()))
        if q.shape[1] >= dim or (vals.shape[0] >= k and bool((res <= config.tol).all())):
            converged = True
            break
        if metric.products >= config.max_products:
            log.warning("linear response: Krylov stopped at max_products=%d with largest residual %.2e > tol %.1e",
                        config.max_products, float(res.max()), config.tol)
            break
        v = _orthonormalize(gv, q, base, mode)
        short = min(b, dim - q.shape[1]) - v.shape[1]
        if short > 0:  # an invariant subspace was reached: continue with fresh random directions
            fresh = _orthonormalize(torch.randn(d, short, generator=g, dtype=torch.float64), torch.cat([q, v], 1), base, mode)
            v = torch.cat([v, fresh], 1)
        v = v[:, : max(1, min(b, config.max_products - metric.products))]
    return vals, y.T, res, converged


def linear_response(subject: Subject, k: int, *, config: LinearResponseConfig | None = None) -> LinearResponse:
    """The top ``k`` eigenpairs of ``G = Jᵀ (diag p0 − p0 p0ᵀ) J`` at ``subject.base`` (on the sphere's tangent
    space in sphere mode), scaled so that ``KL(δ) = ½ δᵀGδ + O(|δ|³)``. See the module docstring."""
    config = LinearResponseConfig() if config is None else config
    if not isinstance(config, LinearResponseConfig):
        raise TypeError(f"config must be a LinearResponseConfig, got {type(config).__name__}")
    d = subject.base.shape[0]
    dim = d - 1 if config.mode == "sphere" else d
    check_int("k", k, 1)
    if k > dim:
        raise ValueError(f"k must be at most {dim} (the dimension of the {config.mode} mode's space for d = {d}), got {k}")
    method = config.method if config.method != "auto" else ("exact" if d <= config.exact_max_d else "krylov")
    metric = PullbackMetric(subject, config.mode, config.batch)
    start = time.perf_counter()
    if method == "exact":
        vals, vecs, res = _exact(metric, k)
        converged = True
    else:
        vals, vecs, res, converged = _krylov(metric, k, config)
    seconds = time.perf_counter() - start
    vecs = vecs / vecs.norm(dim=1, keepdim=True)
    log.info("linear response: %s, k=%d, %d products, %.2f s, top eigenvalue %.4g", method, k, metric.products,
             seconds, float(vals[0]))
    return LinearResponse(eigenvalues=vals, eigenvectors=vecs.to(subject.base.dtype), residuals=res,
                          base_norm=float(subject.base.double().norm()), config=config, method=method,
                          products=metric.products, seconds=seconds, converged=converged)


# -- predictions for given directions --------------------------------------------------------------------
def _unit_tangent(subject: Subject, directions: Tensor) -> Tensor:
    base = subject.base
    u = check_directions(directions, base.shape[0], base).to(base.dtype)
    u = reject(u, base)
    return u / u.norm(dim=1, keepdim=True)


def rayleigh_quotients(subject: Subject, directions: Tensor, batch: int = 64) -> Tensor:
    """``[n]`` float64 ``uᵀGu`` of the unit tangent part ``u`` of each of ``directions`` ``[n, d]`` (one JVP each)."""
    return PullbackMetric(subject, "sphere", batch).quadratic(_unit_tangent(subject, directions))


def quadratic_onset_deg(rayleigh: Tensor, base_norm: float, tau: float = 0.5) -> Tensor:
    """``[n]`` ``θ_quad = sqrt(2τ / (|x0|² q))`` in degrees (``inf`` where ``q <= 0``)."""
    check_number("tau", tau, 0, lo_open=True)
    q = rayleigh.double()
    theta = torch.sqrt(2 * tau / (base_norm**2 * q.clamp(min=0)))
    return torch.rad2deg(torch.where(q > 0, theta, torch.full_like(q, math.inf)))


@torch.no_grad()
def early_growth(subject: Subject, directions: Tensor, rayleigh: Tensor | None = None,
                 angles: tuple[float, ...] = (2.0, 4.0)) -> Tensor:
    """``[n, A]`` measured KL over its quadratic prediction ``½ θ²|x0|² q`` at each of ``angles`` (degrees,
    sphere mode), for directions ``[n, d]``; ``rayleigh``: their ``uᵀGu`` if already computed."""
    if not angles or any(not 0 < a <= 180 for a in angles):
        raise ValueError(f"angles must be a non-empty sequence of degrees in (0, 180], got {angles!r}")
    q = rayleigh_quotients(subject, directions) if rayleigh is None else rayleigh.double()
    steps = torch.tensor([0.0, *angles], dtype=subject.base.dtype)
    kl = scan(subject, directions, ScanConfig(steps=steps.numel()), steps=steps).effects[:, 1:].double()
    theta = torch.deg2rad(steps[1:].double())
    predicted = 0.5 * theta**2 * float(subject.base.double().norm()) ** 2 * q[:, None]
    return kl / predicted


@dataclass
class LinearPredictions:
    """What the quadratic form predicts for some directions, and how the measurement compares.

    Attributes:
        rayleigh: ``[n]`` ``uᵀGu`` of each unit tangent direction.
        onset_deg: ``[n]`` quadratic onset ``θ_quad`` at ``tau`` (degrees).
        angles: the small angles of the early-growth ratio (degrees).
        early_growth: ``[n, A]`` measured KL over ``½θ²|x0|²q`` at ``angles``.
        ratio: ``[n]`` measured threshold over ``θ_quad`` (``None`` when no thresholds were given).
        tau: the threshold the onset is predicted for.
    """

    rayleigh: Tensor
    onset_deg: Tensor
    angles: tuple[float, ...]
    early_growth: Tensor
    ratio: Tensor | None
    tau: float

    def summary(self) -> dict:
        def med(x: Tensor) -> float:
            x = x[torch.isfinite(x)]
            return float(x.median()) if x.numel() else math.nan

        out = {"n": int(self.rayleigh.numel()), "tau": self.tau, "rayleigh_median": med(self.rayleigh),
               "onset_deg_median": med(self.onset_deg)}
        out |= {f"early_growth_{a:g}deg_median": med(self.early_growth[:, i]) for i, a in enumerate(self.angles)}
        if self.ratio is not None:
            out["ratio_median"] = med(self.ratio)
        return out


def linear_predictions(subject: Subject, directions: Tensor, *, tau: float = 0.5,
                       angles: tuple[float, ...] = (2.0, 4.0), thresholds: Tensor | None = None) -> LinearPredictions:
    """Rayleigh quotients, quadratic onsets, early-growth ratios and (with measured ``thresholds`` ``[n]``,
    degrees) measured-to-predicted threshold ratios of ``directions`` ``[n, d]`` (sphere mode)."""
    q = rayleigh_quotients(subject, directions)
    onset = quadratic_onset_deg(q, float(subject.base.double().norm()), tau)
    growth = early_growth(subject, directions, q, angles)
    ratio = None
    if thresholds is not None:
        if thresholds.shape != q.shape:
            raise ValueError(f"thresholds must have shape {tuple(q.shape)} (one per direction), got {tuple(thresholds.shape)}")
        ratio = thresholds.double() / onset
    return LinearPredictions(rayleigh=q, onset_deg=onset, angles=tuple(float(a) for a in angles),
                             early_growth=growth, ratio=ratio, tau=float(tau))


def linear_directions(subject: Subject, n: int, *, config: LinearResponseConfig | None = None,
                      response: LinearResponse | None = None) -> Tensor:
    """The direction kind ``linear``: ``n`` rows ``[n, d]`` from G's top eigenvectors with both signs,
    ``+v1, −v1, +v2, −v2, ...`` (KL is even in δ to second order, not beyond). ``response``: reuse one
    computed with at least ``ceil(n / 2)`` eigenpairs."""
    check_int("n", n, 1)
    k = (n + 1) // 2
    if response is None:
        response = linear_response(subject, k, config=config)
    elif response.k < k:
        raise ValueError(f"response has {response.k} eigenvectors; {n} directions need {k}")
    v = response.eigenvectors[:k]
    return torch.stack([v, -v], dim=1).reshape(2 * k, -1)[:n]
