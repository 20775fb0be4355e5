"""Comparison with SAE dictionaries on the toy (ground truth), the demo and its report, bad input."""

import json
import re

import pytest
import torch

import sensfind as sf
from sensfind.core.geometry import effective_directions
from sensfind.core.recovery import recovery
from sensfind.comparison.compare import CompareConfig, compare, project_dictionary
from sensfind.app.demo import DemoConfig, run_demo
from sensfind.dictionaries.training import TrainSAEConfig, train_sae
from sensfind.dictionaries.dictionary import from_tensors
from sensfind.core.toy import ToyConfig, ToyModel

QUICK = CompareConfig(n_null=300, n_latents=4, probes=3, scan_steps=121, refine_iterations=0)


@pytest.fixture(scope="module")
def good_sae(toy, tmp_path_factory):
    acts = toy.sample(10000, seed=10).acts
    return train_sae(acts, None, 256, seed=0, cache_dir=tmp_path_factory.mktemp("sae"))


@pytest.mark.slow
def test_optima_match_the_sae_latents_of_learned_features(toy, good_sae):
    planted = toy.features.double()
    learned_cos = (good_sae.decoder.double() @ planted.T).max(dim=0).values  # [n_features]
    assert learned_cos.mean() >= 0.9  # the SAE recovers the planted features
    subject = toy.subject(0)
    found = sf.discover(subject, sf.DiscoverConfig(restarts=12, iterations=40))
    rec = recovery(found.directions, subject.signed_features(), subject.base)
    others = subject.real_others(128, seed=3)
    comp = compare(subject, found.directions, good_sae, others, QUICK)
    m = comp.matches["isotropic"]
    checked = 0
    for i, f in enumerate(rec.best_feature.tolist()):
        if f >= 0 and learned_cos[f] >= 0.9:
            checked += 1
            assert abs(float(m.cos[i, 0])) >= 0.9, (i, f, m.cos[i])
            assert float(m.p_value[i, 0]) < 0.01
            assert float(comp.matches["covariance"].p_value[i, 0]) < 0.01
    assert checked >= 3
    # the null is far below a real match: random directions do not reach cos 0.9 with any latent
    assert m.null_best.max() < 0.9


def test_refinement_moves_off_sae_rows_towards_planted_features(toy, tmp_path):
    subject = toy.subject(1)
    rough = train_sae(toy.sample(2000, seed=11).acts, None, 192, seed=0,
                      config=TrainSAEConfig(epochs=1), cache_dir=tmp_path)
    cfg = CompareConfig(n_null=100, latents="active", probes=2, scan_steps=121, refine_iterations=25, max_points=None)
    comp = compare(subject, toy.features[:2].double(), rough, None, cfg)
    r = comp.refinement
    assert r is not None and len(r.start) >= 3
    signed = subject.signed_features()
    before = recovery(r.start, signed, subject.base, threshold=0.5).best_cos
    after = recovery(r.end, signed, subject.base, threshold=0.5).best_cos
    off = before < 0.95  # rows that were off by more than a little
    assert off.any()
    assert (after[off] > before[off]).all(), (before, after)
    assert (r.blowup_end <= r.blowup_start + 1e-9).all()


def test_dictionary_rows_of_planted_features_are_local_optima(toy):
    subject = toy.subject(0)
    exact = from_tensors(torch.cat([toy.features, torch.randn(8, toy.d)]))
    flips = subject.flip_kl()
    ids = torch.nonzero(flips > 1.0)[:6, 0].tolist()
    cfg = CompareConfig(n_null=50, latents="matched", probes=4, probe_deg=10.0, scan_steps=361, refine_iterations=0)
    comp = compare(subject, project_dictionary(exact, subject.base).decoder[ids], exact, None, cfg)
    sens = comp.sensitivity
    assert sorted(sens.latents.tolist()) == sorted(ids)
    assert sens.local_optimum.all(), sens.probe_blowup
    assert sens.blowup.max() < sens.random_blowup.median()


def test_demo_writes_report_with_figures_and_table(tmp_path):
    out = tmp_path / "demo"
    summary = run_demo(out, DemoConfig.quick(), cache_dir=tmp_path / "cache", progress=False)
    page = (out / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') >= 5
    assert "<table>" in page and "fraction matching a latent" in page and "Refinement from decoder rows" in page
    for name in ("effect_curves", "cos_vs_null", "threshold_angles", "objective", "refinement"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000
    saved = json.loads((out / "summary.json").read_text())
    assert saved["restarts_reaching_planted"] == summary["restarts_reaching_planted"] >= 0.8
    assert re.search(r"<td>\d+ / \d+</td>", page)


def test_bad_input(toy):
    subject = toy.subject(0)
    dirs = toy.features[:2]
    with pytest.raises(ValueError, match="width"):
        compare(subject, dirs, from_tensors(torch.randn(10, toy.d + 1)), None, QUICK)
    with pytest.raises(ValueError, match="hook"):
        compare(subject, dirs, from_tensors(torch.randn(10, toy.d), hook_name="blocks.2.hook_resid_pre"), None, QUICK,
                hook_name="blocks.1.hook_resid_pre")
    bad = torch.randn(10, toy.d)
    bad[3] = 0
    with pytest.raises(ValueError, match="decoder row 3 is the zero vector"):
        from_tensors(bad)
    bad[3] = float("nan")
    with pytest.raises(ValueError, match="decoder row 3 contains NaN"):
        from_tensors(bad)
    with pytest.raises(ValueError, match="k=20 is larger than the dictionary"):
        compare(subject, dirs, from_tensors(torch.randn(10, toy.d)), None, CompareConfig(k=20))
    with pytest.raises(ValueError, match="latents must be"):
        CompareConfig(latents="everything")


def test_empty_prompt_file(tmp_path):
    from sensfind.models.prompts import load_prompts

    f = tmp_path / "empty.txt"
    f.write_text("\n# only a comment\n\n")
    with pytest.raises(ValueError, match="holds no prompts"):
        load_prompts(f)


def test_compare_cli_on_a_discovery_run(tmp_path, capsys):
    from sensfind.app.cli import main

    run = tmp_path / "run"
    assert main(["discover", "--model", "toy", "--restarts", "4", "--iterations", "15", "--quiet", "--out", str(run)]) == 0
    sae = from_tensors(torch.cat([ToyModel(ToyConfig(seed=0)).features, torch.randn(16, 64)]))
    sae.save(tmp_path / "sae")
    out = tmp_path / "cmp"
    assert main(["compare", "--run", str(run), "--dictionary", f"disk:{tmp_path / 'sae'}", "--n-null", "200",
                 "--scan-steps", "91", "--refine-iterations", "0", "--n-latents", "4", "--out", str(out)]) == 0
    assert (out / "report.html").exists() and (out / "comparison.json").exists()
    assert "match a latent" in capsys.readouterr().out
    assert main(["compare", "--run", str(run), "--dictionary", "disk:/nope", "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


def test_signed_rows_keep_the_sign_that_blows_up_earlier(toy):
    from sensfind.comparison.compare import signed_rows
    from sensfind.core.scan import ScanConfig, scan

    subject = toy.subject(0)
    rows = effective_directions(subject.signed_features()[:4].to(subject.base.dtype), subject.base, "sphere")
    cfg = ScanConfig(stop=90.0, steps=61)
    s = signed_rows(subject, torch.cat([rows[:2], -rows[2:]]), cfg)
    plus, minus = scan(subject, s.rows, cfg), scan(subject, -s.rows, cfg)
    assert torch.equal(s.threshold, plus.threshold) and torch.equal(s.effects, plus.effects)
    assert (s.threshold <= minus.threshold).all()
    assert torch.equal(s.rows, torch.cat([rows[:2], -rows[2:]]) * s.sign[:, None].to(rows.dtype))
    empty = signed_rows(subject, rows[:0], cfg)
    assert empty.rows.shape == (0, rows.shape[1]) and empty.effects.shape == (0, 61)
