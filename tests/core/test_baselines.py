"""Sources of baseline directions: the principal axes of a pool of activations (kind ``PCA``)."""

import pytest
import torch

from sensfind.core.baselines import cov_stats, pca_directions


def test_pca_directions_are_the_pools_top_axes_with_both_signs():
    g = torch.Generator().manual_seed(0)
    d = 12
    axes = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0].T  # orthonormal rows
    scales = torch.tensor([9.0, 5.0, 3.0] + [0.3] * (d - 3), dtype=torch.float64)
    acts = 7.0 + (torch.randn(4000, d, generator=g, dtype=torch.float64) * scales) @ axes
    rows = pca_directions(cov_stats(acts), 5)
    assert rows.shape == (5, d) and torch.allclose(rows.norm(dim=1), torch.ones(5, dtype=torch.float64))
    assert torch.allclose(rows[1], -rows[0]) and torch.allclose(rows[3], -rows[2])
    for i in range(3):  # in order of variance, each within a small angle of the planted axis
        assert abs(float(rows[2 * i] @ axes[i])) > 0.99, i
    assert torch.equal(rows, pca_directions(cov_stats(acts), 5))


def test_pca_directions_refuse_more_axes_than_dimensions():
    acts = torch.randn(50, 3, generator=torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match="8 PCA directions need 4 principal axes; the activations have 3 dimensions"):
        pca_directions(cov_stats(acts), 8)
    with pytest.raises(ValueError, match="must be >= 1, got 0"):
        pca_directions(cov_stats(acts), 0)
