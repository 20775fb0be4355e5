"""The toy model: config validation, determinism, the Subject contract, gradients, and the property it
exists for — planted feature directions are the sensitivity optima of a sphere-mode scan."""

from __future__ import annotations

import math
import time

import pytest
import torch

from sensfind.core.baselines import isotropic
from sensfind.core.scan import ScanConfig, scan
from sensfind.core.subject import Subject
from sensfind.core import toy
from sensfind.core.toy import ToyConfig, ToyModel, ToySubject, feature_cosines, project_out

TAU = 0.5
SEEDS = (0, 1, 2)


def tiny_config(**overrides) -> ToyConfig:
    """A toy small enough for gradcheck; soft gates keep the derivatives moderate."""
    kwargs = dict(
        d=4, n_features=6, k_active=2, magnitude=(1.0, 1.5), threshold=0.6, sharpness=0.3,
        n_out=5, vote_fraction=0.5, output_scale=2.0, margin=0.0, seed=0,
    )
    kwargs.update(overrides)
    return ToyConfig(**kwargs)


@pytest.fixture(scope="module")
def models() -> dict[int, ToyModel]:
    return {seed: ToyModel(ToyConfig(seed=seed)) for seed in SEEDS}


# -- configuration ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(d=1), "d must be"),
        (dict(d=64, n_features=64), "n_features must be an integer > d"),
        (dict(k_active=0), "k_active must be"),
        (dict(k_active=128), "k_active must be"),
        (dict(k_active=2.0), "k_active must be"),
        (dict(magnitude=(1.5, 1.0)), "magnitude must satisfy"),
        (dict(magnitude=(0.0, 1.0)), "magnitude must satisfy"),
        (dict(magnitude=1.0), "magnitude must be a pair"),
        (dict(noise=-0.1), "noise must be"),
        (dict(threshold=1.2), r"threshold must be a finite number in \(0, lo"),
        (dict(threshold=0.0), "threshold must be"),
        (dict(sharpness=0.0), "sharpness must be"),
        (dict(sharpness=float("nan")), "sharpness must be"),
        (dict(n_out=1), "n_out must be"),
        (dict(vote_fraction=1.0), "vote_fraction must be"),
        (dict(output_scale=0.0), "output_scale must be"),
        (dict(feature_init="orthogonal"), "feature_init must be 'spread' or 'random'"),
        (dict(margin=0.6), "margin must be"),
        (dict(seed=-1), "seed must be"),
        (dict(d=True), "d must be"),
    ],
)
def test_config_rejects_bad_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        ToyConfig(**overrides)


def test_config_defaults_are_valid_and_frozen():
    c = ToyConfig()
    assert c.n_features > c.d and 0 < c.threshold < c.magnitude[0]
    with pytest.raises(AttributeError):
        c.d = 3  # type: ignore[misc]
    assert ToyConfig(magnitude=[1, 2]).magnitude == (1.0, 2.0)


def test_model_rejects_bad_arguments():
    with pytest.raises(ValueError, match="dtype"):
        ToyModel(tiny_config(), dtype=torch.int64)
    model = ToyModel(tiny_config())
    with pytest.raises(ValueError, match="number of samples"):
        model.sample(0)
    with pytest.raises(ValueError, match="shape"):
        model.subject(torch.ones(5, dtype=torch.float32))
    with pytest.raises(TypeError, match="input index"):
        model.subject("first")


# -- determinism -----------------------------------------------------------------------------
def test_same_seed_same_model_and_inputs(models):
    a = models[0]
    toy._planted_features.cache_clear()  # rebuild the features rather than reuse the cached ones
    b = ToyModel(ToyConfig(seed=0))
    assert torch.equal(a.features, b.features) and torch.equal(a.votes, b.votes)
    sa, sb = a.sample(16, seed=7), b.sample(16, seed=7)
    assert torch.equal(sa.acts, sb.acts) and torch.equal(sa.active, sb.active)
    assert torch.equal(a.subject(5).base, b.subject(5).base)
    assert not torch.allclose(a.features, models[1].features)
    assert not torch.equal(a.sample(16, seed=7).acts, a.sample(16, seed=8).acts)


def test_generator_is_advanced_and_dtypes_agree():
    model = ToyModel(ToyConfig())
    g = torch.Generator().manual_seed(0)
    first, second = model.sample(4, seed=g), model.sample(4, seed=g)
    assert not torch.equal(first.acts, second.acts)
    m64 = ToyModel(ToyConfig(), dtype=torch.float64)
    assert m64.features.dtype == torch.float64
    assert torch.allclose(m64.features.float(), model.features)
    assert torch.allclose(m64.subject(2).base.float(), model.subject(2).base)


def test_features_are_unit_and_spread_lowers_coherence():
    spread = ToyModel(ToyConfig()).features.double()
    plain = ToyModel(ToyConfig(feature_init="random")).features.double()
    assert torch.allclose(spread.norm(dim=1), torch.ones(spread.shape[0], dtype=torch.float64))

    def max_cos(f):
        c = f @ f.T
        c.fill_diagonal_(0)
        return float(c.abs().max())

    assert max_cos(spread) < 0.15 < 0.3 < max_cos(plain)


# -- the Subject contract --------------------------------------------------------------------
def test_subject_contract(models):
    model = models[0]
    sub = model.subject(0)
    assert isinstance(sub, Subject) and isinstance(sub, ToySubject)
    c = model.config
    assert sub.base.shape == (c.d,) and sub.base_output.shape == (c.n_out,)
    assert sub.features is model.features and sub.model is model
    acts = sub.base + 0.3 * torch.randn(5, c.d, generator=torch.Generator().manual_seed(0))
    acts.requires_grad_(True)
    out = sub.run(acts)
    assert out.shape == (5, c.n_out) and out.dtype == torch.float32
    out.sum().backward()
    assert acts.grad is not None and acts.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="shape"):
        sub.run(torch.zeros(3, c.d + 1))


def test_active_features_are_the_ones_on(models):
    model = models[1]
    for i in range(4):
        sub = model.subject(i)
        assert sub.active.shape == (model.config.k_active,)
        on = model.on(sub.base[None])[0]
        assert torch.equal(on.nonzero()[:, 0], sub.active)
        again = model.subject(sub.base)
        assert torch.equal(again.active, sub.active)
        assert torch.equal(again.base_output, sub.base_output)


def test_zero_perturbation_has_zero_effect(models):
    sub = models[0].subject(1)
    assert torch.equal(sub.run(sub.base[None])[0], sub.base_output)
    dirs = isotropic(8, sub.d, seed=0)
    effects = scan(sub, dirs, ScanConfig(steps=11)).effects
    assert effects[:, 0].abs().max() < 1e-6
    assert (effects[:, 1:] >= -1e-6).all()


def test_gradcheck_run_float64():
    model = ToyModel(tiny_config(), dtype=torch.float64)
    base = model.sample(1, seed=0, clean=False).acts[0]
    sub = model.subject(base)
    acts = (base + 0.2 * torch.randn(3, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    acts.requires_grad_(True)
    assert torch.autograd.gradcheck(sub.run, (acts,))


def test_gradcheck_scan_effects_in_the_direction():
    model = ToyModel(tiny_config(), dtype=torch.float64)
    sub = model.subject(model.sample(1, seed=2, clean=False).acts[0])
    dirs = torch.randn(2, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64).requires_grad_(True)
    config = ScanConfig(stop=90.0, steps=5)
    assert torch.autograd.gradcheck(lambda u: scan(sub, u, config).effects, (dirs,))


def test_real_others_are_other_clean_inputs(models):
    model = models[2]
    sub = model.subject(0)
    others = sub.real_others(12, seed=0)
    assert others.shape == (12, model.d)
    assert not torch.isclose(others, sub.base).all(dim=1).any()
    assert (model.on(others).sum(dim=1) == model.config.k_active).all()
    # a seed that reproduces the subject's own stream still never returns the base itself
    own = model.subject(model.sample(1, seed=11).acts[0])
    assert not torch.isclose(own.real_others(4, seed=11), own.base).all(dim=1).any()


# -- geometry helpers ------------------------------------------------------------------------
def test_project_out_and_feature_cosines(models):
    model = models[0]
    sub = model.subject(0)
    u = project_out(sub.signed_features(), sub.base)
    assert torch.allclose(u.norm(dim=1), torch.ones(u.shape[0]), atol=1e-5)
    assert (u @ sub.base).abs().max() < 1e-4
    cos = feature_cosines(sub.signed_features(), model.features, sub.base)
    assert cos.shape == (model.n_features, model.n_features)
    sign = torch.where(sub.is_active, -1.0, 1.0)
    assert torch.allclose(cos.diagonal(), sign, atol=1e-5)
    # inactive features stay nearly orthogonal after the projection; the active ones do not (their
    # projected parts must sum to about zero), which matchers have to live with
    off = ~sub.is_active
    inactive = cos[off][:, off] - torch.diag(cos.diagonal()[off])
    assert inactive.abs().max() < 0.3
    with pytest.raises(ValueError, match="parallel"):
        project_out(2.0 * sub.base[None], sub.base)
    # a feature parallel to the base has no orthogonal part: cosine 0, not NaN
    base = model.features[0] * 1.3
    cos = feature_cosines(torch.randn(3, model.d, generator=torch.Generator().manual_seed(0)), model.features[:2], base)
    assert torch.isfinite(cos).all() and (cos[:, 0] == 0).all()


# -- the property the toy exists for ----------------------------------------------------------
def test_inputs_are_clean_and_flips_matter(models):
    for model in models.values():
        raw = model.sample(256, seed=5, clean=False)
        clean = model.is_clean(raw.acts.double(), raw.active)
        assert clean.float().mean() > 0.9
        for i in range(3):
            flips = model.subject(i).flip_kl()
            assert flips.min() > TAU and flips.median() > 2 * TAU


def test_planted_features_blow_up_far_earlier_than_random_directions(models):
    for seed, model in models.items():
        for i in range(2):
            sub = model.subject(i)
            feats = scan(sub, project_out(sub.signed_features(), sub.base)).threshold
            rand = scan(sub, isotropic(64, model.d, seed=100 + i)).threshold
            best, median_random = float(feats.min()), float(rand.median())
            assert math.isfinite(best)
            assert best <= 0.5 * median_random, (seed, i, best, median_random)
            assert float(feats.median()) < median_random


def test_feature_directions_are_local_optima(models):
    fine = ScanConfig(stop=45.0, steps=451)  # 0.1° resolution
    eps = math.radians(20.0)
    for seed, model in models.items():
        sub = model.subject(0)
        u = project_out(sub.signed_features(), sub.base)
        for j in scan(sub, u).threshold.argsort()[:2].tolist():
            g = torch.Generator().manual_seed(seed * 100 + j)
            r = torch.randn(6, model.d, generator=g)
            r = project_out(r - (r @ u[j])[:, None] * u[j], sub.base)  # tangent at u[j], orthogonal to the base
            tilted = math.cos(eps) * u[j] + math.sin(eps) * r
            thr = scan(sub, torch.cat([u[j][None], tilted]), fine).threshold
            assert math.isfinite(float(thr[0]))
            assert (thr[1:] > thr[0]).all(), (seed, j, thr.tolist())


def test_knobs_break_the_picture():
    weak = ToyModel(ToyConfig(output_scale=1.0))
    sub = weak.subject(0)
    assert sub.flip_kl().max() < TAU
    assert torch.isinf(scan(sub, sub.signed_features()).threshold).all()
    crowded = ToyModel(ToyConfig(d=32, feature_init="random"))
    with pytest.raises(ValueError, match="interference"):
        crowded.sample(1)
    assert crowded.sample(4, clean=False).acts.shape == (4, 32)


def test_scan_is_fast(models):
    sub = models[0].subject(0)
    dirs = isotropic(64, sub.d, seed=0)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        scan(sub, dirs)
        times.append(time.perf_counter() - start)
    assert min(times) < 1.0
