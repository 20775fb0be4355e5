"""Simplex landscapes (``sensfind.landscape``): the grid, its directions, and a planted optimum found."""

import pytest
import torch

import sensfind as sf


def test_simplex_grid_and_landscape_find_a_planted_optimum():
    from sensfind.landscape import landscape, simplex_directions, simplex_grid

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
    corners = torch.cat([feature, sf.baselines.isotropic(2, toy.d, seed=5)])
    land = landscape(subject, corners, sf.ScanConfig(steps=46), resolution=4, corner_names=("feature", "a", "b"))
    report = land.corner_report(0)
    assert report["local_optimum"] and report["name"] == "feature"
    assert report["threshold"] < min(land.corner_report(1)["threshold"], land.corner_report(2)["threshold"])
    assert land.threshold.shape == (15,)
