"""sensfind.lab.reconstruction: the output cost of SAE errors, latent noise and top-k truncation."""

import math

import pytest
import torch

from sensfind.dictionaries.dictionary import from_tensors
from sensfind.lab.pool import PoolConfig, load_pool_site
from sensfind.lab.reconstruction import measure_sae_errors, measure_topk, nan_tensor


@pytest.fixture(scope="module")
def site():
    return load_pool_site(PoolConfig(model="toy", n_pool=16))


def signed_identity(d: int):
    """An SAE that reconstructs exactly: latents are the positive and negative parts of each coordinate."""
    eye = torch.eye(d)
    return from_tensors(torch.cat([eye, -eye]), W_enc=torch.cat([eye, -eye], dim=1))


def positive_part(d: int):
    """An SAE that keeps only the positive part of each coordinate (a lossy reconstruction)."""
    return from_tensors(torch.eye(d), W_enc=torch.eye(d))


def test_nan_tensor():
    t = nan_tensor(2, 3)
    assert t.shape == (2, 3) and t.dtype == torch.float64 and t.isnan().all()


def test_sae_errors_of_an_exact_and_a_lossy_sae(site):
    bases = torch.arange(3)
    exact = measure_sae_errors(site, signed_identity(site.d), bases, n_random=4, sigmas=[0.1, 0.5])
    assert exact.kl_sae.shape == (3,) and (abs(exact.kl_sae) < 1e-5).all()
    assert max(exact.error_norm) < 1e-5 and exact.kl_random["isotropic"].shape == (3, 4)
    assert exact.l0 == [int((site.pool[i] != 0).sum()) for i in range(3)]
    assert list(exact.latent) == [0.1, 0.5] and exact.latent[0.5]["latent"].shape == (3, 4)
    assert (exact.latent[0.5]["latent"] > 0).any()  # noise on the latents moves the output

    lossy = measure_sae_errors(site, positive_part(site.d), bases, n_random=4, sigmas=[0.2])
    sub = lossy.substitution_summary()
    assert (lossy.kl_sae > 0).all() and 0 < sub["error_norm_relative"] < 1
    assert sub["ratio_vs_isotropic"] == pytest.approx(lossy.kl_sae.mean() / lossy.kl_random["isotropic"].mean())
    assert sub["kl_sae"]["n"] == 3 and sub["kl_isotropic"]["n"] == 12
    lat = lossy.latent_summary()
    assert list(lat) == ["0.2"] and 0 <= lat["0.2"]["frac_pairs_latent_worse"] <= 1
    t = lossy.tensors()
    assert set(t) == {"kl_sae", "kl_isotropic", "kl_cov_shaped", "error_norm", "l0", "latent_noise.0.2.latent",
                      "latent_noise.0.2.isotropic", "latent_noise.0.2.cov_shaped"}
    again = measure_sae_errors(site, positive_part(site.d), bases, n_random=4, sigmas=[0.2])
    assert (again.kl_random["cov-shaped"] == lossy.kl_random["cov-shaped"]).all()  # seeded by the site


def test_topk_curve_ends_at_the_full_reconstruction(site):
    d = site.d
    top = measure_topk(site, signed_identity(d), torch.arange(3), low=positive_part(d))
    assert top.k[0] == 0 and top.k[-1] == max(top.l0) and top.kl.shape == (3, len(top.k))
    assert (top.kl[:, -1].abs() < 1e-5).all() and (top.kl[:, 0] > top.kl[:, -1]).all()
    assert not top.has_loss and top.ce.isnan().all()  # the toy has no next tokens
    assert top.low_l0.tolist() == [float((site.pool[i] > 0).sum()) for i in range(3)]
    # the exact SAE cut to the positive part's L0 keeps its largest latents, not necessarily the positive ones
    assert (top.cut_kl >= 0).all() and (top.low_kl > 0).all()
    summary = top.summary()
    assert [c["k"] for c in summary["curve"]] == top.k and summary["clean_ce"] is None
    assert summary["low"]["frac_bases_cut_better"] == float((top.cut_kl < top.low_kl).double().mean())
    assert summary["k_within_2x_of_full_kl"] in top.k
    assert {"low_kl", "cut_kl"} <= set(top.tensors())
    alone = measure_topk(site, signed_identity(d), torch.arange(3))
    assert alone.low_kl is None and "low" not in alone.summary() and "low_kl" not in alone.tensors()
    assert torch.equal(alone.kl, top.kl) and not math.isnan(float(alone.kl.sum()))
