"""Budgets that hold: every scan point a command runs through the subject counts against --max-points."""

import json

import pytest

from sensfind.app.cli import main
from sensfind.comparison.budget import plan_compare
from sensfind.comparison.compare import CompareConfig
from sensfind.core.toy import ToySubject
from sensfind.discovery.config import DiscoverConfig
from sensfind.models.transformer_subject import TransformerSubject

TINY = ["--model", "random:tiny", "--tokens", "5,6,7,8,9,10"]


@pytest.fixture
def points(monkeypatch):
    """Rows run through any subject (fast path or reference) while the test runs."""
    count = {"n": 0}
    for cls, names in ((TransformerSubject, ("run", "run_reference")), (ToySubject, ("run",))):
        for name in names:
            original = getattr(cls, name)

            def counted(self, acts, _original=original):
                count["n"] += acts.shape[0]
                return _original(self, acts)

            monkeypatch.setattr(cls, name, counted)
    return count


@pytest.mark.parametrize("model", [TINY, ["--model", "toy"]], ids=["random-tiny", "toy"])
def test_discover_and_compare_stay_within_their_budgets(model, tmp_path, points):
    run, budget = tmp_path / "run", 3000
    assert main(["discover", *model, "--max-points", str(budget), "--quiet", "--out", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert points["n"] <= budget, "discover ran more points through the subject than its budget"
    assert summary["budget"]["total_points"] <= budget
    assert summary["budget"]["points"]["random_baseline"] > 0  # the baseline is scanned, and counted
    # compare with its default budget (the flag's default, whatever it is)
    default = CompareConfig().max_points
    points["n"] = 0
    assert main(["compare", "--run", str(run), "--dictionary", "train:128", "--quiet", "--out", str(tmp_path / "c")]) == 0
    s = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert points["n"] <= default and s["budget"]["total_points"] <= default


def test_discover_refuses_a_budget_that_the_baseline_leaves_too_small_before_loading(tmp_path, capsys, points):
    assert main(["discover", *TINY, "--max-points", "500", "--quiet", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "cannot pay for one restart" in err and "\n" not in err.strip()
    assert points["n"] == 0 and not (tmp_path / "o").exists()


def test_scan_refuses_more_points_than_its_budget(tmp_path, capsys):
    assert main(["scan", *TINY, "--directions", "random:4", "--steps", "10", "--max-points", "39", "--quiet",
                 "--out", str(tmp_path / "o")]) == 2
    assert "4 directions x 10 steps" in capsys.readouterr().err
    assert main(["scan", *TINY, "--directions", "random:4", "--steps", "10", "--max-points", "40", "--quiet",
                 "--out", str(tmp_path / "p")]) == 0


@pytest.mark.parametrize("budget", [2000, 20000, 200000, None])
def test_compare_plan_fits_its_budget_and_keeps_matched_latents_first(budget):
    groups = {"active": list(range(40)), "matched": [100, 3], "sample": list(range(200, 232))}
    refine = DiscoverConfig(iterations=40, init="given")
    plan = plan_compare(budget, n_directions=5, n_random=64, n_others=48, groups=groups, scan_steps=361, probes=8,
                        refine=refine)
    total = sum(plan.points.values())
    if budget is None:
        distinct = len({i for ids in groups.values() for i in ids})
        assert not plan.cut and len(plan.latents) == distinct and plan.n_refine == distinct
        return
    assert total <= budget
    assert plan.latents[:2] == [100, 3][: len(plan.latents)]  # the matched latents are scanned first
    for name, (asked, kept) in plan.cut.items():
        assert kept < asked, name


def test_compare_refuses_a_budget_below_its_curves():
    with pytest.raises(ValueError, match="cannot pay for the compared directions"):
        plan_compare(100, n_directions=5, n_random=64, n_others=48, groups={}, scan_steps=361, probes=8, refine=None)
