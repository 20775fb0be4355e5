"""sensfind.lab.experiment: flags generated from configs, full and --smoke sizes, resolved scans, the run."""

import argparse
from dataclasses import dataclass
from typing import Literal

import pytest

from sensfind.configs import Config, check_int
from sensfind.lab.experiment import (RunOptions, ScanSettings, add_config_flags, config_from_flags, resolve_scans,
                                 run_experiment, sized, smoke_config)
from sensfind.lab.pool import PoolConfig, load_pool_site


@dataclass(frozen=True)
class Demo(Config):
    """A config for these tests.

    Attributes:
        mode: how it runs
        skip: leave something out
        n: how many, 100% sure
        rate: optional rate
    """

    mode: Literal["a", "b"] = "a"
    skip: bool = False
    n: int = sized(10, 2)
    rate: float | None = None

    def __post_init__(self):
        check_int("n", self.n, minimum=1)


def parser_for(*classes):
    p = argparse.ArgumentParser(prog="t")
    for cls in classes:
        add_config_flags(p, cls)
    return p


def test_help_lists_docs_choices_and_both_defaults():
    text = parser_for(Demo).format_help()
    assert "how it runs [one of a, b; default a]" in text
    assert "how many, 100% sure" in text and "[default 10; --smoke 2]" in text
    assert "--skip" in text and "--rate RATE" in text


def test_flags_full_smoke_and_given():
    p = parser_for(Demo, RunOptions)
    assert config_from_flags(Demo, p.parse_args([])) == Demo()
    assert config_from_flags(Demo, p.parse_args(["--smoke"]), smoke=True) == Demo(n=2)
    given = config_from_flags(Demo, p.parse_args(["--n", "7", "--skip", "--mode", "b", "--rate", "0.5"]), smoke=True)
    assert given == Demo(mode="b", skip=True, n=7, rate=0.5)
    assert config_from_flags(RunOptions, p.parse_args(["-v"])).verbose
    with pytest.raises(SystemExit):
        p.parse_args(["--mode", "c"])


def test_bad_flag_value_is_the_configs_one_line_error():
    with pytest.raises(ValueError, match="^n must be an integer >= 1, got 0$"):
        config_from_flags(Demo, parser_for(Demo).parse_args(["--n", "0"]))


def test_smoke_config():
    assert smoke_config(ScanSettings) == ScanSettings(angle_steps=31, straight_steps=41)
    assert smoke_config(PoolConfig, model="toy").n_pool == 160


def test_switch_must_default_to_false():
    @dataclass(frozen=True)
    class On(Config):
        flag: bool = True

    with pytest.raises(TypeError, match="default to False"):
        parser_for(On)


def test_scan_settings_validation_and_resolution_on_the_toy():
    with pytest.raises(ValueError, match="^straight_effect must be one of"):
        ScanSettings(straight_effect="l1")
    with pytest.raises(ValueError, match="^step must be > 0"):
        ScanSettings(step=0.0)
    site = load_pool_site(PoolConfig(model="toy", n_pool=16))
    scans = resolve_scans(ScanSettings(angle_steps=5, straight_steps=6), site)
    assert scans.straight.effect == "kl" and scans.straight.tau == 0.5 and scans.straight_output_hook is None
    assert scans.step > 0 and scans.straight.range[1] == pytest.approx(5 * scans.step)
    assert resolve_scans(ScanSettings(step=0.25, straight_steps=5), site).straight.range[1] == 1.0
    with pytest.raises(ValueError, match="the toy has no late residual stream"):
        resolve_scans(ScanSettings(straight_effect="l2"), site)


def test_run_experiment_writes_one_directory(tmp_path, capsys):
    def body(cfg, site, run):
        (run.path("x.txt")).write_text(str(cfg.n))
        run.config["extra"] = 1
        return f"demo: {site.name} n={cfg.n}"

    out = tmp_path / "run"
    assert run_experiment("demo", "d", Demo, body, ["--model", "toy", "--smoke", "--out", str(out)]) == 0
    assert (out / "x.txt").read_text() == "2" and (out / "summary.txt").read_text() == "demo: toy n=2\n"
    import json

    config = json.loads((out / "config.json").read_text())
    assert config["args"]["n"] == 2 and config["args"]["n_pool"] == 160 and config["extra"] == 1
    assert "demo: toy n=2" in capsys.readouterr().out


def test_run_experiment_bad_value_is_one_line_and_no_directory(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_experiment("demo", "d", Demo, lambda *a: "", ["--model", "toy", "--n-pool", "3", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "demo: error: n_pool must be an integer >= 8, got 3" and not out.exists()


def test_scans_contexts_and_run_on_the_toy():
    import torch

    from sensfind.core.baselines import isotropic

    site = load_pool_site(PoolConfig(model="toy", n_pool=16))
    scans = resolve_scans(ScanSettings(angle_steps=5, straight_steps=6), site)
    sphere_subject, straight_subject = scans.contexts(site, 3)
    assert straight_subject is sphere_subject and torch.equal(sphere_subject.base, site.pool[3])  # no output hook
    sphere, straight = scans.run(sphere_subject, straight_subject, isotropic(2, site.d, seed=0))
    assert sphere.config.mode == "sphere" and sphere.effects.shape == (2, 5)
    assert straight.config.mode == "straight" and straight.effects.shape == (2, 6)
