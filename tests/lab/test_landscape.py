"""Simplex landscapes (``sensfind.lab.landscape``): the grid, its directions, and a planted optimum found."""

import math

import pytest
import torch

import sensfind as sf
from sensfind.core import baselines


def test_simplex_grid_and_landscape_find_a_planted_optimum():
    from sensfind.lab.landscape import landscape, simplex_directions, simplex_grid

    w = simplex_grid(4)
    assert w.shape == (15, 3) and torch.allclose(w.sum(1), torch.ones(15, dtype=w.dtype))
    corners = torch.eye(3, 5)
    dirs = simplex_directions(corners, w)
    torch.testing.assert_close(dirs.norm(dim=1), torch.ones(15))
    with pytest.raises(ValueError, match="cancel"):
        simplex_directions(torch.stack([corners[0], -corners[0], corners[1]]), simplex_grid(2))

    toy = sf.ToyModel(sf.ToyConfig(seed=0))
    subject = toy.subject(0)
    feature = subject.signed_features()[~subject.is_active][:1]
    corners = torch.cat([feature, baselines.isotropic(2, toy.d, seed=5)])
    land = landscape(subject, corners, sf.ScanConfig(steps=46), resolution=4, corner_names=("feature", "a", "b"))
    report = land.corner_report(0)
    assert report["local_optimum"] and report["name"] == "feature"
    assert report["threshold"] < min(land.corner_report(1)["threshold"], land.corner_report(2)["threshold"])
    assert land.threshold.shape == (15,)


def hand_landscape(threshold):
    from sensfind.lab.landscape import Landscape, simplex_directions, simplex_grid

    w = simplex_grid(2)
    return Landscape(weights=w, directions=simplex_directions(torch.eye(3, 4), w), threshold=torch.tensor(threshold),
                     corner_names=("x", "a", "b"), resolution=2)


def test_random_corner_report_and_corner_summary():
    from sensfind.lab.landscape import corner_summary, random_corner_report

    # grid order: (1,0,0) (½,½,0) (½,0,½) (0,1,0) (0,½,½) (0,0,1)
    optimum = random_corner_report(hand_landscape([5.0, 8.0, 7.0, 30.0, 20.0, 40.0]))
    assert optimum["name"] == "x" and optimum["random_corners"] == [30.0, 40.0]
    assert optimum["local_optimum"] and optimum["global_optimum"] and optimum["margin"] == 2.0
    assert optimum["neighbour_angle_deg"] == pytest.approx(45.0)
    beaten = random_corner_report(hand_landscape([10.0, 8.0, 12.0, math.inf, 20.0, 40.0]))
    assert not beaten["local_optimum"] and beaten["random_corners"] == [math.inf, 40.0]
    s = corner_summary([optimum, beaten], cap=90.0)
    assert s["n"] == 2 and s["local_optimum_fraction"] == 0.5 and s["global_optimum_fraction"] == 0.5
    assert s["corner_threshold_deg"]["mean"] == 7.5 and s["margin_deg"]["mean"] == 0.0
    assert s["random_corner_threshold_deg"]["n_censored"] == 1 and s["random_corner_threshold_deg"]["mean"] == 50.0
    with pytest.raises(ValueError, match="at least one"):
        corner_summary([])
