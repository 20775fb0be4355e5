"""Benchmark scripts run (tiny sizes) and report what they promise; no timing is asserted."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(script: str) -> dict:
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / script), "--quick", "--json"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_bench_discover_quick():
    out = _run("bench_discover.py")
    g = out["gpt2_arch"]
    for key in ("plain_scan_fwd_bwd_s", "discover_step_s", "step_over_scan_ratio"):
        assert math.isfinite(g[key]) and g[key] > 0
    assert g["points_evaluated"] <= g["iterations"] * g["points_per_step"] + g["restarts"] * g["scan_steps"]
    run = out["toy"]["runs"][0]
    assert run["points"] <= run["budget"] and run["distinct_features"] >= 1
    for key in ("recall_top20_signed", "precision"):
        assert 0 <= run[key] <= 1


@pytest.mark.slow
def test_bench_scan_quick():
    out = _run("bench_scan.py")
    for key in ("points_per_s_fast", "points_per_s_reference", "speedup_vs_reference", "sgemm_gflops",
                "roofline_fraction_fp32", "bf16_speedup", "bf16_angle_agreement", "peak_rss_gib"):
        assert isinstance(out[key], (int, float)) and math.isfinite(out[key]), key
    assert len(out["speedup_vs_reference_by_length"]) == 3
    assert out["max_abs_diff_fast_vs_reference"] <= 1e-4


@pytest.mark.slow
def test_score_discovery_counts_distinct_sensitive_optima(tmp_path):
    """A real `discover` run on random:tiny, scored against the builtin prompts: the counts are those
    of `distinct_sensitive` on the saved optima with the median real-other threshold it reports."""
    import torch

    import sensfind as sf

    run = tmp_path / "run"
    res = subprocess.run([sys.executable, "-c", "import sys; from sensfind.app.cli import main; sys.exit(main())", "discover", "--model", "random:tiny", "--restarts", "4",
                          "--iterations", "3", "--final-steps", "37", "--random-baseline", "2", "--quiet",
                          "--out", str(run)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "score_discovery.py"), str(run),
                          "--prompts", "builtin", "--out", str(tmp_path / "score.json")],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out == json.loads((tmp_path / "score.json").read_text())
    found = sf.Discovery.load(run)
    assert out["optima"] == len(found) and out["points"] == found.points_evaluated
    assert out["real_other"] >= 1 and math.isfinite(out["real_other_median"])
    expected = sf.distinct_sensitive(found.directions, found.blowup_deg, out["real_other_median"])
    assert out["distinct_at_cos_0.5_before_real_other_median"] == len(expected)
    assert out["distinct_at_cos_0.5"] == len(sf.distinct_sensitive(found.directions, found.blowup_deg, math.inf))
    assert torch.isfinite(found.blowup_deg).any()
    # bad real-other prompts: one line naming the value, exit 2
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "score_discovery.py"), str(run), "--prompts", "corpus:x"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 2 and "corpus:x" in res.stderr and "Traceback" not in res.stderr
    # not a discover directory: one line, exit 2
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "score_discovery.py"), str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "not a discover results directory" in res.stderr
