"""Scans: perturbation geometry, effects, and validation of directions and configs."""

import math

import pytest
import torch

import sensfind as sf
from sensfind.core.geometry import directions_from_targets
from sensfind.core.geometry import perturb
from sensfind.core.effects import cos, kl, l2


def test_sphere_keeps_norm_and_hits_endpoints():
    torch.manual_seed(0)
    base, dirs = torch.randn(32, dtype=torch.float64), torch.randn(5, 32, dtype=torch.float64)
    steps = torch.linspace(0, 180, 13, dtype=torch.float64)
    x = perturb(base, dirs, steps, "sphere")
    assert x.shape == (5, 13, 32)
    assert torch.allclose(x.norm(dim=-1), base.norm().expand(5, 13))
    assert torch.allclose(x[:, 0], base.expand(5, -1))
    assert torch.allclose(x[:, -1], -base.expand(5, -1))
    # the angle to the base is the step
    angle = torch.rad2deg(torch.arccos((x @ base / base.norm() ** 2).clamp(-1, 1)))
    assert torch.allclose(angle, steps.expand(5, -1), atol=1e-5)


def test_sphere_uses_only_the_orthogonal_part():
    torch.manual_seed(1)
    base, u = torch.randn(16, dtype=torch.float64), torch.randn(1, 16, dtype=torch.float64)
    steps = torch.tensor([0.0, 30.0, 90.0], dtype=torch.float64)
    a = perturb(base, u, steps, "sphere")
    b = perturb(base, u + 3.0 * base, steps, "sphere")
    assert torch.allclose(a, b)


def test_straight_mode_moves_in_a_line():
    base, u = torch.tensor([3.0, 4.0]), torch.tensor([[0.0, 2.0]])
    x = perturb(base, u, torch.tensor([0.0, 0.5, 1.0]), "straight")
    assert torch.allclose(x[0], torch.tensor([[3.0, 4.0], [3.0, 6.5], [3.0, 9.0]]))
    xa = perturb(base, u, torch.tensor([0.0, 0.5]), "straight", scale="absolute")
    assert torch.allclose(xa[0, 1], torch.tensor([3.0, 4.5]))


def test_effects_are_zero_at_base_and_positive_elsewhere():
    torch.manual_seed(2)
    y0, y = torch.randn(10), torch.randn(4, 10)
    for f in (kl, l2, cos):
        assert f(y0, y0[None]).abs().item() < 1e-6
        assert (f(y0, y) > 0).all()


def test_kl_is_exactly_zero_at_the_base_and_matches_its_definition():
    torch.manual_seed(3)
    y0, y = torch.randn(50) * 3, torch.randn(2, 3, 50, dtype=torch.float64)
    assert torch.equal(kl(y0, y0.repeat(4, 1)), torch.zeros(4))  # exactly, not nearly
    p0, logp = torch.softmax(y0.double(), -1), torch.log_softmax(y, -1)
    expected = (p0 * (p0.log() - logp)).sum(-1)
    assert kl(y0.double(), y).shape == (2, 3)
    torch.testing.assert_close(kl(y0.double(), y), expected)
    y.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda out: kl(y0.double(), out), (y,))


def _kl64(y0: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    p0 = torch.softmax(y0.double(), -1)
    return (p0 * (p0.log() - torch.log_softmax(y.double(), -1))).sum(-1)


def test_kl_in_float32_keeps_the_relative_precision_of_a_small_kl():
    # a 262,144-token vocabulary (Gemma 3) and KLs of 1e-6..1e-2: log-softmax differences in float32 lose
    # ~1e-7 absolute (10% of a KL of 1e-6); the centred expm1 form keeps the error relative
    torch.manual_seed(4)
    y0 = torch.randn(2**18) * 3
    y = y0 + torch.tensor([1e-3, 3e-3, 1e-2, 3e-2, 0.3])[:, None] * torch.randn(5, 2**18)
    exact = _kl64(y0, y.double())
    assert exact.min() < 2e-6 and exact.max() > 1e-2
    torch.testing.assert_close(kl(y0, y).double(), exact, rtol=1e-3, atol=0)


def test_kl_survives_logits_that_would_overflow_exp_and_its_gradient_there():
    torch.manual_seed(5)
    y0 = torch.randn(40, dtype=torch.float64)
    y = y0 + torch.randn(3, 40, dtype=torch.float64)
    y[1, 7] += 300.0  # x - mu past 80: that row is shifted
    y[2] -= 500.0  # a constant shift changes nothing
    torch.testing.assert_close(kl(y0, y), _kl64(y0, y))
    torch.testing.assert_close(kl(y0, y[2:]), kl(y0, y[2:] + 500.0))
    assert torch.isfinite(kl(y0.float(), y.float())).all()
    y.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda out: kl(y0, out), (y,))


def test_kl_of_half_precision_outputs_is_summed_in_float32_and_blocks_keep_it(monkeypatch):
    import sensfind.core.effects as effects

    torch.manual_seed(6)
    y0, y = torch.randn(300), torch.randn(7, 300)
    whole = kl(y0, y)
    monkeypatch.setattr(effects, "_BLOCK_BYTES", 300 * 4 * 2)  # blocks of 2 rows, the last one short
    torch.testing.assert_close(kl(y0, y), whole, rtol=1e-6, atol=0)  # only the matvecs' rounding differs
    out = kl(y0.bfloat16(), y.bfloat16())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), _kl64(y0.bfloat16(), y.bfloat16()), rtol=1e-5, atol=0)


def test_scan_zero_angle_gives_zero_effect_and_grad_flows(tiny_model):
    subject = sf.TransformerSubject(tiny_model, [5, 6, 7, 8, 9])
    dirs = torch.randn(3, subject.d, requires_grad=True)
    res = sf.scan(subject, dirs, sf.ScanConfig(steps=5))
    assert res.effects.shape == (3, 5)
    assert res.effects[:, 0].abs().max() < 1e-6
    assert (res.effects[:, -1] > 1e-4).all()
    res.effects.sum().backward()
    assert dirs.grad.abs().sum() > 0


def test_scan_per_direction_steps():
    torch.manual_seed(3)
    w = torch.randn(7, 6)
    subject = sf.FunctionSubject(torch.randn(6), lambda x: x @ w.T)
    dirs = torch.randn(2, 6)
    steps = torch.tensor([[0.0, 10.0, 20.0], [0.0, 45.0, 90.0]])
    res = sf.scan(subject, dirs, sf.ScanConfig(steps=3), steps=steps)
    one = sf.scan(subject, dirs[1:], sf.ScanConfig(steps=3, stop=90.0))
    assert torch.allclose(res.effects[1], one.effects[0], atol=1e-6)


def test_scan_reports_not_reached_as_inf():
    subject = sf.FunctionSubject(torch.ones(4), lambda x: torch.zeros(x.shape[0], 3) + 0 * x.sum(1, keepdim=True))
    res = sf.scan(subject, torch.eye(4)[:2] - 0.25, sf.ScanConfig(steps=5))
    assert torch.isinf(res.threshold).all()
    assert (res.threshold_index == -1).all()
    assert res.summary()["n_reached"] == 0


@pytest.mark.parametrize(
    "directions, match",
    [
        (torch.ones(2, 5), r"shape \[R, 4\]"),
        (torch.zeros(1, 4), "direction 0 is the zero vector"),
        (torch.tensor([[1.0, 0, 0, 0], [float("nan"), 0, 0, 0]]), "direction 1 contains NaN or inf"),
        (torch.tensor([[float("inf"), 0, 0, 0]]), "direction 0 contains NaN or inf"),
        (torch.tensor([[0.0, 1, 0, 0], [2.0, 2, 2, 2]]), "direction 1 is parallel to the base"),
        (torch.zeros(0, 4), "at least one row"),
    ],
)
def test_bad_directions_are_named(directions, match):
    subject = sf.FunctionSubject(torch.ones(4), lambda x: x)
    with pytest.raises(ValueError, match=match):
        sf.scan(subject, directions, sf.ScanConfig(steps=3))


def test_parallel_direction_is_fine_in_straight_mode():
    subject = sf.FunctionSubject(torch.ones(4), lambda x: x)
    res = sf.scan(subject, torch.ones(1, 4), sf.ScanConfig(mode="straight", steps=3))
    assert torch.isfinite(res.effects).all()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(tau=0.0), "tau must be a finite number > 0, got 0.0"),
        (dict(tau=-1.0), "tau must be"),
        (dict(tau=math.nan), "tau must be"),
        (dict(steps=1), "steps must be an integer >= 2, got 1"),
        (dict(steps=0), "steps must be an integer >= 2"),
        (dict(start=10.0, stop=10.0), "start must be < stop"),
        (dict(stop=270.0), r"within \[0, 180\]"),
        (dict(start=-5.0), "start must be >= 0"),
        (dict(mode="circle"), "mode must be 'sphere' or 'straight'"),
        (dict(effect="js"), r"unknown effect 'js'; allowed: \['cos', 'kl', 'l2'\]"),
    ],
)
def test_bad_scan_config_is_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sf.ScanConfig(**kwargs)


def test_directions_from_targets():
    base = torch.tensor([1.0, 0.0])
    d = directions_from_targets(base, torch.tensor([[1.0, 2.0], [3.0, 0.0]]))
    assert torch.allclose(d, torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    with pytest.raises(ValueError, match="target 0 equals the base"):
        directions_from_targets(base, base[None])


# -- issue 10, defect 14: bad API input is a clear error, not a raw torch one ------------------------------


def _linear_subject(d=8, n_out=5):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(n_out, d, generator=g)
    return sf.FunctionSubject(torch.randn(d, generator=g), lambda x: x @ w.T)


def test_scan_refuses_a_dict_for_its_config():
    subject = _linear_subject()
    with pytest.raises(TypeError, match=r"config must be a ScanConfig \(e.g. ScanConfig\(steps=4\)\), got dict"):
        sf.scan(subject, torch.randn(2, 8), {"steps": 4})


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.complex64])
def test_scan_refuses_integer_bool_and_complex_directions(dtype):
    subject = _linear_subject()
    dirs = torch.ones(2, 8).to(dtype)
    with pytest.raises(TypeError, match=f"real floating-point tensor, got dtype {dtype}"):
        sf.scan(subject, dirs, sf.ScanConfig(steps=4))


def test_gradient_free_scan_in_chunks_equals_one_batch():
    subject = _linear_subject(d=8, n_out=4096)
    dirs = torch.randn(40, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        chunked = sf.scan(subject, dirs, sf.ScanConfig(steps=91), max_memory=91 * 4096 * 4 * 4 * 3).effects
    whole = sf.scan(subject, dirs.requires_grad_(True), sf.ScanConfig(steps=91)).effects.detach()
    torch.testing.assert_close(chunked, whole)


def test_real_other_thresholds_drop_targets_equal_to_the_base():
    base = torch.tensor([1.0, 0.0, 0.0])
    subject = sf.FunctionSubject(base, lambda acts: acts * torch.tensor([1.0, 5.0, 1.0]))
    cfg = sf.ScanConfig(mode="sphere", steps=19, stop=90.0, tau=0.5, effect="l2")
    targets = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # the middle one is the base
    from sensfind.core.scan import real_other_thresholds

    t = real_other_thresholds(subject, targets, cfg)
    assert t.shape == (2,)
    # the direction along the amplified coordinate blows up earlier
    assert t[0] < t[1]
    with pytest.raises(ValueError, match="all 1 real-other targets equal the base"):
        real_other_thresholds(subject, base[None], cfg)


def test_zoomed_threshold_resolves_each_crossing_to_the_fine_grid():
    from sensfind.core.baselines import isotropic
    from sensfind.core.scan import ScanConfig, scan, zoomed_threshold
    from sensfind.core.toy import ToyConfig, ToyModel

    subject = ToyModel(ToyConfig(seed=0)).subject(0)
    dirs = isotropic(12, subject.base.shape[0], seed=3, dtype=subject.base.dtype)
    coarse_cfg = ScanConfig(mode="sphere", stop=90.0, steps=31, tau=0.5)  # 3 degree steps
    coarse = scan(subject, dirs, coarse_cfg)
    fine = scan(subject, dirs, ScanConfig(mode="sphere", stop=90.0, steps=181, tau=0.5)).threshold  # 0.5 degrees
    zoomed = zoomed_threshold(subject, dirs, coarse.steps, coarse.effects, coarse_cfg, resolution=0.5)
    reached = torch.isfinite(coarse.threshold)
    assert reached.any() and torch.equal(torch.isfinite(zoomed), reached)
    assert (zoomed[reached] - fine[reached]).abs().max() <= 1e-6  # the same 0.5 degree points, scanned apart
    assert (zoomed <= coarse.threshold).all()
