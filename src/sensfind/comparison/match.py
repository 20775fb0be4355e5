"""Match directions against a dictionary (SAE decoder rows) and against real-other directions.

Every comparison comes with a null: the same statistic for random directions of the same kind,
``n_null`` of them drawn from a seeded generator.

- ``isotropic``: ``u = g/|g|`` with ``g ~ N(0, I)``.
- ``covariance``: Gaussian with the mean ``μ`` and covariance ``Σ`` of user-supplied activations
  (``Σ`` is made positive semi-definite by clipping negative eigenvalues, which sampling
  needs when there are fewer activations than dimensions or rounding makes ``Σ`` indefinite).
  With a base activation ``x0`` the null directions are target-style, ``(x1 - x0)/|x1 - x0|`` with
  ``x1 ~ N(μ, Σ)`` (the cov-random baseline); without one they are ``(x1 - μ)/|x1 - μ|``.

``match_directions`` ranks decoder rows by ``|cos|`` and keeps the sign (``+``: the direction adds the
latent's decoder direction, exciting it; ``-``: it removes it, dampening it). Each match gets an
empirical p-value ``(1 + #{null ≥ |cos|})/(1 + n_null)`` and a z-score against the null of the *best*
``|cos|`` a random direction reaches over the whole dictionary, so the search over all latents is
accounted for (for lower ranks the test is conservative).

``match_real_other`` compares directions with real-other directions ``(x_other - x0)/|x_other - x0|``:
the signed cosine with each, and the norm of the projection onto their span. A random unit vector
keeps about ``sqrt(r/d)`` of its norm in an ``r``-dimensional span, so the span norm has its own null.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from sensfind.core.baselines import cov_stats
from sensfind.dictionaries.dictionary import Dictionary
from sensfind.configs import MAX_SEED, Config, check_int
from sensfind.core.geometry import check_directions, directions_from_targets
from sensfind.runio import Result, dumps_json, json_float, load_json, load_tensors, save_json, save_tensors, to_jsonable

__all__ = [
    "Matches",
    "NullConfig",
    "RealOtherMatches",
    "match_directions",
    "match_real_other",
    "null_directions",
]

NullKind = Literal["isotropic", "covariance"]
_NULL_KINDS = ("isotropic", "covariance")
_CHUNK_ELEMENTS = 1 << 24  # cosines held at once when scanning a large dictionary


@dataclass(frozen=True)
class NullConfig(Config):
    """Random directions to compare against.

    Attributes:
        kind: ``isotropic`` (uniform on the sphere) or ``covariance`` (Gaussian with the mean and
            covariance of the activations passed alongside; see the module docstring).
        n_null: number of random directions, at least 1 (p-values cannot go below ``1/(1+n_null)``) and at
            most 100000 (memory).
        seed: seed of the generator that draws them (at most 4294967295).
    """

    kind: NullKind = "isotropic"
    n_null: int = 1000
    seed: int = 0

    def __post_init__(self):
        if self.kind not in _NULL_KINDS:
            raise ValueError(f"null kind must be one of {_NULL_KINDS}, got {self.kind!r}")
        check_int("n_null", self.n_null, 1, maximum=100_000)
        check_int("seed", self.seed, maximum=MAX_SEED)


def _as_null(null: NullConfig | str) -> NullConfig:
    if isinstance(null, NullConfig):
        return null
    if isinstance(null, str):
        return NullConfig(kind=null)
    raise TypeError(f"null must be a NullConfig or one of {_NULL_KINDS}, got {type(null).__name__}")


def _check_base(base: Tensor, d: int) -> Tensor:
    if not isinstance(base, Tensor) or base.ndim != 1 or base.shape[0] != d:
        shape = tuple(base.shape) if isinstance(base, Tensor) else type(base).__name__
        raise ValueError(f"base must be a tensor of shape [{d}], got {shape}")
    if not torch.isfinite(base).all():
        raise ValueError("base activation contains NaN or inf values")
    return base


def null_directions(
    d: int,
    null: NullConfig | str = NullConfig(),
    activations: Tensor | None = None,
    base: Tensor | None = None,
) -> Tensor:
    """``[n_null, d]`` unit random directions of the kind ``null`` names (float64, CPU)."""
    null = _as_null(null)
    if not isinstance(d, int) or isinstance(d, bool) or d < 1:
        raise ValueError(f"d must be an integer >= 1, got {d!r}")
    if null.kind == "isotropic" and activations is not None:
        raise ValueError(
            "activations were given but the null is isotropic; use NullConfig(kind='covariance') to use them"
        )
    gen = torch.Generator().manual_seed(null.seed)
    g = torch.randn(null.n_null, d, generator=gen, dtype=torch.float64)
    if null.kind == "isotropic":
        u = g
    else:
        if activations is None:
            raise ValueError("null kind 'covariance' needs activations [M, d] to estimate the mean and covariance")
        stats = cov_stats(activations, d)
        mean, factor = stats.mean, stats.factor
        u = g @ factor.T
        if base is not None:
            u = u + (mean - _check_base(base, d).detach().to("cpu", torch.float64))
    norms = u.norm(dim=1, keepdim=True)
    if (norms == 0).any():  # only a degenerate sample can land exactly on the base
        raise ValueError("a null sample equals the base activation; check the activations and base")
    return u / norms


def _dtype(directions: Tensor, reference: Tensor) -> torch.dtype:
    """Floating dtype to compute in: the wider of the two, float32 at least."""
    dtype = reference.dtype if reference.is_floating_point() else torch.float32
    if isinstance(directions, Tensor) and directions.is_floating_point():
        dtype = torch.promote_types(directions.dtype, dtype)
    return torch.promote_types(dtype, torch.float32)


def _unit_rows(directions: Tensor, d: int, dtype: torch.dtype, device) -> Tensor:
    """Validated directions ``[N, d]`` as unit rows in ``dtype`` on ``device``."""
    rows = check_directions(directions, d).detach().to(device=device, dtype=dtype)
    return rows / rows.norm(dim=1, keepdim=True)


def _check_width(directions: Tensor, d: int, against: str) -> None:
    if isinstance(directions, Tensor) and directions.ndim in (1, 2) and directions.shape[-1] != d:
        raise ValueError(
            f"directions have width {directions.shape[-1]} but {against} has width {d}; "
            "directions must live in the same activation space"
        )


def _best_abs_cos(rows: Tensor, unit: Tensor) -> Tensor:
    """``max_j |cos(rows_i, unit_j)|`` for unit rows ``[B, d]`` against unit rows ``[L, d]``, chunked."""
    step = max(1, _CHUNK_ELEMENTS // unit.shape[0])
    return torch.cat([(rows[i : i + step] @ unit.T).abs().amax(dim=1) for i in range(0, rows.shape[0], step)])


def _empirical(obs: Tensor, null: Tensor) -> tuple[Tensor, Tensor]:
    """p-values ``(1 + #{null ≥ obs})/(1 + n)`` and z-scores of ``obs`` (any shape) against ``null [n]``."""
    n = null.shape[0]
    ordered = null.to(obs.dtype).sort().values
    at_least = n - torch.searchsorted(ordered, obs.contiguous(), right=False)
    p = (1 + at_least).to(obs.dtype) / (1 + n)
    std = null.std() if n > 1 else null.new_tensor(float("nan"))
    z = (obs - null.mean().to(obs.dtype)) / std.to(obs.dtype)
    return p, z


def _quantiles(null: Tensor) -> dict:
    q = torch.quantile(null.double(), null.new_tensor([0.5, 0.95, 0.99], dtype=torch.float64))
    return dict(mean=float(null.mean()), std=float(null.std()) if null.numel() > 1 else float("nan"),
                median=float(q[0]), q95=float(q[1]), q99=float(q[2]))


@dataclass(frozen=True, eq=False)
class Matches(Result):
    """Top-``k`` dictionary matches of ``N`` directions, with a null.

    Attributes:
        cos: ``[N, k]`` signed cosines, ordered by ``|cos|`` (largest first).
        latents: ``[N, k]`` latent ids (rows of the decoder).
        p_value: ``[N, k]`` empirical p-values of ``|cos|`` against ``null_best``.
        z: ``[N, k]`` z-scores of ``|cos|`` against ``null_best``.
        null_best: ``[n_null]`` best ``|cos|`` each null direction reaches over the dictionary.
        null: the null that was drawn.
        source, hook_name: the dictionary's.
        urls: ``N`` lists of ``k`` Neuronpedia links (None where there is no page).

    ``save(directory)`` writes ``matches.json`` (readable) and ``matches.safetensors`` (the tensors).
    """

    MARKER = "matches.safetensors"
    WHAT = "dictionary matches"

    cos: Tensor
    latents: Tensor
    p_value: Tensor
    z: Tensor
    null_best: Tensor
    null: NullConfig
    source: str
    hook_name: str | None
    urls: list

    @property
    def sign(self) -> Tensor:  # [N, k] +1 excites the latent, -1 dampens it
        return torch.where(self.cos >= 0, 1, -1)

    @property
    def k(self) -> int:
        return self.cos.shape[1]

    def __len__(self) -> int:
        return self.cos.shape[0]

    def __repr__(self) -> str:
        return f"Matches(n={len(self)}, k={self.k}, null={self.null.kind}/{self.null.n_null}, source={self.source!r})"

    def summary(self) -> dict:
        best = self.cos[:, 0].abs()
        significant = (self.p_value[:, 0] < 0.05).float().mean()
        return dict(
            n_directions=len(self), k=self.k, best_abs_cos_mean=float(best.mean()), best_abs_cos_max=float(best.max()),
            frac_best_p_below_0_05=float(significant), null=_quantiles(self.null_best),
        )

    def to_dict(self) -> dict:
        rows = []
        for i in range(len(self)):
            rows.append([
                dict(latent=int(self.latents[i, j]), cos=float(self.cos[i, j]),
                     effect="excites" if self.cos[i, j] >= 0 else "dampens", p_value=float(self.p_value[i, j]),
                     z=json_float(float(self.z[i, j])), url=self.urls[i][j])
                for j in range(self.k)
            ])
        return dict(source=self.source, hook_name=self.hook_name, null=self.null.to_dict(),
                    summary=to_jsonable(self.summary()), matches=rows)

    def to_json(self) -> str:
        return dumps_json(self.to_dict())

    def _write(self, path: Path) -> None:
        save_json(path / "matches.json", self.to_dict())
        tensors = dict(cos=self.cos, latents=self.latents, p_value=self.p_value, z=self.z, null_best=self.null_best)
        save_tensors(path / "matches.safetensors", tensors)

    @classmethod
    def _read(cls, path: Path) -> Matches:
        meta = load_json(path / "matches.json")
        t = load_tensors(path / "matches.safetensors")
        urls = [[m["url"] for m in row] for row in meta["matches"]]
        return cls(cos=t["cos"], latents=t["latents"], p_value=t["p_value"], z=t["z"], null_best=t["null_best"],
                   null=NullConfig.from_dict(meta["null"]), source=meta["source"], hook_name=meta["hook_name"], urls=urls)




def match_directions(
    directions: Tensor,
    dictionary: Dictionary,
    k: int = 5,
    null: NullConfig | str = NullConfig(),
    activations: Tensor | None = None,
    base: Tensor | None = None,
) -> Matches:
    """Top-``k`` decoder rows of ``dictionary`` for each of ``directions [N, d]`` by ``|cos|``, signed.

    ``null`` is compared against; a ``covariance`` null needs ``activations [M, d]``, and with
    ``base [d]`` it draws target-style directions from the base (see the module docstring).
    """
    if not isinstance(dictionary, Dictionary):
        raise TypeError(f"dictionary must be a sensfind Dictionary, got {type(dictionary).__name__}")
    null = _as_null(null)
    n_latents, d = dictionary.decoder.shape
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    if k > n_latents:
        raise ValueError(f"k={k} is larger than the dictionary ({n_latents} latents); use k <= {n_latents}")
    _check_width(directions, d, f"dictionary {dictionary.source!r}")
    if base is not None:
        _check_base(base, d)
    unit = dictionary.decoder
    rows = _unit_rows(directions, d, _dtype(directions, unit), unit.device)
    unit = unit.to(rows.dtype)

    cos = rows @ unit.T  # [N, L]
    top = cos.abs().topk(k, dim=1)
    signed = cos.gather(1, top.indices)
    nulls = null_directions(d, null, activations, base).to(device=unit.device, dtype=rows.dtype)
    null_best = _best_abs_cos(nulls, unit)
    p, z = _empirical(top.values, null_best)
    urls = [[dictionary.neuronpedia_url(int(j)) for j in row] for row in top.indices.tolist()]
    return Matches(cos=signed, latents=top.indices, p_value=p, z=z, null_best=null_best, null=null,
                   source=dictionary.source, hook_name=dictionary.hook_name, urls=urls)


@dataclass(frozen=True, eq=False)
class RealOtherMatches(Result):
    """How ``N`` directions relate to ``M`` real-other directions, with nulls.

    Attributes:
        cos: ``[N, M]`` signed cosine of each direction with each real-other direction.
        best: ``[N]`` index of the real-other direction with the largest ``|cos|``.
        best_cos: ``[N]`` its signed cosine.
        p_value, z: ``[N]`` of ``|best_cos|`` against ``null_best``.
        span_norm: ``[N]`` norm of each unit direction's projection onto the span of the real-other
            directions (1: inside it; chance is about ``sqrt(rank/d)``).
        span_p_value, span_z: ``[N]`` of ``span_norm`` against ``null_span``.
        rank: dimension of the span.
        null_best, null_span: ``[n_null]`` the same statistics for the null directions.
        null: the null that was drawn.

    ``save(directory)`` writes ``real_other.json`` (readable) and ``real_other.safetensors`` (the tensors).
    """

    MARKER = "real_other.safetensors"
    WHAT = "real-other matches"

    cos: Tensor
    best: Tensor
    best_cos: Tensor
    p_value: Tensor
    z: Tensor
    span_norm: Tensor
    span_p_value: Tensor
    span_z: Tensor
    rank: int
    null_best: Tensor
    null_span: Tensor
    null: NullConfig

    TENSORS = ("cos", "best", "best_cos", "p_value", "z", "span_norm", "span_p_value", "span_z", "null_best", "null_span")

    def __len__(self) -> int:
        return self.cos.shape[0]

    def __repr__(self) -> str:
        null = f"{self.null.kind}/{self.null.n_null}"
        return f"RealOtherMatches(n={len(self)}, m={self.cos.shape[1]}, rank={self.rank}, null={null})"

    def summary(self) -> dict:
        return dict(
            n_directions=len(self), n_others=int(self.cos.shape[1]), rank=self.rank,
            best_abs_cos_mean=float(self.best_cos.abs().mean()), span_norm_mean=float(self.span_norm.mean()),
            null_best=_quantiles(self.null_best), null_span=_quantiles(self.null_span),
        )

    def to_dict(self) -> dict:
        rows = [
            dict(best=int(self.best[i]), best_cos=float(self.best_cos[i]), p_value=float(self.p_value[i]),
                 z=json_float(float(self.z[i])), span_norm=float(self.span_norm[i]),
                 span_p_value=float(self.span_p_value[i]), span_z=json_float(float(self.span_z[i])))
            for i in range(len(self))
        ]
        return dict(rank=self.rank, null=self.null.to_dict(), summary=to_jsonable(self.summary()), directions=rows)

    def to_json(self) -> str:
        return dumps_json(self.to_dict())

    def _write(self, path: Path) -> None:
        save_json(path / "real_other.json", self.to_dict())
        save_tensors(path / "real_other.safetensors", {n: getattr(self, n) for n in self.TENSORS})

    @classmethod
    def _read(cls, path: Path) -> RealOtherMatches:
        meta = load_json(path / "real_other.json")
        t = load_tensors(path / "real_other.safetensors")
        return cls(rank=meta["rank"], null=NullConfig.from_dict(meta["null"]), **{n: t[n] for n in cls.TENSORS})


def _span_basis(unit_rows: Tensor) -> Tensor:
    """Orthonormal basis ``[r, d]`` of the row span (numerical rank by the usual SVD tolerance)."""
    _, s, vh = torch.linalg.svd(unit_rows, full_matrices=False)
    tol = s.max() * max(unit_rows.shape) * torch.finfo(unit_rows.dtype).eps
    return vh[: int((s > tol).sum())]


def match_real_other(
    directions: Tensor,
    base: Tensor,
    others: Tensor,
    null: NullConfig | str = NullConfig(),
    activations: Tensor | None = None,
) -> RealOtherMatches:
    """Compare ``directions [N, d]`` with real-other directions ``(others - base)/|others - base|``.

    ``others [M, d]`` are activations of unrelated prompts at the same site as ``base [d]``. A
    ``covariance`` null (needs ``activations``) draws directions from ``base`` to Gaussian samples
    matched to them, i.e. the cov-random baseline.
    """
    null = _as_null(null)
    if not isinstance(base, Tensor) or base.ndim != 1:
        shape = tuple(base.shape) if isinstance(base, Tensor) else type(base).__name__
        raise ValueError(f"base must be a tensor of shape [d], got {shape}")
    d = base.shape[0]
    _check_base(base, d)
    _check_width(directions, d, "the base activation")
    rows = _unit_rows(directions, d, _dtype(directions, base), base.device)
    dtype = rows.dtype
    if isinstance(others, Tensor) and others.ndim == 2 and others.shape[1] != d:
        raise ValueError(f"others must have shape [M, {d}] (the base's width), got {tuple(others.shape)}")
    if isinstance(others, Tensor):
        others = others.detach().to(dtype)
    real = directions_from_targets(base.detach().to(dtype), others)  # [M, d] unit

    cos = rows @ real.T  # [N, M]
    best = cos.abs().argmax(dim=1)
    best_cos = cos.gather(1, best[:, None])[:, 0]
    basis = _span_basis(real)  # [r, d]
    span_norm = (rows @ basis.T).norm(dim=1)

    nulls = null_directions(d, null, activations, base).to(device=base.device, dtype=dtype)
    null_best = _best_abs_cos(nulls, real)
    null_span = (nulls @ basis.T).norm(dim=1)
    p, z = _empirical(best_cos.abs(), null_best)
    span_p, span_z = _empirical(span_norm, null_span)
    return RealOtherMatches(
        cos=cos, best=best, best_cos=best_cos, p_value=p, z=z, span_norm=span_norm, span_p_value=span_p,
        span_z=span_z, rank=basis.shape[0], null_best=null_best, null_span=null_span, null=null,
    )
