"""Reliability of the command line (issues 10 and 22): a finished run is never lost, memory stays bounded,
every bad input is one line ``sensfind: error: ...`` with exit status 2 and nothing half-written, checked
before any work; every count is bounded; Ctrl-C is one line and exit 130; a second run on the same
``--out`` is refused and killed runs' leftovers are removed.

Each test is named after the defect it pins down (numbers as in the issue; ``test_22_N``: issue 22's
cause N, ``test_22_7``: its property-based test).
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
    err = capsys.readouterr().err.rsplit("\r", 1)[-1]  # what a terminal shows: erased progress bars (\r) left out
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
    plots = sys.modules["sensfind.app.jobs"]  # where the job looks the figure up

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
    from sensfind.core.scan import _OUTPUT_COPIES, ScanConfig, scan, scan_chunk_rows

    subject, batches = _wide_subject()
    config = ScanConfig(steps=361)
    dirs = isotropic(64, 16, seed=1)
    budget = 64 * 2**20
    rows = scan_chunk_rows(361, 4096, 4, budget)
    assert rows * 361 * 4096 * 4 * _OUTPUT_COPIES <= budget and rows >= 1
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
    opt = sys.modules["sensfind.app.jobs"]  # where the job looks discover up

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
    ("bogus:1", "--dictionary must be auto, corpus, pretrained:RELEASE"),
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


# == issue 22: reliability, second pass ================================================================
# Each cause of the issue has its tests below (22.1 ... 22.6), then the property-based test (22.7).

HUGE = "99999999999999999999"


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if a model is loaded, an SAE trained or a job's work begins: input must be refused first."""

    def work(*args, **kwargs):
        pytest.fail("work started before the input was checked")

    monkeypatch.setattr(sys.modules["sensfind.app.site"], "load_model", work)
    for name in ("train_sae", "discover", "compare"):
        monkeypatch.setattr(sys.modules["sensfind.app.jobs"], name, work)
    monkeypatch.setattr(sys.modules["sensfind.app.cli"], "run_demo", work)
    monkeypatch.setattr(sys.modules["sensfind.app.cli"], "run_model_demo", work)
    monkeypatch.setattr(sys.modules["sensfind.tuning._cli"], "tune", work)


def _config_classes_with_counts():
    from sensfind.app.demo import DemoConfig, ModelDemoConfig
    from sensfind.app.jobs import DiscoverRunConfig
    from sensfind.app.site import DiscoverySiteConfig, SiteConfig
    from sensfind.comparison.analysis import AnalysisConfig
    from sensfind.comparison.compare import CompareConfig
    from sensfind.comparison.match import NullConfig
    from sensfind.core.scan import ScanConfig
    from sensfind.dictionaries.corpus_sae import CorpusSAEConfig
    from sensfind.dictionaries.training import TrainSAEConfig
    from sensfind.discovery.config import DiscoverConfig
    from sensfind.app.central import CentralConfig
    from sensfind.lab.experiment import ScanSettings
    from sensfind.lab.pool import PoolConfig
    from sensfind.lab.pool_sae import PoolSAEConfig
    from sensfind.tuning import TuneConfig

    return [SiteConfig, DiscoverySiteConfig, ScanConfig, DiscoverConfig, DiscoverRunConfig, CompareConfig, NullConfig,
            AnalysisConfig, DemoConfig, ModelDemoConfig, CorpusSAEConfig, TrainSAEConfig, TuneConfig, CentralConfig,
            ScanSettings, PoolConfig, PoolSAEConfig]


def _count_fields(cls):
    """The integer fields of ``cls`` that count or size something (a position is an index, not a count)."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    return [f.name for f in dataclasses.fields(cls)
            if hints[f.name] in (int, int | None) and f.name != "position"]


@pytest.mark.parametrize("cls", _config_classes_with_counts(), ids=lambda c: c.__name__)
def test_22_1_every_count_of_every_config_has_a_documented_upper_bound(cls):
    import re

    from sensfind.configs import field_docs

    docs = field_docs(cls)
    names = _count_fields(cls)
    assert names, cls.__name__
    for name in names:
        with pytest.raises(ValueError) as info:
            cls(**{name: 10**20})
        message = str(info.value)
        assert name in message, message
        if cls.__name__ == "DiscoverConfig" and name == "seed":  # its own range: what torch accepts
            continue
        limit = re.search(r"at most (\d+)", message)
        assert limit, message
        assert f"at most {limit.group(1)}" in docs[name], (cls.__name__, name, docs[name])
        try:
            cls(**{name: int(limit.group(1))})  # the limit itself is allowed...
        except ValueError as exc:  # ...unless a product of sizes (activations held in memory) has its own limit
            assert " x " in str(exc) and "at most" in str(exc), exc


@pytest.mark.parametrize("argv", [
    ["discover", "--model", "toy", "--iterations", HUGE],
    ["discover", "--model", "toy", "--restarts", HUGE],
    ["discover", "--model", "toy", "--random-baseline", HUGE],
    ["discover", "--model", "toy", "--final-steps", HUGE],
    ["discover", "--model", "toy", "--checkpoint-every", HUGE],
    ["discover", "--model", "toy", "--max-points", HUGE],
    ["compare", "--model", "toy", "--directions", "D", "--dictionary", "train:64", "--refine-iterations", HUGE],
    ["compare", "--model", "toy", "--directions", "D", "--dictionary", "train:64", "--n-null", HUGE],
    ["compare", "--model", "toy", "--directions", "D", "--dictionary", "train:64", "--probes", HUGE],
    ["compare", "--model", "toy", "--directions", "D", "--dictionary", f"train:{HUGE}"],
    ["demo", "--model", "toy", "--sae-epochs", HUGE],
    ["demo", "--model", "toy", "--n-train", HUGE],
    ["demo", "--model", "toy", "--d-sae", HUGE],
    ["demo", "--n-others", HUGE],
    ["tune", "--n-trials", HUGE],
    ["scan", "--model", "random:tiny", "--steps", HUGE],
    ["scan", "--model", "random:tiny", "--directions", f"random:{HUGE}"],
    ["scan", "--model", "random:tiny", "--seed", HUGE],
    ["scan", "--model", "random:tiny", "--tokens", HUGE],
], ids=lambda a: " ".join(a[:1] + a[-2:]))
def test_22_1_huge_counts_are_one_line_naming_the_limit_before_any_work(tmp_path, capsys, no_work,
                                                                        directions_file, argv):
    argv = [str(directions_file) if a == "D" else a for a in argv]
    out = tmp_path / "o"
    assert main([*argv, "--out", str(out)]) == 2
    err = one_line_error(capsys)
    assert "at most" in err or "<=" in err
    assert not out.exists()


@pytest.mark.parametrize("command", ["scan", "discover", "compare", "demo", "tune"])
def test_22_2_a_deeply_nested_config_file_is_one_line(tmp_path, capsys, no_work, directions_file, command):
    nested = tmp_path / "nested.json"
    nested.write_text("[" * 100_000 + "]" * 100_000)
    shallow = tmp_path / "shallow.json"  # parses, but nests deeper than any settings file
    shallow.write_text(json.dumps({"restarts": json.loads("[" * 500 + "]" * 500)}))
    extra = {"compare": ["--model", "toy", "--directions", str(directions_file), "--dictionary", "train:64"],
             "discover": ["--model", "toy"], "demo": ["--model", "toy"]}.get(command, [])
    for path in (nested, shallow):
        assert main([command, *extra, "--config", str(path), "--out", str(tmp_path / "o")]) == 2
        err = one_line_error(capsys)
        assert str(path) in err and "nests more than" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_22_2_a_corrupt_sae_weights_file_is_one_line_naming_it(tmp_path, capsys, no_work, directions_file, damage):
    from safetensors.torch import save_file

    from sensfind.dictionaries.dictionary import load_from_disk
    from sensfind.errors import InputFileError

    sae = tmp_path / "sae"
    sae.mkdir()
    (sae / "cfg.json").write_text(json.dumps({"d_in": 64, "d_sae": 128}))
    weights = sae / "sae_weights.safetensors"
    save_file({"W_dec": torch.randn(128, 64), "W_enc": torch.randn(64, 128)}, str(weights))
    data = weights.read_bytes()
    weights.write_bytes({"garbage": os.urandom(2048), "truncated": data[: len(data) // 2], "empty": b""}[damage])
    assert main(["compare", "--model", "toy", "--directions", str(directions_file), "--dictionary", f"disk:{sae}",
                 "--out", str(tmp_path / "o")]) == 2
    err = one_line_error(capsys)
    assert str(weights) in err and "not a readable .safetensors file" in err
    with pytest.raises(InputFileError, match="sae_weights.safetensors"):
        load_from_disk(sae)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", ["scan", "discover"])
@pytest.mark.parametrize("flag, hook", [("--hook", "blocks.1.attn.hook_pattern"), ("--hook", "blocks.1.attn.hook_q"),
                                        ("--hook", "blocks.0.attn.hook_z"),
                                        ("--output-hook", "blocks.2.attn.hook_pattern")])
def test_22_2_a_hook_that_is_not_one_vector_per_position_is_one_line_right_after_loading(
        tmp_path, capsys, monkeypatch, command, flag, hook):
    site = sys.modules["sensfind.app.site"]
    monkeypatch.setattr(site, "prompt_activations", lambda *a, **k: pytest.fail("work went on after the load"))
    assert main([command, *TINY, flag, hook, "--out", str(tmp_path / "o")]) == 2
    err = one_line_error(capsys)
    assert hook in err and "one vector per token position" in err and "hook_resid_pre" in err
    assert list(tmp_path.iterdir()) == []


# -- 22.2 Ctrl-C: one line, exit 130, the previous results intact, the partial work removed -------------


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def _interrupted(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("sensfind: interrupted") and err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


@pytest.mark.parametrize("command", ["scan", "discover", "compare", "demo", "tune"])
def test_22_2_ctrl_c_is_one_line_exit_130_and_keeps_the_previous_results(tmp_path, capsys, monkeypatch,
                                                                        directions_file, command):
    argv, where, name = {
        "scan": (["scan", *TINY, "--directions", "random:2", "--steps", "3"], "sensfind.app.jobs", "scan"),
        "discover": (TOY, "sensfind.app.jobs", "discover"),  # before the first checkpoint: nothing to resume
        "compare": (["compare", "--model", "toy", "--directions", str(directions_file), "--dictionary", "train:64",
                     "--n-null", "10", "--n-latents", "2", "--probes", "1", "--scan-steps", "7",
                     "--refine-iterations", "0"], "sensfind.app.jobs", "compare"),
        "demo": (["demo", "--model", "toy", "--quick", "--quiet"], "sensfind.app.demo", "discover"),
        "tune": (["tune", "--subjects", "0", "--n-trials", "1", "--quiet"], "sensfind.tuning._study", "evaluate"),
    }[command]
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.json").write_text("the previous results")
    before = snapshot(out)
    monkeypatch.setattr(sys.modules[where], name, _interrupt)
    assert main([*argv, *(["--overwrite"] if command != "tune" else []), "--out", str(out)]) == 130
    assert _interrupted(capsys) == "sensfind: interrupted"
    if command != "tune":  # tune adds its study to the directory (workers share it): nothing to replace
        assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dirs.safetensors", "run"]


def test_22_2_ctrl_c_after_a_checkpoint_says_how_to_resume(tmp_path, monkeypatch):
    out = tmp_path / "run"
    interrupted_toy_run(out, monkeypatch)  # asserts the line: interrupted; ...; continue it with: ... --resume
    assert main(["discover", "--resume", "--quiet", "--out", str(out)]) == 0
    assert (out / "summary.json").is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from sensfind.app.cli import main; sys.exit(main(sys.argv[1:]))", *args]


def _env() -> dict:
    src = str(Path(sys.modules["sensfind"].__file__).parents[1])
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY")}
    return {**env, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}


def _wait_for(path: Path, proc, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_22_2_a_real_sigint_during_discover(tmp_path):
    import signal

    out = tmp_path / "run"
    # a foreground command's Ctrl-C: SIGINT at its default in the child, even where this test process was
    # started in the background by a shell, which starts it ignored (and Python then leaves it ignored)
    proc = subprocess.Popen(_cli(*TOY[:-1], "--iterations", "10000", "--tol", "0", "--patience", "10000",
                                 "--restarts", "2", "--quiet", "--out", str(out)),
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    ckpt = incomplete_dir(out) / "checkpoint.pt"
    try:
        _wait_for(ckpt, proc)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)  # generous: a loaded CI machine
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert err.count("\n") == 1 and err.startswith("sensfind: interrupted; ") and "Traceback" not in err, err
    assert f"sensfind discover --resume --out {out}" in err
    assert ckpt.is_file() and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".run.incomplete"]


# -- 22.3 one-line errors: argparse's own, and the libraries' chatter ------------------------------------


@pytest.mark.parametrize("argv, words", [
    (["scan", "--steps", "x"], "--steps: invalid int value: 'x'"),
    (["discover", "--abandon", "x"], "--abandon: invalid choice: 'x'"),
    (["tune", "--subjects", "a,b"], "--subjects: expected comma-separated integers"),
    (["discover", "--adaptive", "maybe"], "--adaptive: invalid choice: 'maybe'"),
    (["compare", "--no-such-flag", "1"], "unrecognized arguments: --no-such-flag 1"),
    (["explode"], "invalid choice: 'explode'"),
    ([], "the following arguments are required: command"),
])
def test_22_3_argparse_errors_are_the_projects_one_line(capsys, argv, words):
    assert main(argv) == 2
    err = one_line_error(capsys)
    assert words in err and "usage:" not in err


def test_22_3_verbose_is_accepted_after_the_command_too(capsys):
    assert main(["scan", "--verbose", "--steps", "x"]) == 2
    assert "--steps" in one_line_error(capsys)


_CHATTY_LOAD = """
import logging, sys
import sensfind.app.site as site
from sensfind.errors import ModelUnavailableError

def load_model(*args, **kwargs):  # what the first SmolLM2 conversion does: library INFO logs and progress bars
    from transformers.utils import logging as hf_logging
    for name in ("transformers.modeling_utils", "transformer_lens.HookedTransformer", "sae_lens.saes"):
        logging.getLogger(name).info("LIBRARY-INFO from %s", name)
    for _ in hf_logging.tqdm(range(3), desc="LIBRARY-BAR"):
        pass
    raise ModelUnavailableError("stopped here")

site.load_model = load_model
from sensfind.app.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_22_3_library_output_below_warning_is_silenced_unless_verbose(tmp_path):
    argv = ["scan", *TINY, "--out", str(tmp_path / "o")]
    quiet = subprocess.run([sys.executable, "-c", _CHATTY_LOAD, *argv], env=_env(), capture_output=True, text=True)
    assert quiet.returncode == 2 and quiet.stderr == "sensfind: error: stopped here\n", quiet.stderr
    loud = subprocess.run([sys.executable, "-c", _CHATTY_LOAD, "--verbose", *argv], env=_env(), capture_output=True,
                          text=True)
    assert loud.returncode == 2 and "LIBRARY-INFO" in loud.stderr and "LIBRARY-BAR" in loud.stderr, loud.stderr
    assert loud.stderr.rstrip("\n").splitlines()[-1] == "sensfind: error: stopped here"


# -- 22.4 checked before the model loads -----------------------------------------------------------------


def _directions(tmp_path, kind: str) -> Path:
    from safetensors.torch import save_file

    path = tmp_path / f"{kind}.safetensors"
    if kind == "3d":
        save_file({"directions": torch.randn(2, 3, 64)}, str(path))
    elif kind == "empty-rows":
        save_file({"directions": torch.zeros(0, 64)}, str(path))
    elif kind == "nan":
        save_file({"directions": torch.full((2, 64), float("nan"))}, str(path))
    else:
        save_file({"directions": torch.randn(4, 64)}, str(path))
        data = path.read_bytes()
        path.write_bytes(data[: len(data) - 100])  # truncated
    return path


@pytest.mark.parametrize("kind, words", [("3d", "shape [2, 3, 64]"), ("empty-rows", "shape [0, 64]"),
                                         ("truncated", "not a readable .safetensors file"), ("nan", "NaN")])
@pytest.mark.parametrize("command", ["scan", "compare"])
def test_22_4_bad_directions_files_are_refused_before_the_model_loads(tmp_path, capsys, no_work, kind, words,
                                                                      command):
    path = _directions(tmp_path, kind)
    argv = (["scan", *TINY, "--directions", f"file:{path}"] if command == "scan" else
            ["compare", *TINY, "--directions", str(path), "--dictionary", "train:64"])
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    err = one_line_error(capsys)
    assert str(path) in err and words in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv, words", [
    (["compare", *TINY, "--directions", "D", "--dictionary", "pretrained:"], "needs a release"),
    (["compare", *TINY, "--directions", "D", "--dictionary", "disk:"], "needs a path"),
    (["scan", *TINY, "--directions", "random:0"], "random:N needs N >= 1"),
    (["scan", *TINY, "--directions", "file:"], "file:PATH needs the path"),
    (["scan", *TINY, "--directions", "targets:/no/such/prompts.txt"], "does not exist"),
    (["discover", *TINY, "--prompts", "/no/such/prompts.txt"], "does not exist"),
    (["discover", *TINY, "--prompts", "corpus:0"], "corpus:N or corpus:N:LEN"),
    (["discover", *TINY, "--init", "given", "--init-file", "/no/such/init.npy"], "does not exist"),
    (["demo", "--quick", "--device", "gpu"], "unknown device 'gpu'"),
])
def test_22_4_specs_and_files_are_checked_before_the_model_loads(tmp_path, capsys, no_work, directions_file, argv,
                                                                 words):
    argv = [str(directions_file) if a == "D" else a for a in argv]
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    assert words in one_line_error(capsys)
    assert not (tmp_path / "o").exists()


# -- 22.5 litter of killed runs, and 22.6 a second run on the same --out -----------------------------------

_HOLD_LOCK = """
import fcntl, os, sys
from pathlib import Path
out = Path(sys.argv[1])  # what sensfind.runio.out_lock does, without importing sensfind (a quick start)
lock = out.parent / f".{out.name}.lock"
fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, f"{os.getpid()}\\n".encode())
(out.parent / f".{out.name}.partial-live").mkdir()  # the partial results of a live run
print("ready", flush=True)
sys.stdin.read()  # until the test closes stdin (or kills us)
(out.parent / "released").touch()
os.unlink(lock)
os.close(fd)
"""


def _killed_run_litter(out: Path) -> list[Path]:
    """What ``kill -9`` leaves beside ``out``: partial results, a previous run being replaced, a stale lock."""
    litter = [out.parent / f".{out.name}.partial-0badc0de", out.parent / f".{out.name}.old-0badc0de"]
    for d in litter:
        d.mkdir()
        (d / "results.json").write_text("{}")
    (out.parent / f".{out.name}.lock").write_text("999999999\n")  # a pid that is not running
    return litter


@pytest.mark.parametrize("command", ["scan", "discover", "compare", "demo"])
def test_22_5_the_next_run_on_the_same_out_removes_what_killed_runs_left(tmp_path, capsys, directions_file, command):
    argv = {
        "scan": ["scan", *TINY, "--directions", "random:2", "--steps", "3"],
        "discover": TOY,
        "compare": ["compare", "--model", "toy", "--directions", str(directions_file), "--dictionary", "train:64",
                    "--n-null", "10", "--n-latents", "2", "--probes", "1", "--scan-steps", "7",
                    "--refine-iterations", "0"],
        "demo": ["demo", "--model", "toy", "--quick", "--quiet", "--n-train", "500", "--d-sae", "96",
                 "--sae-epochs", "1", "--restarts", "2", "--iterations", "2"],
    }[command]
    out = tmp_path / "run"
    out.mkdir()
    (out / "old.txt").write_text("the previous run")
    _killed_run_litter(out)
    assert main([*argv, "--overwrite", "--out", str(out)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dirs.safetensors", "run"]


def test_22_5_a_run_killed_between_the_two_renames_gets_its_previous_results_back(tmp_path):
    from sensfind.runio import out_lock

    out = tmp_path / "run"
    old = tmp_path / ".run.old-1234abcd"
    old.mkdir()
    (old / "results.json").write_text("the previous complete run")
    (tmp_path / ".run.partial-5678abcd").mkdir()
    with out_lock(out):
        pass
    assert (out / "results.json").read_text() == "the previous complete run"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


@pytest.fixture
def live_run(tmp_path):
    """Another process holding ``tmp_path / 'run'``'s lock, with its partial results beside it."""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(out)], env=_env(), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "ready\n"
    yield out, proc
    proc.kill()
    proc.wait()


@pytest.mark.parametrize("command", ["scan", "discover"])
def test_22_5_a_live_runs_partial_results_are_left_alone(tmp_path, capsys, live_run, command):
    out, proc = live_run
    argv = ["scan", *TINY, "--directions", "random:2", "--steps", "3"] if command == "scan" else TOY
    assert main([*argv, "--out", str(out)]) == 2
    err = one_line_error(capsys)
    assert f"another sensfind run (pid {proc.pid}) is writing {str(out)!r}" in err
    assert (tmp_path / ".run.partial-live").is_dir() and not out.exists()
    proc.kill()  # kill -9: the kernel frees its lock; its litter stays until the next run
    proc.wait()
    assert main([*argv, "--out", str(out)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_22_6_saving_a_result_into_a_directory_another_process_writes_waits_for_it(tmp_path, live_run):
    """Tuning workers share their --out: a worker saving its results waits for the other, never fails."""
    import threading

    from sensfind.core.scan import Scan, ScanConfig

    out, proc = live_run
    out.mkdir()
    (out / "study.db").write_text("shared")
    threading.Timer(0.5, proc.stdin.close).start()  # the other worker finishes its save a little later
    scan = Scan(ScanConfig(steps=3), torch.linspace(0, 180, 3), torch.zeros(2, 3))
    scan.save(out, overwrite=True)
    assert (tmp_path / "released").is_file()  # it waited until the other process let go
    assert (out / "scan.safetensors").is_file() and (out / "study.db").read_text() == "shared"


_SLOW_DISCOVER = """
import sys, time
from pathlib import Path
import sensfind.app.jobs as jobs
go = Path(sys.argv[1])
real = jobs.discover

def discover(*args, **kwargs):  # the first run is busy until the test lets it go on
    print("busy", flush=True)
    while not go.exists():
        time.sleep(0.02)
    return real(*args, **kwargs)

jobs.discover = discover
from sensfind.app.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_22_6_a_second_discover_on_the_same_out_is_refused_at_once_and_the_first_is_unaffected(tmp_path, capsys):
    out, go = tmp_path / "run", tmp_path / "go"
    first = subprocess.Popen([sys.executable, "-c", _SLOW_DISCOVER, str(go), *TOY, "--out", str(out)], env=_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline() == "busy\n", first.communicate()
        for argv in (TOY, [*TOY, "--overwrite"], ["discover", "--resume", "--quiet"]):
            assert main([*argv, "--out", str(out)]) == 2
            err = one_line_error(capsys)
            assert f"another sensfind run (pid {first.pid}) is writing {str(out)!r}" in err, err
        go.touch()
        stdout, stderr = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 0, stderr
    assert "distinct optima" in stdout and "Traceback" not in stderr
    assert (out / "summary.json").is_file() and (out / "discovery.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["go", "run"]


_INTERRUPTED_TUNE = """
import sys
import sensfind.tuning._study as study

def evaluate(*args, **kwargs):
    raise KeyboardInterrupt

study.evaluate = evaluate
from sensfind.app.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_22_2_ctrl_c_during_a_tuning_trial_is_one_line_in_a_real_process(tmp_path):
    """Optuna logs an interrupted trial with its traceback on its own handler (not seen in-process)."""
    res = subprocess.run([sys.executable, "-c", _INTERRUPTED_TUNE, "tune", "--subjects", "0", "--n-trials", "1", "--quiet",
                          "--out", str(tmp_path / "t")], env=_env(), capture_output=True, text=True)
    assert res.returncode == 130 and res.stderr == "sensfind: interrupted\n", res.stderr


# -- 22.7 random values of every flag of every command -----------------------------------------------------


class _WorkStarted(Exception):
    """Raised where a command's real work would begin: the input got through every check."""


def _command_flags() -> dict[str, list]:
    """command -> its optional flags (argparse actions), ``--out`` and ``--help`` left out."""
    import argparse

    from sensfind.app.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {name: [a for a in p._actions if a.option_strings and a.dest not in ("help", "out")]
            for name, p in sub.choices.items()}


def test_22_7_random_values_of_every_flag_are_one_line_and_leave_nothing_behind(tmp_path, monkeypatch):
    """Every command, with random values (and types) for a few of its flags: exit 0 or 2, at most two lines
    on stderr, never a traceback, and no --out on exit 2. Work that would start once the input is accepted
    (loading a model, training, discovering, tuning) is replaced by an error, so every example is quick."""
    import io
    from contextlib import redirect_stdout

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from sensfind.errors import SensfindError

    class WorkStarted(SensfindError):
        pass

    def work(*args, **kwargs):
        raise WorkStarted("the input was accepted; work would start here")

    monkeypatch.setattr(sys.modules["sensfind.app.site"], "load_model", work)
    for name in ("train_sae", "discover", "compare", "load_dictionary_spec"):
        monkeypatch.setattr(sys.modules["sensfind.app.jobs"], name, work)
    for name in ("run_demo", "run_model_demo", "run_sweep", "aggregate", "run_mixture"):
        monkeypatch.setattr(sys.modules["sensfind.app.cli"], name, work)
    monkeypatch.setattr(sys.modules["sensfind.tuning._cli"], "tune", work)
    files = tmp_path / "files"
    files.mkdir()
    (files / "nested.json").write_text("[" * 5000 + "]" * 5000)
    (files / "garbage.bin").write_bytes(bytes(range(256)))
    (files / "config.json").write_text(json.dumps({"restarts": 2, "steps": 5, "n_null": 10}))
    from sensfind.core.baselines import save_directions

    save_directions(files / "d.safetensors", torch.randn(3, 64))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # relative paths among the random values land here

    flags = _command_flags()
    special = ["", "0", "-1", "1", "2", "nan", "inf", "-inf", "1e308", HUGE, f"-{HUGE}", "true", "false", "none",
               "toy", "random:tiny", "random:0", f"random:{HUGE}", "random:x", "file:", "targets:", "pretrained:",
               "disk:", f"disk:{files}", "train:0", f"train:{HUGE}", "corpus:0", f"corpus:{HUGE}", "a,b", "1,,2",
               "blocks.1.attn.hook_pattern", "cuda:7", "\x00", "é" * 50, str(files), str(files / "nested.json"),
               str(files / "garbage.bin"), str(files / "config.json"), str(files / "d.safetensors"),
               f"file:{files / 'garbage.bin'}", f"file:{files / 'd.safetensors'}", "/no/such/file"]
    value = st.one_of(st.sampled_from(special), st.integers(-(2**70), 2**70).map(str),
                      st.floats(allow_nan=True, allow_infinity=True).map(str), st.text(max_size=12))
    base = {"scan": ["--model", "random:tiny", "--tokens", "5,6,7"], "discover": ["--model", "toy"],
            "compare": ["--model", "toy", "--directions", str(files / "d.safetensors"), "--dictionary", "train:64"],
            "demo": ["--model", "toy", "--quick"], "tune": ["--subjects", "0", "--n-trials", "1"],
            "mixture": ["--model", "toy"], "sweep": ["--model", "random:tiny", "--prompts", "corpus:2"]}
    counter = iter(range(10**6))

    @st.composite
    def commands(draw):
        command = draw(st.sampled_from(sorted(flags)))
        argv = [command, *base[command]]
        for action in draw(st.lists(st.sampled_from(flags[command]), min_size=1, max_size=3)):
            argv.append(draw(st.sampled_from(action.option_strings)))
            if action.nargs != 0:
                argv.append(draw(value))
        return argv

    @settings(max_examples=300, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(commands())
    def check(argv):
        parent = tmp_path / f"ex{next(counter)}"
        parent.mkdir()
        out = parent / "out"
        err, stdout = io.StringIO(), io.StringIO()
        with redirect_stderr(err), redirect_stdout(stdout):
            rc = main([*argv, "--out", str(out)])
        text = err.getvalue()
        assert rc in (0, 2), (argv, rc, text)
        assert text.count("\n") <= 2 and "Traceback" not in text, (argv, text)
        if rc == 2:
            assert text.startswith("sensfind: error: "), (argv, text)
            assert list(parent.iterdir()) == [], (argv, text, list(parent.iterdir()))

    check()
