"""Subjects: anything that maps activations at a site to an output vector, differentiably.

A subject holds one unperturbed activation (``base``, shape ``[d]``) and a ``run`` method taking a
batch of replacement activations ``[B, d]`` to outputs ``[B, n_out]`` (next-token logits, or a late
activation). Everything downstream (scans, effects, the optimiser) only talks to this protocol.

This module holds the protocol, :class:`FunctionSubject` (any differentiable callable) and the input
checks every subject shares. The TransformerLens subject is :class:`sensfind.models.transformer_subject.
TransformerSubject`.
"""

from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = ["Subject", "FunctionSubject", "check_acts"]


@runtime_checkable
class Subject(Protocol):
    """Maps activations at a site to output vectors; autograd must flow from output to input."""

    base: Tensor  # [d] unperturbed activation at the site

    def run(self, acts: Tensor) -> Tensor:  # [B, d] -> [B, n_out]
        ...


def check_base(base: Tensor) -> Tensor:
    if not isinstance(base, Tensor):
        raise TypeError(f"base must be a torch.Tensor of shape [d], got {type(base).__name__}")
    if base.is_complex() or not base.is_floating_point():
        raise TypeError(f"base must be a real floating-point tensor, got dtype {base.dtype}; convert with .float()")
    if base.ndim != 1 or base.numel() == 0:
        raise ValueError(f"base must have shape [d] with d >= 1, got shape {tuple(base.shape)}")
    if not torch.isfinite(base).all():
        raise ValueError("base activation contains NaN or inf values")
    if float(base.norm()) == 0.0:
        raise ValueError("base activation is the zero vector; sphere-mode scans need a nonzero base")
    return base


def check_acts(acts: Tensor, d: int) -> Tensor:
    """Validate a batch of activations ``[B, d]`` for ``Subject.run``."""
    if not isinstance(acts, Tensor):
        raise TypeError(f"acts must be a torch.Tensor of shape [B, {d}], got {type(acts).__name__}")
    if acts.ndim != 2 or acts.shape[1] != d:
        raise ValueError(f"acts must have shape [B, {d}], got shape {tuple(acts.shape)}")
    return acts


class FunctionSubject:
    """Wrap a plain callable ``fn: [B, d] -> [B, n_out]`` and a base activation as a Subject."""

    def __init__(self, base: Tensor, fn: Callable[[Tensor], Tensor]):
        self.base = check_base(base)
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        self.fn = fn

    def run(self, acts: Tensor) -> Tensor:
        out = self.fn(check_acts(acts, self.base.shape[0]))
        if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[0] != acts.shape[0]:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"fn must return a tensor of shape [B, n_out] with B={acts.shape[0]}, got {shape}")
        if torch.is_grad_enabled() and acts.requires_grad and not out.requires_grad:
            raise TypeError(
                f"fn {getattr(self.fn, '__name__', self.fn)!r} is not differentiable: its output does not require "
                "grad although its input does (does it detach, call .numpy() or run under torch.no_grad()?). "
                "Discovery needs gradients from the output back to the activations"
            )
        return out

    def __repr__(self) -> str:
        return f"FunctionSubject(d={self.base.shape[0]}, fn={getattr(self.fn, '__name__', self.fn)!r})"


