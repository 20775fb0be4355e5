"""The demo on SmolLM2 at small sizes (the real job end to end), the central-result script's smoke run,
and the CLI's choice between the real model and the toy. The toy demo's own test is in test_compare.py."""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sensfind.dictionaries.corpus_sae import train_corpus_sae
from sensfind.app.demo import ModelDemoConfig, run_model_demo

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("demo")
    out = tmp / "demo"
    summary = run_model_demo(out, ModelDemoConfig.quick(), cache_dir=tmp / "cache", progress=False)
    return out, summary, tmp / "cache"


@pytest.mark.slow
def test_demo_report_has_summary_cards_and_figures(demo_run):
    out, summary, _ = demo_run
    page = (out / "report.html").read_text()
    # summary first, then figures, then cards, long tables folded
    assert page.index("<h2>Summary</h2>") < page.index("<h2>Figures</h2>") < page.index("<h2>Feature cards</h2>")
    assert "<details>" in page
    n = summary["n_optima"]
    assert n >= 1
    lead = re.search(r'<div class="lead">(.*?)</div>', page, re.S).group(1)
    assert f"{summary['optima_beating_real_other_median']} of {n}</b> blow up earlier than the median real-other" in lead
    assert f"{summary['optima_matching_sae_isotropic']} of {n}</b> match an SAE latent at p &lt; 0.01" in lead
    # a card per optimum, each with decoded next tokens, shaded corpus contexts and direct logits
    cards = re.findall(r'<div class="card optimum" id="optimum-\d+">(.*?)(?=<div class="card |<h2>Details)', page, re.S)
    assert len(cards) == n
    for card in cards:
        assert card.count('<span class="tok">') >= 2  # gains and losses, as decoded strings
        assert card.count('<span class="c"') >= 1 and card.count("<svg") == 2  # ranked token outlined; curve, histogram
        assert "direct logit: top" in card
    assert page.count('class="card active"') == summary["analysis"]["kinds"]["SAE active"]["n"]
    assert page.count('class="card inactive"') == summary["analysis"]["kinds"]["SAE inactive"]["n"]
    assert page.count('src="data:image/png;base64,') >= 4
    for name in ("threshold_angles", "effect_curves", "cos_vs_null", "objective"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000
    cards_json = json.loads((out / "cards.json").read_text())
    opt = [c for c in cards_json if c["kind"] == "optimum"]
    assert len(opt) == n and all(c["gains"] and c["losses"] and c["contexts"] for c in opt)
    assert all(ctx["token"] for c in opt for ctx in c["contexts"])


@pytest.mark.slow
def test_every_link_of_the_demo_report_resolves_and_no_latent_is_its_own_nearest(demo_run):
    out, _, _ = demo_run
    page = (out / "report.html").read_text()
    ids = set(re.findall(r'id="([^"]+)"', page))
    hrefs = set(re.findall(r'href="#([^"]*)"', page))
    assert hrefs <= ids
    for card in json.loads((out / "cards.json").read_text()):
        near = [f"latent-{m['latent']}" for m in card["matches"]]
        assert card["key"] not in near  # a latent is not its own nearest latent
        assert {n for n in near if n in ids} <= hrefs  # a nearest latent with a card links to it


@pytest.mark.slow
def test_demo_summary_counts_agree_with_saved_angles(demo_run):
    out, summary, _ = demo_run
    saved = json.loads((out / "summary.json").read_text())
    kinds = saved["analysis"]["kinds"]
    real = sorted(x for x in kinds["real-other"]["threshold_deg"] if x is not None)
    assert real, "no real-other direction reached τ within the scan"
    med = real[(len(real) - 1) // 2]  # torch.median: the lower of the two middle values
    beat = sum(1 for x in kinds["optima"]["threshold_deg"] if x is not None and x < med)
    assert saved["optima_beating_real_other_median"] == beat
    p = saved["analysis"]["matches_isotropic"]["p_value"]
    assert saved["optima_matching_sae_isotropic"] == sum(1 for v in p if v < 0.01)
    q = saved["sae"]["quality"]
    assert saved["sae"]["d_sae"] == ModelDemoConfig.quick().sae.expansion * 576 and 0 < q["l0"]
    assert 0 <= q["dead_fraction"] <= 1 and q["n_tokens"] > 0
    page = (out / "report.html").read_text()
    lead = re.search(r'<div class="lead">(.*?)</div>', page, re.S).group(1)
    assert f"explains {q['explained_variance']:.1%} of the variance" in lead
    assert f"by {q['ce_increase_sae']:+.3f} nats (a random error of the same norm: {q['ce_increase_random']:+.3f})" in lead
    assert (out / "config.json").is_file() and (out / "analysis" / "discovery").is_dir()


@pytest.mark.slow
def test_demo_sae_is_cached(demo_run, smollm2, monkeypatch):
    import sensfind.dictionaries.corpus_sae as corpus_sae
    from sensfind.dictionaries.dictionary import Dictionary

    out, _, cache = demo_run
    assert len(list((cache / "corpus-sae").iterdir())) == 1

    def no_training(*args, **kwargs):
        raise AssertionError("the cached SAE should have been loaded, not retrained")

    for name in ("clean_activations", "window_activations", "train_sae", "sae_quality"):
        monkeypatch.setattr(corpus_sae, name, no_training)
    again = train_corpus_sae(smollm2, ModelDemoConfig.quick().sae, cache_dir=cache)
    assert (again.decoder == Dictionary.load(out / "sae").decoder).all()


@pytest.mark.slow
def test_central_result_smoke(tmp_path):
    out = tmp_path / "central"
    cmd = [sys.executable, "-m", "sensfind.app.cli", "sweep", "--work", "analysis", "--smoke", "--model", "smollm2-135m",
           "--prompts", "corpus:2", "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=1800)
    results = json.loads((out / "results.json").read_text())
    assert results["n_prompts"] == 2 and results["n_optima"] >= 2
    assert set(results["threshold_median_deg"]) == {"optima", "isotropic", "cov-random", "real-other", "SAE active",
                                                    "SAE inactive", "linear", "PCA", "contrastive"}
    assert 0 <= results["ks_optima_vs"]["real-other"]["statistic"] <= 1
    assert (out / "report.html").is_file() and (out / "summary.json").is_file() and (out / "sweep.json").is_file()
    assert (out / "figures" / "threshold_angles.png").stat().st_size > 1000
    assert {"optima", "isotropic", "linear", "PCA", "contrastive"} <= set(results["privileged"])  # every kind's test
    for kind, row in results["privileged"].items():  # the pooled median p lies in its interval over prompts
        lo, mid, hi = (math.inf if row[k] is None else row[k] for k in ("p_median_low", "p_median", "p_median_high"))
        assert lo <= mid <= hi, kind
    assert "Privileged directions" in (out / "report.html").read_text()


def test_demo_cli_offers_the_real_model_and_the_toy():
    from sensfind.app.cli import build_parser

    args = build_parser().parse_args(["demo"])
    assert args.model == "smollm2-135m"
    assert build_parser().parse_args(["demo", "--model", "toy", "--quick"]).model == "toy"


def test_model_demo_config_quick_is_smaller():
    q, d = ModelDemoConfig.quick(), ModelDemoConfig()
    assert q.sae.n_windows < d.sae.n_windows and q.analysis.restarts < d.analysis.restarts
    with pytest.raises(ValueError, match="curve_steps"):
        ModelDemoConfig.quick(analysis=type(d.analysis)(curve_steps=1))


def test_demo_size_flags_reach_the_config(tmp_path, monkeypatch, capsys):
    from sensfind.app.cli import main

    seen = {}

    def fake_model_demo(out, config, **kw):
        seen["model"] = config
        raise SystemExit(0)

    def fake_toy_demo(out, config, **kw):
        seen["toy"] = config
        raise SystemExit(0)

    cli = sys.modules["sensfind.app.cli"]  # where the command looks the demos up
    monkeypatch.setattr(cli, "run_model_demo", fake_model_demo)
    monkeypatch.setattr(cli, "run_demo", fake_toy_demo)
    with pytest.raises(SystemExit):
        main(["demo", "--quick", "--n-others", "12", "--context-windows", "40", "--out", str(tmp_path / "a")])
    assert seen["model"].n_others == 12 and seen["model"].context_windows == 40
    assert seen["model"].sae == ModelDemoConfig.quick().sae  # untouched by the flags
    with pytest.raises(SystemExit):
        main(["demo", "--model", "toy", "--restarts", "5", "--n-others", "7", "--out", str(tmp_path / "b")])
    assert seen["toy"].restarts == 5 and seen["toy"].n_others == 7
    # a SmolLM2-only size with the toy: one line naming it and the allowed fields, nothing written
    assert main(["demo", "--model", "toy", "--context-windows", "40", "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "context_windows" in err and "allowed" in err
    assert not (tmp_path / "c").exists()
