"""Prompt sets and the activations they produce at a site (for real-other directions and statistics).

sensfind ships a small prompt set written for the project (``builtin``); users can give a text file
with one prompt per line.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch
from torch import Tensor

from .subjects import tokenize_prompt

__all__ = ["load_prompts", "site_activations", "site_activations_all_positions"]


def load_prompts(source: str | Path = "builtin") -> list[str]:
    """Prompts from ``builtin`` or a text file (one per line; blank lines and ``#`` comments skipped)."""
    if str(source) == "builtin":
        text = resources.files("sensfind").joinpath("data/prompts.txt").read_text()
    else:
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"prompt file {str(path)!r} does not exist; give a text file with one prompt per line, or 'builtin'")
        text = path.read_text()
    prompts = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not prompts:
        raise ValueError(f"prompt file {str(source)!r} holds no prompts (one per line expected)")
    return prompts


@torch.no_grad()
def site_activations(model, prompts: list[str], hook: str, position: int = -1) -> Tensor:
    """Activations ``[M, d]`` at ``hook`` and ``position`` (per prompt, negative counts from its end)."""
    if hook not in model.hook_dict:
        raise ValueError(f"unknown hook {hook!r}; see model.hook_dict for the hook points of this model")
    out = []
    for prompt in prompts:
        tokens = tokenize_prompt(model, prompt)
        n = tokens.shape[1]
        if not -n <= position < n:
            raise ValueError(f"position {position} is out of range for prompt {prompt!r} of {n} tokens")
        _, cache = model.run_with_cache(tokens, names_filter=lambda name: name == hook)
        out.append(cache[hook][0, position])
    return torch.stack(out).float()


@torch.no_grad()
def site_activations_all_positions(model, prompts: list[str], hook: str, skip_first: bool = True) -> Tensor:
    """Activations ``[sum of positions, d]`` at ``hook`` for every position of every prompt (the first
    position, an attention sink with outlying norm, skipped by default): data for training an SAE."""
    if hook not in model.hook_dict:
        raise ValueError(f"unknown hook {hook!r}; see model.hook_dict for the hook points of this model")
    out = []
    for prompt in prompts:
        _, cache = model.run_with_cache(tokenize_prompt(model, prompt), names_filter=lambda name: name == hook)
        acts = cache[hook][0]
        out.append(acts[1:] if skip_first and acts.shape[0] > 1 else acts)
    return torch.cat(out).float()
