"""Reliability of the command line (issue 10): a finished run is never lost, memory stays bounded, and
every bad input is one line ``sensfind: error: ...`` with exit status 2 and nothing half-written.

Each test is named after the defect it pins down (numbers as in the issue).
"""

import errno
import io
import json
import os
import stat
import subprocess
import sys
import time
from contextlib import contextmanager, redirect_stderr
from pathlib import Path

import numpy as np
import pytest
import torch

import sensfind.runio as runio
from sensfind.app.jobs import incomplete_dir
from sensfind.app.cli import main

TINY = ["--model", "random:tiny", "--tokens", "5,6,7,8,9,10"]
TOY = ["discover", "--model", "toy", "--restarts", "4", "--iterations", "3", "--final-steps", "31",
       "--random-baseline", "4", "--checkpoint-every", "1", "--quiet"]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("sensfind: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


def snapshot(directory: Path) -> dict:
    """Every file under ``directory`` (relative name -> bytes)."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def finished_toy_run(out: Path) -> dict:
    assert main([*TOY, "--out", str(out)]) == 0
    return snapshot(out)


def interrupted_toy_run(out: Path, monkeypatch) -> Path:
    """A discover run stopped (Ctrl-C) after its last checkpoint: its checkpoint waits in the stage."""
    opt = sys.modules["sensfind.discovery.loop"]

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    err = io.StringIO()
    with monkeypatch.context() as m, redirect_stderr(err):
        m.setattr(opt, "_result", interrupt)
        assert main([*TOY, "--out", str(out)]) == 130
    assert err.getvalue() == (f"sensfind: interrupted; the run is kept in {str(incomplete_dir(out))!r}; continue it "
                              f"with: sensfind discover --resume --out {out}\n")
    ckpt = incomplete_dir(out) / "checkpoint.pt"
    assert ckpt.is_file() and not out.exists()
    return ckpt


# -- 1. data loss ------------------------------------------------------------------------------------


def test_1_discover_failing_after_overwrite_keeps_the_old_complete_run(tmp_path, monkeypatch):
    out = tmp_path / "run"
    before = finished_toy_run(out)
    plots = sys.modules["sensfind.app.jobs"]  # where the job looks the plot function up

    def bug(*args, **kwargs):  # a genuine bug after the optimisation: a traceback, not one line
        raise RuntimeError("plotting bug")

    monkeypatch.setattr(plots, "plot_effect_curves", bug)
    with pytest.raises(RuntimeError, match="plotting bug"):
        main([*TOY, "--iterations", "4", "--overwrite", "--out", str(out)])
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no stage or partial directory left


def test_1_discover_failing_with_an_error_after_overwrite_keeps_the_old_run(tmp_path, monkeypatch, capsys):
    from sensfind.errors import NonFiniteOutputError

    out = tmp_path / "run"
    before = finished_toy_run(out)
    capsys.readouterr()
    recovery = sys.modules["sensfind.app.jobs"]  # where the job looks recovery up

    def non_finite(*args, **kwargs):
        raise NonFiniteOutputError("the subject's output became non-finite")

    monkeypatch.setattr(recovery, "recovery", non_finite)
    assert main([*TOY, "--overwrite", "--out", str(out)]) == 2
    assert "non-finite" in one_line_error(capsys)
    assert snapshot(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_1_overwrite_replaces_the_run_only_when_the_new_one_is_complete(tmp_path):
    out = tmp_path / "run"
    finished_toy_run(out)
    assert main([*TOY, "--restarts", "5", "--overwrite", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["discover"]["restarts"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


# -- 2. bounded memory -------------------------------------------------------------------------------


def _wide_subject(n_out=4096, d=16):
    from sensfind import FunctionSubject

    g = torch.Generator().manual_seed(0)
    w = torch.randn(d, n_out, generator=g)
    batches = []

    def fn(x):
        batches.append(x.shape[0])
        return x @ w

    return FunctionSubject(torch.randn(d, generator=g), fn), batches


def test_2_gradient_free_scans_run_in_chunks_bounded_by_the_memory_budget():
    from sensfind.core.baselines import isotropic
    from sensfind.core.scan import ScanConfig, scan, scan_chunk_rows

    subject, batches = _wide_subject()
    config = ScanConfig(steps=361)
    dirs = isotropic(64, 16, seed=1)
    budget = 64 * 2**20
    rows = scan_chunk_rows(361, 4096, 4, budget)
    assert rows * 361 * 4096 * 4 * 4 <= budget and rows >= 1
    with torch.no_grad():
        chunked = scan(subject, dirs, config, max_memory=budget).effects
    biggest = max(batches[1:])  # batches[0] is the base output
    assert biggest <= rows * 361 < 64 * 361
    batches.clear()
    one = scan(subject, dirs.clone().requires_grad_(True), config).effects  # with gradients: one batch
    assert batches[1:] == [64 * 361]
    torch.testing.assert_close(chunked, one.detach())


def test_2_chunk_size_follows_the_output_width():
    from sensfind.core.scan import scan_chunk_rows

    assert scan_chunk_rows(361, 50257, 4, 256 * 2**20) < scan_chunk_rows(361, 1024, 4, 256 * 2**20)
    assert scan_chunk_rows(361, 10**9, 4, 1) == 1  # at least one direction per chunk


def test_2_discover_final_and_baseline_scans_are_chunked(tmp_path, monkeypatch):
    """The fine final scan and the random-baseline scan of ``discover`` no longer run as one batch, so
    their memory does not grow with restarts x steps x output width."""
    toy = sys.modules["sensfind.core.toy"]
    from sensfind.core.scan import scan_chunk_rows

    seen = []
    original = toy.ToySubject.run

    def run(self, acts):
        seen.append((acts.shape[0], torch.is_grad_enabled()))
        return original(self, acts)

    monkeypatch.setattr(toy.ToySubject, "run", run)
    assert main(["discover", "--model", "toy", "--restarts", "256", "--iterations", "0", "--random-baseline", "256",
                 "--quiet", "--out", str(tmp_path / "run")]) == 0
    no_grad = [b for b, grad in seen if not grad]
    n_optima = json.loads((tmp_path / "run" / "summary.json").read_text())["n_optima"]
    assert sum(no_grad) >= (n_optima + 256) * 361  # both scans ran (the optima's final scan, the baseline)...
    assert max(no_grad) <= scan_chunk_rows(361, 1024, 4) * 361 < 256 * 361  # ...in bounded chunks


# -- 3. arguments validated before any work ------------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "-3"])
def test_3_random_baseline_below_one_is_refused_before_the_optimisation(tmp_path, capsys, monkeypatch, value):
    opt = sys.modules["sensfind.discovery.loop"]

    monkeypatch.setattr(opt, "discover", lambda *a, **k: pytest.fail("the optimisation ran"))
    out = tmp_path / "never"
    assert main([*TOY, "--random-baseline", value, "--out", str(out)]) == 2
    assert "--random-baseline must be an integer >= 1" in one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []


# -- 4. full disk --------------------------------------------------------------------------------------


class _FullDisk:
    """A file that takes ``room`` bytes in all, then raises ENOSPC like a full disk."""

    room = 4096

    def __init__(self, path):
        self.f = open(path, "xb")

    def write(self, data):
        if len(data) > _FullDisk.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        _FullDisk.room -= len(data)
        return self.f.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


@pytest.fixture
def full_disk(monkeypatch):
    _FullDisk.room = 4096
    monkeypatch.setattr(runio, "_open_new", _FullDisk)


@contextmanager
def tiny_tmpfs(path: Path, size: str):
    """A real small tmpfs at ``path`` where this machine allows mounting (root); else skip."""
    path.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_4_full_disk_during_discover_leaves_nothing_half_written(tmp_path, capsys, full_disk):
    assert main([*TOY, "--out", str(tmp_path / "run")]) == 2
    err = one_line_error(capsys)
    assert "No space left on device" in err and str(tmp_path) in err
    assert list(tmp_path.iterdir()) == []


def test_4_full_disk_during_discover_overwrite_keeps_the_old_run(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    before = finished_toy_run(out)
    capsys.readouterr()
    _FullDisk.room = 4096
    monkeypatch.setattr(runio, "_open_new", _FullDisk)
    assert main([*TOY, "--overwrite", "--out", str(out)]) == 2
    assert "No space left on device" in one_line_error(capsys)
    assert snapshot(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_4_full_disk_during_scan_is_one_line(tmp_path, capsys, full_disk):
    _FullDisk.room = 256  # config.json is the first file, and does not fit
    assert main(["scan", *TINY, "--directions", "random:3", "--steps", "5", "--out", str(tmp_path / "s")]) == 2
    assert "No space left on device" in one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []


def test_4_a_real_full_tmpfs_during_discover(tmp_path, capsys):
    with tiny_tmpfs(tmp_path / "disk", "96k") as disk:
        assert main([*TOY, "--out", str(disk / "run")]) == 2
        assert "No space left on device" in one_line_error(capsys)
        assert list(disk.iterdir()) == []


def test_4_a_real_full_tmpfs_during_scan(tmp_path, capsys):
    with tiny_tmpfs(tmp_path / "disk", "8k") as disk:
        assert main(["scan", *TINY, "--directions", "random:3", "--steps", "5", "--out", str(disk / "s")]) == 2
        assert "No space left on device" in one_line_error(capsys)
        assert list(disk.iterdir()) == []


# -- 5. tune with a bad --sae --------------------------------------------------------------------------


def test_5_tune_with_a_bad_sae_leaves_no_study_db(tmp_path, capsys):
    out = tmp_path / "tune"
    assert main(["tune", "--model", "random:tiny", "--metric", "sae", "--sae", str(tmp_path / "no-sae"),
                 "--subjects", "0", "--n-trials", "1", "--quiet", "--out", str(out)]) == 2
    assert "no-sae" in one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []


# -- 6. explicit resume semantics ----------------------------------------------------------------------


def test_6_resume_on_a_finished_run_says_so_and_changes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    before = finished_toy_run(out)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    capsys.readouterr()
    assert main(["discover", "--resume", "--quiet", "--out", str(out)]) == 0
    assert "already finished" in capsys.readouterr().out
    assert snapshot(out) == before and {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps
    # --overwrite runs it again, with its own settings
    assert main(["discover", "--resume", "--overwrite", "--quiet", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["discover"]["restarts"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_6_resume_without_a_checkpoint_is_an_error_unless_starting_over(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["discover", "--resume", "--quiet", "--out", str(out)]) == 2
    assert "no checkpoint to resume from" in one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []
    assert main([*TOY, "--resume", "--overwrite", "--out", str(out)]) == 0  # asked to start over
    assert (out / "summary.json").is_file()


def test_6_resume_refuses_flags_that_differ_from_the_checkpoint(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    ckpt = interrupted_toy_run(out, monkeypatch)
    before = ckpt.read_bytes()
    assert main(["discover", "--resume", "--quiet", "--out", str(out), "--restarts", "8", "--lr", "0.3"]) == 2
    err = one_line_error(capsys)
    assert "restarts (saved 4, given 8)" in err and "lr (saved 0.1, given 0.3)" in err
    assert ckpt.read_bytes() == before and not out.exists()
    # the same values, or none, are fine
    assert main(["discover", "--resume", "--quiet", "--out", str(out), "--restarts", "4"]) == 0
    assert (out / "summary.json").is_file() and not incomplete_dir(out).exists()


def test_6_a_fresh_run_does_not_silently_discard_an_interrupted_one(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    ckpt = interrupted_toy_run(out, monkeypatch)
    assert main([*TOY, "--out", str(out)]) == 2
    assert "has an interrupted run" in one_line_error(capsys)
    assert ckpt.is_file()
    assert main([*TOY, "--overwrite", "--out", str(out)]) == 0
    assert not incomplete_dir(out).exists() and (out / "summary.json").is_file()


def test_6_resumed_run_is_bit_identical_to_an_uninterrupted_one(tmp_path, monkeypatch):
    whole = tmp_path / "whole"
    assert main([*TOY, "--out", str(whole)]) == 0
    out = tmp_path / "run"
    interrupted_toy_run(out, monkeypatch)
    assert main(["discover", "--resume", "--quiet", "--out", str(out)]) == 0
    assert (out / "discovery.safetensors").read_bytes() == (whole / "discovery.safetensors").read_bytes()


# -- 7. tune reports of dead workers' trials ---------------------------------------------------------


def test_7_tune_n_trials_0_reports_a_dead_workers_trial_as_failed(tmp_path):
    tn = sys.modules["sensfind.tuning"]

    out = tmp_path / "tune"
    config = tn.TuneConfig(subjects=(0,), n_trials=0, heartbeat_interval=1, grace_period=2, retries=0)
    study = tn.open_study(config, out=out)
    trial = study.ask()  # a worker starts a trial...
    study._storage.record_heartbeat(trial._trial_id)
    time.sleep(3)  # ...and dies: no heartbeat for longer than the grace period
    assert main(["tune", "--subjects", "0", "--n-trials", "0", "--heartbeat-interval", "1", "--grace-period", "2",
                 "--retries", "0", "--quiet", "--out", str(out)]) == 0
    assert json.loads((out / "tune.json").read_text())["counts"] == {"FAIL": 1}


# -- 8. corrupt checkpoints ----------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage", "not-a-checkpoint"])
def test_8_a_damaged_checkpoint_on_resume_is_one_line(tmp_path, capsys, monkeypatch, damage):
    out = tmp_path / "run"
    ckpt = interrupted_toy_run(out, monkeypatch)
    data = ckpt.read_bytes()
    ckpt.write_bytes({"empty": b"", "truncated": data[: len(data) // 2], "garbage": os.urandom(4096),
                      "not-a-checkpoint": b""}[damage])
    if damage == "not-a-checkpoint":
        torch.save({"param": torch.zeros(3)}, ckpt)
    assert main(["discover", "--resume", "--quiet", "--out", str(out)]) == 2
    err = one_line_error(capsys)
    assert str(ckpt) in err and "checkpoint" in err
    assert not out.exists() and ckpt.is_file()  # nothing written, the evidence kept


# -- 9. --checkpoint-every -----------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "-1"])
def test_9_checkpoint_every_below_one_is_refused(tmp_path, capsys, value):
    assert main([*TOY, "--checkpoint-every", value, "--out", str(tmp_path / "o")]) == 2
    assert f"--checkpoint-every must be an integer >= 1 (iterations between checkpoints), got {value}" in \
        one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []


def test_9_discover_api_refuses_checkpoint_every_below_one(tmp_path):
    from sensfind import DiscoverConfig, discover
    from sensfind.core.toy import ToyConfig, ToyModel

    subject = ToyModel(ToyConfig()).subject(0)
    with pytest.raises(ValueError, match="checkpoint_every must be an integer >= 1"):
        discover(subject, DiscoverConfig(restarts=2, iterations=1), checkpoint=tmp_path / "c.pt", checkpoint_every=0)


# -- 10. compare --config ------------------------------------------------------------------------------


@pytest.fixture
def directions_file(tmp_path):
    from sensfind.core.baselines import save_directions

    path = tmp_path / "dirs.safetensors"
    save_directions(path, torch.randn(2, 64))
    return path


def test_10_compare_config_with_an_unknown_key(tmp_path, capsys, directions_file):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"n_null": 10, "bogus": 1}))
    assert main(["compare", "--model", "toy", "--directions", str(directions_file), "--dictionary", "train:128",
                 "--config", str(cfg), "--out", str(tmp_path / "o")]) == 2
    err = one_line_error(capsys)
    assert "unknown CompareConfig field(s) ['bogus']" in err and str(cfg) in err
    assert not (tmp_path / "o").exists()


def test_10_compare_config_given_a_discover_runs_config_json(tmp_path, capsys, directions_file):
    run = tmp_path / "run"
    finished_toy_run(run)
    capsys.readouterr()
    assert main(["compare", "--model", "toy", "--directions", str(directions_file), "--dictionary", "train:128",
                 "--config", str(run / "config.json"), "--out", str(tmp_path / "o")]) == 2
    err = one_line_error(capsys)
    assert "config.json of a sensfind 'discover' run" in err and str(run / "config.json") in err
    assert not (tmp_path / "o").exists()


# -- 11. --out that cannot be written ------------------------------------------------------------------


@pytest.mark.parametrize("command", [TOY, ["tune", "--subjects", "0", "--n-trials", "1", "--quiet"]],
                         ids=["discover", "tune"])
def test_11_out_that_is_a_file(tmp_path, capsys, command):
    out = tmp_path / "results"
    out.write_text("precious")
    assert main([*command, "--out", str(out)]) == 2
    assert "it is a file, not a directory" in one_line_error(capsys)
    assert out.read_text() == "precious" and sorted(p.name for p in tmp_path.iterdir()) == ["results"]


@pytest.fixture
def read_only_dir(tmp_path, monkeypatch):
    """A directory on a read-only file system: a real read-only tmpfs where mounting works, else the
    file system check answers read-only for it."""
    path = tmp_path / "ro"
    path.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)], capture_output=True)
    if res.returncode != 0:
        real = runio._is_read_only
        monkeypatch.setattr(runio, "_is_read_only", lambda p: Path(p) == path or real(p))
    yield path
    if res.returncode == 0:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.parametrize("command", ["scan", "discover", "compare", "demo", "tune"])
def test_11_out_on_a_read_only_file_system(tmp_path, capsys, read_only_dir, directions_file, command):
    argv = {
        "scan": ["scan", *TINY, "--steps", "3"],
        "discover": TOY,
        "compare": ["compare", "--model", "toy", "--directions", str(directions_file), "--dictionary", "train:128"],
        "demo": ["demo", "--quick", "--quiet"],
        "tune": ["tune", "--subjects", "0", "--n-trials", "1", "--quiet"],
    }[command]
    out = read_only_dir / "results"
    assert main([*argv, "--out", str(out)]) == 2
    err = one_line_error(capsys)
    assert "read-only file system" in err and str(out) in err
    assert list(read_only_dir.iterdir()) == []


# -- 12. damaged directions files ----------------------------------------------------------------------


@pytest.mark.parametrize("name, content", [
    ("d.safetensors", b"\x00\x01garbage that is not safetensors"),
    ("d.safetensors", b""),
    ("d.pt", b"PK\x03\x04 truncated zip"),
    ("d.npy", None),  # an array of strings
    ("d.npy", b"\x93NUMPY broken"),
])
def test_12_a_damaged_directions_file_is_one_line_naming_it(tmp_path, capsys, name, content):
    path = tmp_path / name
    if content is None:
        np.save(path, np.array([["a", "b"], ["c", "d"]]))
    else:
        path.write_bytes(content)
    assert main(["scan", *TINY, "--directions", f"file:{path}", "--steps", "3", "--out", str(tmp_path / "o")]) == 2
    assert str(path) in one_line_error(capsys)
    assert not (tmp_path / "o").exists()


def test_12_complex_directions_in_a_file_are_refused(tmp_path, capsys):
    path = tmp_path / "d.npy"
    np.save(path, np.ones((2, 64), dtype=np.complex64))
    assert main(["scan", *TINY, "--directions", f"file:{path}", "--steps", "3", "--out", str(tmp_path / "o")]) == 2
    assert "real numbers" in one_line_error(capsys)


# -- 13. config.json without a site --------------------------------------------------------------------


def test_13_resume_with_a_config_json_without_site(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    interrupted_toy_run(out, monkeypatch)
    cfg = incomplete_dir(out) / "config.json"
    data = json.loads(cfg.read_text())
    del data["site"]
    cfg.write_text(json.dumps(data))
    assert main(["discover", "--resume", "--quiet", "--out", str(out)]) == 2
    err = one_line_error(capsys)
    assert "has no 'site' settings" in err and str(cfg) in err


def test_13_compare_run_with_a_config_json_without_site(tmp_path, capsys):
    run = tmp_path / "run"
    finished_toy_run(run)
    data = json.loads((run / "config.json").read_text())
    del data["site"]
    (run / "config.json").write_text(json.dumps(data))
    capsys.readouterr()
    assert main(["compare", "--run", str(run), "--dictionary", "train:128", "--out", str(tmp_path / "o")]) == 2
    err = one_line_error(capsys)
    assert "has no 'site' settings" in err and str(run / "config.json") in err
    assert not (tmp_path / "o").exists()


# -- 15. unclear messages ------------------------------------------------------------------------------


def test_15_scan_with_the_toy_says_it_is_for_discover(tmp_path, capsys):
    assert main(["scan", "--model", "toy", "--out", str(tmp_path / "o")]) == 2
    err = one_line_error(capsys)
    assert "toy" in err and "discover" in err and "hub" not in err
    assert list(tmp_path.iterdir()) == []


def test_15_binary_prompt_and_config_files_name_the_file(tmp_path, capsys):
    binary = tmp_path / "blob.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    assert main(["scan", *TINY, "--directions", f"targets:{binary}", "--out", str(tmp_path / "o")]) == 2
    err = one_line_error(capsys)
    assert "prompt file" in err and str(binary) in err and "UTF-8" in err
    assert main([*TOY, "--config", str(binary), "--out", str(tmp_path / "o")]) == 2
    err = one_line_error(capsys)
    assert "config file" in err and str(binary) in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blob.bin"]


def test_15_corrupt_config_json_on_resume_names_the_file(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    interrupted_toy_run(out, monkeypatch)
    cfg = incomplete_dir(out) / "config.json"
    cfg.write_text('{"site": {')
    assert main(["discover", "--resume", "--quiet", "--out", str(out)]) == 2
    err = one_line_error(capsys)
    assert "is not valid JSON" in err and str(cfg) in err


def test_15_a_directory_given_as_a_file_is_called_a_directory(tmp_path, capsys):
    for argv in (["scan", *TINY, "--directions", f"file:{tmp_path}"],
                 ["scan", *TINY, "--directions", f"targets:{tmp_path}"],
                 [*TOY, "--config", str(tmp_path)]):
        assert main([*argv, "--out", str(tmp_path / "o")]) == 2
        err = one_line_error(capsys)
        assert "is a directory" in err and "does not exist" not in err


def test_15_results_are_readable_by_the_group_under_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "scan"
        assert main(["scan", *TINY, "--directions", "random:2", "--steps", "3", "--out", str(out)]) == 0
        run = tmp_path / "run"
        finished_toy_run(run)
    finally:
        os.umask(old)
    for d in (out, run):
        assert stat.S_IMODE(d.stat().st_mode) == 0o755
        for f in d.iterdir():
            assert stat.S_IMODE(f.stat().st_mode) == 0o644, f


def test_15_genuine_bugs_keep_their_traceback(tmp_path, monkeypatch):
    scan_module = sys.modules["sensfind.app.jobs"]  # where the job looks scan up

    def bug(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(scan_module, "scan", bug)
    with pytest.raises(KeyError):
        main(["scan", *TINY, "--directions", "random:2", "--steps", "3", "--out", str(tmp_path / "o")])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("spec, message", [
    ("bogus:1", "--dictionary must be pretrained:RELEASE"),
    ("train:x", "train:D_SAE needs an integer width >= 1, got 'x'"),
    ("disk:/nonexistent-sae", "SAE directory '/nonexistent-sae' does not exist"),
])
def test_3_compare_dictionary_spec_is_checked_before_any_work(tmp_path, capsys, monkeypatch, directions_file,
                                                             spec, message):
    from sensfind.app.site import DiscoverySiteConfig

    monkeypatch.setattr(DiscoverySiteConfig, "build", lambda self: pytest.fail("work started"))
    assert main(["compare", "--model", "toy", "--directions", str(directions_file), "--dictionary", spec,
                 "--out", str(tmp_path / "o")]) == 2
    assert message in one_line_error(capsys)
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_4_full_disk_during_demo_is_one_line(tmp_path, capsys, full_disk):
    _FullDisk.room = 0
    assert main(["demo", "--quick", "--quiet", "--out", str(tmp_path / "demo")]) == 2
    err = capsys.readouterr().err  # SAELens may draw its own training progress bar first (not cached yet)
    assert "Traceback" not in err and err.rstrip("\n").splitlines()[-1].startswith("sensfind: error: ")
    assert "No space left on device" in err
    assert list(tmp_path.iterdir()) == []
