"""The Lᵖ mixture test: the model, the fit, and what it finds on subjects whose answer is known."""

import math

import pytest
import torch

from sensfind.core.baselines import isotropic
from sensfind.core.geometry import project_out, tangent_rotations
from sensfind.core.mixture import test_row as summary_row  # not collected as a test
from sensfind.core.linear_response import linear_response
from sensfind.reporting.plots import plot_mixture_curves, plot_p_by_kind
from sensfind.core.mixture import (
    MixtureConfig,
    MixtureTest,
    critical_angles,
    fit_p,
    lp_threshold,
    MIXTURE_ROW,
    mixture_row,
    mixture_test,
)
from sensfind.errors import NoUsablePairsError
from sensfind.core.subject import FunctionSubject
from sensfind.core.toy import ToyModel

PHI = MixtureConfig().phi_deg


def linear_subject(seed=0, d=32, n_out=40):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n_out, d, generator=g, dtype=torch.float64)
    x0 = 0.3 * torch.randn(d, generator=g, dtype=torch.float64)
    return FunctionSubject(x0, lambda x: x @ w.T)


# small τ keeps the linear subject in its quadratic regime
SMALL_TAU = MixtureConfig(tau=0.02, stop=30.0, coarse_steps=61)


@pytest.fixture(scope="module")
def toy_subject():
    return ToyModel().subject(0)


def test_model_limits():
    s_a, s_b = torch.tensor(10.0), torch.tensor(20.0)
    phi = torch.tensor([0.0, 30.0, 60.0, 90.0])
    r2 = lp_threshold(phi, s_a, s_b, 0.0, torch.tensor(2.0))
    rad = torch.deg2rad(phi.double())
    assert torch.allclose(r2, 1 / torch.sqrt((rad.cos() / 10) ** 2 + (rad.sin() / 20) ** 2))  # an ellipse
    rinf = lp_threshold(phi, s_a, s_b, 0.0, torch.tensor(math.inf))
    hard = torch.minimum(10 / rad.cos().clamp(min=1e-300), 20 / rad.sin().clamp(min=1e-300))
    assert torch.allclose(rinf, hard)  # blows up when either coefficient reaches its own threshold
    assert torch.allclose(lp_threshold(phi, s_a, s_b, 0.0, torch.tensor(200.0)), rinf, rtol=1e-2)
    # ρ = cos γ at p = 2 turns the model into the isotropic |δ|² for a pair at angle γ: constant r*
    iso = lp_threshold(phi, s_a, s_a, 0.4, torch.tensor(2.0), 0.4)
    assert torch.allclose(iso, torch.full_like(iso, 10.0))


@pytest.mark.parametrize("p_true, cos_ab", [(2.0, 0.0), (4.0, 0.35), (math.inf, -0.3)])
def test_fit_recovers_p_from_model_curves(p_true, cos_ab):
    g = torch.Generator().manual_seed(0)
    s = 5 + 20 * torch.rand(6, 2, generator=g, dtype=torch.float64)
    cos = torch.full((6,), cos_ab, dtype=torch.float64)
    r = lp_threshold(PHI[None], s[:, :1], s[:, 1:], cos[:, None], torch.tensor(p_true))
    fit = fit_p(PHI, r, cos, MixtureConfig(bootstrap=50))
    if math.isinf(p_true):
        assert fit["p"] >= 32
    else:
        assert fit["p"] == pytest.approx(p_true, rel=0.02)
    assert fit["p_low"] <= fit["p"] <= fit["p_high"]


def test_linear_map_gives_p_two_on_its_eigenvectors():
    """G's eigenvectors are G-orthogonal: the quadratic form has no cross term, the fit is p = 2 exactly
    up to the cubic term and the threshold resolution."""
    s = linear_subject()
    r = mixture_test(s, linear_response(s, 6).eigenvectors, SMALL_TAU)
    assert r.n_pairs == 15
    assert 1.8 < r.p_low <= r.p <= r.p_high < 2.3


def test_linear_map_random_directions_cross_terms():
    """Random directions have aᵀGb ≠ 0: without the cross term the pooled fit is near 2 with a wide
    interval; with it every pair fits p = 2."""
    s = linear_subject()
    u = isotropic(6, 32, seed=1, dtype=torch.float64)
    plain = mixture_test(s, u, SMALL_TAU)
    assert plain.p_low <= 2 <= plain.p_high
    crossed = mixture_test(s, u, MixtureConfig(**{**SMALL_TAU.to_dict(), "cross_term": True}))
    assert abs(crossed.p - 2) < 0.15 and crossed.p_low > 1.8 and crossed.p_high < 2.3
    refit = plain.refit(cross_term=True)  # the same measurements, no new scans
    assert refit.scan_points == plain.scan_points and torch.equal(refit.thresholds, plain.thresholds)
    assert (refit.p, refit.p_low, refit.p_high) == (crossed.p, crossed.p_low, crossed.p_high)
    with pytest.raises(ValueError, match="only the fit settings"):
        plain.refit(tau=0.1)
    row = summary_row(plain)  # a summary row carries both fits of the same scans
    assert (row["p"], row["p_low"], row["p_high"]) == (plain.p, plain.p_low, plain.p_high)
    assert (row["p_cross"], row["p_cross_low"], row["p_cross_high"]) == (crossed.p, crossed.p_low, crossed.p_high)
    assert summary_row(crossed)["p_cross"] == crossed.p  # already fitted with the cross term: the same fit


def test_toy_planted_features_are_privileged_and_rotations_are_less(toy_subject):
    s = toy_subject
    feats = s.signed_features()[~s.is_active][:6]  # switching an inactive feature on
    planted = mixture_test(s, feats, MixtureConfig())
    assert planted.p_low > 2 and planted.p > 4
    u = project_out(feats, s.base)
    ps = [planted.p]
    for deg in (30.0, 60.0):
        rotated = tangent_rotations(u, s.base, 1, deg, seed=3)[:, 0]
        ps.append(mixture_test(s, rotated, MixtureConfig()).p)
    assert ps[0] >= ps[1] >= ps[2] and ps[2] < ps[0]  # falling towards 2 as the directions turn away
    iso = mixture_test(s, isotropic(6, s.d, seed=1), MixtureConfig())
    assert iso.p_low <= 2 <= iso.p_high and iso.p < ps[0]


def test_scan_points_are_counted(toy_subject):
    rows = []

    class Counting:
        base = toy_subject.base
        base_output = toy_subject.base_output

        def run(self, acts):
            rows.append(acts.shape[0])
            return toy_subject.run(acts)

    cfg = MixtureConfig(n_phi=4, coarse_steps=31, fine_steps=11, bootstrap=20)
    r = mixture_test(Counting(), isotropic(3, toy_subject.d, seed=5), cfg)
    assert r.scan_points == sum(rows)
    assert r.seconds > 0 and r.thresholds.shape == (3, 4)


def test_critical_angles_resolve_finer_than_the_coarse_grid(toy_subject):
    dirs = isotropic(4, toy_subject.d, seed=6)
    coarse, _ = critical_angles(toy_subject, dirs, MixtureConfig(coarse_steps=31, fine_steps=2))
    fine, _ = critical_angles(toy_subject, dirs, MixtureConfig(coarse_steps=721, fine_steps=2))
    zoom, points = critical_angles(toy_subject, dirs, MixtureConfig(coarse_steps=31, fine_steps=41))
    ok = torch.isfinite(fine)
    assert ok.any() and ((zoom - fine)[ok].abs() < 0.25).all()
    assert (zoom - fine)[ok].abs().sum() < (coarse - fine)[ok].abs().sum()  # the 6° coarse grid alone is worse
    assert points < 4 * 721


def test_unusable_pairs_are_left_out_and_reported():
    s = linear_subject()
    u = isotropic(3, 32, seed=2, dtype=torch.float64)
    r = mixture_test(s, u, MixtureConfig(stop=0.5, coarse_steps=3, fine_steps=2, bootstrap=10))  # nothing crosses
    assert r.n_pairs == 0 and math.isnan(r.p)
    near = torch.stack([u[0], u[0] + 0.01 * u[1], u[2]])  # the first two are nearly parallel
    r = mixture_test(s, near, MixtureConfig(**{**SMALL_TAU.to_dict(), "bootstrap": 10}))
    assert r.pairs.tolist() == [[0, 2], [1, 2]]
    with pytest.raises(ValueError, match="at least 2 directions"):
        mixture_test(s, u[:1])


def test_result_saves_loads_and_plots(tmp_path, toy_subject):
    r = mixture_test(toy_subject, isotropic(4, toy_subject.d, seed=7), MixtureConfig(bootstrap=50, coarse_steps=46))
    r.save(tmp_path / "mix")
    back = MixtureTest.load(tmp_path / "mix")
    assert back.config == r.config and back.scan_points == r.scan_points
    assert (back.p, back.p_low, back.p_high) == (r.p, r.p_low, r.p_high)
    assert torch.equal(back.thresholds, r.thresholds) and torch.equal(back.pairs, r.pairs)
    assert (tmp_path / "mix" / "config.json").is_file()
    assert plot_mixture_curves(tmp_path / "curves.png", r).stat().st_size > 0
    assert plot_p_by_kind(tmp_path / "p.png", {"isotropic": (r.p, r.p_low, r.p_high), "∞": (math.inf, 30.0, math.inf)},
                          dots={"isotropic": [1.5, 2.5]}).stat().st_size > 0


@pytest.mark.parametrize("bad, match", [
    ({"n_phi": 2}, "n_phi must be an integer >= 3"),
    ({"stop": 200.0}, "stop must be <= 180"),
    ({"max_abs_cos": 1.0}, "max_abs_cos must be < 1"),
    ({"p_min": 4.0, "p_max": 2.0}, "p_max must be > 4.0"),
    ({"cross_term": "yes"}, "cross_term must be True or False"),
])
def test_config_is_validated(bad, match):
    with pytest.raises(ValueError, match=match):
        MixtureConfig(**bad)


def test_no_usable_pair_is_a_row_with_p_undefined_not_an_error():
    subject = linear_subject()
    g = torch.Generator().manual_seed(1)
    u = torch.randn(32, generator=g, dtype=torch.float64)
    near = torch.stack([u, u + 0.05 * torch.randn(32, generator=g, dtype=torch.float64), 1.01 * u])  # |cos| > 0.8
    with pytest.raises(NoUsablePairsError, match="no pair of the 3 directions has .cos. <= max_abs_cos = 0.8"):
        mixture_test(subject, near, SMALL_TAU)
    row = mixture_row(subject, near, SMALL_TAU)
    assert row["n_pairs"] == 0 and row["p"] is None and row["scan_points"] == 0 and "no pair of the 3" in row["note"]
    assert set(MIXTURE_ROW) <= set(row) and row["p_cross"] is None
    apart = mixture_row(subject, isotropic(3, 32, seed=2, dtype=torch.float64), SMALL_TAU)
    assert apart["n_pairs"] >= 1 and apart["scan_points"] > 0 and "note" not in apart
