"""objective.flushed_subnormals: discovery runs with subnormal floats flushed, and leaves the setting as it was."""

import torch

import sensfind as sf
from sensfind.core.blowup import soft_blowup
from sensfind.discovery.objective import sensitivity_objective
from sensfind.discovery.objective import _subnormals_flushed, flushed_subnormals


def test_flushed_inside_restored_after():
    torch.set_flush_denormal(False)
    assert not _subnormals_flushed()
    with flushed_subnormals():
        assert _subnormals_flushed()
        assert float((torch.full((4,), 1e-39) * 1.0)[0]) == 0.0
    assert not _subnormals_flushed()
    # a caller that flushes already keeps it
    torch.set_flush_denormal(True)
    try:
        with flushed_subnormals():
            pass
        assert _subnormals_flushed()
    finally:
        torch.set_flush_denormal(False)


def test_discover_runs_with_subnormals_flushed():
    seen = []
    base = torch.ones(8)

    def run(acts):
        seen.append(_subnormals_flushed())
        return acts * 3.0

    subject = sf.FunctionSubject(base, run)
    torch.set_flush_denormal(False)
    sf.discover(subject, sf.DiscoverConfig(restarts=2, iterations=2, scan_steps=4, final_steps=8, effect="l2", tau=1.0))
    assert seen and all(seen)
    assert not _subnormals_flushed()


def test_negligible_gradient_weights_are_dropped_at_the_source():
    """Entries of d objective / d effects below 1e-12 of their row's largest become exactly 0 (subnormal
    weights would slow the KL backward's matrix products); the rest pass unchanged."""
    from sensfind.discovery.objective import NEGLIGIBLE_GRADIENT, _drop_negligible

    g = torch.tensor([[1.0, 1e-3, 1e-13, 1e-40, -2.0], [1e-20, 1e-25, 0.0, 1e-33, -1e-20]])
    out = _drop_negligible(g)
    assert torch.equal(out[0], torch.tensor([1.0, 1e-3, 0.0, 0.0, -2.0]))
    # per row: a restart whose weights are all small keeps its direction
    assert torch.equal(out[1], torch.tensor([1e-20, 1e-25, 0.0, 0.0, -1e-20]))
    assert NEGLIGIBLE_GRADIENT == 1e-12


def test_objective_gradient_skips_points_far_past_the_crossing():
    """On a subject whose effect explodes past a known angle, the hooked objective's input gradient
    equals the plain soft blowup's to 1e-10 relative (what it drops is negligible) and is finite."""
    base = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)

    class Steep:
        def __init__(self):
            self.base = base

        def run(self, acts):
            return (acts ** 2 * torch.tensor([0.0, 400.0, 40.0, 4.0], dtype=acts.dtype)).sum(-1, keepdim=True)

    subject = Steep()
    cfg = sf.ScanConfig(mode="sphere", steps=24, stop=180.0, tau=0.5, effect="l2")
    dirs = torch.tensor([[0.0, 1.0, 0.5, 0.0], [0.0, 0.2, 1.0, 0.3]], dtype=torch.float64, requires_grad=True)
    value = sensitivity_objective(subject, dirs, cfg, temperature=0.05)
    (hooked,) = torch.autograd.grad(value.soft.sum(), dirs)
    result = sf.scan(subject, dirs, cfg)
    plain = soft_blowup(result.effects, result.steps.to(result.effects.dtype), cfg.tau, 0.05)
    (expected,) = torch.autograd.grad(plain.sum(), dirs)
    assert torch.isfinite(hooked).all() and hooked.abs().max() > 0
    assert (hooked - expected).abs().max() <= 1e-10 * expected.abs().max()
