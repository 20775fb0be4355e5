"""sensfind.lab.kind_scans: scans grouped by kind of base or of direction, and their summaries."""

import math
from types import SimpleNamespace

import pytest
import torch

from sensfind.core.baselines import isotropic
from sensfind.dictionaries.dictionary import from_tensors
from sensfind.lab.experiment import ScanSettings, resolve_scans
from sensfind.lab.kind_scans import (PERTURBATION_KINDS, DirectionKinds, KindScans, check_direction_kinds, plateau_bases,
                                 resolve_direction_kinds, scan_direction_kinds, scan_plateaus)
from sensfind.lab.pool import PoolConfig, load_pool_site


@pytest.fixture(scope="module")
def site():
    return load_pool_site(PoolConfig(model="toy", n_pool=16))


@pytest.fixture(scope="module")
def scans(site):
    return resolve_scans(ScanSettings(angle_steps=7, straight_steps=6), site)


def fake_scan(threshold, threshold_index, max_slope_index, effects):
    return SimpleNamespace(threshold=torch.tensor(threshold), threshold_index=torch.tensor(threshold_index),
                           max_slope_index=torch.tensor(max_slope_index), effects=torch.tensor(effects))


def test_check_and_resolve_direction_kinds():
    check_direction_kinds("all")
    check_direction_kinds("cov-random, feature")
    for bad in ("cov-random,bogus", ",", ""):
        with pytest.raises(ValueError, match="^unknown direction kind"):
            check_direction_kinds(bad)
    assert resolve_direction_kinds("all", is_toy=True, with_sae=True) == list(PERTURBATION_KINDS)
    plain = resolve_direction_kinds("all", is_toy=False, with_sae=False)
    assert plain == ["real-other", "cov-random", "cov-mixture", "naive-random"]
    assert resolve_direction_kinds("cov-random", is_toy=False, with_sae=False) == ["real-other", "cov-random"]
    with pytest.raises(ValueError, match="needs the ground-truth toy"):
        resolve_direction_kinds("feature", is_toy=False, with_sae=True)


def test_kind_scans_collects_and_summarises():
    found = KindScans()
    found.add("real-other", fake_scan([10.0, 20.0], [2, -1], [1, 3], [[0.0, 1.0]] * 2),
              fake_scan([0.0, 0.0], [2, -1], [1, 3], [[0.0, 2.0]] * 2))
    found.add("cov-random", fake_scan([30.0, math.inf], [4, 5], [2, 2], [[0.0, 3.0]] * 2),
              fake_scan([0.0, 0.0], [4, 5], [2, 2], [[0.0, 4.0]] * 2))
    found.add("real-other", fake_scan([15.0], [1], [0], [[0.0, 5.0]]), fake_scan([0.0], [1], [0], [[0.0, 6.0]]))
    assert found.kinds == ["real-other", "cov-random"]
    assert found.threshold_deg("real-other").tolist() == [10.0, 20.0, 15.0]
    assert found.plateau_steps("real-other").tolist() == [2.0, math.inf, 1.0]  # -1: never above τ
    assert found.max_slope_step("cov-random").dtype == torch.float64
    assert found.sphere_effects()["real-other"].shape == (3, 2) and found.straight_effects()["cov-random"][0, 1] == 4.0
    summary = found.direction_summary(angle_cap=90.0)
    assert summary["real-other"]["n_directions"] == 3
    assert summary["real-other"]["ks_vs_real_other_threshold"]["statistic"] == 0.0
    cov = summary["cov-random"]
    assert cov["threshold_deg"]["n_censored"] == 1 and cov["threshold_deg"]["mean"] == 60.0  # inf counted at the cap
    assert cov["ks_vs_real_other_threshold"]["statistic"] == 1.0
    bases = {"real-other": torch.ones(3, 4), "cov-random": 2 * torch.ones(2, 4)}
    plateaus = found.plateau_summary(bases, angle_cap=90.0, step_cap=6.0, reference="real-other")
    assert plateaus["cov-random"]["base_norm"] == 4.0
    assert plateaus["real-other"]["straight_plateau_steps"]["mean"] == pytest.approx(3.0)  # (2 + 6 + 1) / 3


def test_plateau_bases_and_scans_on_the_toy(site, scans):
    bases = plateau_bases(site, 3)
    assert list(bases) == ["real", "cov-random", "isotropic"] and all(b.shape == (3, site.d) for b in bases.values())
    torch.testing.assert_close(bases["isotropic"].norm(dim=1), bases["real"].norm(dim=1))
    assert torch.equal(plateau_bases(site, 3)["cov-random"], bases["cov-random"])  # seeded by the site
    found = scan_plateaus(site, bases, "isotropic", 2, scans)
    assert found.kinds == list(bases) and found.threshold_deg("real").shape == (6,)
    assert found.sphere_effects()["isotropic"].shape == (6, 7) and found.straight_effects()["real"].shape == (6, 6)
    # the real kind is scanned in its own context: the same as scanning the pool row directly
    dirs = isotropic(3 * 2, site.d, seed=site.seed + 21)[:2]  # base 0's shared directions
    sphere, straight = scans.run(*scans.contexts(site, 0), dirs)
    torch.testing.assert_close(found.sphere["real"][0].effects, sphere.effects)
    torch.testing.assert_close(found.straight["real"][0].effects, straight.effects)
    with pytest.raises(ValueError, match="directions must be one of"):
        scan_plateaus(site, bases, "sideways", 2, scans)


def test_direction_kinds_on_the_toy(site, scans):
    d = site.d
    # latents: every coordinate, both signs; a base activates exactly the latents of its signs
    dic = from_tensors(torch.cat([torch.eye(d), -torch.eye(d)]), W_enc=torch.cat([torch.eye(d), -torch.eye(d)], dim=1))
    kinds = ["real-other", "feature", "naive-random", "sae-active-", "sae-inactive+"]
    source = DirectionKinds.build(site, kinds, torch.arange(4, 16), n_bases=2, n_dirs=3, dictionary=dic)
    subject = site.subject(0)
    real = source.directions("real-other", 0, subject)
    assert real.shape == (3, d)
    assert torch.equal(source.directions("naive-random", 1, subject), source.fixed["naive-random"][1])
    feats = source.directions("feature", 0, subject)
    assert feats.shape[0] == 3 and all(any(torch.equal(f, g) for g in subject.signed_features()) for f in feats)
    active = -source.directions("sae-active-", 0, subject)  # minus the decoder rows of active latents
    assert ((subject.base.float() @ active.float().T) > 0).all()
    with pytest.raises(ValueError, match="^direction kind 'cov-random' is not one of this source's kinds"):
        source.directions("cov-random", 0, subject)
    found = scan_direction_kinds(site, torch.arange(2), source, scans)
    assert found.kinds == kinds and found.threshold_deg("real-other").shape == (6,)


def test_scan_direction_kinds_drops_a_kind_with_no_direction(site, scans):
    d = site.d
    dic = from_tensors(torch.cat([torch.eye(d), -torch.eye(d)]), W_enc=torch.cat([torch.eye(d), -torch.eye(d)], dim=1))
    source = DirectionKinds.build(site, ["real-other", "sae-inactive+", "cov-random"], torch.arange(4, 16), 1, 2,
                                  dictionary=dic)
    source.dictionary = SimpleNamespace(encode=lambda x: torch.ones(x.shape[0], 2 * d), decoder=dic.decoder)
    found = scan_direction_kinds(site, torch.arange(1), source, scans)  # every latent active: none inactive
    assert found.kinds == ["real-other", "cov-random"]
