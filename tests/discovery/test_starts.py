"""starts: the starting directions of a round (given, covariance, metric), checked before any work."""

import math
from dataclasses import replace

import pytest
import torch

import sensfind as sf
from sensfind.discovery.starts import metric_directions

SMALL = sf.DiscoverConfig(restarts=12, iterations=40)


def test_bad_init_directions(toy):
    subject = toy.subject(0)
    cfg = replace(SMALL, restarts=2, iterations=1, init="given")
    with pytest.raises(ValueError, match=rf"shape \[R, {subject.d}\]"):
        sf.discover(subject, cfg, init_directions=torch.randn(2, subject.d + 1))
    with pytest.raises(ValueError, match="has 3 rows but restarts=2"):
        sf.discover(subject, cfg, init_directions=torch.randn(3, subject.d))
    with pytest.raises(ValueError, match="needs init_directions"):
        sf.discover(subject, cfg)
    with pytest.raises(ValueError, match="needs activations"):
        sf.discover(subject, replace(cfg, init="covariance"))


def test_covariance_init_follows_the_activations(toy):
    subject = toy.subject(0)
    g = torch.Generator().manual_seed(0)
    acts = torch.zeros(200, subject.d)
    acts[:, :3] = torch.randn(200, 3, generator=g) * torch.tensor([3.0, 2.0, 1.0])  # variance in 3 dims only
    cfg = replace(SMALL, restarts=5, iterations=0, init="covariance")
    found = sf.discover(subject, cfg, activations=acts)
    init = found.init_directions
    assert init.shape == (5, subject.d)
    assert torch.allclose(init[:, :3].norm(dim=1), torch.ones(5, dtype=init.dtype), atol=1e-6)
    with pytest.raises(ValueError, match="row 1 contains NaN"):
        bad = acts.clone()
        bad[1, 0] = math.nan
        sf.discover(subject, cfg, activations=bad)


def test_metric_starts_follow_what_the_output_reads():
    # the output reads coordinates 1 and 2 only (through a nonlinearity): the local metric J^T M J lives
    # there, so every start lies in span(e1, e2); in sphere mode the base (e0) is projected out
    base = torch.tensor([1.0, 0.5, -0.3, 0.0, 0.0], dtype=torch.float64)
    w = torch.tensor([[0.0, 2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0, 0.0], [0.0, 1.0, -1.0, 0.0, 0.0]], dtype=torch.float64)
    subject = sf.FunctionSubject(base, lambda x: torch.tanh(x @ w.T) * 3)
    for effect in ("kl", "l2", "cos"):
        u = metric_directions(subject, 16, seed=1, effect=effect, mode="sphere")
        assert u.shape == (16, 5) and torch.allclose(u.norm(dim=1), torch.ones(16, dtype=u.dtype))
        assert u[:, 3:].abs().max() < 1e-12, effect  # nothing along what the output ignores
        assert (u @ base).abs().max() < 1e-12  # orthogonal to the base
        assert (u[:, 1:3].abs().sum(1) > 0.5).all()
    # seeded, and a start counts as one point of the budget
    assert torch.equal(metric_directions(subject, 4, seed=3), metric_directions(subject, 4, seed=3))
    found = sf.discover(subject, sf.DiscoverConfig(restarts=3, iterations=2, final_steps=5, scan_steps=4, rounds=1,
                                                   abandon=False, tol=0.0))
    assert found.points_evaluated == 3 + 3 * 2 * 4 + len(found) * 5


def test_metric_starts_fall_back_to_isotropic_where_the_output_does_not_move():
    base = torch.tensor([1.0, 0.0, 0.0, 0.0])
    subject = sf.FunctionSubject(base, lambda x: torch.zeros(x.shape[0], 3) + 0 * x[:, :3])
    u = metric_directions(subject, 5, seed=2)
    assert torch.isfinite(u).all() and torch.allclose(u.norm(dim=1), torch.ones(5))
