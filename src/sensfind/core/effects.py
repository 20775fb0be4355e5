"""Effect metrics: how far a perturbed output is from the base output, batched.

All take the base output ``[n]`` and perturbed outputs ``[..., n]`` and return ``[...]``.
- ``kl``: KL(p0 || p) in nats between next-token distributions (outputs are logits).
- ``l2``: Euclidean distance between output vectors (e.g. a late residual stream).
- ``cos``: cosine *distance* ``1 - cos(y0, y)``, so that every effect grows with the perturbation.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["EffectName", "EFFECTS", "kl", "l2", "cos", "get_effect"]

EffectName = Literal["kl", "l2", "cos"]


_EXP_MAX = 80.0  # exp of at most this stays finite in float32 (overflow at 88.7)


class _KL(torch.autograd.Function):
    """KL(p0 || softmax(out)) from the logit differences ``x = out - base``, rows ``[B, n]``.

    With ``p̂`` the base distribution (normalised in float64) and ``μ = p̂·x``, ``KL = log Σ p̂ exp(x - μ)
    = c + log1p(T)``, ``T = Σ p̂ expm1(x - μ - c)``; the shift ``c`` is 0 unless a row's ``x - μ`` would
    overflow ``exp`` (large perturbations only). A small KL keeps its relative precision (nothing of the
    size of a log-sum-exp, ~10, is subtracted), and equal inputs give exactly 0. The gradient with respect
    to ``out`` is ``p̂ (exp(x - μ - c) / (1 + T) - 1)``, recomputed in the backward from the saved ``out``.
    On the CPU both passes run a block of rows at a time (``_BLOCK_BYTES``) through a scratch block that
    stays in cache, so the forward reads the logits from memory once and allocates nothing of their size, and the
    backward writes the gradient once. Not differentiable in ``base`` (callers pass the detached base output).
    """

    @staticmethod
    def forward(ctx, out: Tensor, base: Tensor, p: Tensor) -> Tensor:  # [B, n], [n], [n] -> [B]
        rows = _rows(out)
        scratch = out.new_empty(min(rows, out.shape[0]), out.shape[1])  # one block, reused: stays in cache
        shift, c, t = (out.new_empty(out.shape[0]) for _ in range(3))
        for i in range(0, out.shape[0], rows):
            j = slice(i, i + min(rows, out.shape[0] - i))
            x = torch.sub(out[j], base, out=scratch[: j.stop - i])
            mu = x @ p
            c[j] = torch.clamp(x.amax(-1) - mu - _EXP_MAX, min=0.0)  # nonzero only at large perturbations
            shift[j] = mu + c[j]
            t[j] = x.sub_(shift[j, None]).expm1_() @ p
        ctx.save_for_backward(out, base, p, shift, t)
        return c + torch.log1p(t)

    @staticmethod
    def backward(ctx, grad: Tensor):
        out, base, p, shift, t = ctx.saved_tensors
        g = torch.empty_like(out)
        coef = grad / (1.0 + t)
        rows = _rows(out)
        for i in range(0, out.shape[0], rows):
            j = slice(i, i + rows)
            x = torch.sub(out[j], base, out=g[j])
            x.sub_(shift[j, None]).exp_().sub_(1.0 + t[j, None]).mul_(p).mul_(coef[j, None])
        return g, None, None


_BLOCK_BYTES = 2**21  # a row block of about 2 MiB stays in a core's cache through the passes over it


def _rows(x: Tensor) -> int:
    if x.device.type != "cpu":  # an accelerator: one block (small blocks would only add kernel launches)
        return max(1, x.shape[0])
    return max(1, _BLOCK_BYTES // max(1, x.shape[-1] * x.element_size()))


def kl(base: Tensor, out: Tensor) -> Tensor:
    """KL(p0 || p) in nats, p0 = softmax(base) ``[n]``, p = softmax(out) ``[..., n]``; see :class:`_KL`."""
    dtype = torch.promote_types(out.dtype, torch.float32)  # half precision is summed in float32
    p = torch.softmax(base.detach().double(), dim=-1)
    p = (p / p.sum()).to(dtype)
    flat = out.to(dtype).reshape(-1, out.shape[-1])
    return _KL.apply(flat, base.detach().to(dtype), p).reshape(out.shape[:-1])


def l2(base: Tensor, out: Tensor) -> Tensor:
    return (out - base).norm(dim=-1)


def cos(base: Tensor, out: Tensor) -> Tensor:
    return 1.0 - F.cosine_similarity(out, base.expand_as(out), dim=-1)


EFFECTS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"kl": kl, "l2": l2, "cos": cos}


def get_effect(name: str) -> Callable[[Tensor, Tensor], Tensor]:
    if name not in EFFECTS:
        raise ValueError(f"unknown effect {name!r}; allowed: {sorted(EFFECTS)}")
    return EFFECTS[name]
