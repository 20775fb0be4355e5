"""Loading TransformerLens models: pretrained by name (needs the HuggingFace hub) or built locally.

``load_model("gpt2")`` goes through ``HookedTransformer.from_pretrained``. Offline, that fails with a
single :class:`ModelUnavailableError` that says how to use a local model instead.

``load_model("random:gpt2")`` builds GPT-2 small's architecture (12 layers, d_model 768, vocab 50257)
with random weights from a seed: exact for plumbing and speed, meaningless for science.
``random:tiny`` is a 2-layer model that runs in milliseconds, for tests.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

__all__ = ["ModelUnavailableError", "load_model", "local_config", "LOCAL_ARCHITECTURES"]


class ModelUnavailableError(RuntimeError):
    """Raised when pretrained weights cannot be fetched (typically: no network access to the hub)."""


# Architectures we can build without downloading anything. Keys are the part after "random:".
LOCAL_ARCHITECTURES: dict[str, dict] = {
    "gpt2": dict(n_layers=12, d_model=768, n_ctx=1024, d_head=64, n_heads=12, d_mlp=3072, d_vocab=50257),
    "tiny": dict(n_layers=3, d_model=64, n_ctx=256, d_head=16, n_heads=4, d_mlp=256, d_vocab=512),
}


def local_config(arch: str = "gpt2", seed: int = 0, dtype: torch.dtype = torch.float32, **overrides):
    """A ``HookedTransformerConfig`` for a locally built architecture (GPT-2 style blocks)."""
    from transformer_lens import HookedTransformerConfig

    if arch not in LOCAL_ARCHITECTURES:
        raise ValueError(f"unknown local architecture {arch!r}; allowed: {sorted(LOCAL_ARCHITECTURES)}")
    kw = dict(LOCAL_ARCHITECTURES[arch])
    kw.update(overrides)
    return HookedTransformerConfig(
        act_fn="gelu_new",
        normalization_type="LN",
        positional_embedding_type="standard",
        seed=seed,
        dtype=dtype,
        device="cpu",
        **kw,
    )


def load_model(name: str, seed: int = 0, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """Load a ``HookedTransformer`` by name.

    ``random:<arch>`` builds a local architecture (see ``LOCAL_ARCHITECTURES``) with weights drawn
    from ``seed``; any other name is passed to ``HookedTransformer.from_pretrained``.
    """
    from transformer_lens import HookedTransformer

    if not isinstance(name, str) or not name:
        raise ValueError(f"model name must be a non-empty string, got {name!r}")
    if name.startswith("random:"):
        model = HookedTransformer(local_config(name.split(":", 1)[1], seed=seed, dtype=dtype))
        model.eval()
        return model.to(device, print_details=False)
    try:
        model = HookedTransformer.from_pretrained(name, device=device, dtype=dtype)
    except (OSError, ConnectionError, RuntimeError, ValueError) as exc:
        # HF raises OSError/LocalEntryNotFoundError/ConnectionError subclasses offline; an unknown
        # name raises ValueError. Either way the user needs the same two options.
        raise ModelUnavailableError(
            f"could not load pretrained model {name!r}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}\n"
            "The weights come from the HuggingFace hub, which needs network access (or a populated HF cache; "
            "set HF_HUB_OFFLINE=1 to use it). Offline, use a local model instead: "
            f"--model random:gpt2 (GPT-2's architecture, random weights; also {', '.join('random:' + a for a in LOCAL_ARCHITECTURES)}), "
            "or build a HookedTransformer yourself and pass it to sensfind.TransformerSubject."
        ) from exc
    model.eval()
    return model
