"""Matching directions to dictionaries and to real-other directions, with nulls."""

from __future__ import annotations

import json
import math

import pytest
import torch

from sensfind.dictionaries.dictionary import Dictionary, from_tensors
from sensfind.comparison.match import (
    Matches,
    NullConfig,
    RealOtherMatches,
    match_directions,
    match_real_other,
    null_directions,
)

D = 32
HOOK = "blocks.1.hook_resid_pre"


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def unit(x):
    return x / x.norm(dim=-1, keepdim=True)


@pytest.fixture
def dic():
    g = gen()
    # raw rows of very different norms: matching must not depend on them
    w = torch.randn(200, D, generator=g) * torch.logspace(-2, 2, 200)[:, None]
    return Dictionary(decoder=w, hook_name=HOOK, source="test")


# --- match_directions ------------------------------------------------------------------------------


def test_decoder_rows_match_themselves_with_sign(dic):
    dirs = torch.stack([dic.raw_decoder[7], -3 * dic.raw_decoder[150]])
    m = match_directions(dirs, dic, k=3, null=NullConfig(n_null=200))
    assert m.latents[:, 0].tolist() == [7, 150]
    torch.testing.assert_close(m.cos[:, 0], torch.tensor([1.0, -1.0]))
    assert m.sign[:, 0].tolist() == [1, -1]
    assert m.to_dict()["matches"][1][0]["effect"] == "dampens"
    torch.testing.assert_close(m.p_value[:, 0], torch.full((2,), 1 / 201))
    assert (m.z[:, 0] > 5).all()


def test_topk_is_ranked_by_abs_cos_and_agrees_with_brute_force(dic):
    dirs = torch.randn(6, D, generator=gen(1), dtype=torch.float64)
    m = match_directions(dirs, dic, k=4, null=NullConfig(n_null=50))
    cos = unit(dirs) @ unit(dic.raw_decoder.double()).T  # brute force, float64
    for i in range(6):
        order = cos[i].abs().argsort(descending=True)[:4]
        assert m.latents[i].tolist() == order.tolist()
        torch.testing.assert_close(m.cos[i], cos[i, order])
    assert (m.cos.abs().diff(dim=1) <= 0).all()
    assert m.cos.dtype == torch.float64
    assert (m.cos < 0).any() and (m.cos > 0).any()  # signs are kept, not folded into |cos|


def test_sign_means_excite_or_dampen_for_a_tied_sae():
    g = gen(2)
    w = unit(torch.randn(40, D, generator=g))
    sae = from_tensors(w, W_enc=w.T.clone(), b_enc=torch.ones(40))  # all latents active at x = 0
    x = torch.zeros(1, D)
    for direction in (w[3] + 0.1 * torch.randn(D, generator=g), -w[9]):
        m = match_directions(direction, sae, k=1, null=NullConfig(n_null=10))
        j = int(m.latents[0, 0])
        change = sae.encode(x + 0.1 * unit(direction))[0, j] - sae.encode(x)[0, j]
        assert torch.sign(change) == m.sign[0, 0]


def test_p_values_and_z_follow_their_definitions(dic):
    dirs = torch.randn(5, D, generator=gen(3))
    m = match_directions(dirs, dic, k=3, null=NullConfig(n_null=300, seed=4))
    obs, null = m.cos.abs(), m.null_best
    expected_p = (1 + (null[None, None, :] >= obs[..., None]).sum(-1)) / 301
    torch.testing.assert_close(m.p_value, expected_p.float())
    torch.testing.assert_close(m.z, (obs - null.mean()) / null.std())
    # the null really is the best |cos| of random unit directions over the whole dictionary
    nulls = null_directions(D, NullConfig(n_null=300, seed=4)).float()
    torch.testing.assert_close(m.null_best, (nulls @ dic.decoder.T).abs().amax(1))


def test_isotropic_null_is_seeded_and_uniform_on_the_sphere():
    a = null_directions(D, NullConfig(n_null=4000, seed=1))
    assert torch.equal(a, null_directions(D, NullConfig(n_null=4000, seed=1)))
    assert not torch.equal(a, null_directions(D, NullConfig(n_null=4000, seed=2)))
    torch.testing.assert_close(a.norm(dim=1), torch.ones(4000, dtype=torch.float64))
    assert a.mean(0).abs().max() < 0.05
    torch.testing.assert_close((a.T @ a) / 4000, torch.eye(D, dtype=torch.float64) / D, atol=0.01, rtol=0)


def low_rank_activations(n, rank=4, seed=0, offset=5.0):
    """Activations that vary only in their first ``rank`` coordinates, shifted by ``offset`` in all of them."""
    g = gen(seed)
    x = torch.zeros(n, D)
    x[:, :rank] = torch.randn(n, rank, generator=g) * 3
    return x + offset


def test_covariance_null_follows_the_activations(dic):
    acts = low_rank_activations(500)
    nulls = null_directions(D, NullConfig("covariance", n_null=300), activations=acts)
    # centred: N(0, Σ) lives in the 4 coordinates that vary
    assert nulls[:, 4:].abs().max() < 1e-6
    # a dictionary with latents in that subspace is matched far better by covariance nulls than by isotropic ones
    aligned = Dictionary(decoder=torch.eye(D)[:8])
    direction = torch.zeros(D)
    direction[0], direction[20] = 0.8, 0.6  # |cos| 0.8 with latent 0
    iso = match_directions(direction, aligned, null=NullConfig(n_null=300))
    cov = match_directions(direction, aligned, null=NullConfig("covariance", 300), activations=acts)
    assert cov.null_best.mean() > 0.6 > 0.4 > iso.null_best.mean()
    assert iso.p_value[0, 0] < 0.01 < 0.1 < cov.p_value[0, 0]


def test_covariance_null_psd_fix_with_fewer_activations_than_dimensions():
    acts = torch.randn(5, D, generator=gen(5))  # covariance of rank 4 < D
    nulls = null_directions(D, NullConfig("covariance", n_null=100), activations=acts)
    assert torch.isfinite(nulls).all()
    centred = (acts - acts.mean(0)).double()
    basis = torch.linalg.svd(centred, full_matrices=False).Vh[:4]
    torch.testing.assert_close((nulls @ basis.T).norm(dim=1), torch.ones(100, dtype=torch.float64))


def test_covariance_null_from_a_base_points_at_the_samples():
    acts = torch.full((50, D), 2.0) + 1e-4 * torch.randn(50, D, generator=gen(6))
    base = torch.zeros(D)
    nulls = null_directions(D, NullConfig("covariance", n_null=20), activations=acts, base=base)
    torch.testing.assert_close(nulls, unit(torch.ones(20, D, dtype=torch.float64)), atol=1e-3, rtol=0)


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        (dict(k=0), ValueError, "k must be an integer >= 1"),
        (dict(k=2.0), ValueError, "k must be an integer >= 1"),
        (dict(k=201), ValueError, r"k=201 is larger than the dictionary \(200 latents\)"),
        (dict(directions=torch.randn(3, D + 1)), ValueError, f"width {D + 1} but dictionary 'test' has width {D}"),
        (dict(directions=torch.randn(0, D)), ValueError, "no directions given"),
        (dict(directions=torch.zeros(2, D)), ValueError, "direction 0 is the zero vector"),
        (dict(directions=[[1.0] * D]), TypeError, "torch.Tensor"),
        (dict(null=NullConfig("covariance")), ValueError, "needs activations"),
        (dict(activations=torch.randn(10, D)), ValueError, "null is isotropic"),
        (dict(null="covariance", activations=torch.randn(10, D + 1)), ValueError, rf"shape \[M, {D}\]"),
        (dict(null="covariance", activations=torch.ones(10, D)), ValueError, "zero variance"),
        (dict(null="gaussian"), ValueError, "null kind must be one of"),
        (dict(base=torch.randn(D + 1)), ValueError, rf"base must be a tensor of shape \[{D}\]"),
    ],
)
def test_match_directions_errors(dic, kwargs, error, message):
    call = dict(directions=torch.randn(3, D, generator=gen(7)), dictionary=dic, k=5) | kwargs
    with pytest.raises(error, match=message):
        match_directions(**call)


@pytest.mark.parametrize("kwargs", [dict(n_null=0), dict(n_null=2.5), dict(seed=None), dict(kind="naive")])
def test_null_config_validation(kwargs):
    with pytest.raises(ValueError):
        NullConfig(**kwargs)


def test_matches_save_load_and_json(tmp_path):
    w = torch.randn(50, D, generator=gen(8))
    dic = Dictionary(decoder=w, hook_name=HOOK, info={"release": "gpt2-small-res-jb"})
    m = match_directions(torch.randn(3, D, generator=gen(9)), dic, k=2, null=NullConfig(n_null=64))
    assert m.urls[0][0] == f"https://www.neuronpedia.org/gpt2-small/1-res-jb/{int(m.latents[0, 0])}"
    loaded = Matches.load(m.save(tmp_path / "m"))
    for name in ("cos", "latents", "p_value", "z", "null_best"):
        assert torch.equal(getattr(loaded, name), getattr(m, name)), name
    assert (loaded.null, loaded.urls, loaded.hook_name) == (m.null, m.urls, HOOK)
    doc = json.loads(m.to_json())
    assert doc["null"] == {"kind": "isotropic", "n_null": 64, "seed": 0}
    assert [x["latent"] for x in doc["matches"][2]] == m.latents[2].tolist()
    assert doc["summary"]["null"]["q95"] >= doc["summary"]["null"]["median"]


# --- match_real_other ------------------------------------------------------------------------------


def test_real_other_directions_are_found_in_cos_and_span():
    g = gen(10)
    base = torch.randn(D, generator=g)
    others = base + torch.randn(6, D, generator=g)
    real = unit(others - base)
    dirs = torch.stack([real[4], -real[1], torch.randn(D, generator=g)])
    r = match_real_other(dirs, base, others, null=NullConfig(n_null=500))
    assert r.best[:2].tolist() == [4, 1]
    torch.testing.assert_close(r.best_cos[:2], torch.tensor([1.0, -1.0]))
    torch.testing.assert_close(r.span_norm[:2], torch.ones(2))
    torch.testing.assert_close(r.p_value[:2], torch.full((2,), 1 / 501))
    torch.testing.assert_close(r.span_p_value[:2], torch.full((2,), 1 / 501))
    torch.testing.assert_close(r.cos, unit(dirs) @ real.T)
    assert r.rank == 6 and r.span_p_value[2] > 0.01


def test_span_null_captures_rank_over_d_by_chance():
    g = gen(11)
    base = torch.randn(D, generator=g)
    others = base + torch.randn(8, D, generator=g)
    r = match_real_other(torch.randn(2, D, generator=g), base, others, null=NullConfig(n_null=4000))
    # E|P u|^2 = r/d for a uniform unit u; the standard error of the mean here is about 0.001
    assert math.isclose(float(r.null_span.pow(2).mean()), 8 / D, abs_tol=0.01)


def test_span_rank_handles_repeated_and_many_others():
    g = gen(12)
    base = torch.randn(D, generator=g)
    others = base + torch.randn(3, D, generator=g)
    r = match_real_other(torch.randn(2, D, generator=g), base, torch.cat([others, others, 2 * others - base]))
    assert r.rank == 3
    full = match_real_other(torch.randn(2, D, generator=g), base, base + torch.randn(2 * D, D, generator=g))
    assert full.rank == D
    torch.testing.assert_close(full.span_norm, torch.ones(2))


def test_real_other_covariance_null_is_the_cov_random_baseline():
    g = gen(13)
    base = torch.zeros(D)
    acts = low_rank_activations(400, seed=13, offset=0.0)
    others = acts[:5]
    r = match_real_other(torch.randn(1, D, generator=g), base, others, null="covariance", activations=acts)
    expected = null_directions(D, NullConfig("covariance"), activations=acts, base=base).float()
    torch.testing.assert_close(r.null_best, (expected @ unit(others - base).T).abs().amax(1))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(others=torch.zeros(0, D)), "no targets given"),
        (dict(others=torch.randn(3, D + 1)), rf"others must have shape \[M, {D}\]"),
        (dict(directions=torch.randn(2, D - 1)), f"width {D - 1} but the base activation has width {D}"),
        (dict(base=torch.full((D,), float("nan"))), "base activation contains NaN"),
        (dict(base=torch.randn(2, D)), r"base must be a tensor of shape \[d\]"),
    ],
)
def test_match_real_other_errors(kwargs, message):
    g = gen(14)
    call = dict(directions=torch.randn(2, D, generator=g), base=torch.randn(D, generator=g),
                others=torch.randn(3, D, generator=g)) | kwargs
    with pytest.raises(ValueError, match=message):
        match_real_other(**call)


def test_other_equal_to_base_is_named():
    base = torch.randn(D, generator=gen(15))
    others = torch.stack([base + 1, base])
    with pytest.raises(ValueError, match="target 1 equals the base activation"):
        match_real_other(torch.randn(1, D), base, others)


def test_real_other_save_load(tmp_path):
    g = gen(16)
    base = torch.randn(D, generator=g)
    others = base + torch.randn(4, D, generator=g)
    r = match_real_other(torch.randn(3, D, generator=g), base, others, null=NullConfig(n_null=32))
    loaded = RealOtherMatches.load(r.save(tmp_path / "r"))
    for name in RealOtherMatches.TENSORS:
        assert torch.equal(getattr(loaded, name), getattr(r, name)), name
    assert (loaded.rank, loaded.null) == (4, r.null)
    assert json.loads(r.to_json())["summary"]["rank"] == 4
