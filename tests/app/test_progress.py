"""Progress everywhere: every command shows bars on stderr (stage name, count, ETA) unless --quiet, and
records every stage's seconds in its summary.json."""

import json
import re
import sys

import pytest

import sensfind as sf
import sensfind.progress
from sensfind.app.cli import main
from sensfind.comparison.compare import CompareConfig, compare
from sensfind.dictionaries.dictionary import Dictionary

TINY = ["--model", "random:tiny", "--tokens", "5,6,7,8,9,10"]
TOY_RUN = ["discover", "--model", "toy", "--restarts", "3", "--iterations", "4", "--final-steps", "31",
           "--random-baseline", "4"]
BAR = "pt/s"  # a tqdm bar over scan points (rate, then ETA) writes this; nothing else does


@pytest.fixture(autouse=True)
def bars_at_once(monkeypatch):
    """Bars appear after ``BAR_DELAY`` seconds; the tiny runs here are faster than that."""
    monkeypatch.setattr(sensfind.progress, "BAR_DELAY", 0.0)


def bars(err: str) -> set[str]:
    """The names of the bars in ``err`` (what stands before ``: NN%|`` in each bar line)."""
    return {m.strip() for m in re.findall(r"([^\r\n]*?): +\d+%\|", err)}


def run_twice(argv, out, capsys):
    """stderr of ``argv`` with bars, then with --quiet."""
    assert main([*argv, "--out", str(out / "loud")]) == 0
    loud = capsys.readouterr().err
    assert main([*argv, "--quiet", "--out", str(out / "quiet")]) == 0
    quiet = capsys.readouterr().err
    return loud, quiet


def test_scan_shows_its_stages_unless_quiet(tmp_path, capsys):
    loud, quiet = run_twice(["scan", *TINY, "--directions", "random:3", "--steps", "7"], tmp_path, capsys)
    assert {"loading random:tiny", "scan (naive-random)"} <= bars(loud) and BAR in loud
    assert "%|" not in quiet
    timings = json.loads((tmp_path / "loud" / "summary.json").read_text())["timings"]
    assert {"load_seconds", "directions_seconds", "scan_seconds", "total_seconds"} <= set(timings)


def test_discover_and_compare_show_every_scan_unless_quiet(tmp_path, capsys):
    loud, quiet = run_twice(TOY_RUN, tmp_path / "d", capsys)
    assert {"discover", "random baseline"} <= bars(loud) and "%|" not in quiet
    timings = json.loads((tmp_path / "d" / "loud" / "summary.json").read_text())["timings"]
    assert {"load_seconds", "discover_seconds", "baselines_seconds", "report_seconds"} <= set(timings)
    run = tmp_path / "d" / "loud"
    loud, quiet = run_twice(["compare", "--run", str(run), "--dictionary", "train:64", "--refine-iterations", "2",
                             "--n-latents", "2"], tmp_path / "c", capsys)
    assert {"dictionary train:64", "random baseline", "real-other", "latents (both signs)", "latent probes",
            "compared directions"} <= bars(loud)
    assert "%|" not in quiet
    timings = json.loads((tmp_path / "c" / "loud" / "summary.json").read_text())["timings"]
    assert {"load_seconds", "dictionary_seconds", "matching_seconds", "latents_seconds", "curves_seconds",
            "report_seconds", "total_seconds"} <= set(timings)


def test_toy_demo_shows_progress_unless_quiet(tmp_path, capsys):
    small = tmp_path / "small.json"  # the toy demo's quick sizes, smaller still
    small.write_text(json.dumps({"compare": {"n_null": 20, "latents": "matched", "probes": 1, "scan_steps": 31,
                                             "refine_iterations": 0, "max_points": None}}))
    argv = ["demo", "--model", "toy", "--quick", "--config", str(small), "--restarts", "3", "--iterations", "4",
            "--n-train", "1000", "--d-sae", "32", "--sae-epochs", "1"]
    loud, quiet = run_twice(argv, tmp_path, capsys)
    assert "discover" in bars(loud) and "%|" not in quiet


def test_tune_shows_a_trial_bar_unless_quiet(tmp_path, capsys):
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"restarts": 2, "iterations": 2, "scan_steps": 6, "final_steps": 31}))
    argv = ["tune", "--space", str(space), "--n-trials", "1", "--subjects", "0"]
    loud, quiet = run_twice(argv, tmp_path, capsys)
    assert "%|" in loud and "%|" not in quiet


@pytest.mark.parametrize("tty", [True, False])
def test_the_python_api_shows_bars_by_default_only_in_a_terminal(tty, monkeypatch, capsys):
    class Stderr:
        def __init__(self):
            self.text = ""

        def write(self, s):
            self.text += s

        def flush(self):
            pass

        def isatty(self):
            return tty

    err = Stderr()
    monkeypatch.setattr(sys, "stderr", err)
    toy = sf.ToyModel(sf.ToyConfig(seed=0))
    subject = toy.subject(0)
    found = sf.discover(subject, sf.DiscoverConfig(restarts=2, iterations=3, final_steps=31))
    compare(subject, found.directions, Dictionary(decoder=toy.features[:16].float()), None,
            CompareConfig(n_null=20, n_latents=2, probes=2, scan_steps=31, refine_iterations=0))
    assert (("discover" in bars(err.text)) and ("latent probes" in bars(err.text))) == tty
