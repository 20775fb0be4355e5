"""`sensfind mixture`: the Lp mixture test and the linear-response predictions as a command and a job."""

import json

import pytest

from sensfind.app.cli import main
from sensfind.app.jobs import run_mixture
from sensfind.app.site import DiscoverySiteConfig
from sensfind.core.mixture import MixtureConfig, MixtureTest

TINY = ["--model", "random:tiny", "--prompt", "hello world again"]


def test_linear_directions_of_a_smooth_subject_are_not_privileged(tmp_path, capsys):
    # random weights: a smooth response; at a small tau its top eigenvectors mix like a quadratic form
    out = tmp_path / "m"
    assert main(["mixture", *TINY, "--directions", "linear:4", "--tau", "0.05", "--bootstrap", "200",
                 "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["direction_kind"] == "linear" and summary["n_pairs"] >= 2
    assert summary["p_low"] <= 2.0 <= summary["p_high"]
    assert 0.8 < summary["linear"]["ratio_median"] < 1.25  # the quadratic onset predicts their thresholds
    test = MixtureTest.load(out)
    assert test.p == summary["p"] and (out / "mixture_curves.png").stat().st_size > 0
    assert json.loads((out / "config.json").read_text())["command"] == "mixture"
    assert "linear: p = " in capsys.readouterr().out


def test_discovered_optima_of_the_toy_are_privileged(tmp_path):
    # the toy's optima are its planted features, read off with hard thresholds
    run = tmp_path / "d"
    assert main(["discover", "--model", "toy", "--restarts", "8", "--iterations", "10", "--quiet", "--out",
                 str(run)]) == 0
    found = json.loads((run / "summary.json").read_text())  # discover reports it too, among its own optima
    assert len(found["optima_linear_ratio"]) == found["n_optima"]
    assert found["mixture"]["p_low"] > 2.0 and found["mixture"]["scan_points"] > 0
    # hard thresholds: the quadratic onset misses the plateau's edge, and KL grows faster than quadratically
    assert found["linear"]["ratio_median"] < 0.5 and found["linear"]["early_growth_2deg_median"] > 2.0
    out = tmp_path / "m"
    assert main(["mixture", "--run", str(run), "--bootstrap", "200", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["direction_kind"] == "discovered optima"
    assert summary["p_low"] > 2.0


def test_isotropic_directions_of_the_toy_are_not(tmp_path):
    r = run_mixture(DiscoverySiteConfig(model="toy"), MixtureConfig(bootstrap=200), tmp_path / "m", "random:8")
    assert r.direction_kind == "naive-random"
    assert r.test.p_low <= 2.0 <= r.test.p_high  # p = 2 is not excluded (the planted features exclude it)


@pytest.mark.parametrize("argv, message", [
    (["--run", "x", "--directions", "random:4"], "one of --run"),
    (["--directions", "nope:4"], "--directions must be"),
    (["--directions", "linear:zero"], "linear:N needs an integer"),
])
def test_bad_input_is_one_line(tmp_path, capsys, argv, message):
    out = tmp_path / "m"
    assert main(["mixture", *TINY, *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not out.exists()
