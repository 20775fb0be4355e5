"""Blowup metrics: hard threshold, max slope, and the differentiable soft blowup distance."""

import math

import pytest
import torch

import sensfind as sf
from sensfind.core.blowup import max_slope_index, soft_blowup, threshold_index, threshold_value


def test_threshold_first_crossing_and_not_reached():
    effects = torch.tensor([[0.0, 0.1, 0.6, 0.2, 0.9], [0.0, 0.1, 0.2, 0.3, 0.4]])
    steps = torch.tensor([0.0, 10.0, 20.0, 30.0, 40.0])
    assert threshold_index(effects, 0.5).tolist() == [2, -1]
    v = threshold_value(effects, steps, 0.5)
    assert v[0].item() == 20.0 and math.isinf(v[1].item())


def test_max_slope_index_and_floor():
    effects = torch.tensor([[0.0, 0.1, 0.2, 1.5, 1.6], [0.0, 0.0, 0.0, 0.0, 0.0]])
    assert max_slope_index(effects).tolist() == [3, 4]  # flat curve -> last step (LASR convention)


def test_soft_blowup_tends_to_hard_threshold_as_temperature_falls():
    steps = torch.linspace(0, 180, 91, dtype=torch.float64)
    effects = 3.0 / (1 + torch.exp(-(steps - 57.3) / 4.0))  # crosses 0.5 between grid points
    hard = threshold_value(effects[None], steps, 0.5).item()
    errs = [abs(soft_blowup(effects, steps, 0.5, t).item() - hard) for t in (1.0, 0.3, 0.1, 0.03, 0.01, 0.001)]
    assert all(a >= b - 1e-9 for a, b in zip(errs, errs[1:])), errs
    assert errs[-1] < 1e-6
    # never crossed: tends to the last step
    flat = torch.full_like(steps, 0.1)
    assert abs(soft_blowup(flat, steps, 0.5, 0.001).item() - 180.0) < 1e-6


def test_soft_blowup_gradcheck_on_effects():
    torch.manual_seed(0)
    effects = (torch.rand(3, 12, dtype=torch.float64) * 1.2).cumsum(-1).requires_grad_(True)
    steps = torch.linspace(0, 90, 12, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda e: soft_blowup(e, steps, 1.0, 0.5), (effects,))


def test_soft_blowup_gradcheck_through_transformer_scan(tiny_model64):
    subject = sf.TransformerSubject(tiny_model64, [3, 14, 15, 92, 65])
    assert subject.base.dtype == torch.float64
    dirs = torch.randn(2, subject.d, dtype=torch.float64, requires_grad=True)
    cfg = sf.ScanConfig(steps=6, tau=0.002)

    def objective(u):
        res = sf.scan(subject, u, cfg)
        return soft_blowup(res.effects, res.steps, cfg.tau, temperature=0.002)

    assert torch.autograd.gradcheck(objective, (dirs,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("bad", [0.0, -0.5, float("inf"), float("nan")])
def test_bad_tau_and_temperature(bad):
    e, s = torch.zeros(1, 3), torch.arange(3.0)
    with pytest.raises(ValueError, match="tau must be"):
        soft_blowup(e, s, tau=bad)
    with pytest.raises(ValueError, match="temperature must be"):
        soft_blowup(e, s, tau=0.5, temperature=bad)
    with pytest.raises(ValueError, match="tau must be"):
        threshold_index(e, bad)


def test_fewer_than_two_steps_rejected():
    with pytest.raises(ValueError, match="at least 2 steps"):
        soft_blowup(torch.zeros(1, 1), torch.zeros(1))
    with pytest.raises(ValueError, match="at least 2 steps"):
        max_slope_index(torch.zeros(1, 1))
