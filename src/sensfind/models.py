"""Loading TransformerLens models: pretrained by name (needs the HuggingFace hub) or built locally.

``load_model("gpt2")`` goes through ``HookedTransformer.from_pretrained``. Offline, that fails with a
single :class:`ModelUnavailableError` that says how to use a local model instead.

``load_model("random:gpt2")`` builds GPT-2 small's architecture (12 layers, d_model 768, vocab 50257)
with random weights from a seed: exact for plumbing and speed, meaningless for science.
``random:tiny`` is a 2-layer model that runs in milliseconds, for tests.
"""

from __future__ import annotations

import logging
import os
import socket
from contextlib import contextmanager

import torch

log = logging.getLogger(__name__)

__all__ = ["ModelUnavailableError", "hf_offline", "hub_reachable", "load_model", "local_config", "LOCAL_ARCHITECTURES"]


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


def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the hub opens within ``timeout`` seconds (False when offline mode is set)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


@contextmanager
def hf_offline(offline: bool):
    """Make huggingface_hub use its cache only (no retries against an unreachable hub) while active."""
    if not offline:
        yield
        return
    import huggingface_hub.constants as hf_constants

    old_env, old_const = os.environ.get("HF_HUB_OFFLINE"), hf_constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "1"
    hf_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hf_constants.HF_HUB_OFFLINE = old_const
        if old_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old_env


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
    offline = not hub_reachable()
    if offline:
        log.info("HuggingFace hub unreachable: looking for %r in the local HF cache only", name)
    try:
        with hf_offline(offline):
            model = HookedTransformer.from_pretrained(name, device=device, dtype=dtype)
    except (OSError, ConnectionError, RuntimeError, ValueError) as exc:
        # HF raises OSError/LocalEntryNotFoundError/ConnectionError subclasses offline; an unknown
        # name raises ValueError. Either way the user needs the same two options.
        why = "the HuggingFace hub is unreachable and the weights are not in the local HF cache" if offline else (
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        )
        raise ModelUnavailableError(
            f"could not load pretrained model {name!r}: {why}. Pretrained weights come from the HuggingFace hub; "
            "with no network access use a local model instead: --model "
            f"{' or '.join('random:' + a for a in LOCAL_ARCHITECTURES)} (architecture with random weights), "
            "or build a HookedTransformer yourself and pass it to sensfind.TransformerSubject."
        ) from exc
    model.eval()
    return model
