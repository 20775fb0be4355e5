"""rounds: one round of discovery (deflated starts, the cost of a restart, non-finite outputs)."""

import math
from dataclasses import replace

import pytest
import torch

import sensfind as sf
from sensfind.discovery.rounds import round_cost, seed_cost

SMALL = sf.DiscoverConfig(restarts=12, iterations=40)


def test_deflated_round_starts_orthogonal_to_found_optima(toy):
    subject = toy.subject(0)
    found = sf.discover(subject, replace(SMALL, restarts=4, iterations=20, rounds=2, polish_iterations=0))
    first = found.directions[found.found_round == 0]
    later = found.init_directions[found.restart_round == 1]
    assert (later @ first.T).abs().max() < 1e-5
    # without polish the second round stays in the complement of the first round's optima
    second = found.restart_directions[found.restart_round == 1]
    assert (second @ first.T).abs().max() < 1e-4


def test_non_finite_subject_output_stops_with_step_and_restart(tmp_path):
    base = torch.tensor([1.0, 0.0, 0.0, 0.0])

    def fn(x):  # blows up to NaN once a direction rotates past 40 degrees towards e1
        out = torch.stack([x[:, 0], 3 * x[:, 1]], 1)
        return torch.where(x[:, 1:2] > math.sin(math.radians(40)), torch.full_like(out, math.nan), out)

    subject = sf.FunctionSubject(base, fn)
    ckpt = tmp_path / "ckpt.pt"
    with pytest.raises(sf.NonFiniteOutputError, match=r"iteration 0 for restart\(s\) \[0\]"):
        sf.discover(subject, sf.DiscoverConfig(restarts=2, iterations=3, init="given"),
                    init_directions=torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]), checkpoint=ckpt)
    assert not ckpt.exists()  # nothing written


@pytest.mark.parametrize("init, start", [("metric", 1), ("isotropic", 0), ("covariance", 0)])
def test_a_restart_costs_its_start_its_iterations_and_its_final_scan(init, start):
    config = sf.DiscoverConfig(init=init, iterations=7, scan_steps=5, final_steps=11)
    assert seed_cost(config) == start
    assert round_cost(config) == start + 7 * 5 + 11


def test_a_round_sized_to_the_budget_spends_no_more_than_it():
    base = torch.tensor([1.0, 0.0, 0.0, 0.0])
    subject = sf.FunctionSubject(base, lambda x: x * 2.0)
    config = sf.DiscoverConfig(restarts=8, iterations=3, scan_steps=4, final_steps=5, effect="l2", tau=0.5,
                               init="isotropic", max_points=3 * round_cost(sf.DiscoverConfig(
                                   restarts=8, iterations=3, scan_steps=4, final_steps=5, init="isotropic")))
    found = sf.discover(subject, config)
    assert found.points_evaluated <= config.max_points
    assert int((found.restart_round == 0).sum()) == 3  # the first round holds what the budget pays for in full
