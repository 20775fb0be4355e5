"""sensfind.app.sweep: units keyed and written once whatever the engine, faults survived, bad input refused.

One local Ray cluster (2 CPUs) serves the whole test session; the sizes are small (toy units take a
fraction of a second) so the file runs in a couple of minutes, most of it process start-up.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from sensfind.app.cli import main
from sensfind.app.jobs import CONTROL_ROTATIONS, rotated_kind
from sensfind.discovery.config import DiscoverConfig
from sensfind.runio import load_tensors
from sensfind.app.site import DiscoverySiteConfig
from sensfind.app.sweep import DONE, FAILED, RAY_INSTALL, SweepConfig, SweepSummary, _units, local_ray_options, run_sweep

ROOT = Path(__file__).resolve().parents[2]
SMALL = DiscoverConfig(restarts=4, iterations=5, final_steps=61)
SLOW = DiscoverConfig(restarts=64, iterations=60, final_steps=361)  # toy units of about a second


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster of 2 CPUs for the session; sweeps with engine 'ray' join it."""
    ray = pytest.importorskip("ray")
    ray.init(**local_ray_options(2))
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def sweep(model: str, prompts: str, discover=SMALL, **kw) -> SweepConfig:
    kw = {"random_baseline": 8} | kw
    return SweepConfig(site=DiscoverySiteConfig(model=model, device="cpu"), prompts=prompts, discover=discover, **kw)


def units(out: Path) -> dict:
    """key -> (unit.json without timings, tensors) of every finished unit; (error.json's error) of failed ones."""
    found = {}
    for d in sorted((out / "units").iterdir()):
        assert not d.name.startswith("."), f"a stage was left behind: {d}"
        if (d / DONE).is_file():
            rec = json.loads((d / DONE).read_text())
            rec.pop("seconds")
            rec["summary"].pop("timings", None)
            found[d.name] = (rec, {f"{p.relative_to(d)}:{k}": v for p in sorted(d.rglob("*.safetensors"))
                                   for k, v in load_tensors(p).items()})
        else:
            found[d.name] = json.loads((d / FAILED).read_text())["error"]
    return found


def assert_same_units(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], str):
            assert a[key] == b[key]
            continue
        (ra, ta), (rb, tb) = a[key], b[key]
        assert ra == rb
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


@pytest.mark.slow
def test_local_and_ray_give_identical_units_on_random_tiny_and_a_failing_prompt_is_recorded(tmp_path, ray_cluster):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The cat sat on the mat\n\nA lighthouse keeper climbed the stairs\nOnce upon a time\n")
    local = run_sweep(sweep("random:tiny", str(prompts)), tmp_path / "local", progress=False)
    ray = run_sweep(sweep("random:tiny", str(prompts), engine="ray", workers=2, chunk=1), tmp_path / "ray",
                    progress=False)
    for s in (local, ray):
        assert (s.units, s.done, s.failed) == (4, 3, 1)
        assert s.errors[0]["index"] == 1 and "prompt is empty" in s.errors[0]["error"]
        assert SweepSummary.load(tmp_path / ("local" if s is local else "ray")).done == 3
    a, b = units(tmp_path / "local"), units(tmp_path / "ray")
    assert_same_units(a, b)
    results = json.loads((tmp_path / "ray" / "results.json").read_text())
    assert results["n_done"] == 3 and results["n_failed"] == 1
    assert results["n_optima"] == sum(r["summary"]["n_optima"] for r, _ in (v for v in a.values() if not isinstance(v, str)))


@pytest.mark.slow
def test_local_pool_and_ray_give_identical_units_on_the_toy(tmp_path, ray_cluster):
    one = run_sweep(sweep("toy", "inputs:4"), tmp_path / "one", progress=False)
    pool = run_sweep(sweep("toy", "inputs:4", workers=2), tmp_path / "pool", progress=False)
    ray = run_sweep(sweep("toy", "inputs:4", engine="ray", workers=2), tmp_path / "ray", progress=False)
    assert one.done == pool.done == ray.done == 4 and one.failed == pool.failed == ray.failed == 0
    a = units(tmp_path / "one")
    assert_same_units(a, units(tmp_path / "pool"))
    assert_same_units(a, units(tmp_path / "ray"))
    # a re-run finds every unit done; a changed config makes new units beside them
    again = run_sweep(sweep("toy", "inputs:4"), tmp_path / "one", progress=False)
    assert (again.skipped, again.ran, again.done) == (4, 0, 4)
    other = run_sweep(sweep("toy", "inputs:2", discover=DiscoverConfig(restarts=3, iterations=5, final_steps=61)),
                      tmp_path / "one", progress=False)
    assert (other.skipped, other.done) == (0, 2) and len(list((tmp_path / "one" / "units").iterdir())) == 6
    assert json.loads((tmp_path / "one" / "results.json").read_text())["n_done"] == 2  # only this sweep's units


@pytest.mark.slow
def test_the_central_analysis_runs_as_a_sweep_with_identical_units_on_local_and_ray(tmp_path, ray_cluster):
    cfg = SweepConfig(site=DiscoverySiteConfig(model="random:tiny", device="cpu"), prompts="corpus:2", work="analysis",
                      smoke=True, cards=False, cache_dir=str(tmp_path / "cache"))
    local = run_sweep(cfg, tmp_path / "local", progress=False)
    ray = run_sweep(replace(cfg, engine="ray", workers=2, chunk=1), tmp_path / "ray", progress=False)
    assert local.done == ray.done == 2 and local.failed == ray.failed == 0
    a = units(tmp_path / "local")
    assert any(k.startswith("analysis.safetensors:") for _, t in a.values() for k in t)
    assert_same_units(a, units(tmp_path / "ray"))
    results = json.loads((tmp_path / "ray" / "results.json").read_text())
    assert results["n_prompts"] == 2 and set(results["threshold_median_deg"]) >= {"optima", "real-other", "SAE active"}
    assert (tmp_path / "ray" / "report.html").is_file() and (tmp_path / "ray" / "figures" / "threshold_angles.png").is_file()


def test_unit_keys_follow_the_prompt_and_configs_not_the_device():
    keys = lambda cfg: [u.key for u in _units(cfg, None, None)[0]]  # noqa: E731
    base = keys(sweep("toy", "inputs:3"))
    assert len(set(base)) == 3 and base == keys(sweep("toy", "inputs:3"))
    assert keys(SweepConfig(site=DiscoverySiteConfig(model="toy", device="auto"), prompts="inputs:3", discover=SMALL,
                            random_baseline=8, engine="ray", workers=3, chunk=2)) == base
    assert not set(base) & set(keys(sweep("toy", "inputs:3", discover=DiscoverConfig(restarts=5))))
    assert not set(base) & set(keys(sweep("toy", "inputs:3", random_baseline=9)))
    assert not set(base) & set(keys(SweepConfig(site=DiscoverySiteConfig(model="toy", seed=1), prompts="inputs:3",
                                                discover=SMALL, random_baseline=8)))


@pytest.mark.slow
def test_a_ray_worker_killed_mid_unit_is_retried_and_every_unit_is_written_once(tmp_path, ray_cluster):
    import psutil

    out, config = tmp_path / "ray", sweep("toy", "inputs:4", discover=SLOW, engine="ray", workers=1, chunk=1)
    done: dict = {}
    driver = threading.Thread(target=lambda: done.update(s=run_sweep(config, out, progress=False)))
    driver.start()
    killed, deadline = [], time.monotonic() + 120
    while not killed and driver.is_alive() and time.monotonic() < deadline:
        # a unit is in progress (its stage exists) and one worker runs it: kill that worker
        if (out / "units").is_dir() and any(p.name.startswith(".") for p in (out / "units").iterdir()):
            for p in psutil.process_iter(["pid", "name"]):
                if p.info["name"] == "ray::run_chunk":
                    os.kill(p.info["pid"], signal.SIGKILL)
                    killed.append(p.info["pid"])
        time.sleep(0.01)
    driver.join(300)
    assert killed, "no worker was caught mid-unit"
    s = done["s"]
    assert (s.units, s.done, s.failed) == (4, 4, 0)
    found = units(out)  # also: no stage left behind
    assert len(found) == 4 and all(not isinstance(v, str) for v in found.values())
    assert sorted(r["index"] for r, _ in found.values()) == [0, 1, 2, 3]


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["local", "ray"])
def test_the_driver_killed_and_run_again_ends_as_an_uninterrupted_sweep(tmp_path, engine, request):
    args = ["sweep", "--model", "toy", "--prompts", "inputs:6", "--device", "cpu", "--restarts", "64", "--iterations",
            "60", "--final-steps", "361", "--random-baseline", "8", "--quiet"]
    if engine == "ray":  # the driver joins the session's cluster; its tasks die with it (SIGKILL)
        args += ["--engine", "ray", "--workers", "2", "--chunk", "1", "--address", request.getfixturevalue("ray_cluster")]
    out = tmp_path / "killed"
    env = os.environ | {"PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "sensfind.app.cli", *args, "--out", str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    # a unit is finished once its directory has its final name: a stage (.KEY.partial-*) holding unit.json
    # is not, and a run killed before the rename leaves it as litter for the next run to remove
    finished = lambda: sum(not p.parent.name.startswith(".") for p in out.glob(f"units/*/{DONE}"))  # noqa: E731
    while finished() < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    n_before = finished()
    assert 2 <= n_before < 6, "the driver was not caught mid-sweep"
    assert main([*args, "--out", str(out)]) == 0
    s = SweepSummary.load(out)
    assert (s.done, s.failed, s.skipped, s.ran) == (6, 0, n_before, 6 - n_before)
    whole = args[: args.index("--engine")] if engine == "ray" else args  # uninterrupted, local: the same units
    assert main([*whole, "--out", str(tmp_path / "whole")]) == 0
    assert_same_units(units(out), units(tmp_path / "whole"))
    strip = lambda r: {k: v for k, v in r.items() if k != "seconds_per_unit_median"}  # noqa: E731
    assert strip(json.loads((out / "results.json").read_text())) == strip(json.loads((tmp_path / "whole" /
                                                                                      "results.json").read_text()))


@pytest.mark.parametrize("flags, message", [
    (["--engine", "spark"], "--engine must be one of ['local', 'ray'], got 'spark'"),
    (["--engine", "ray", "--address", "nohost"], "--address must be auto, HOST:PORT or ray://HOST:PORT"),
    (["--workers", "0"], "--workers must be an integer >= 1, got 0"),
    (["--prompts", "missing.txt"], "prompt file 'missing.txt' does not exist"),
    (["--engine", "ray"], f"engine 'ray' needs Ray, which is not installed; install it with: {RAY_INSTALL}"),
])
def test_bad_input_is_one_line_and_exit_2_before_any_work(flags, message, tmp_path, monkeypatch, capsys):
    import sensfind.app.sweep

    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "ray", None)  # Ray not installed (import ray raises ImportError)
    loaded = []
    monkeypatch.setattr(sensfind.app.sweep.DiscoverySiteConfig, "load_model", lambda self: loaded.append(1))
    assert main(["sweep", "--model", "random:tiny", *flags, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sensfind: error: ") and message in err
    assert not (tmp_path / "out").exists() and not loaded


@pytest.mark.slow
def test_the_benchmark_script_runs_at_tiny_sizes(tmp_path, ray_cluster):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_sweep", ROOT / "scripts" / "bench_sweep.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    r = bench.main(["--model", "toy", "--prompts", "inputs:2", "--restarts", "4", "--iterations", "5", "--final-steps",
                    "61", "--random-baseline", "8", "--out", str(tmp_path)])
    assert {(row["engine"], row["workers"]) for row in r["rows"]} == {("local", 1), ("local", 2), ("ray", 1), ("ray", 2)}
    assert all(row["units"] == 2 and row["failed"] == 0 and row["units_per_minute"] > 0 for row in r["rows"])
    assert set(r["ray_overhead_over_local"]) == {1, 2} and set(r["speedup_max_over_min_workers"]) == {"local", "ray"}
    # one worker finishes its units one after another: a steady rate no faster than the units allow
    for row in (x for x in r["rows"] if x["workers"] == 1):
        assert 0 < row["steady_units_per_minute"] <= 60 / row["seconds_per_unit"] * 1.05, row
    assert json.loads((tmp_path / "bench.json").read_text())["rows"] == json.loads(json.dumps(r["rows"]))


def test_a_discover_sweep_with_controls_pools_the_optimas_p_beside_isotropic_and_linear(tmp_path):
    config = sweep("toy", "inputs:3", discover=DiscoverConfig(restarts=8, iterations=20, final_steps=61), controls=True)
    s = run_sweep(config, tmp_path / "c", progress=False)
    assert (s.done, s.failed) == (3, 0)
    priv = json.loads((tmp_path / "c" / "results.json").read_text())["privileged"]
    turned = [rotated_kind(d) for d in CONTROL_ROTATIONS]
    assert list(priv) == ["optima", "isotropic", "linear", *turned] and all(v["prompts"] == 3 for v in priv.values())
    assert priv["optima"]["p_median_low"] > 2  # the toy's planted, hard-thresholded features
    assert priv["isotropic"]["prompts_p_above_2"] < 3
    # turned away from the planted features, p falls (the toy of tests/core/test_mixture.py: ∞ -> 3.5 at 60°)
    assert priv[turned[-1]]["p_median"] < priv["optima"]["p_median"]
    assert all("p_cross_median" in v for v in priv.values())
    without = {u.key for u in _units(replace(config, controls=False), None, None)[0]}
    assert not without & {u.key for u in _units(config, None, None)[0]}  # controls change what a unit holds
    with pytest.raises(ValueError, match="controls belong to work 'discover'"):
        replace(config, work="analysis", site=DiscoverySiteConfig(model="random:tiny"), controls=True)
