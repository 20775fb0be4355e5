"""Invariants of the geometry module: base projection, paths, effective directions, rotations."""

import math

import pytest
import torch

from sensfind.core.geometry import effective_directions, perturb, reject, tangent_rotations, unit


def _setup(d=12, r=5, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    return torch.randn(d, generator=g, dtype=dtype), torch.randn(r, d, generator=g, dtype=dtype)


def test_reject_is_orthogonal_to_the_base_and_idempotent():
    base, x = _setup()
    t = reject(x, base)
    assert torch.allclose(t @ base, torch.zeros(len(x), dtype=x.dtype), atol=1e-12)
    assert torch.allclose(reject(t, base), t, atol=1e-12)
    assert torch.allclose(reject(x[None], base)[0], t)  # leading batch dimensions


def test_reject_normalises_the_base_in_the_wider_dtype():
    base, x = _setup()
    t32 = reject(x.float(), base)
    assert t32.dtype == torch.float32
    assert torch.allclose(t32.double(), reject(x, base), atol=1e-5)


def test_slerp_keeps_the_norm_and_starts_at_the_base():
    base, u = _setup()
    path = perturb(base, u, torch.linspace(0, 180, 7), "sphere")  # [R, K, d]
    assert path.shape == (5, 7, 12)
    assert torch.allclose(path.norm(dim=-1), base.norm().expand(5, 7))
    assert torch.allclose(path[:, 0], base.expand(5, -1))
    assert torch.allclose(path[:, -1], -base.expand(5, -1), atol=1e-12)


def test_straight_path_moves_linearly():
    base, u = _setup()
    path = perturb(base, u, torch.tensor([0.0, 0.5, 1.0]), "straight")
    assert torch.allclose(path[:, 2] - path[:, 0], base.norm() * unit(u))
    absolute = perturb(base, u, torch.tensor([1.0]), "straight", scale="absolute")
    assert torch.allclose(absolute[:, 0] - base, unit(u))
    with pytest.raises(ValueError, match="mode"):
        perturb(base, u, torch.tensor([1.0]), "curved")


def test_effective_directions_are_unit_and_sphere_ones_orthogonal():
    base, u = _setup()
    e = effective_directions(u, base, "sphere")
    assert torch.allclose(e.norm(dim=1), torch.ones(5, dtype=e.dtype))
    assert torch.allclose(e @ base, torch.zeros(5, dtype=e.dtype), atol=1e-12)
    assert torch.allclose(effective_directions(u, base, "straight"), unit(u))
    with pytest.raises(ValueError, match="parallel"):
        effective_directions(torch.stack([u[0], 3 * base]), base, "sphere")


def test_tangent_rotations_turn_by_the_angle_within_the_tangent_space():
    base, u = _setup()
    rows = effective_directions(u, base, "sphere")
    rot = tangent_rotations(rows, base, probes=4, deg=10.0, seed=1)  # [L, P, d]
    assert rot.shape == (5, 4, 12)
    assert torch.allclose(rot.norm(dim=-1), torch.ones(5, 4, dtype=rot.dtype))
    assert torch.allclose((rot * rows[:, None]).sum(-1), torch.full((5, 4), math.cos(math.radians(10)), dtype=rot.dtype))
    assert torch.allclose(rot @ base, torch.zeros(5, 4, dtype=rot.dtype), atol=1e-12)


def test_is_base_marks_rows_equal_to_the_base_within_its_scale():
    from sensfind.core.geometry import is_base

    base = torch.tensor([3.0, 4.0])  # norm 5: rows within 5e-6 of it count as the base
    acts = torch.stack([base, base + 1e-6, base + torch.tensor([1e-5, 0.0]), -base])
    assert is_base(acts, base).tolist() == [True, True, False, False]
