"""The commands' work as library calls: configs in, a complete run directory and a named result out."""

import json

import pytest
import torch

from sensfind.app.jobs import (check_run_settings, directions_from_spec, incomplete_dir, load_run_config, run_discover,
                           run_scan)
from sensfind.discovery.config import DiscoverConfig
from sensfind.runio import load_tensors
from sensfind.core.scan import ScanConfig
from sensfind.app.site import DiscoverySiteConfig, SiteConfig

TINY = SiteConfig(model="random:tiny", tokens="5,6,7,8,9,10")


def test_run_scan_writes_the_run_and_returns_its_summary(tmp_path):
    run = run_scan(TINY, ScanConfig(steps=5), tmp_path / "s", "random:3")
    assert run.direction_kind == "naive-random" and run.summary["n_directions"] == 3 and run.scan.effects.shape == (3, 5)
    config = json.loads((tmp_path / "s" / "config.json").read_text())
    assert config["site"] == TINY.to_dict() and SiteConfig.from_dict(config["site"]) == TINY
    assert config["scan"] == ScanConfig(steps=5).to_dict() and config["directions"] == "random:3"
    assert torch.equal(load_tensors(tmp_path / "s" / "tensors.safetensors")["effects"], run.scan.effects)


def test_directions_from_spec(tmp_path):
    subject = TINY.subject()
    dirs, kind = directions_from_spec("random:4", TINY, None, subject)
    assert dirs.shape == (4, 64) and kind == "naive-random"
    for spec, message in (("random:x", "needs an integer N"), ("random:0", "needs N >= 1"),
                          ("gaussian:2", "--directions must be random:N")):
        with pytest.raises(ValueError, match=message):
            directions_from_spec(spec, TINY, None, subject)


def test_run_discover_on_the_toy_reports_recovery_and_the_baseline(tmp_path):
    site = DiscoverySiteConfig(model="toy")
    config = DiscoverConfig(restarts=4, iterations=5, final_steps=31)
    run = run_discover(site, config, tmp_path / "d", random_baseline=8, progress=False)
    assert run.summary["n_optima"] == len(run.discovery) and "toy_recovery" in run.summary
    assert run.final_config == config.final_scan_config
    saved = load_run_config(tmp_path / "d" / "config.json", "discover")
    assert DiscoverySiteConfig.from_dict(saved["site"]) == site and DiscoverConfig.from_dict(saved["discover"]) == config
    assert saved["random_baseline"] == 8 and not incomplete_dir(tmp_path / "d").exists()
    assert json.loads((tmp_path / "d" / "summary.json").read_text())["random_reached"] <= 8


@pytest.mark.parametrize("kwargs, message", [
    (dict(random_baseline=0), "random_baseline must be an integer >= 1"),
    (dict(checkpoint_every=0), "checkpoint_every must be an integer >= 1"),
])
def test_run_settings_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        check_run_settings(**kwargs)


def test_run_discover_refuses_given_init_without_directions(tmp_path):
    with pytest.raises(ValueError, match="init 'given' needs init_file"):
        run_discover(DiscoverySiteConfig(model="toy"), DiscoverConfig(init="given"), tmp_path / "d", progress=False)
    assert not (tmp_path / "d").exists()


def test_run_discover_plots_the_optima_from_their_final_scan_without_scanning_them_again(tmp_path, monkeypatch):
    import sys

    scan_module = sys.modules["sensfind.app.jobs"]  # where the job looks scan up
    calls = []
    real_scan = scan_module.scan

    def counting_scan(subject, directions, config, *a, **kw):
        calls.append(directions.shape[0])
        return real_scan(subject, directions, config, *a, **kw)

    monkeypatch.setattr(scan_module, "scan", counting_scan)
    run = run_discover(DiscoverySiteConfig(model="toy"), DiscoverConfig(restarts=4, iterations=5, final_steps=31),
                       tmp_path / "d", random_baseline=8, progress=False)
    assert calls == [8]  # the isotropic baseline only
    found = run.discovery
    assert found.final_effects.shape == (len(found), 31)
    fresh = real_scan(DiscoverySiteConfig(model="toy").build().subject, found.directions, run.final_config)
    torch.testing.assert_close(found.final_effects, fresh.effects.to(found.final_effects.dtype))


def test_run_compare_reports_the_prompt_and_cards_with_corpus_contexts(tmp_path):
    from sensfind.app.jobs import run_compare
    from sensfind.comparison.cards import load_cards
    from sensfind.comparison.compare import CompareConfig

    site = DiscoverySiteConfig(model="random:tiny", tokens="72,105,33,63")  # byte tokens: "Hi!?"
    directions = torch.randn(2, 64, generator=torch.Generator().manual_seed(0))
    cfg = CompareConfig(n_null=20, latents="matched", probes=1, scan_steps=16, n_random=4, refine_iterations=0,
                        max_points=None)
    run = run_compare(site, cfg, tmp_path / "c", directions, dictionary="train:64", progress=False)
    page = (tmp_path / "c" / "report.html").read_text()
    assert "Hi!<mark>?</mark>" in page  # the prompt, its perturbed (last) token highlighted
    cards = load_cards(tmp_path / "c" / "cards.json")
    latents = run.comparison.sensitivity.latents.tolist()
    assert [c.key for c in cards] == ["optimum-0", "optimum-1"] + [f"latent-{l}" for l in latents]
    assert all(f'id="{c.key}"' in page for c in cards)
    # random:tiny has the byte-encoded corpus and an unembedding: every piece is there
    assert all(c.histogram is not None and c.contexts and c.logits_up and not c.notes for c in cards)
    assert "cards_seconds" in json.loads((tmp_path / "c" / "summary.json").read_text())["timings"]
