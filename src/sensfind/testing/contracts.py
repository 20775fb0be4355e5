"""Contract suites any result type or Subject implementation can reuse (as optuna's ``testing`` package
does for its samplers and storages): call them from a test with an instance of your own type.

- :func:`check_result_round_trip`: a :class:`~sensfind.runio.Result` saves, loads back equal (tensors,
  non-finite numbers, nested dataclasses) and writes its config beside it.
- :func:`check_result_refuses_non_empty`: saving into a non-empty directory is refused unless asked, and
  an overwrite keeps the directory's other files.
- :func:`check_subject`: a :class:`~sensfind.core.subject.Subject` keeps its dtype, lets gradients flow to
  its input, and runs the rows of a batch independently of each other.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from sensfind.core.subject import Subject
from sensfind.runio import Result, dumps_json

__all__ = ["assert_same", "check_result_refuses_non_empty", "check_result_round_trip", "check_subject"]


def assert_same(a, b, where="result"):
    """Recursive equality: tensors equal in shape and dtype and allclose (inf and nan in the same places)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype, (where, a, b)
        if a.is_floating_point():
            assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.isinf(), b.isinf()), (where, a, b)
            assert torch.allclose(a, b, equal_nan=True), (where, a, b)
        else:
            assert torch.equal(a, b), (where, a, b)
    elif dataclasses.is_dataclass(a) and not isinstance(a, type):
        assert type(a) is type(b), (where, type(a), type(b))
        for f in dataclasses.fields(a):
            if f.name != "dictionary":  # not saved (it can be large); load takes it as an argument
                assert_same(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), (where, list(a), list(b) if isinstance(b, dict) else b)
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), (where, a, b)
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), (where, b)
    else:
        assert a == b, (where, a, b)


def _summary(r) -> str:
    if hasattr(r, "to_dict"):
        return dumps_json(r.to_dict())
    if hasattr(r, "_summary"):
        return dumps_json(r._summary())
    return dumps_json(r.summary())


def check_result_round_trip(result: Result, directory: Path) -> Result:
    """Save ``result`` into ``directory`` and load it back; returns what was loaded."""
    assert isinstance(result, Result)
    out = result.save(directory)
    back = type(result).load(out)
    assert_same(result, back)
    assert _summary(back) == _summary(result)  # the JSON view (non-finite numbers as null) is unchanged too
    if result.config_dict():
        assert (out / "config.json").is_file()
    return back


def check_result_refuses_non_empty(result: Result, directory: Path) -> None:
    """``directory`` (which must not exist, inside an otherwise empty parent) ends up holding ``result``."""
    out = directory
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not empty.*overwrite=True"):
        result.save(out)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    (out / "config.json").write_text('{"command": "run"}')
    result.save(out, overwrite=True)  # the result's files replace their namesakes; the rest is kept
    assert (out / "notes.txt").read_text() == "mine" and (out / "config.json").read_text() == '{"command": "run"}'
    assert_same(result, type(result).load(out))
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no stage left behind


def check_subject(subject: Subject) -> None:
    """The :class:`~sensfind.core.subject.Subject` contract."""
    base = subject.base
    assert isinstance(base, torch.Tensor) and base.ndim == 1 and base.is_floating_point()
    d = base.shape[0]
    g = torch.Generator().manual_seed(0)
    acts = (base + 0.3 * base.norm() / d**0.5 * torch.randn(3, d, generator=g, dtype=torch.float64).to(base.dtype))
    acts.requires_grad_(True)
    out = subject.run(acts)
    assert out.ndim == 2 and out.shape[0] == 3 and out.shape[1] >= 1
    assert out.dtype == base.dtype  # dtype kept
    out.square().sum().backward()  # autograd flows to the input
    assert acts.grad is not None and torch.isfinite(acts.grad).all() and acts.grad.abs().sum() > 0
    with torch.no_grad():
        alone = subject.run(base[None])
        assert alone.shape == (1, out.shape[1])
        tol = dict(rtol=1e-4, atol=1e-4) if base.dtype == torch.float32 else dict(rtol=1e-9, atol=1e-9)
        together = subject.run(torch.cat([base[None], acts.detach()]))[:1]
        assert torch.allclose(alone, together, **tol)  # rows run independently of their batch
        if getattr(subject, "base_output", None) is not None:
            assert torch.allclose(alone[0], subject.base_output.to(alone.dtype), **tol)
