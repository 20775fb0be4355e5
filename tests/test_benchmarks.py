"""Benchmark scripts run (tiny sizes) and report what they promise; no timing is asserted."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


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
