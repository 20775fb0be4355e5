"""objective.flushed_subnormals: discovery runs with subnormal floats flushed, and leaves the setting as it was."""

import torch

import sensfind as sf
from sensfind.objective import _subnormals_flushed, flushed_subnormals


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
