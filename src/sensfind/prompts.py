"""Prompt sets and the activations they produce at a site (for real-other directions and statistics).

sensfind ships a small prompt set written for the project (``builtin``); users can give a text file
with one prompt per line; where the hub is reachable, ``openwebtext:N`` gives 10-token windows of
openwebtext documents as the prior work used. A prompt is text or a list of token ids.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import torch
from torch import Tensor

from .subjects import tokenize_prompt

__all__ = ["DatasetUnavailableError", "load_prompts", "openwebtext_windows", "site_activations",
           "site_activations_all_positions"]


class DatasetUnavailableError(RuntimeError):
    """A prompt set that lives on the HuggingFace hub could not be fetched."""


OPENWEBTEXT = "Skylion007/openwebtext"


def openwebtext_windows(model, n: int, length: int = 10, seed: int = 0, dataset: str = OPENWEBTEXT) -> list[list[int]]:
    """``n`` windows of ``length`` token ids from openwebtext documents (one window per document, at a
    seeded random offset), as the prior work used. Needs the HuggingFace hub (streamed, not downloaded
    whole) and the model's tokenizer."""
    from .models import hf_offline, hub_reachable

    if model.tokenizer is None:
        raise ValueError("openwebtext windows need the model's tokenizer; this model has none")
    if n < 1 or length < 1:
        raise ValueError(f"need n >= 1 windows of length >= 1, got n={n}, length={length}")
    offline = not hub_reachable()
    try:
        import datasets

        with hf_offline(offline):
            stream = datasets.load_dataset(dataset, split="train", streaming=True)
            g = torch.Generator().manual_seed(seed)
            out: list[list[int]] = []
            for doc in stream:
                ids = model.tokenizer(doc["text"])["input_ids"]
                if len(ids) < length:
                    continue
                start = int(torch.randint(0, len(ids) - length + 1, (1,), generator=g))
                out.append(ids[start : start + length])
                if len(out) == n:
                    return out
    except (OSError, ConnectionError, ValueError) as exc:
        raise DatasetUnavailableError(
            f"could not stream {dataset!r} from the HuggingFace hub ({type(exc).__name__}). Offline, use the "
            "builtin prompt set or a text file of prompts (one per line) instead"
        ) from exc
    raise DatasetUnavailableError(f"{dataset!r} had fewer than {n} documents of at least {length} tokens")


def load_prompts(source: str | Path = "builtin", model=None) -> list:
    """Prompts from ``builtin``, a text file (one per line; blank lines and ``#`` comments skipped), or
    ``openwebtext:N`` (N 10-token windows; needs the hub and ``model``'s tokenizer)."""
    if str(source).startswith("openwebtext:"):
        if model is None:
            raise ValueError("openwebtext prompts need the model (for its tokenizer)")
        try:
            n = int(str(source).split(":", 1)[1])
        except ValueError as exc:
            raise ValueError(f"openwebtext:N needs an integer N, got {source!r}") from exc
        return openwebtext_windows(model, n)
    if str(source) == "builtin":
        text = resources.files("sensfind").joinpath("data/prompts.txt").read_text()
    else:
        from .runio import read_text

        text = read_text(source, "prompt file")
    prompts = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not prompts:
        raise ValueError(f"prompt file {str(source)!r} holds no prompts (one per line expected)")
    bad = next((ln for ln in prompts if "\x00" in ln), None)
    if bad is not None:
        raise ValueError(f"prompt file {str(source)!r} holds NUL bytes; is it a binary file?")
    return prompts


@torch.no_grad()
def site_activations(model, prompts: list, hook: str, position: int = -1) -> Tensor:
    """Activations ``[M, d]`` at ``hook`` and ``position`` (per prompt, negative counts from its end)."""
    if hook not in model.hook_dict:
        raise ValueError(f"unknown hook {hook!r}; see model.hook_dict for the hook points of this model")
    out = []
    for prompt in prompts:
        tokens = tokenize_prompt(model, prompt)
        n = tokens.shape[1]
        if not -n <= position < n:
            raise ValueError(f"position {position} is out of range for prompt {prompt!r} of {n} tokens")
        out.append(_hook_activations(model, tokens, hook)[position])
    return torch.stack(out).float()


def _hook_activations(model, tokens: Tensor, hook: str) -> Tensor:
    """Activations ``[pos, ...]`` at ``hook`` for one prompt, running only the blocks up to the hook."""
    m = re.match(r"^blocks\.(\d+)\.", hook)
    stop = int(m.group(1)) + 1 if m else None
    if stop is not None and stop >= model.cfg.n_layers:
        stop = None
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name == hook, stop_at_layer=stop)
    return cache[hook][0]


@torch.no_grad()
def site_activations_all_positions(model, prompts: list[str], hook: str, skip_first: bool = True) -> Tensor:
    """Activations ``[sum of positions, d]`` at ``hook`` for every position of every prompt (the first
    position, an attention sink with outlying norm, skipped by default): data for training an SAE."""
    if hook not in model.hook_dict:
        raise ValueError(f"unknown hook {hook!r}; see model.hook_dict for the hook points of this model")
    out = []
    for prompt in prompts:
        acts = _hook_activations(model, tokenize_prompt(model, prompt), hook)
        out.append(acts[1:] if skip_first and acts.shape[0] > 1 else acts)
    return torch.cat(out).float()
