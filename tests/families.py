"""Tiny random TransformerLens models of each block family the compact path covers (for the kernel and
block-family tests)."""

import torch

# tiny models of each family the kernel covers: (norm, positions, grouping, MLP)
FAMILIES = {
    "llama": dict(normalization_type="RMS", positional_embedding_type="rotary", rotary_adjacent_pairs=False,
                  n_key_value_heads=2, gated_mlp=True, act_fn="silu", final_rms=True),
    "neox-partial-rotary": dict(normalization_type="LN", positional_embedding_type="rotary",
                                rotary_adjacent_pairs=True, rotary_dim=8, act_fn="gelu_new"),
    "rmspre-gqa-plain": dict(normalization_type="RMSPre", positional_embedding_type="rotary",
                             rotary_adjacent_pairs=False, n_key_value_heads=1, act_fn="gelu", final_rms=True),
    "gpt2": dict(normalization_type="LN", positional_embedding_type="standard", act_fn="gelu_new"),
}
# a tiny Gemma 3: pre- and post-norms, per-head QK norms, one key/value head, GeGLU, local layers with a
# 4-token window (shorter than a 10-token prompt, so the window cuts) and their own rotary base
GEMMA3_TINY = dict(normalization_type="RMS", positional_embedding_type="rotary", rotary_adjacent_pairs=False,
                   n_key_value_heads=1, gated_mlp=True, act_fn="gelu_pytorch_tanh", final_rms=True,
                   use_normalization_before_and_after=True, use_qk_norm=True, use_local_attn=True,
                   attn_types=["local", "global", "local"], window_size=4, rotary_base_local=1e4,
                   original_architecture="Gemma3ForCausalLM")


def tiny_model(dtype=torch.float64, seed=0, **overrides):
    """A 3-layer random model; norm weights and all biases random too, so every term is exercised."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    kw = dict(n_layers=3, d_model=64, d_head=16, n_heads=4, d_mlp=96, d_vocab=512, n_ctx=64, rotary_dim=16,
              rotary_base=1e5, seed=seed, dtype=dtype, device="cpu")
    kw.update(overrides)
    model = HookedTransformer(HookedTransformerConfig(**kw))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith((".b", ".w")) or ".b_" in name or "._b_" in name:
                base = 1.0 if name.endswith(".w") else 0.0
                p.copy_(base + 0.2 * torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype))
    return model.eval()
