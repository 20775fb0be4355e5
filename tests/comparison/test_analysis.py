"""One prompt analysed end to end (``analyse_prompt`` on the toy model with a small SAE), its summary and
its saved files. The round trip over every result type is in test_contracts.py; the demo on a real model
in test_demo.py."""

import dataclasses
import json
import math

import pytest
import torch

from sensfind.comparison.analysis import KINDS, PromptAnalysis, analyse_prompt
from sensfind.errors import InputFileError
from sensfind.runio import load_tensors

from analysis_cases import SMALL, toy_case

@pytest.fixture(scope="module")
def case():
    subject, dic, others, pool = toy_case()
    return subject, dic, analyse_prompt(subject, dic, others, pool, SMALL)


def test_every_kind_is_scanned_on_one_grid(case):
    subject, _, a = case
    base = subject.base
    assert list(a.effects) == list(a.directions) == list(KINDS)
    assert torch.allclose(a.steps, torch.linspace(0, SMALL.stop, SMALL.curve_steps, dtype=torch.float64))
    sizes = {"optima": len(a.discovery), "isotropic": SMALL.n_random, "cov-random": SMALL.n_cov,
             "real-other": SMALL.n_real_other}
    for kind in KINDS:
        dirs, eff = a.directions[kind], a.effects[kind]
        assert eff.shape == (dirs.shape[0], SMALL.curve_steps), kind
        assert kind not in sizes or dirs.shape[0] == sizes[kind], kind
        assert torch.allclose(dirs.norm(dim=1), torch.ones(len(dirs), dtype=dirs.dtype), atol=1e-6), kind
        if kind not in ("cov-random", "real-other"):  # those point from the base towards their targets
            assert (dirs @ base).abs().max() < 1e-6 * base.norm(), kind  # sphere mode: orthogonal to the base


def test_latents_are_the_most_active_and_a_sample_of_inactive_ones(case):
    subject, dic, a = case
    z = dic.encode(subject.base[None].float())[0].detach()
    active, inactive = a.latents["SAE active"], a.latents["SAE inactive"]
    assert 1 <= len(active) <= SMALL.max_active and len(inactive) == SMALL.n_inactive
    assert (z[active] > 0).all() and (z[inactive] <= 0).all()
    assert torch.equal(a.activation, z[active]) and (a.activation[:-1] >= a.activation[1:]).all()
    assert z[active].min() >= z[z > 0].sort(descending=True).values[len(active) - 1]  # none more active left out
    assert torch.equal(a.refined_latents, active[: SMALL.n_refine])
    assert torch.allclose(a.refinement.start, a.directions["SAE active"][: SMALL.n_refine])


def test_summary_agrees_with_the_thresholds(case):
    _, _, a = case
    s = a.summary()
    assert s["n_steps"] == SMALL.curve_steps and s["stop_deg"] == SMALL.stop
    for kind in KINDS:
        t = a.threshold(kind)
        entry = s["kinds"][kind]
        assert entry["n"] == len(t) and entry["reached"] == int(torch.isfinite(t).sum())
        assert entry["threshold_deg"] == [x if math.isfinite(x) else None for x in t.tolist()]
    real = a.threshold("real-other")
    real_med = real[torch.isfinite(real)].median() if torch.isfinite(real).any() else None
    if real_med is not None:
        assert s["optima_beating_real_other_median"] == int((a.threshold("optima") < real_med).sum())
    for kind in ("isotropic", "covariance"):
        assert s[f"matches_{kind}"]["n_significant"] == int((a.matches[kind].p_value[:, 0] < SMALL.alpha).sum())
    assert s["refinement"]["latents"] == a.refined_latents.tolist()


def test_save_writes_the_files_the_demo_and_the_central_result_read(case, tmp_path):
    _, _, a = case
    out = a.save(tmp_path / "a")
    assert sorted(p.name for p in out.iterdir()) == ["analysis.json", "analysis.safetensors", "config.json", "discovery",
                                                     "matches_covariance", "matches_isotropic", "real_other",
                                                     "refinement"]
    meta = json.loads((out / "analysis.json").read_text())
    assert meta["config"] == SMALL.to_dict() == json.loads((out / "config.json").read_text())
    assert list(meta["kinds"]) == list(KINDS) and meta["timings"] == a.timings
    t = load_tensors(out / "analysis.safetensors")
    assert torch.equal(t["effects.SAE_active"], a.effects["SAE active"])
    assert torch.equal(t["latents.SAE_inactive"], a.latents["SAE inactive"])
    assert torch.equal(t["refine_start"], a.refinement.start) and torch.equal(t["steps"], a.steps)


def test_load_gives_back_what_the_figures_and_tables_use(case, tmp_path):
    _, _, a = case
    b = PromptAnalysis.load(a.save(tmp_path / "a"))
    assert a.thresholds and all(k in a.thresholds for k in KINDS if len(a.directions[k]))  # zoomed, and saved
    for kind in KINDS:
        assert torch.equal(b.threshold(kind), a.threshold(kind))
    for kind in a.matches:
        assert torch.equal(b.significant(kind), a.significant(kind))
    assert b.config == SMALL and b.summary() == a.summary()
    assert torch.equal(b.refinement.discovery.restart_directions, a.refinement.discovery.restart_directions)


def test_an_analysis_without_refinement_or_real_other_round_trips(case, tmp_path):
    _, _, a = case
    bare = dataclasses.replace(a, refinement=None, real_other=None)
    out = bare.save(tmp_path / "a")
    assert not (out / "refinement").exists() and not (out / "real_other").exists()
    b = PromptAnalysis.load(out)
    assert b.refinement is None and b.real_other is None and torch.equal(b.refined_latents, a.refined_latents)


def test_loading_a_directory_without_an_analysis_names_the_missing_file(tmp_path):
    with pytest.raises(InputFileError, match="holds no prompt analysis .analysis.safetensors missing"):
        PromptAnalysis.load(tmp_path)


def test_the_mixture_test_and_the_linear_control_per_kind(tmp_path):
    subject, dic, others, pool = toy_case()
    contrastive = subject.real_others(6, seed=3)  # any targets: the kind scans the directions towards them
    a = analyse_prompt(subject, dic, others, pool, dataclasses.replace(SMALL, mixture_pairs=3, restarts=8, iterations=15),
                       contrastive=torch.cat([contrastive, subject.base[None]]))
    assert a.effects["linear"].shape[0] == a.effects["PCA"].shape[0] == 8
    assert a.effects["contrastive"].shape[0] == 6  # the base itself among the targets is dropped
    pca = a.directions["PCA"].double()  # the pool's axes with the base projected out (sphere mode), both signs
    assert torch.allclose(pca[1::2], -pca[::2]) and (pca @ subject.base.double()).abs().max() < 1e-5 * subject.base.norm()
    assert (pca[::2] @ pca[::2].T - torch.eye(4, dtype=torch.float64)).abs().max() < 0.999  # four distinct axes
    assert {"optima", "isotropic", "linear", "PCA", "contrastive"} <= set(a.privileged)
    for kind, r in a.privileged.items():
        assert 1 <= r["n_pairs"] <= 3 and r["scan_points"] > 0, kind
    # the toy's optima are its planted, hard-thresholded features: privileged, unlike isotropic directions
    assert a.privileged["optima"]["p_low"] > 2.0
    iso = a.privileged["isotropic"]
    assert iso["p_low"] <= 2.0 and (iso["p_high"] is None or iso["p_high"] >= 2.0)  # None: the interval reaches ∞
    back = PromptAnalysis.load(a.save(tmp_path / "a"))
    assert back.privileged == a.privileged
    assert "privileged" in back.summary()


def test_contrastive_targets_that_all_equal_the_base_leave_the_kind_out():
    subject, dic, others, pool = toy_case()
    a = analyse_prompt(subject, dic, others, pool, dataclasses.replace(SMALL, mixture_pairs=1, restarts=2, iterations=2),
                       contrastive=subject.base[None].repeat(3, 1))
    assert "contrastive" not in a.effects and "PCA" in a.effects
