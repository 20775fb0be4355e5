"""The command line: runs write complete results directories; bad input is one line and exit 2."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from sensfind.app.cli import main
from sensfind.runio import load_tensors

TINY = ["--model", "random:tiny", "--tokens", "5,6,7,8,9,10"]


def test_scan_writes_a_complete_results_directory(tmp_path, capsys):
    out = tmp_path / "scan"
    assert main(["scan", *TINY, "--directions", "random:3", "--steps", "7", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "effect_vs_step.png", "results.json", "summary.json",
                                                    "tensors.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["scan"]["steps"] == 7 and config["site"]["hook"] == "blocks.1.hook_resid_pre"
    t = load_tensors(out / "tensors.safetensors")
    assert t["effects"].shape == (3, 7) and t["directions"].shape == (3, 64)
    results = json.loads((out / "results.json").read_text())
    assert len(results["threshold"]) == 3
    assert "scanned 3 directions x 7 steps" in capsys.readouterr().out


def test_scan_reference_path_gives_the_same_effects(tmp_path):
    for path in ("fast", "reference"):
        assert main(["scan", *TINY, "--directions", "random:2", "--steps", "5", "--path", path,
                     "--out", str(tmp_path / path)]) == 0
    a = load_tensors(tmp_path / "fast" / "tensors.safetensors")["effects"]
    b = load_tensors(tmp_path / "reference" / "tensors.safetensors")["effects"]
    assert torch.allclose(a, b, atol=1e-5)


def test_scan_directions_from_file_and_targets(tmp_path):
    from sensfind.core.baselines import save_directions

    save_directions(tmp_path / "dirs.safetensors", torch.randn(4, 64))
    assert main(["scan", *TINY, "--directions", f"file:{tmp_path / 'dirs.safetensors'}", "--steps", "3",
                 "--out", str(tmp_path / "f")]) == 0
    prompts = tmp_path / "p.txt"
    prompts.write_text("one prompt\n# a comment\n\nanother prompt here\n")
    assert main(["scan", *TINY, "--directions", f"targets:{prompts}", "--steps", "3", "--out", str(tmp_path / "t")]) == 0
    assert load_tensors(tmp_path / "t" / "tensors.safetensors")["effects"].shape == (2, 3)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--hook", "blocks.7.hook_resid_pre"], "'blocks.7.hook_resid_pre' is past the last layer"),  # before loading
        (["--hook", "blocks.1.hook_nope"], "unknown hook 'blocks.1.hook_nope'"),  # after loading
        (["--position", "40"], "position 40 is out of range"),
        (["--tokens", ""], "--tokens is empty"),
        (["--tokens", "1,x"], "--tokens must be comma-separated integers"),
        (["--tau", "0"], "tau must be a finite number > 0, got 0.0"),
        (["--steps", "1"], "steps must be an integer >= 2, got 1"),
        (["--directions", "random:0"], "random:N needs N >= 1"),
        (["--directions", "gaussian:3"], "--directions must be random:N"),
        (["--directions", "file:/nonexistent.safetensors"], "does not exist"),
        (["--directions", "targets:/nonexistent.txt"], "prompt file '/nonexistent.txt' does not exist"),
        (["--model", "random:huge"], "unknown local architecture 'huge'"),
    ],
)
def test_scan_bad_input_is_one_line_and_leaves_nothing(tmp_path, capsys, argv, message):
    out = tmp_path / "never"
    base = ["scan", "--model", "random:tiny", "--tokens", "5,6,7,8,9,10", "--steps", "3", "--out", str(out)]
    assert main(base + argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sensfind: error: ") and message in err and "\n" not in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_wrong_width_direction_file(tmp_path, capsys):
    from sensfind.core.baselines import save_directions

    save_directions(tmp_path / "d.safetensors", torch.randn(2, 65))
    assert main(["scan", *TINY, "--directions", f"file:{tmp_path / 'd.safetensors'}", "--out", str(tmp_path / "o")]) == 2
    assert "shape [R, 64]" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_discover_on_toy_writes_run_and_reports_recovery(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["discover", "--model", "toy", "--restarts", "6", "--iterations", "25", "--quiet", "--out", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "discovery.json", "discovery.safetensors", "summary.json", "objective.png",
            "effect_vs_angle.png"} <= names and "checkpoint.pt" not in names
    summary = json.loads((out / "summary.json").read_text())
    assert summary["toy_recovery"]["fraction_reached"] >= 0.8
    assert summary["best_blowup"] < summary["random_blowup_median"]
    assert "reached a planted feature" in capsys.readouterr().out
    # the saved config is accepted back by --config
    cfg = tmp_path / "best.json"
    cfg.write_text(json.dumps(json.loads((out / "config.json").read_text())["discover"]))
    assert main(["discover", "--model", "toy", "--config", str(cfg), "--iterations", "2", "--quiet",
                 "--out", str(tmp_path / "again")]) == 0


def test_discover_on_transformer_runs_the_fast_path(tmp_path):
    out = tmp_path / "tl"
    assert main(["discover", *TINY, "--restarts", "3", "--iterations", "3", "--scan-steps", "6", "--final-steps", "7",
                 "--random-baseline", "2", "--quiet", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    history = json.loads((out / "discovery.json").read_text())["history"]
    # scans of the restarts' iterations, the final scans of the optima, and one point per (metric) start
    assert summary["points_evaluated"] == sum(6 * h["restarts_scanned"] for h in history) + summary["n_optima"] * 7 + 3


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--restarts", "0"], "restarts must be an integer >= 1, got 0"),
        (["--temperature", "0"], "temperature must be a finite number > 0"),
        (["--lr", "nan"], "lr must be a finite number, got nan"),
        (["--init", "given"], "--init given needs --init-file"),
        (["--optimizer", "lbfgs"], "optimizer must be 'adam' or 'sgd'"),
    ],
)
def test_discover_bad_input(tmp_path, capsys, argv, message):
    out = tmp_path / "never"
    assert main(["discover", "--model", "toy", "--quiet", "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not out.exists()


def test_discover_init_file_of_wrong_width(tmp_path, capsys):
    from sensfind.core.baselines import save_directions

    save_directions(tmp_path / "init.safetensors", torch.randn(4, 63))
    assert main(["discover", "--model", "toy", "--init", "given", "--init-file", str(tmp_path / "init.safetensors"),
                 "--quiet", "--out", str(tmp_path / "o")]) == 2
    assert "shape [R, 64]" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_killed_discover_run_resumes(tmp_path):
    from sensfind.app.jobs import incomplete_dir

    out = tmp_path / "run"
    argv = [sys.executable, "-m", "sensfind.app.cli", "discover", "--model", "toy", "--restarts", "16", "--iterations", "40",
            "--max-points", "40000", "--tol", "0", "--checkpoint-every", "5", "--quiet", "--out", str(out)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = incomplete_dir(out) / "checkpoint.pt"
    deadline = time.time() + 240
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert ckpt.exists(), "no checkpoint was written"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = torch.load(ckpt, weights_only=False)["iteration"]
    assert 5 <= done and not out.exists()  # the run appears in out only when complete
    cli = [sys.executable, "-m", "sensfind.app.cli", "discover", "--resume", "--quiet", "--out", str(out)]
    # a flag that differs from the run's own settings is refused, naming it
    res = subprocess.run(cli + ["--iterations", "1"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 2 and "iterations (saved 40, given 1)" in res.stderr, res.stderr
    assert ckpt.exists() and not out.exists()
    res = subprocess.run(cli, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    meta = json.loads((out / "discovery.json").read_text())
    assert [h["iteration"] for h in meta["history"]] == list(range(meta["iterations_run"]))
    assert meta["rounds_run"] >= 2 and meta["points_evaluated"] <= 40000
    assert meta["config"]["iterations"] == 40
    assert not incomplete_dir(out).exists() and not (out / "checkpoint.pt").exists()
    # the same run without a kill gives the same optima
    again = tmp_path / "again"
    assert main(argv[3:-1] + [str(again)]) == 0
    assert json.loads((again / "discovery.json").read_text())["blowup"] == meta["blowup"]
    assert torch.equal(load_tensors(again / "discovery.safetensors")["directions"],
                       load_tensors(out / "discovery.safetensors")["directions"])
    # resuming a finished run says so and changes nothing
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    res = subprocess.run(cli, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and "already finished" in res.stdout
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_openwebtext_prompts_fail_offline_with_one_line(tmp_path, capsys, monkeypatch):
    from sensfind.models import prompts

    monkeypatch.setattr(prompts, "openwebtext_windows", lambda model, n: (_ for _ in ()).throw(
        prompts.DatasetUnavailableError("could not stream 'x' from the HuggingFace hub (OSError). Offline, use ...")))
    assert main(["scan", *TINY, "--directions", "targets:openwebtext:8", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "could not stream" in err and not (tmp_path / "o").exists()


def test_openwebtext_needs_a_tokenizer(tiny_model):
    from sensfind.models.prompts import load_prompts

    with pytest.raises(ValueError, match="tokenizer"):
        load_prompts("openwebtext:4", tiny_model)


def test_openwebtext_loader_really_fails_offline(monkeypatch):
    from types import SimpleNamespace

    from sensfind.errors import DatasetUnavailableError
    from sensfind.models.prompts import openwebtext_windows

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = SimpleNamespace(tokenizer=lambda text: {"input_ids": list(range(len(text.split())))})
    t0 = time.time()
    with pytest.raises(DatasetUnavailableError, match="could not stream 'Skylion007/openwebtext'"):
        openwebtext_windows(model, 4)
    assert time.time() - t0 < 60


# -- flags generated from the configs ---------------------------------------------------------------


def _help(command, capsys) -> str:
    assert main([command, "--help"]) == 0
    return " ".join(capsys.readouterr().out.split())


def _config_classes():
    from sensfind.comparison.compare import CompareConfig
    from sensfind.app.demo import DemoConfig, ModelDemoConfig
    from sensfind.app.jobs import CompareRunConfig, DiscoverRunConfig, ScanRunConfig
    from sensfind.discovery.config import DiscoverConfig
    from sensfind.core.scan import ScanConfig
    from sensfind.app.site import DiscoverySiteConfig, SiteConfig
    from sensfind.tuning import TuneConfig

    return {"scan": [(SiteConfig, ()), (ScanConfig, ()), (ScanRunConfig, ())],
            "discover": [(DiscoverySiteConfig, ()), (DiscoverConfig, ("seed",)), (DiscoverRunConfig, ())],
            "compare": [(DiscoverySiteConfig, ()), (CompareConfig, ("seed",)), (CompareRunConfig, ())],
            "tune": [(TuneConfig, ())],
            "demo": [(ModelDemoConfig, ("sae", "analysis")), (DemoConfig, ("compare", "seed", "input", "n_others"))]}


@pytest.mark.parametrize("command", ["scan", "discover", "compare", "tune", "demo"])
def test_help_lists_every_config_field_with_its_doc_and_choices(command, capsys):
    import dataclasses

    from sensfind.configs import field_choices, field_docs

    text = _help(command, capsys)
    for cls, skip in _config_classes()[command]:
        docs, choices = field_docs(cls), field_choices(cls)
        for f in dataclasses.fields(cls):
            if f.name in skip:  # the site's --seed seeds discover/compare; the demo's nested configs come from --config
                continue
            assert f"--{f.name.replace('_', '-')} " in text, (cls.__name__, f.name)
            assert f.name in docs, f"{cls.__name__}.{f.name} has no doc"
            assert " ".join(docs[f.name].split()[:4]).replace("%%", "%").replace("``", "") in text, (cls.__name__, f.name)
            if f.name in choices:
                assert f"one of {', '.join(map(str, choices[f.name]))};" in text, (cls.__name__, f.name)


@pytest.mark.parametrize("command, key, extra", [
    ("scan", "ScanConfig", TINY),
    ("discover", "DiscoverConfig", ["--model", "toy", "--quiet"]),
    ("compare", "CompareConfig", ["--model", "toy", "--directions", "d.safetensors"]),
    ("tune", "TuneConfig", []),
    ("demo", "ModelDemoConfig", ["--quick"]),
    ("demo", "DemoConfig", ["--model", "toy", "--quick"]),
])
def test_config_file_with_an_unknown_key_is_one_line_for_every_command(command, key, extra, tmp_path, capsys,
                                                                       monkeypatch):
    from sensfind.core.baselines import save_directions

    monkeypatch.chdir(tmp_path)
    save_directions(tmp_path / "d.safetensors", torch.randn(2, 8))
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"no_such_field": 3}))
    out = tmp_path / "o"
    assert main([command, *extra, "--config", str(cfg), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sensfind: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"unknown {key} field(s) ['no_such_field']; allowed: [" in err and str(cfg) in err
    assert not out.exists()


def test_bool_flags_take_a_value_or_none():
    from sensfind.app.cli import build_parser

    parse = build_parser().parse_args
    assert parse(["discover", "--adaptive", "false"]).adaptive == "false"
    assert parse(["discover", "--no-abandon"]).abandon == "false"
    assert parse(["discover", "--normalize"]).normalize == "true"
    assert parse(["tune", "--multi-objective", "--no-enqueue-defaults"]).enqueue_defaults == "false"


def test_site_flag_errors_name_the_flag(tmp_path, capsys):
    assert main(["scan", "--model", "random:tiny", "--dtype", "float16", "--out", str(tmp_path / "o")]) == 2
    assert "--dtype must be one of ['float32', 'bfloat16', 'float64'], got 'float16'" in capsys.readouterr().err
    assert main(["scan", "--model", "toy", "--out", str(tmp_path / "o")]) == 2
    assert "--model 'toy' is the ground-truth toy, for discover and compare only" in capsys.readouterr().err


# -- defaults that fit (issue 23) --------------------------------------------------------------------


def test_site_commands_default_to_the_offline_trained_model_and_compare_shows_its_budget(capsys):
    for command in ("scan", "discover", "compare"):
        text = _help(command, capsys)
        model_help = text.rsplit("--model MODEL", 1)[1].split(" --", 1)[0]  # its help, not the usage line
        assert "default smollm2-135m]" in model_help, command
    text = _help("compare", capsys)
    assert "--max-points MAX_POINTS" in text and "--dictionary DICTIONARY" in text
    assert "default auto]" in text.rsplit("--dictionary DICTIONARY", 1)[1].split(" --", 1)[0]


@pytest.mark.parametrize("model, kind", [("smollm2-135m", "corpus"), ("gguf:/x.gguf", "corpus"), ("gpt2", "pretrained"),
                                         ("random:tiny", "train"), ("toy", "train")])
def test_compare_defaults_to_the_models_own_dictionary(model, kind):
    from sensfind.app.jobs import resolved_dictionary
    from sensfind.app.site import DiscoverySiteConfig
    from sensfind.specs import DEFAULT_SAE_RELEASE

    spec = resolved_dictionary("auto", DiscoverySiteConfig(model=model))
    assert spec.kind == kind and (kind != "pretrained" or spec.value == DEFAULT_SAE_RELEASE)


def test_a_corpus_dictionary_of_random_weights_is_refused_before_loading(tmp_path, capsys, monkeypatch):
    from sensfind.app.site import DiscoverySiteConfig
    from sensfind.core.baselines import save_directions

    monkeypatch.setattr(DiscoverySiteConfig, "build", lambda self: pytest.fail("work started"))
    save_directions(tmp_path / "d.safetensors", torch.randn(2, 64))
    assert main(["compare", *TINY, "--directions", str(tmp_path / "d.safetensors"), "--dictionary", "corpus",
                 "--out", str(tmp_path / "o")]) == 2
    assert "--dictionary corpus needs a trained model" in capsys.readouterr().err


# -- errors before work (issue 23) -------------------------------------------------------------------


@pytest.mark.parametrize("argv, message", [
    (["--prompt", ""], "--prompt is empty"),
    (["--hook", "blocks.99.hook_resid_pre"], "past the last layer of smollm2-135m (blocks 0..29)"),
    (["--model", "random:tiny", "--hook", "blocks.3.hook_resid_pre"], "past the last layer of random:tiny"),
    (["--tokens", "5,6,7", "--position", "40"], "--position 40 is out of range for 3 tokens"),
    (["--prompts", "corpus64"], "did you mean corpus:64?"),
    (["--prompts", "corpus:ten"], "corpus:N or corpus:N:LEN"),
    (["--prompts", "no/such/prompts.txt"], "'no/such/prompts.txt' does not exist"),
])
@pytest.mark.parametrize("command", ["discover", "compare"])
def test_input_errors_come_before_the_model_loads(command, argv, message, tmp_path, capsys, monkeypatch):
    import sensfind.app.site as site

    monkeypatch.setattr(site, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    extra = ["--directions", str(tmp_path / "d.safetensors")] if command == "compare" else ["--quiet"]
    if command == "compare":
        from sensfind.core.baselines import save_directions

        save_directions(tmp_path / "d.safetensors", torch.randn(2, 576))
    assert main([command, *argv, *extra, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_a_bad_prompt_file_is_refused_before_the_model_loads(tmp_path, capsys, monkeypatch):
    import sensfind.app.site as site

    monkeypatch.setattr(site, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    (tmp_path / "p.txt").write_text("# only a comment\n\n")
    assert main(["discover", "--prompts", str(tmp_path / "p.txt"), "--out", str(tmp_path / "o")]) == 2
    assert "holds no prompts" in capsys.readouterr().err
    assert main(["scan", "--directions", f"targets:{tmp_path / 'p.txt'}", "--out", str(tmp_path / "o")]) == 2
    assert "holds no prompts" in capsys.readouterr().err


def test_a_position_past_the_prompt_is_refused_right_after_loading(tmp_path, capsys, monkeypatch):
    import sensfind.app.site as site

    monkeypatch.setattr(site, "prompt_activations", lambda *a, **k: pytest.fail("work started after loading"))
    assert main(["discover", "--model", "random:tiny", "--prompt", "Hi", "--position", "40", "--quiet",
                 "--out", str(tmp_path / "o")]) == 2
    assert "position 40 is out of range" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["scan", "discover", "compare"])
def test_help_names_the_corpus_prompts(command, capsys):
    assert "corpus:N" in _help(command, capsys)


# -- help text (issue 23) ----------------------------------------------------------------------------


def _subparsers():
    import argparse

    from sensfind.app.cli import build_parser

    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


@pytest.mark.parametrize("command", ["scan", "discover", "compare", "demo", "tune"])
def test_help_has_no_markup_and_one_text_per_flag(command, capsys):
    assert "``" not in _help(command, capsys)
    p = _subparsers()[command]
    texts = [(a.option_strings[0], a.help) for a in p._actions if a.option_strings and a.help
             and not a.help.startswith("same as --")]
    seen = {}
    for flag, text in texts:
        assert text not in seen, f"{flag} and {seen.get(text)} share one help text: {text!r}"
        seen[text] = flag
    titles = [g.title for g in p._action_groups]
    assert len(titles) == len(set(titles)), titles
