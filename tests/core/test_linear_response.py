"""The pullback metric G = Jᵀ(diag p0 − p0p0ᵀ)J: matrix-free products, eigenpairs, and what it predicts."""

import math

import pytest
import torch

from sensfind.core.baselines import isotropic
from sensfind.core.effects import kl
from sensfind.core.linear_response import (
    LinearResponse,
    LinearResponseConfig,
    PullbackMetric,
    early_growth,
    linear_directions,
    linear_predictions,
    linear_response,
    quadratic_onset_deg,
    rayleigh_quotients,
)
from sensfind.core.mixture import MixtureConfig, critical_angles
from sensfind.core.subject import FunctionSubject
from sensfind.core.toy import ToyModel

D, N_OUT = 12, 9


def mlp_subject(seed=0, d=D, n_out=N_OUT, dtype=torch.float64):
    """A small non-linear subject (tanh layer, then logits) in ``dtype``."""
    g = torch.Generator().manual_seed(seed)
    w1 = torch.randn(2 * d, d, generator=g, dtype=torch.float64).to(dtype) / math.sqrt(d)
    w2 = torch.randn(n_out, 2 * d, generator=g, dtype=torch.float64).to(dtype)
    x0 = torch.randn(d, generator=g, dtype=torch.float64).to(dtype)

    def fn(x):
        return torch.tanh(x @ w1.T) @ w2.T

    return FunctionSubject(x0, fn)


def linear_subject(seed=0, d=16, n_out=12):
    """Logits that are exactly a linear map of the activation (KL then softmax only)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n_out, d, generator=g, dtype=torch.float64)
    x0 = torch.randn(d, generator=g, dtype=torch.float64)

    def linear(x):
        return x @ w.T

    return FunctionSubject(x0, linear)


def dense_metric(subject, mode):
    """``G`` from the dense Jacobian (autograd), and ``P G P`` in sphere mode. ``[d, d]``."""
    x0 = subject.base
    jac = torch.autograd.functional.jacobian(lambda x: subject.run(x[None])[0], x0)  # [n_out, d]
    p0 = torch.softmax(subject.run(x0[None])[0].detach(), -1)
    g = jac.T @ (torch.diag(p0) - torch.outer(p0, p0)) @ jac
    if mode == "sphere":
        xh = x0 / x0.norm()
        proj = torch.eye(x0.shape[0], dtype=x0.dtype) - torch.outer(xh, xh)
        g = proj @ g @ proj
    return g


@pytest.mark.parametrize("mode", ["sphere", "straight"])
def test_matrix_free_products_equal_the_dense_metric(mode):
    s = mlp_subject()
    dense = dense_metric(s, mode)
    metric = PullbackMetric(s, mode, batch=5)  # several batches
    v = torch.randn(11, D, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(metric(v), v @ dense, rtol=1e-10, atol=1e-12)
    assert metric.products == 11
    assert torch.allclose(metric.quadratic(v), ((v @ dense) * v).sum(1), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", ["exact", "krylov"])
def test_eigenpairs_match_eigh(method):
    s = mlp_subject(seed=2, d=48, n_out=14)  # G has rank <= 13: the Krylov space finds it in a few blocks
    vals, vecs = torch.linalg.eigh(dense_metric(s, "sphere"))
    vals, vecs = vals.flip(0)[:5], vecs.flip(1)[:, :5].T
    r = linear_response(s, 5, config=LinearResponseConfig(method=method, block=4, tol=1e-8))
    assert r.method == method and r.converged
    assert torch.allclose(r.eigenvalues, vals, rtol=1e-6)
    assert (r.eigenvalues.diff() <= 0).all()
    assert torch.allclose(r.eigenvectors.norm(dim=1), torch.ones(5, dtype=torch.float64))
    gaps = (vals[:-1] - vals[1:]) / vals[0]
    separated = torch.cat([gaps, gaps[-1:]]) > 1e-3  # eigenvectors are defined up to sign where the gap is clear
    cos = (r.eigenvectors * vecs).sum(1).abs()
    assert (cos[separated] > 1 - 1e-6).all()
    if method == "krylov":
        assert r.products < 47  # fewer than the exact basis of the tangent space


def test_krylov_reports_not_converged_at_the_product_cap():
    s = mlp_subject(seed=3, d=40, n_out=60)
    r = linear_response(s, 6, config=LinearResponseConfig(method="krylov", block=2, max_products=4, tol=1e-10))
    assert not r.converged and r.products <= 4


def test_tangent_restriction():
    s = mlp_subject(seed=4)
    xhat = s.base / s.base.norm()
    metric = PullbackMetric(s, "sphere")
    assert metric(xhat[None]).norm() < 1e-12
    straight = PullbackMetric(s, "straight")(xhat[None]).norm()
    assert straight > 1e-3  # the unrestricted metric does move along the base
    r = linear_response(s, D - 1)
    assert (r.eigenvectors @ xhat).abs().max() < 1e-10
    with pytest.raises(ValueError, match="k must be at most 11"):
        linear_response(s, D)


def test_kl_is_half_the_quadratic_form_to_second_order():
    s = mlp_subject(seed=5)
    dense = dense_metric(s, "straight")
    u = isotropic(4, D, seed=6, dtype=torch.float64)
    y0 = s.run(s.base[None])[0]
    errors = []
    for size in (1e-1, 1e-2, 1e-3):
        delta = size * u
        measured = kl(y0, s.run(s.base + delta))
        predicted = 0.5 * ((delta @ dense) * delta).sum(1)
        errors.append(float(((measured - predicted) / predicted).abs().max()))
    # the relative error is O(|δ|): it shrinks about tenfold per decade
    assert errors[1] < errors[0] / 5 and errors[2] < errors[1] / 5 and errors[2] < 1e-2


def test_linear_map_onset_matches_the_measured_threshold_at_small_tau():
    s = linear_subject()
    u = isotropic(8, 16, seed=2, dtype=torch.float64)
    worst = []
    for tau in (1e-2, 1e-3):
        thr, _ = critical_angles(s, u, MixtureConfig(tau=tau, stop=30.0, coarse_steps=301, fine_steps=101))
        pred = linear_predictions(s, u, tau=tau, thresholds=thr)
        assert torch.isfinite(pred.ratio).all()
        worst.append(float((pred.ratio - 1).abs().max()))
    # the cubic term is O(θ): the prediction's error shrinks with τ (about √10 per decade)
    assert worst[1] < worst[0] / 2 and worst[1] < 0.06
    growth = early_growth(s, u, angles=(0.1, 0.2))
    assert ((growth - 1).abs() < 0.02).all()


def test_predictions_agree_with_the_eigenpairs():
    s = mlp_subject(seed=7, d=20, n_out=25)
    r = linear_response(s, 3)
    q = rayleigh_quotients(s, r.eigenvectors)
    assert torch.allclose(q, r.eigenvalues, rtol=1e-8)
    onset = quadratic_onset_deg(q, float(s.base.norm()), 0.5)
    assert torch.allclose(onset, r.onset_deg(0.5))
    assert torch.allclose(onset, torch.rad2deg(torch.sqrt(1.0 / (s.base.norm() ** 2 * q))))
    assert math.isinf(float(quadratic_onset_deg(torch.zeros(1, dtype=torch.float64), 1.0)[0]))


def test_linear_directions_have_both_signs():
    s = mlp_subject(seed=8)
    r = linear_response(s, 3)
    dirs = linear_directions(s, 5, response=r)
    assert dirs.shape == (5, D)
    assert torch.equal(dirs[0], r.eigenvectors[0]) and torch.equal(dirs[1], -r.eigenvectors[0])
    assert torch.equal(dirs[4], r.eigenvectors[2])
    with pytest.raises(ValueError, match="need 4"):
        linear_directions(s, 8, response=r)


def test_float32_subject_keeps_its_dtype_and_agrees_with_float64():
    s64 = mlp_subject(seed=9, d=20, n_out=16)
    s32 = FunctionSubject(s64.base.float(), lambda x: s64.fn(x.double()).float())
    r64, r32 = linear_response(s64, 3), linear_response(s32, 3, config=LinearResponseConfig(method="krylov", tol=1e-3))
    assert r32.eigenvectors.dtype == torch.float32
    assert torch.allclose(r32.eigenvalues, r64.eigenvalues, rtol=1e-3)


def test_toy_planted_features_grow_faster_than_quadratic_somewhere():
    """On the toy the gates are saturated at the base, so G is tiny along planted features: their quadratic
    onset is far beyond the measured threshold (the plateau-then-step the quadratic form cannot see)."""
    toy = ToyModel(dtype=torch.float64)
    s = toy.subject(0)
    f = s.signed_features()[~s.is_active][:6]
    pred = linear_predictions(s, f, thresholds=s.signed_thresholds()[~s.is_active][:6])
    finite = torch.isfinite(pred.ratio)
    assert finite.any() and (pred.ratio[finite] < 0.5).all()


def test_result_saves_and_loads(tmp_path):
    s = mlp_subject(seed=10)
    r = linear_response(s, 4, config=LinearResponseConfig(method="krylov", seed=3))
    r.save(tmp_path / "lr")
    back = LinearResponse.load(tmp_path / "lr")
    assert back.config == r.config and back.method == "krylov" and back.products == r.products
    assert torch.equal(back.eigenvalues, r.eigenvalues) and torch.equal(back.eigenvectors, r.eigenvectors)
    assert (tmp_path / "lr" / "config.json").is_file()


@pytest.mark.parametrize("bad, match", [
    ({"mode": "diagonal"}, "mode must be one of"),
    ({"method": "lanczos"}, "method must be one of"),
    ({"tol": 0.0}, "tol must be >"),
    ({"block": 0}, "block must be an integer >= 1"),
    ({"max_products": 0}, "max_products must be an integer >= 1"),
])
def test_config_is_validated(bad, match):
    with pytest.raises(ValueError, match=match):
        LinearResponseConfig(**bad)
