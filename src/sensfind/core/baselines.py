"""Sources of directions: isotropic random, covariance-matched random targets, principal axes, files of directions.

Directions are ``[R, d]`` rows; helpers that make *targets* (activations to move towards) say so,
and ``sensfind.core.scan.directions_from_targets`` turns targets into unit directions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from sensfind.errors import InputFileError
from sensfind.runio import load_tensors
from sensfind.runio import save_tensors
import pickle
import zipfile

__all__ = ["isotropic", "CovStats", "cov_stats", "cov_random_targets", "pca_directions", "load_directions", "save_directions"]


def isotropic(n: int, d: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> Tensor:
    """``n`` unit vectors drawn uniformly on the sphere in ``d`` dimensions (seeded). ``[n, d]``."""
    if n < 1:
        raise ValueError(f"number of directions must be >= 1, got {n}")
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    return (x / x.norm(dim=1, keepdim=True)).to(dtype)


class CovStats:
    """Mean ``[d]`` and a PSD square-root factor ``[d, d]`` of a set of activations."""

    def __init__(self, mean: Tensor, factor: Tensor):
        self.mean, self.factor = mean, factor

    @property
    def cov(self) -> Tensor:
        return self.factor @ self.factor.T


def cov_stats(acts: Tensor, d: int | None = None, shrinkage: float = 0.0) -> CovStats:
    """Mean and a PSD factor of the covariance of activations ``[M, d]`` (float64).

    Negative eigenvalues (rounding, or fewer activations than dimensions) are clipped to zero;
    ``shrinkage`` adds that multiple of the mean variance to the diagonal.
    """
    if not isinstance(acts, Tensor) or acts.ndim != 2 or (d is not None and acts.shape[1] != d):
        shape = tuple(acts.shape) if isinstance(acts, Tensor) else type(acts).__name__
        raise ValueError(f"activations must have shape [M, {d if d is not None else 'd'}], got {shape}")
    if acts.shape[0] < 2:
        raise ValueError(f"need at least 2 activations to estimate a covariance, got {acts.shape[0]}")
    finite = torch.isfinite(acts).all(dim=1)
    if not finite.all():
        raise ValueError(f"activation row {int((~finite).nonzero()[0])} contains NaN or inf values")
    x = acts.detach().to("cpu", torch.float64)
    mean = x.mean(0)
    xc = x - mean
    cov = xc.T @ xc / (x.shape[0] - 1)
    cov = (cov + cov.T) / 2 + shrinkage * cov.diagonal().mean() * torch.eye(cov.shape[0], dtype=cov.dtype)
    evals, evecs = torch.linalg.eigh(cov)
    evals = evals.clamp(min=0)
    if float(evals.max()) == 0.0:
        raise ValueError("activations have zero variance; a covariance-matched baseline needs varied activations")
    return CovStats(mean, evecs * evals.sqrt())


def cov_random_targets(stats: CovStats, n: int, seed: int = 0) -> Tensor:
    """``n`` Gaussian samples with the mean and covariance of ``stats`` (``[n, d]`` targets)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, stats.factor.shape[1], generator=g, dtype=stats.factor.dtype)
    return (stats.mean + z @ stats.factor.T).float()


def pca_directions(stats: CovStats, n: int) -> Tensor:
    """The kind ``PCA``: ``n`` rows ``[n, d]`` from the covariance's top principal axes with both signs,
    ``+u1, −u1, +u2, −u2, ...`` (float64, unit rows; each axis's sign fixed so its largest entry is positive)."""
    if n < 1:
        raise ValueError(f"number of directions must be >= 1, got {n}")
    k = (n + 1) // 2
    d = stats.factor.shape[1]
    if k > d:
        raise ValueError(f"{n} PCA directions need {k} principal axes; the activations have {d} dimensions")
    evals, evecs = torch.linalg.eigh(stats.cov)
    u = evecs[:, evals.argsort(descending=True)[:k]].T
    u = u * torch.sign(u.gather(1, u.abs().argmax(1, keepdim=True)))
    u = u / u.norm(dim=1, keepdim=True)
    return torch.stack([u, -u], dim=1).reshape(2 * k, -1)[:n]


def load_directions(path: str | Path, key: str = "directions") -> Tensor:
    """Directions ``[R, d]`` from ``.safetensors`` (tensor ``key``, or its only tensor), ``.pt`` or ``.npy``.

    Raises ``InputFileError`` naming the file if it is missing, a directory, corrupt, or holds anything
    but one real numeric array of shape ``[R, d]`` (or ``[d]``) with R, d >= 1 and finite entries.
    """

    path = Path(path)
    name = repr(str(path))
    if path.is_dir():
        raise InputFileError(f"direction file {name} is a directory, not a file")
    if not path.is_file():
        raise InputFileError(f"direction file {name} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        tensors = load_tensors(path, "direction file")
        if key in tensors:
            x = tensors[key]
        elif len(tensors) == 1:
            x = next(iter(tensors.values()))
        else:
            raise InputFileError(f"direction file {name} holds tensors {sorted(tensors)}; expected one named {key!r}")
    elif suffix == ".pt":
        try:
            x = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, EOFError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as exc:
            why = " ".join(str(exc).split())[:200] or type(exc).__name__
            raise InputFileError(f"direction file {name} is not a readable torch file ({why})") from None
        if not isinstance(x, Tensor):
            raise InputFileError(f"direction file {name} must hold a single tensor of shape [R, d]")
    elif suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, EOFError, ValueError) as exc:
            raise InputFileError(f"direction file {name} is not a readable .npy file ({exc})") from None
        if arr.dtype.kind not in "iuf":
            raise InputFileError(f"direction file {name} holds an array of dtype {arr.dtype}; directions must be "
                                 "real numbers")
        x = torch.from_numpy(np.ascontiguousarray(arr))
    else:
        raise InputFileError(f"direction file {name} has unsupported type {suffix!r}; allowed: .safetensors, .pt, .npy")
    if x.is_complex() or x.dtype == torch.bool or not (x.is_floating_point() or x.dtype in _INT_DTYPES):
        raise InputFileError(f"direction file {name} holds a tensor of dtype {x.dtype}; directions must be real numbers")
    if x.ndim not in (1, 2) or 0 in x.shape:
        raise InputFileError(f"direction file {name} holds an array of shape {list(x.shape)}; directions must be "
                             "one array of shape [R, d] (or [d]) with R, d >= 1")
    x = x.float()
    if not torch.isfinite(x).all():
        raise InputFileError(f"direction file {name} holds NaN or infinite values")
    return x[None] if x.ndim == 1 else x


_INT_DTYPES = (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)


def save_directions(path: str | Path, directions: Tensor) -> None:
    save_tensors(path, {"directions": directions})
