"""The mixture (Lᵖ) test of privileged directions (Ferreira da Silva & Heimersheim, arXiv 2606.24964).

The question
------------
Are candidate directions (discovered optima, SAE decoder rows, ...) *privileged*: does a perturbation
concentrated on one of them leave the plateau sooner than the same size spread over two? Model the effect
of a perturbation ``δ = c_a a + c_b b`` in the plane of two candidates as a function of

    ‖(c_a / s_a, c_b / s_b)‖_p

with ``s_a``, ``s_b`` the pure directions' own critical sizes. ``p = 2`` is a quadratic form: what a smooth
(linear-response) model gives, and it can privilege at most ``d`` directions. ``p > 2`` means mixtures
need to be *larger* than the quadratic form predicts (the pure directions are privileged; a hard
per-feature threshold gives ``p → ∞``: the perturbation blows up when one coefficient reaches its own
threshold, ``r* = min(s_a / c_a, s_b / c_b)``); ``p < 2`` means mixtures blow up sooner.

The procedure (sphere mode)
---------------------------
1. Each candidate is replaced by its unit tangent part (the part orthogonal to the base, which is all a
   sphere scan sees), so ``a`` and ``b`` below are unit tangent vectors and ``s_a = r*(0°)`` is the
   candidate's own threshold angle.
2. For pairs ``(a, b)`` (all pairs, or ``max_pairs`` of them drawn with the seed; pairs with
   ``|a·b| > max_abs_cos`` are skipped: the decomposition below is ill-conditioned there) the mixtures
   ``m(φ) = (cos φ·a + sin φ·b)/|·|`` for φ on a grid over [0°, 90°].
3. The critical size ``r*(φ)`` is the threshold angle (first KL > τ), on a coarse scan then a fine scan
   inside the coarse step that crossed, linearly interpolated between the two fine points around τ.
   In sphere mode the perturbation of angle θ along ``m`` is the tangent vector ``θ m`` (the sphere's
   exponential map), so the threshold angle is a size in the tangent plane.
4. Fit: ``r*(φ) = 1 / ‖(c_a(φ)/s_a, c_b(φ)/s_b)‖_p`` (least squares on ``log r*`` over the interior φ;
   the end points are fitted exactly by construction), one ``p`` pooled over the pairs of a kind, on a
   log-spaced grid over ``[p_min, p_max]`` plus ``p = ∞``; a 95% interval from a bootstrap over pairs.

Non-orthogonal pairs: the coefficients
--------------------------------------
The model is stated in terms of the perturbation's coefficients in the candidate basis, not in terms of
the angle φ. For unit ``a``, ``b`` with ``a·b = cos γ`` the unit mixture is

    m(φ) = (cos φ·a + sin φ·b) / N(φ),      N(φ) = |cos φ·a + sin φ·b| = sqrt(1 + sin 2φ · cos γ)

so a perturbation of size ``r`` along ``m`` has coefficients ``c = r (cos φ, sin φ) / N(φ)``, unique
because ``a`` and ``b`` are independent. Hence

    r*(φ) = N(φ) / ‖(cos φ / s_a, sin φ / s_b)‖_p.

Without the factor ``N`` the model would not be the one stated (it would use the coefficients of
``cos φ·a + sin φ·b``, which is not a unit vector when ``a·b ≠ 0``); with it a hard per-coefficient
threshold gives exactly ``p = ∞`` at any angle between ``a`` and ``b``, and for orthogonal pairs it is 1.
What the coefficients cannot absorb is a cross term: a quadratic form in the plane is, in any basis,
``c_a²/s_a² + c_b²/s_b² + 2ρ c_a c_b/(s_a s_b)``, with ``ρ`` coming both from the angle between ``a`` and ``b``
(for the isotropic ``|δ|²``, ``ρ = a·b``) and from ``aᵀGb ≠ 0`` (a smooth response correlates even orthogonal
directions). A positive ``ρ`` reads as ``p < 2`` for that pair and a negative one as ``p > 2``; over pairs of
random directions the signs average out: pooled ``p`` stays near 2 but its interval widens. With
``cross_term=True`` the model is generalised to

    ‖(x, y)‖_{p,ρ} = (|x|^p + |y|^p + 2ρ |x y|^{p/2})^{1/p},      |ρ| < 1,

a quadratic form in ``(|x|^{p/2}, |y|^{p/2})``: the general quadratic form at ``p = 2`` (so any smooth
response gives ``p = 2`` pair by pair) and ``max(|x|, |y|)`` as ``p → ∞``; ``ρ`` is fitted per pair (a
nuisance parameter, profiled out on a grid) and ``p`` pooled. It costs power: ``ρ`` and ``p`` both move the
middle of the curve, and only the shape near the ends tells them apart.

"Smooth gives p = 2" holds in the quadratic regime only (small τ). At τ = 0.5 threshold angles on real
models are tens of degrees, where the response is far from its quadratic form (``θ_quad`` misses the
threshold by a factor ≈ 0.4 on SmolLM2), so the test measures the shape of the iso-effect contour at τ
in the plane of a pair, and a ``p`` away from 2 is not by itself a thresholding mechanism.

Measured on the subjects of ``tests/core/test_mixture.py`` (fixed seeds, default settings unless said):
a linear map then softmax at τ = 0.02, G's eigenvectors p = 2.0 [1.93, 2.03], random directions
2.6 [1.8, 4.8] (``cross_term=True``: 2.0 [1.97, 2.03]); the toy's planted features (switching an
inactive feature on) p = ∞ [10.4, ∞], the same rotated by 30°/45°/60° 19.7 / 5.5 / 3.5, isotropic
1.8 [1.3, 2.8]; with ``cross_term=True`` planted 3.9 [3.2, 4.7] and isotropic 1.1 [1.0, 1.7]. Hence the
default without the cross term (the published model), with the cross term as a robustness check.

Compute
-------
Each pure direction is scanned once (shared by its pairs) and each pair adds ``n_phi − 2`` mixtures;
every direction costs ``coarse_steps`` scan points plus ``fine_steps`` where it crossed.
``MixtureTest.scan_points`` and ``seconds`` record what a test spent.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from sensfind.errors import NoUsablePairsError, one_line
from sensfind.configs import Config, check_bool, check_int, check_number
from sensfind.core.geometry import check_directions, effective_directions
from sensfind.runio import Result, load_json, load_tensors, save_json, save_tensors
from sensfind.core.scan import ScanConfig, scan
from sensfind.core.subject import Subject

log = logging.getLogger(__name__)

__all__ = [
    "MIXTURE_ROW",
    "MixtureConfig",
    "MixtureTest",
    "critical_angles",
    "fit_p",
    "lp_threshold",
    "mixture_row",
    "mixture_test",
    "no_pair_row",
    "test_row",
]

_RHO_GRID = 79  # values of the cross term ρ in (-0.975, 0.975) profiled per pair when cross_term is on
_RHO_MAX = 0.975
_FIT_FIELDS = {"p_min", "p_max", "n_p", "cross_term", "bootstrap", "seed"}  # what MixtureTest.refit may change


@dataclass(frozen=True)
class MixtureConfig(Config):
    """Settings of the mixture (Lᵖ) test (sphere mode, next-token KL).

    Attributes:
        max_pairs: at most this many pairs of directions (at most 10,000; all pairs when there are fewer; otherwise drawn
            with ``seed``).
        n_phi: mixture angles φ, evenly spaced over [0°, 90°] (ends included; 3 to 181).
        tau: KL threshold (nats) of the critical size.
        stop: the largest threshold angle looked for (degrees); directions that do not cross by then
            leave their pairs out of the fit.
        coarse_steps: points of the first scan over [0°, stop] (at most 100,000; so is fine_steps).
        fine_steps: points of the second scan inside the coarse step that crossed.
        max_abs_cos: pairs whose unit tangent parts have ``|cos|`` above this are skipped.
        p_min, p_max: range of the log-spaced ``p`` grid (``p = ∞`` is added as the cap).
        n_p: points of the ``p`` grid.
        cross_term: fit a per-pair cross term ρ as well (see the module docstring).
        bootstrap: resamples of the pairs for the 95% interval (at most 1,000,000).
        seed: seeds the choice of pairs and the bootstrap.
    """

    max_pairs: int = 15
    n_phi: int = 7
    tau: float = 0.5
    stop: float = 180.0
    coarse_steps: int = 91
    fine_steps: int = 21
    max_abs_cos: float = 0.8
    p_min: float = 1.0
    p_max: float = 64.0
    n_p: int = 241
    cross_term: bool = False
    bootstrap: int = 1000
    seed: int = 0

    def __post_init__(self):
        check_int("max_pairs", self.max_pairs, 1, maximum=10_000)
        check_int("n_phi", self.n_phi, 3, maximum=181)
        check_number("tau", self.tau, 0, lo_open=True)
        check_number("stop", self.stop, 0, 180, lo_open=True)
        check_int("coarse_steps", self.coarse_steps, 2, maximum=100_000)
        check_int("fine_steps", self.fine_steps, 2, maximum=100_000)
        check_number("max_abs_cos", self.max_abs_cos, 0, 1, hi_open=True)
        check_number("p_min", self.p_min, 0, lo_open=True)
        check_number("p_max", self.p_max, self.p_min, lo_open=True)
        check_int("n_p", self.n_p, 2, maximum=100_000)
        check_bool("cross_term", self.cross_term)
        check_int("bootstrap", self.bootstrap, 1, maximum=1_000_000)
        check_int("seed", self.seed, 0, maximum=2**32 - 1)

    @property
    def phi_deg(self) -> Tensor:
        """``[n_phi]`` the mixture angles (degrees, float64)."""
        return torch.linspace(0.0, 90.0, self.n_phi, dtype=torch.float64)

    @property
    def p_grid(self) -> Tensor:
        """``[n_p + 1]`` the ``p`` values searched: log-spaced over ``[p_min, p_max]``, then ``inf``."""
        grid = torch.logspace(math.log10(self.p_min), math.log10(self.p_max), self.n_p, dtype=torch.float64)
        return torch.cat([grid, torch.tensor([math.inf], dtype=torch.float64)])


# -- the model ------------------------------------------------------------------------------------------
def lp_threshold(phi_deg: Tensor, s_a: Tensor, s_b: Tensor, cos_ab: Tensor, p: Tensor, rho: Tensor | float = 0.0) -> Tensor:
    """The model's critical size ``r*(φ) = N(φ) / ‖(cos φ/s_a, sin φ/s_b)‖_{p,ρ}``, broadcast over the inputs
    (``phi_deg`` degrees; ``p`` may be ``inf``; see the module docstring). float64."""
    phi = torch.deg2rad(torch.as_tensor(phi_deg, dtype=torch.float64))
    s_a, s_b, cos_ab, p = (torch.as_tensor(t, dtype=torch.float64) for t in (s_a, s_b, cos_ab, p))
    rho = torch.as_tensor(rho, dtype=torch.float64)
    n = torch.sqrt(1 + torch.sin(2 * phi) * cos_ab)
    x, y = phi.cos().clamp(min=0) / s_a, phi.sin().clamp(min=0) / s_b
    m = torch.maximum(x, y)
    xs, ys = x / m, y / m  # in [0, 1], the larger is 1
    finite = torch.isfinite(p)
    pf = torch.where(finite, p, torch.ones_like(p))
    inner = xs**pf + ys**pf + 2 * rho * (xs * ys) ** (pf / 2)
    log_norm = torch.where(finite, torch.log(inner.clamp(min=1e-300)) / pf, torch.zeros_like(inner))
    return n / (m * log_norm.exp())


def _sse_table(phi_deg: Tensor, r: Tensor, cos_ab: Tensor, p_grid: Tensor, cross_term: bool) -> tuple[Tensor, Tensor]:
    """Per pair and ``p``: the least-squares error on ``log r*`` over the interior φ, with ρ profiled out
    when ``cross_term`` (else 0), and the best ρ. ``([P, G], [P, G])``."""
    rhos = torch.linspace(-_RHO_MAX, _RHO_MAX, _RHO_GRID, dtype=torch.float64) if cross_term else torch.zeros(1, dtype=torch.float64)
    inner = slice(1, -1)
    phi = phi_deg[inner][None, None, None, :]  # [1, 1, 1, F']
    pred = lp_threshold(phi, r[:, 0, None, None, None], r[:, -1, None, None, None], cos_ab[:, None, None, None],
                        p_grid[None, :, None, None], rhos[None, None, :, None])  # [P, G, R, F']
    err = (torch.log(pred) - torch.log(r[:, None, None, inner])) ** 2
    sse = err.sum(-1)  # [P, G, R]
    best, idx = sse.min(-1)
    return best, rhos[idx]


def fit_p(phi_deg: Tensor, r: Tensor, cos_ab: Tensor, config: MixtureConfig) -> dict:
    """Fit ``p`` to critical sizes ``r`` ``[P, F]`` (finite, at ``phi_deg`` ``[F]`` with ``0°`` and ``90°`` at the
    ends) of ``P`` pairs with tangent cosines ``cos_ab`` ``[P]``: pooled ``p``, its bootstrap interval over
    pairs, each pair's own ``p`` and ρ, and the pooled error curve over the ``p`` grid."""
    grid = config.p_grid
    sse, rho = _sse_table(phi_deg, r, cos_ab, grid, config.cross_term)  # [P, G]
    pooled = sse.sum(0)
    best = int(pooled.argmin())
    g = np.random.default_rng(config.seed)
    counts = torch.from_numpy(g.multinomial(r.shape[0], np.full(r.shape[0], 1.0 / r.shape[0]), size=config.bootstrap))
    boot = grid[(counts.double() @ sse).argmin(1)]  # [B]
    lo, hi = np.quantile(boot.numpy(), [0.025, 0.975], method="inverted_cdf")
    return {"p": float(grid[best]), "p_low": float(lo), "p_high": float(hi), "p_pair": grid[sse.argmin(1)],
            "rho_pair": rho[:, best], "sse": pooled, "bootstrap_p": boot}


# -- measuring critical sizes -----------------------------------------------------------------------------
@torch.no_grad()
def critical_angles(subject: Subject, directions: Tensor, config: MixtureConfig = MixtureConfig()) -> tuple[Tensor, int]:
    """Threshold angles ``[n]`` (degrees, float64, ``inf`` where KL stays ≤ τ up to ``config.stop``) of
    ``directions`` ``[n, d]`` in sphere mode: a coarse scan, a fine scan inside the crossing step, and linear
    interpolation of KL between the two fine points around τ. Also returns the scan points spent."""
    coarse_cfg = ScanConfig(tau=config.tau, stop=config.stop, steps=config.coarse_steps)
    coarse = scan(subject, directions, coarse_cfg)
    points = directions.shape[0] * config.coarse_steps
    out = coarse.threshold.clone()
    reached = torch.isfinite(out)
    if not reached.any():
        return out, points
    idx = reached.nonzero()[:, 0]
    width = config.stop / (config.coarse_steps - 1)
    hi = out[idx]
    lo = (hi - width).clamp(min=0)
    frac = torch.linspace(0, 1, config.fine_steps, dtype=torch.float64)
    steps = lo[:, None] + (hi - lo)[:, None] * frac[None]  # [m, fine]
    fine = scan(subject, directions[idx], ScanConfig(tau=config.tau, steps=config.fine_steps),
                steps=steps.to(subject.base.dtype)).effects.double()
    points += idx.numel() * config.fine_steps
    k = (fine > config.tau).double().argmax(1).clamp(min=1)  # the last fine point is above τ by construction
    rows = torch.arange(idx.numel())
    d0, d1 = fine[rows, k - 1], fine[rows, k]
    t0, t1 = steps[rows, k - 1], steps[rows, k]
    w = ((config.tau - d0) / (d1 - d0)).clamp(0, 1).nan_to_num(1.0)
    out[idx] = t0 + w * (t1 - t0)
    return out, points


# -- the test ---------------------------------------------------------------------------------------------
@dataclass
class MixtureTest(Result):
    """Result of :func:`mixture_test`.

    Attributes:
        p: pooled fitted ``p`` (``inf``: the cap fits best; ``nan``: no pair usable).
        p_low, p_high: 95% bootstrap interval over pairs.
        config: the :class:`MixtureConfig`.
        phi_deg: ``[F]`` mixture angles.
        pairs: ``[P, 2]`` row indices into the given directions.
        cos_ab: ``[P]`` cosine of each pair's unit tangent parts.
        thresholds: ``[P, F]`` measured critical angle ``r*(φ)`` (degrees, ``inf``: not reached by ``stop``).
        used: ``[P]`` pairs in the fit (every ``r*`` finite).
        p_pair: ``[P]`` each used pair's own best ``p`` (``nan`` for unused pairs).
        rho_pair: ``[P]`` each used pair's cross term at the pooled ``p`` (0 without ``cross_term``).
        p_grid, sse: the ``p`` grid and the pooled error on it.
        bootstrap_p: ``[B]`` the bootstrap's ``p`` values.
        n_directions: directions given.
        scan_points: scan points run through the subject.
        seconds: wall time.

    ``save(directory)`` writes ``mixture.json``, ``mixture.safetensors`` and ``config.json``.
    """

    MARKER = "mixture.safetensors"
    WHAT = "mixture-test results"

    p: float
    p_low: float
    p_high: float
    config: MixtureConfig
    phi_deg: Tensor
    pairs: Tensor
    cos_ab: Tensor
    thresholds: Tensor
    used: Tensor
    p_pair: Tensor
    rho_pair: Tensor
    p_grid: Tensor
    sse: Tensor
    bootstrap_p: Tensor
    n_directions: int = 0
    scan_points: int = 0
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def n_pairs(self) -> int:
        return int(self.used.sum())

    def predicted(self, p: float | None = None, phi_deg: Tensor | None = None) -> Tensor:
        """``[P, F']`` the model's ``r*(φ)`` of every pair at ``p`` (default: the fitted one), at ``phi_deg``
        (default: the measured grid); each used pair's fitted ρ."""
        p = self.p if p is None else p
        phi = self.phi_deg if phi_deg is None else phi_deg.double()
        return lp_threshold(phi[None], self.thresholds[:, :1], self.thresholds[:, -1:], self.cos_ab[:, None],
                            torch.tensor(p, dtype=torch.float64), self.rho_pair[:, None])

    def refit(self, **changes) -> MixtureTest:
        """The same measurements fitted again with changed fit settings (``p_min``, ``p_max``, ``n_p``,
        ``cross_term``, ``bootstrap``, ``seed``): no new scans. E.g. ``test.refit(cross_term=True)``."""
        bad = set(changes) - _FIT_FIELDS
        if bad:
            raise ValueError(f"refit changes only the fit settings {sorted(_FIT_FIELDS)}; got {sorted(bad)} "
                             "(those need new scans: run mixture_test again)")
        config = replace(self.config, **changes)
        start = time.perf_counter()
        p, lo, hi, sse, boot, p_pair, rho_pair = _fit_used(self.phi_deg, self.thresholds, self.cos_ab, self.used, config)
        return replace(self, p=p, p_low=lo, p_high=hi, config=config, p_pair=p_pair, rho_pair=rho_pair,
                       p_grid=config.p_grid, sse=sse, bootstrap_p=boot,
                       seconds=self.seconds + time.perf_counter() - start)

    def summary(self) -> dict:
        return {"p": self.p, "p_low": self.p_low, "p_high": self.p_high, "n_pairs": self.n_pairs,
                "n_pairs_tried": int(self.pairs.shape[0]), "n_directions": self.n_directions,
                "scan_points": self.scan_points, "seconds": self.seconds,
                "p_pair_median": float(self.p_pair[self.used].median()) if self.n_pairs else math.nan, **self.extra}

    def config_dict(self) -> dict:
        return self.config.to_dict()

    def _write(self, directory: Path) -> None:
        save_json(directory / "mixture.json", {"config": self.config.to_dict(), "summary": self.summary(),
                                               "p": self.p, "p_low": self.p_low, "p_high": self.p_high,
                                               "n_directions": self.n_directions, "scan_points": self.scan_points,
                                               "seconds": self.seconds, "extra": self.extra})
        save_tensors(directory / "mixture.safetensors", {
            "phi_deg": self.phi_deg, "pairs": self.pairs, "cos_ab": self.cos_ab, "thresholds": self.thresholds,
            "used": self.used, "p_pair": self.p_pair, "rho_pair": self.rho_pair, "p_grid": self.p_grid,
            "sse": self.sse, "bootstrap_p": self.bootstrap_p,
            "p": torch.tensor([self.p, self.p_low, self.p_high], dtype=torch.float64)})

    @classmethod
    def _read(cls, directory: Path) -> MixtureTest:
        meta = load_json(directory / "mixture.json")
        t = load_tensors(directory / "mixture.safetensors")
        p, lo, hi = (float(v) for v in t.pop("p"))  # exact values (inf, nan) live in the tensors
        return cls(p=p, p_low=lo, p_high=hi, config=MixtureConfig.from_dict(meta["config"]),
                   n_directions=int(meta["n_directions"]), scan_points=int(meta["scan_points"]),
                   seconds=float(meta["seconds"]), extra=meta.get("extra", {}), **t)


def _choose_pairs(u: Tensor, config: MixtureConfig) -> Tensor:
    n = u.shape[0]
    i, j = torch.triu_indices(n, n, 1)
    cos = (u[i].double() * u[j].double()).sum(1)
    ok = cos.abs() <= config.max_abs_cos
    pairs = torch.stack([i[ok], j[ok]], 1)
    if pairs.shape[0] > config.max_pairs:
        g = torch.Generator().manual_seed(config.seed)
        pick = torch.randperm(pairs.shape[0], generator=g)[: config.max_pairs].sort().values
        pairs = pairs[pick]
    return pairs


def _fit_used(phi: Tensor, r: Tensor, cos_ab: Tensor, used: Tensor, config: MixtureConfig):
    """``fit_p`` on the used pairs, with per-pair values spread back over all pairs (``nan`` where unused)."""
    nan = torch.full((r.shape[0],), math.nan, dtype=torch.float64)
    p_pair, rho_pair = nan.clone(), nan.clone()
    if not used.any():
        log.warning("mixture test: no pair has every critical size within stop = %g deg; p is undefined", config.stop)
        return (math.nan, math.nan, math.nan, torch.full_like(config.p_grid, math.nan),
                torch.empty(0, dtype=torch.float64), p_pair, rho_pair)
    fit = fit_p(phi, r[used], cos_ab[used], config)
    p_pair[used], rho_pair[used] = fit["p_pair"], fit["rho_pair"]
    return fit["p"], fit["p_low"], fit["p_high"], fit["sse"], fit["bootstrap_p"], p_pair, rho_pair


def mixture_test(subject: Subject, directions: Tensor, config: MixtureConfig = MixtureConfig()) -> MixtureTest:
    """The Lᵖ mixture test of ``directions`` ``[n, d]`` (pairs formed among them) at ``subject``'s base;
    see the module docstring."""
    if not isinstance(config, MixtureConfig):
        raise TypeError(f"config must be a MixtureConfig, got {type(config).__name__}")
    start = time.perf_counter()
    base = subject.base
    directions = check_directions(directions, base.shape[0], base)
    if directions.shape[0] < 2:
        raise ValueError(f"the mixture test needs at least 2 directions to form a pair, got {directions.shape[0]}")
    u = effective_directions(directions.to(base.dtype), base, "sphere")  # [n, d] unit tangent parts
    pairs = _choose_pairs(u, config)
    if not pairs.shape[0]:
        raise NoUsablePairsError(f"no pair of the {u.shape[0]} directions has |cos| <= max_abs_cos = {config.max_abs_cos} "
                         "(after projecting out the base)")
    phi = config.phi_deg
    inner = torch.deg2rad(phi[1:-1]).to(base.dtype)
    a, b = u[pairs[:, 0]], u[pairs[:, 1]]  # [P, d]
    mixes = inner.cos()[None, :, None] * a[:, None] + inner.sin()[None, :, None] * b[:, None]  # [P, F-2, d]
    mixes = mixes / mixes.norm(dim=-1, keepdim=True)
    pure_ids = pairs.unique()
    dirs = torch.cat([u[pure_ids], mixes.reshape(-1, u.shape[1])])
    thr, points = critical_angles(subject, dirs, config)
    pure = torch.full((u.shape[0],), math.nan, dtype=torch.float64)
    pure[pure_ids] = thr[: pure_ids.numel()]
    r = torch.cat([pure[pairs[:, 0], None], thr[pure_ids.numel():].reshape(pairs.shape[0], -1), pure[pairs[:, 1], None]], 1)
    cos_ab = (a.double() * b.double()).sum(1)
    used = torch.isfinite(r).all(1)
    p, lo, hi, sse, boot, p_pair, rho_pair = _fit_used(phi, r, cos_ab, used, config)
    grid = config.p_grid
    seconds = time.perf_counter() - start
    log.info("mixture test: p = %.3g [%.3g, %.3g] from %d of %d pairs, %d scan points, %.1f s",
             p, lo, hi, int(used.sum()), pairs.shape[0], points, seconds)
    return MixtureTest(p=p, p_low=lo, p_high=hi, config=config, phi_deg=phi, pairs=pairs, cos_ab=cos_ab, thresholds=r,
                       used=used, p_pair=p_pair, rho_pair=rho_pair, p_grid=grid, sse=sse, bootstrap_p=boot,
                       n_directions=int(directions.shape[0]), scan_points=points, seconds=seconds)


# -- figures ----------------------------------------------------------------------------------------------


# what a summary row of the test keeps: the published model's p and, refitted on the same scans, p with a
# per-pair cross term (``p_cross*``; 2 for any quadratic form, so a p > 2 that a cross term explains goes)
MIXTURE_ROW = ("p", "p_low", "p_high", "n_pairs", "scan_points", "p_cross", "p_cross_low", "p_cross_high")


def mixture_row(subject: Subject, directions: Tensor, config: MixtureConfig = MixtureConfig()) -> dict:
    """:func:`mixture_test`'s summary (:data:`MIXTURE_ROW`), or, where no pair of the directions is usable,
    ``p`` undefined (``None``), ``n_pairs`` 0 and a ``note`` saying why: a result of that kind, not an error."""
    try:
        return test_row(mixture_test(subject, directions, config))
    except NoUsablePairsError as exc:
        return no_pair_row(exc)


def test_row(test: MixtureTest) -> dict:
    """A test's summary row (:data:`MIXTURE_ROW`): its own fit, and the same scans refitted with the other
    ``cross_term`` setting under ``p_cross*`` (the test's own fit there when it already has the cross term)."""
    summary = test.summary()
    cross = test if test.config.cross_term else test.refit(cross_term=True)
    return {**{k: summary[k] for k in MIXTURE_ROW if not k.startswith("p_cross")},
            "p_cross": cross.p, "p_cross_low": cross.p_low, "p_cross_high": cross.p_high}


def no_pair_row(exc: NoUsablePairsError) -> dict:
    """The row of a kind whose directions form no usable pair: ``p`` undefined, 0 pairs, and why."""
    return {**dict.fromkeys(MIXTURE_ROW), "n_pairs": 0, "scan_points": 0, "note": one_line(exc)}
