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


def kl(base: Tensor, out: Tensor) -> Tensor:
    # p0 (log p0 - log p) summed; the base's log-probabilities broadcast (not expanded: about 30% slower),
    # and equal inputs give exactly 0
    logp0 = torch.log_softmax(base, dim=-1)
    logp = torch.log_softmax(out, dim=-1)
    return F.kl_div(logp, logp0, reduction="none", log_target=True).sum(-1)


def l2(base: Tensor, out: Tensor) -> Tensor:
    return (out - base).norm(dim=-1)


def cos(base: Tensor, out: Tensor) -> Tensor:
    return 1.0 - F.cosine_similarity(out, base.expand_as(out), dim=-1)


EFFECTS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"kl": kl, "l2": l2, "cos": cos}


def get_effect(name: str) -> Callable[[Tensor, Tensor], Tensor]:
    if name not in EFFECTS:
        raise ValueError(f"unknown effect {name!r}; allowed: {sorted(EFFECTS)}")
    return EFFECTS[name]
