"""Which TransformerLens models the compact path (:mod:`sensfind.models.fused_blocks`) can run, and how their blocks
are built (GPT-2-, Llama- and Gemma-3-style blocks).

:class:`BlockFamily` is what the kernel needs to know about a model's blocks (norm, positions, heads,
gated MLP); :func:`block_family` reads it from a ``HookedTransformer``; :func:`unsupported` lists why a
model cannot take the compact path from a layer on, and :func:`has_hooks` whether hooks are attached
(the compact path would skip them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["BlockFamily", "Norm", "block_family", "has_hooks", "norm_kind", "unsupported"]

_QK_NORM_ARCHITECTURES = ("OlmoeForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM")

Norm = Literal["LN", "LNPre", "RMS", "RMSPre"]


@dataclass(frozen=True)
class BlockFamily:
    """What the compact path needs to know about a model's blocks.

    Attributes:
        norm: the norm before each sublayer and at the end (``LN``, ``LNPre``, ``RMS``, ``RMSPre``).
        positions: ``standard`` (nothing to do inside the blocks) or ``rotary``.
        n_heads: query heads.
        n_kv_heads: key/value heads (``n_heads`` unless grouped-query attention).
        gated: whether the MLP is gated (``GatedMLP``).
        post_norms: whether each block also normalises its attention and MLP outputs before adding them
            to the residual stream (``ln1_post``, ``ln2_post``: Gemma 2 and 3).
        qk_norm: whether queries and keys are RMS-normalised per head before rotary (Gemma 3).
    """

    norm: Norm
    positions: Literal["standard", "rotary"]
    n_heads: int
    n_kv_heads: int
    gated: bool
    post_norms: bool = False
    qk_norm: bool = False

    def __post_init__(self):
        if self.norm not in ("LN", "LNPre", "RMS", "RMSPre"):
            raise ValueError(f"norm must be one of LN, LNPre, RMS, RMSPre, got {self.norm!r}")
        if self.positions not in ("standard", "rotary"):
            raise ValueError(f"positions must be 'standard' or 'rotary', got {self.positions!r}")
        if self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be a positive multiple of n_kv_heads ({self.n_kv_heads})")

    @property
    def group(self) -> int:
        return self.n_heads // self.n_kv_heads


def norm_kind(module) -> Norm | None:
    from transformer_lens.components import LayerNorm, LayerNormPre, RMSNorm, RMSNormPre  # lazy: TransformerLens takes seconds to import

    return {LayerNorm: "LN", LayerNormPre: "LNPre", RMSNorm: "RMS", RMSNormPre: "RMSPre"}.get(type(module))


def block_family(model) -> BlockFamily:
    """The :class:`BlockFamily` of a TransformerLens model (call :func:`unsupported` first)."""
    cfg = model.cfg
    return BlockFamily(
        norm=norm_kind(model.ln_final),
        positions=cfg.positional_embedding_type,
        n_heads=cfg.n_heads,
        n_kv_heads=cfg.n_key_value_heads or cfg.n_heads,
        gated=bool(cfg.gated_mlp),
        post_norms=bool(getattr(cfg, "use_normalization_before_and_after", False)),
        qk_norm=bool(getattr(cfg, "use_qk_norm", False)),
    )


def has_hooks(model) -> bool:
    """Whether any module of ``model`` has a hook attached (the compact path would skip it)."""
    return any(
        m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
        for m in model.modules()
    )


def _softcap_on(cap) -> bool:
    return cap is not None and cap > 0


def unsupported(model, layer: int) -> str | None:
    """Why the compact path cannot run ``model`` from ``layer`` on, or ``None`` if it can."""
    from transformer_lens.components import Attention, GroupedQueryAttention, TransformerBlock  # lazy: TransformerLens takes seconds to import
    from transformer_lens.components.mlps.gated_mlp import GatedMLP  # lazy: TransformerLens takes seconds to import
    from transformer_lens.components.mlps.mlp import MLP  # lazy: TransformerLens takes seconds to import
    from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES  # lazy: TransformerLens takes seconds to import

    cfg = model.cfg
    arch = getattr(cfg, "original_architecture", None)
    checks = {
        "positional_embedding_type not 'standard' or 'rotary'": cfg.positional_embedding_type in ("standard", "rotary"),
        "dynamic NTK rotary": not getattr(cfg, "use_dynamic_ntk_rope", False),
        "model spread over several devices": getattr(cfg, "n_devices", 1) == 1,
        "4-bit weights": not getattr(cfg, "load_in_4bit", False),
        "non-causal attention": getattr(cfg, "attention_dir", "causal") == "causal",
        "local attention without an integer window": getattr(cfg, "attn_types", None) is None
        or isinstance(getattr(cfg, "window_size", None), int),
        "parallel attention and MLP": not getattr(cfg, "parallel_attn_mlp", False),
        "post-norm blocks": arch not in POST_NORM_ARCHITECTURES,
        "QK norm over whole projections (OLMo)": arch not in _QK_NORM_ARCHITECTURES,
        "clipped QKV": getattr(cfg, "clip_qkv", None) is None,
        "attention sinks": not getattr(cfg, "use_attention_sinks", False),
        "log-n attention scaling": not getattr(cfg, "use_logn_attn", False),
        "attention score soft cap": not _softcap_on(getattr(cfg, "attn_scores_soft_cap", None)),
        "output logit soft cap": not _softcap_on(getattr(cfg, "output_logits_soft_cap", None)),
        "ungrouped grouped-query attention": not (
            getattr(cfg, "n_key_value_heads", None) and getattr(cfg, "ungroup_grouped_query_attention", False)
        ),
        "layer-norm activation (SoLU-LN)": not cfg.is_layer_norm_activation(),
        "final norm is not LayerNorm / RMSNorm (with or without weights)": norm_kind(
            getattr(model, "ln_final", None)
        ) is not None,
        "a block is not attention + (gated) MLP with LayerNorm / RMSNorm": all(
            type(block) is TransformerBlock
            and type(block.attn) in (Attention, GroupedQueryAttention)
            and getattr(block.attn, "_attention_dir_override", None) in (None, "causal")
            and getattr(block.attn, "attn_type", "global") in ("global", "local")
            and norm_kind(block.ln1) == norm_kind(model.ln_final)
            and (not cfg.use_qk_norm or (norm_kind(block.attn.q_norm) == norm_kind(block.attn.k_norm) == "RMS"
                                         and block.attn.q_norm.w.shape[-1] == cfg.d_head))
            and (not getattr(cfg, "use_normalization_before_and_after", False) or (
                norm_kind(block.ln1_post) is not None and (cfg.attn_only or norm_kind(block.ln2_post) is not None)))
            and (cfg.attn_only or (norm_kind(block.ln2) == norm_kind(model.ln_final) and type(block.mlp) in (MLP, GatedMLP)))
            for block in model.blocks[layer:]
        ),
    }
    failed = [reason for reason, ok in checks.items() if not ok]
    return ", ".join(failed) if failed else None
