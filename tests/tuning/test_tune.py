"""Tuning: search spaces, scoring, failures, pruning, results, and studies shared by worker processes.

Worker tests start real processes (``python -m sensfind.app.cli tune``) against a real PostgreSQL server
(``tests/pg.py``) and against the default SQLite file. Budgets are tiny: 4 restarts, <= 8 iterations.
"""

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

import sensfind as sf
import sensfind.tuning as tn
from sensfind.core.geometry import directions_from_targets
from sensfind import DiscoverConfig, FunctionSubject, discover
from sensfind.tuning._space import _DEFAULT_SPACE, _apply
from sensfind.tuning._storage import _targets
from sensfind.tuning._targets import _Probe
from sensfind.tuning import SearchSpace, StudyMismatchError, Target, TuneConfig, tune

ROOT = Path(__file__).resolve().parents[2]
TINY_SPACE = {
    "restarts": 4,
    "iterations": {"type": "int", "low": 4, "high": 8},
    "scan_steps": 12,
    "final_steps": 61,
    "mode": "sphere",
    "effect": "kl",
    "optimizer": "sgd",
}
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


@pytest.fixture
def space_file(tmp_path):
    path = tmp_path / "space.json"
    path.write_text(json.dumps(TINY_SPACE))
    return path


@pytest.fixture(scope="module")
def pg_url():
    from pg import PostgresUnavailable, postgres_server

    try:
        with postgres_server() as url:
            yield url
    except PostgresUnavailable as exc:
        pytest.fail(str(exc))


def _config(**kw) -> TuneConfig:
    base = dict(subjects=(0,), n_trials=2, sampler="random", sampler_seed=0, enqueue_defaults=False)
    return TuneConfig(**(base | kw))


def _worker(*args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "sensfind.app.cli", "tune", "--quiet", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[str, str]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"worker failed ({proc.returncode}):\n{out}\n{err}"
    return out, err


# -- search space ----------------------------------------------------------------------------------


def test_default_space_is_valid_and_contains_the_defaults():
    space = SearchSpace.default()
    assert set(space.params) == set(_DEFAULT_SPACE)
    params = space.default_params()
    assert params is not None and params["restarts"] == 32 and space.params["mode"].value == "sphere"
    cfg, d = _apply(DiscoverConfig(), params), DiscoverConfig()
    for it in (0, 30, 59):
        assert math.isclose(cfg.temperature_at(it), d.temperature_at(it))
        assert math.isclose(cfg.lr_at(it), d.lr_at(it))
    assert cfg.scan_config.range == d.scan_config.range
    # the printed space round-trips through a file
    assert SearchSpace.from_dict(space.to_dict()).to_dict() == space.to_dict()


def test_space_file_narrows_fixes_and_replaces_derived_parameters(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"lr": {"type": "float", "low": 0.02, "high": 0.2, "log": True}, "mode": "straight",
                                "temperature_final": None, "restarts": {"type": "fixed", "value": 8}}))
    space = SearchSpace.load(path)
    assert space.params["lr"].low == 0.02 and space.params["mode"].value == "straight"
    assert "temperature_ratio" not in space.params  # temperature_final replaces it
    assert space.params["tau"].to_dict() == _DEFAULT_SPACE["tau"]  # untouched entries stay
    yaml_path = tmp_path / "s.yaml"
    yaml_path.write_text("stop_fraction: {type: float, low: 0.5, high: 1.0}\neffect: kl\n")
    cfg = _apply(DiscoverConfig(mode="straight"), {"stop_fraction": 0.5})
    assert SearchSpace.load(yaml_path).params["effect"].value == "kl" and cfg.stop == 0.5


@pytest.mark.parametrize("entries, message", [
    ({"lrr": {"type": "float", "low": 0.1, "high": 1}}, r"unknown search space parameter 'lrr'; allowed: \[.*'lr'"),
    ({"seed": 3}, "unknown search space parameter 'seed'"),
    ({"lr": {"type": "float", "low": 0.5, "high": 0.1}}, r"'lr': empty range, low \(0.5\) must be < high \(0.1\)"),
    ({"restarts": {"type": "int", "low": 8, "high": 8}}, r"'restarts': empty range"),
    ({"optimizer": {"type": "categorical", "choices": []}}, "'optimizer': choices must be a non-empty list"),
    ({"mode": {"type": "categorical", "choices": ["sphere", "cube"]}}, "'mode': value 'cube' is not allowed"),
    ({"polish_lr": {"type": "float", "low": 0.0, "high": 1.0, "log": True}}, "'polish_lr': a log scale needs low > 0"),
    ({"tau": {"type": "float", "low": 0.1}}, "'tau': type 'float' needs 'high'"),
    ({"tau": {"type": "uniform", "low": 0.1, "high": 1}}, "'tau': type must be one of"),
    ({"temperature_ratio": 0.5, "temperature_final": 0.01}, "both 'temperature_ratio' and 'temperature_final'"),
])
def test_bad_search_spaces_are_refused_naming_the_parameter(entries, message):
    with pytest.raises(ValueError, match=message):
        SearchSpace.from_dict(entries)


def test_bad_space_file_is_one_line_on_the_command_line(tmp_path, capsys):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"learning_rate": {"type": "float", "low": 0.1, "high": 1}}))
    assert tn.main(["--space", str(path), "--out", str(tmp_path / "o"), "--n-trials", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown search space parameter 'learning_rate'" in err
    assert not (tmp_path / "o").exists()


def test_print_space_and_the_subcommand_registration(capsys):
    assert tn.main(["--print-space"]) == 0
    assert json.loads(capsys.readouterr().out) == SearchSpace.default().to_dict()
    parser = argparse.ArgumentParser(prog="sensfind")
    tn.add_tune_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["tune", "--n-trials", "3", "--subjects", "4,5", "--multi-objective"])
    assert args.func is tn.cmd_tune
    config = tn.config_from_args(args)
    assert config.n_trials == 3 and config.subjects == (4, 5) and config.multi_objective and not config.pruning


# -- storage and study errors ----------------------------------------------------------------------


def test_unreachable_storage_is_one_clear_line(tmp_path, capsys):
    assert tn.main(["--storage", "postgresql://someone:secret@127.0.0.1:1/x", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "cannot open storage 'postgresql://someone:***@127.0.0.1:1/x'" in err and "secret" not in err
    assert "refused" in err.lower()


def test_a_study_with_other_directions_or_settings_is_refused(tmp_path, space_file, capsys):
    space = SearchSpace.load(space_file)
    storage = str(tmp_path / "study.db")
    tune(_config(storage=storage, n_trials=0), space)
    with pytest.raises(StudyMismatchError, match=r"exists with directions \['maximize'\] but this run needs "
                                                 r"\['maximize', 'minimize'\]"):
        tune(_config(storage=storage, n_trials=0, multi_objective=True), space)
    with pytest.raises(StudyMismatchError, match="metric differ"):
        tune(_config(storage=storage, n_trials=0, metric="distinct"), space)
    with pytest.raises(StudyMismatchError, match="space differ"):
        tune(_config(storage=storage, n_trials=0), SearchSpace.from_dict(TINY_SPACE | {"restarts": 5}))
    args = ["--storage", storage, "--space", str(space_file), "--multi-objective", "--subjects", "0"]
    assert tn.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists with directions" in err


def test_config_validation():
    with pytest.raises(ValueError, match="does not support pruning in multi-objective"):
        TuneConfig(multi_objective=True, pruner="median")
    assert not TuneConfig(multi_objective=True).pruning and TuneConfig().pruning
    with pytest.raises(ValueError, match="metric 'sae' needs a transformer"):
        TuneConfig(metric="sae")
    with pytest.raises(ValueError, match="use metric 'sensitive', or metric 'sae' with --sae"):
        TuneConfig(model="random:tiny")
    with pytest.raises(ValueError, match="grace_period"):
        TuneConfig(heartbeat_interval=5, grace_period=5)


# -- trials ----------------------------------------------------------------------------------------


def test_probe_reads_the_current_directions_off_the_scan():
    target = tn.toy_targets([0])[0]
    probe = _Probe(target.subject)
    cfg = DiscoverConfig(restarts=4, iterations=6, scan_steps=12, final_steps=61, lr_final=None, lr=1e-9)
    seen = []
    found = discover(probe, cfg, callback=lambda it, rec: seen.append(probe.directions(4, "sphere")))
    # with a negligible step the directions scanned are the final ones
    assert torch.allclose(seen[-1], found.restart_directions, atol=1e-5)


def test_non_finite_trial_is_recorded_failed_and_the_study_goes_on():
    toy = tn.toy_targets([0])[0]
    base = toy.subject.base

    def fn(acts):  # NaN once a perturbation leaves the sphere |x| = |x0| (straight mode)
        out = toy.subject.run(acts)
        off = acts.norm(dim=1) > 1.05 * base.norm()
        return torch.where(off[:, None], torch.full_like(out, math.nan), out)

    target = Target("nan-toy", FunctionSubject(base, fn), toy.score)
    space = SearchSpace.from_dict(TINY_SPACE | {"mode": {"type": "categorical", "choices": ["sphere", "straight"]}})
    storage = optuna.storages.InMemoryStorage()
    config = _config(storage="memory", n_trials=3)
    study = tn.open_study(config, space, storage=storage)
    for mode in ("straight", "sphere", "straight"):
        study.enqueue_trial({"mode": mode})
    result = tune(config, space, targets=[target], storage=storage)
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.FAIL, TrialState.COMPLETE, TrialState.FAIL]
    reason = study.trials[0].user_attrs["fail_reason"]
    assert reason.startswith("non-finite:") and "iteration 0" in reason
    assert result.counts() == {"FAIL": 2, "COMPLETE": 1} and result.best[0]["number"] == 1


def test_a_trial_its_budget_cannot_pay_for_fails_and_the_study_goes_on():
    # a fixed max_points (issue 12's tuning) with sampled iterations x scan_steps above it: that trial
    # fails with the reason, it does not end the study
    target = tn.toy_targets([0])[0]
    space = SearchSpace.from_dict(TINY_SPACE | {"max_points": {"type": "fixed", "value": 600},
                                                "iterations": {"type": "int", "low": 4, "high": 60}})
    storage = optuna.storages.InMemoryStorage()
    config = _config(storage="memory", n_trials=2)
    study = tn.open_study(config, space, storage=storage)
    for iterations in (50, 4):  # 50 * 12 + 61 + 1 > 600 > 4 * 12 + 61 + 1
        study.enqueue_trial({"iterations": iterations})
    result = tune(config, space, targets=[target], storage=storage)
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.COMPLETE]
    assert study.trials[0].user_attrs["fail_reason"].startswith("invalid settings: max_points=600 cannot pay")
    assert study.trials[0].user_attrs["points"] == 0 and result.counts() == {"FAIL": 1, "COMPLETE": 1}


def test_intermediate_values_are_reported_and_pruned_trials_record_their_compute(monkeypatch):
    space = SearchSpace.from_dict(TINY_SPACE | {"iterations": 10, "tol": 0.0})
    storage = optuna.storages.InMemoryStorage()
    result = tune(_config(storage="memory", n_trials=1, subjects=(0, 1)), space, storage=storage)
    trial = optuna.load_study(study_name="sensfind-tune", storage=storage).trials[0]
    assert sorted(trial.intermediate_values) == list(range(1, 11))  # 5 reports per subject
    assert trial.intermediate_values[10] == pytest.approx(trial.value)
    assert result.trials[0]["points"] > 0

    # a pruner that prunes every trial at its first report
    monkeypatch.setattr(tn._storage, "_pruner", lambda config: optuna.pruners.ThresholdPruner(lower=2.0))
    result = tune(_config(storage="memory", n_trials=2, study_name="pruned"), space)
    assert [r["state"] for r in result.trials] == ["PRUNED", "PRUNED"]
    assert all(0 < r["points"] < 4 * 12 * 10 for r in result.trials)  # less than one full discovery


@pytest.mark.slow
def test_results_multi_objective_pareto_front_and_a_config_discover_accepts(tmp_path, space_file):
    from sensfind.app.cli import main as cli_main

    out = tmp_path / "run"
    space = SearchSpace.load(space_file)
    result = tune(_config(n_trials=3, multi_objective=True), space, out=out)
    assert not any(t.intermediate_values for t in optuna.load_study(study_name="sensfind-tune",
                                                                  storage=f"sqlite:///{out}/study.db").trials)
    names = {p.name for p in out.iterdir()}
    assert {"best_config.json", "pareto.json", "trials.csv", "summary.md", "tune.json", "history.png",
            "pareto.png", "study.db"} <= names
    pareto = json.loads((out / "pareto.json").read_text())
    assert pareto and [p["points"] for p in pareto] == sorted(p["points"] for p in pareto)
    assert len((out / "trials.csv").read_text().splitlines()) == 4
    best = json.loads((out / "best_config.json").read_text())
    assert DiscoverConfig.from_dict(best).restarts == 4 and best == result.best_config
    saved = json.loads((out / "tune.json").read_text())
    assert saved["settings"]["space"] == space.to_dict() and saved["config"]["multi_objective"]
    assert cli_main(["discover", "--model", "toy", "--config", str(out / "best_config.json"), "--iterations", "2",
                     "--random-baseline", "4", "--quiet", "--out", str(tmp_path / "disc")]) == 0
    saved = json.loads((tmp_path / "disc" / "config.json").read_text())["discover"]
    assert saved["lr"] == best["lr"] and saved["iterations"] == 2


@pytest.mark.slow
def test_sae_scored_transformer_subjects(tmp_path):
    from sensfind.dictionaries.dictionary import Dictionary

    g = torch.Generator().manual_seed(0)
    Dictionary(decoder=torch.randn(32, 64, generator=g), hook_name="blocks.1.hook_resid_pre").save(tmp_path / "sae")
    config = TuneConfig(model="random:tiny", metric="sae", sae=str(tmp_path / "sae"), subjects=(0,), n_trials=1,
                        storage="memory", enqueue_defaults=False)
    (target,) = _targets(config)
    cfg = DiscoverConfig(restarts=3)
    planted = Dictionary.load(tmp_path / "sae").decoder[:3].double()
    assert target.score(planted, cfg) == 1.0  # every optimum is a latent
    assert target.score(torch.randn(3, 64, generator=g, dtype=torch.float64), cfg) == 0.0
    result = tune(config, SearchSpace.from_dict(TINY_SPACE), targets=[target])
    assert result.counts() == {"COMPLETE": 1} and 0 <= result.best[0]["quality"] <= 1


# -- workers sharing a study -----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["postgresql", "default-file"])
def test_three_workers_fill_one_study(backend, request, tmp_path, space_file):
    if backend == "postgresql":
        storage = request.getfixturevalue("pg_url")
        name = f"workers-{os.getpid()}-{time.monotonic_ns()}"
        where = [["--storage", storage, "--out", str(tmp_path / f"w{i}")] for i in range(3)]
    else:  # no --storage: every worker uses the default OUT/study.db of the shared --out
        name, storage = "workers", f"sqlite:///{tmp_path / 'shared' / 'study.db'}"
        where = [["--out", str(tmp_path / "shared")]] * 3
    common = ["--study-name", name, "--space", str(space_file), "--subjects", "0", "--n-trials", "2"]
    procs = [_worker(*common, *w) for w in where]
    outs = [_finish(p)[0] for p in procs]
    assert all("this worker ran 2" in o for o in outs)
    trials = optuna.load_study(study_name=name, storage=storage).get_trials()
    assert sorted(t.number for t in trials) == list(range(6))  # none lost, none duplicated
    assert all(t.state in FINISHED for t in trials)
    per_worker = {}
    for t in trials:
        per_worker[t.user_attrs["worker"]] = per_worker.get(t.user_attrs["worker"], 0) + 1
    assert sorted(per_worker.values()) == [2, 2, 2]
    assert {w.split(":")[-1] for w in per_worker} == {str(p.pid) for p in procs}


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["default-file", "postgresql"])
def test_a_killed_worker_leaves_its_trial_failed_and_a_new_worker_continues(backend, request, tmp_path):
    space = SearchSpace.from_dict(TINY_SPACE | {"iterations": {"type": "categorical", "choices": [6, 5000]},
                                                "tol": 0.0})
    path = tmp_path / "space.json"
    path.write_text(json.dumps(space.to_dict()))
    out = tmp_path / "run"
    storage = request.getfixturevalue("pg_url") if backend == "postgresql" else None
    name = f"killed-{os.getpid()}-{time.monotonic_ns()}"
    config = _config(heartbeat_interval=1, grace_period=3, retries=0, storage=storage, study_name=name)
    study = tn.open_study(config, space, out)
    study.enqueue_trial({"iterations": 5000})  # long enough to be killed mid-trial
    study.enqueue_trial({"iterations": 6})
    args = ["--out", str(out), "--space", str(path), "--subjects", "0", "--n-trials", "1", "--retries", "0",
            "--heartbeat-interval", "1", "--grace-period", "3", "--sampler", "random", "--study-name", name]
    args += ["--storage", storage] if storage else []
    doomed = _worker(*args)
    deadline = time.monotonic() + 120
    while study.get_trials(states=(TrialState.RUNNING,)) == []:
        assert doomed.poll() is None and time.monotonic() < deadline, doomed.communicate()
        time.sleep(0.5)
    time.sleep(1.5)  # a heartbeat or two
    doomed.send_signal(signal.SIGKILL)
    doomed.communicate()
    assert study.trials[0].state == TrialState.RUNNING  # dead, but nobody knows yet
    time.sleep(3)  # the grace period passes
    out_text, _ = _finish(_worker(*args))
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].params["iterations"] == 6 and "this worker ran 1" in out_text


# -- benchmark script ------------------------------------------------------------------------------


@pytest.mark.slow
def test_bench_script_smoke(tmp_path, space_file):
    cmd = [sys.executable, "scripts/bench_tune.py", "--json", "--trials", "3", "--subjects", "0",
           "--space", str(space_file), "--out", str(tmp_path)]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert set(report["runs"]) == {"median", "none"}
    for run in report["runs"].values():
        assert run["trials"] == 3 and run["points"] > 0
    res = subprocess.run(cmd[:2] + ["--holdout", "--trials", "2", "--subjects", "0", "--holdout-seeds", "100",
                                    "--space", str(space_file), "--out", str(tmp_path / "h")],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert "defaults" in res.stdout and "tuned" in res.stdout and "command:" in res.stdout


def test_sensitive_metric_counts_far_apart_optima_before_the_real_other_median():
    target = tn.toy_targets([0], metric="sensitive")[0]
    assert target.score is None  # scored on the whole result
    cfg = DiscoverConfig(restarts=6, iterations=15, max_points=12_000)
    found = discover(target.subject, cfg)
    value = target.evaluate(found, cfg)
    others = target.subject.real_others(64, seed=1)
    dirs = directions_from_targets(target.subject.base, others)
    median = float(sf.scan(target.subject, dirs, cfg.final_scan_config).threshold.median())
    kept = sf.distinct_sensitive(found.directions, found.blowup_deg, median)
    assert value == pytest.approx(len(kept) * 1e5 / found.points_evaluated) and len(kept) >= 3
    assert all(float(found.blowup_deg[i]) < median for i in kept)
    # a reference nothing beats keeps nothing; near-duplicates count once
    assert sf.distinct_sensitive(found.directions, found.blowup_deg, 0.0) == []
    twin = torch.cat([found.directions[:1], found.directions[:1]])
    assert sf.distinct_sensitive(twin, torch.tensor([1.0, 2.0]), 10.0) == [0]
    with pytest.raises(ValueError, match="use metric 'sensitive'"):
        tn.TuneConfig(model="random:tiny", metric="distinct")
    tn.TuneConfig(model="random:tiny", metric="sensitive")  # no SAE needed


def test_sensitive_transformer_targets_take_corpus_prompts():
    # `sensfind tune --prompts corpus:N` (held-out windows for issue 12): the windows need the model's tokenizer
    from sensfind.models.prompts import load_prompts

    targets = tn.transformer_targets("random:tiny", None, [0, 2], prompts="corpus:5", metric="sensitive")
    assert [t.name for t in targets] == ["prompt:0", "prompt:2"]
    model = sf.load_model("random:tiny", seed=0)
    windows = load_prompts("corpus:5", model)
    assert torch.equal(targets[1].subject.base, sf.TransformerSubject(model, windows[2], hook="blocks.1.hook_resid_pre").base)
    cfg = DiscoverConfig(restarts=2, iterations=2, scan_steps=4, final_steps=9, rounds=1)
    assert targets[0].evaluate(sf.discover(targets[0].subject, cfg), cfg) >= 0


def test_device_is_a_tune_setting_checked_before_any_work(tmp_path, capsys):
    """--device reaches the transformer subjects' loader; an unknown one is one line and exit 2, nothing written."""
    import sensfind.tuning as tn

    assert tn.TuneConfig(model="random:tiny", metric="sensitive", device="cpu").device == "cpu"
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        tn.TuneConfig(model="random:tiny", metric="sensitive", device="tpu")
    out = tmp_path / "tune-out"
    code = tn.main(["--model", "random:tiny", "--metric", "sensitive", "--device", "tpu", "--out", str(out)])
    assert code == 2 and not out.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown device 'tpu'" in err[0]


def test_default_space_fixes_the_objective_and_searches_the_optimiser():
    space, d = SearchSpace.default(), DiscoverConfig()
    for name in ("effect", "mode", "tau"):
        assert not space.params[name].tuned and space.params[name].value == getattr(d, name)
    assert {"lr", "optimizer", "restarts", "iterations", "temperature"} <= {n for n, p in space.params.items() if p.tuned}


def test_a_budget_no_trial_can_pay_for_is_refused_before_the_study_starts(tmp_path, capsys):
    space = SearchSpace.from_dict(TINY_SPACE | {"max_points": 100})  # 4 x 12 + 61 + 1 = 110 > 100
    with pytest.raises(ValueError, match="max_points=100 cannot pay for one restart"):
        tune(_config(storage="memory", n_trials=1), space, targets=tn.toy_targets([0]),
             storage=optuna.storages.InMemoryStorage())
    path = tmp_path / "s.json"
    path.write_text(json.dumps(TINY_SPACE | {"max_points": 100}))
    assert tn.main(["--space", str(path), "--out", str(tmp_path / "o"), "--n-trials", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot pay for one restart" in err and not (tmp_path / "o" / "study.db").exists()
    SearchSpace.from_dict(TINY_SPACE | {"max_points": 110}).check_budget()  # exactly one restart: accepted


def test_tune_help_documents_the_space_file_format(capsys):
    assert tn.main(["--help"]) == 0
    text = capsys.readouterr().out
    for part in ('"type": "float"', '"type": "categorical"', '"type": "fixed"', "stop_fraction", "--print-space"):
        assert part in text, part
