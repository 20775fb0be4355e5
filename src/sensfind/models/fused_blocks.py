"""The compact fast path: the blocks from a layer onwards as a handful of fused tensor ops.

TransformerLens's forward pays for generality: hook points, norms and activations as chains of small
elementwise ops, weights rearranged (copied) on every call, ``W_U`` copied for every unembedding, and a
key/value cache that must be expanded to the batch and concatenated per layer on every call. For the
pre-norm attention + MLP block the same maths is a few fused ops per layer, with the prefix keys and
values kept once and shared by every point of the batch.

One implementation covers the block families TransformerLens builds for GPT-2-, Llama- and Gemma-3-style models
(:class:`BlockFamily`):

- norm: ``LN`` (LayerNorm), ``LNPre`` (LayerNorm without weights), ``RMS``, ``RMSPre``;
- positions: ``standard`` (absolute, added to the embedding: nothing to do here) or ``rotary``, applied
  to the new queries/keys at their absolute positions; the prefix keys are rotated once at
  construction (TransformerLens caches keys *before* rotary and rotates them on every call);
- attention grouping: ``n_kv_heads`` key/value heads shared by ``n_heads / n_kv_heads`` query heads
  each (grouped-query attention), without repeating the keys/values: the queries of a group are
  stacked as rows, ``[kv_heads, group·B·T, d_head] @ [kv_heads, d_head, P0]``;
- MLP: plain (``act(x W_in + b_in) W_out``) or gated (``(act(x W_gate) * x W_in + b_in) W_out``) with
  one fused ``[d, 2·d_mlp]`` gate/up projection;
- Gemma 3: norms after the attention and MLP outputs too (``ln1_post``, ``ln2_post``), per-head RMS norms
  on queries and keys before rotary (the one-position fold is then off: the scores are not linear in the
  input), and local layers whose keys at positions ``<= query - window_size`` are masked (each layer
  takes its rotary tables, and so its base, from its own attention).

Each block has one fused ``[d, (H + 2·H_kv)·d_head]`` query/key/value projection with the norm's weight
(and LayerNorm's bias) folded in, and the MLP's gate and up projections likewise. When a call runs one
position (the perturbed token is the last, the common case) after a short prefix, the attention is
folded further (see ``_Layer``): per call it is three matrix products, the new key's scores, one
softmax over ``P0 + 1`` keys and the new value (about 10% more points/s on SmolLM2 than the unfolded
layer, same process and machine; see the README's benchmarks). Low-precision models (bfloat16, float16)
multiply in their own dtype but keep the residual stream, norms and softmax in float32.

:class:`CompactStack` runs the positions from the perturbed one onwards, ``[B, T, d]``, and returns one
position's output. Hook points are not called, so it must only run while the model has no hooks
attached (:func:`has_hooks`). :func:`unsupported` says why a model cannot take this path; the subject
checks the stack against TransformerLens's forward before trusting it. The block families and these
checks live in :mod:`sensfind.models.blocks`.
"""

from __future__ import annotations

import re
import weakref
from collections import OrderedDict
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

from sensfind.models.blocks import BlockFamily, Norm, block_family, has_hooks, norm_kind, unsupported

__all__ = ["BlockFamily", "CompactStack", "block_family", "has_hooks", "unsupported"]

_TANH_GELUS = ("gelu_new", "gelu_fast", "gelu_pytorch_tanh")
_RESID_POST = re.compile(r"^blocks\.(\d+)\.hook_resid_post$")
_LOW_PRECISION = (torch.bfloat16, torch.float16)

# One new position with a prefix of P0 tokens: the prefix's scores and values are folded into the
# projections while the extra multiply-adds stay within this fraction of the block's matrix FLOPs (about
# 38 prefix tokens for SmolLM2, 42 for GPT-2); longer prefixes take the general path.
FOLD_PREFIX_BUDGET = 0.1

# derived weights (fused, with the norm's weight folded in, rotated for one position), shared by every
# stack built on the same model while their source parameters are unchanged (a SmolLM2 stack would
# otherwise copy ~270 MB per subject): model -> {name: (stamp, tensors)}, least recently used first,
# bounded by the model's own parameter bytes (position-specific entries would otherwise pile up)
_DERIVED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _derived(model, name: str, params: tuple[Tensor | None, ...], build) -> tuple[Tensor | None, ...]:
    """``build()`` (a tuple of tensors made from ``params``), cached per model until a parameter changes."""
    stamp = tuple(
        None if t is None else (t.data_ptr(), t._version, t.dtype, t.device, tuple(t.shape)) for t in params
    )
    cache = _DERIVED.setdefault(model, OrderedDict())
    hit = cache.get(name)
    if hit is not None and hit[0] == stamp:
        cache.move_to_end(name)
        return hit[1]
    with torch.no_grad():
        value = tuple(build())
    cache[name] = (stamp, value)
    cache.move_to_end(name)
    budget = sum(p.numel() * p.element_size() for p in model.parameters())
    size = lambda entry: sum(t.numel() * t.element_size() for t in entry[1] if t is not None)  # noqa: E731
    total = sum(size(e) for e in cache.values())
    while total > budget and len(cache) > 1:
        _, evicted = cache.popitem(last=False)
        total -= size(evicted)
    return value


def _columns(t: Tensor) -> Tensor:
    """``[H, d, d_head]`` weights as ``[d, H·d_head]``; ``[H, d_head]`` biases flattened."""
    if t.ndim == 3:
        return t.permute(1, 0, 2).reshape(t.shape[1], -1)
    return t.reshape(-1)


def _fold_norm(w: Tensor, b: Tensor | None, norm: tuple[Tensor | None, Tensor | None]) -> tuple[Tensor, Tensor | None]:
    """``(x·γ + β) @ w + b`` as ``x @ w' + b'``: the norm's weight ``γ`` and bias ``β`` folded into a
    ``[d, n]`` matrix."""
    gamma, beta = norm
    if beta is not None:
        shift = beta.to(w) @ w
        b = shift if b is None else b + shift
    if gamma is not None:
        w = gamma.to(w)[:, None] * w
    return w, b


def _nonzero(b: Tensor | None) -> Tensor | None:
    return None if b is None or not bool(b.any()) else b


def _linear(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    return x @ w if b is None else torch.addmm(b, x, w)


# -- the maths ----------------------------------------------------------------------------------------
def _normalize(x: Tensor, kind: Norm, w: Tensor | None, b: Tensor | None, eps: float) -> Tensor:
    """TransformerLens's LayerNorm / LayerNormPre / RMSNorm / RMSNormPre over the last dimension.

    RMS: ``x / sqrt(mean(x²) + eps)`` through one fused norm reduction, which is about a third cheaper
    forward and backward than ``F.rms_norm``'s square-mean-rsqrt chain on CPU."""
    if kind in ("LN", "LNPre"):
        return F.layer_norm(x, (x.shape[-1],), w, b, eps)
    ms = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square() / x.shape[-1]
    x = x * (ms + eps).rsqrt()
    return x if w is None else x * w


def _rotary_tables(attn, positions: Tensor, d_head: int) -> tuple[Tensor, Tensor, Tensor | int]:
    """``cos, sin`` ``[T, d_head]`` and a permutation ``[d_head]`` such that, for one head's vector
    ``x`` at those positions, TransformerLens's rotary is ``x * cos + x[..., perm] * sin``. The common
    case (pairs ``(i, i + d_head/2)`` over the whole head) returns the shift ``d_head/2`` instead, a roll.

    Dimensions past ``rotary_dim`` pass through (cos 1, sin 0). The sign of ``rotate_every_two`` is
    folded into ``sin``. Taken from the attention's own sin/cos buffers, so scaled variants (NTK by
    parts, YaRN, linear) come for free.
    """
    cfg = attn.cfg
    rdim = cfg.rotary_dim
    need = int(positions.max()) + 1
    if need > attn.rotary_cos.shape[0]:
        attn._extend_rotary_embeddings(min(cfg.n_ctx, max(need, 2 * attn.rotary_cos.shape[0])))
    cos = attn.rotary_cos[positions]  # [T, rdim]
    sin = attn.rotary_sin[positions]
    idx = torch.arange(rdim, device=positions.device)
    if cfg.rotary_adjacent_pairs:  # pairs (0, 1), (2, 3), ...: x_flip = [-x1, x0, -x3, x2, ...]
        perm, sign = idx ^ 1, torch.where(idx % 2 == 0, -1.0, 1.0)
    else:  # pairs (i, i + rdim/2): x_flip = [-x_hi, x_lo]
        half = rdim // 2
        perm, sign = (idx + half) % rdim, torch.where(idx < half, -1.0, 1.0)
    sin = sin * sign.to(sin)
    if rdim < d_head:
        rest = d_head - rdim
        cos = torch.cat([cos, cos.new_ones(cos.shape[0], rest)], dim=-1)
        sin = torch.cat([sin, sin.new_zeros(sin.shape[0], rest)], dim=-1)
        perm = torch.cat([perm, torch.arange(rdim, d_head, device=positions.device)])
    elif not cfg.rotary_adjacent_pairs:
        perm = rdim // 2
    return cos, sin, perm


def _rotate(x: Tensor, cos: Tensor, sin: Tensor, perm: Tensor | int) -> Tensor:
    flipped = torch.roll(x, perm, dims=-1) if isinstance(perm, int) else x[..., perm]
    return x * cos + flipped * sin


class _Layer:
    """One block's weights in the layout the compact path multiplies with, and the shared prefix K/V.

    The norms' weights (and LayerNorm's bias) are folded into the matrices that follow them. When each
    call runs one position (``n_new == 1``, the common case: the perturbed token is the last) and the
    prefix is short, the rest of the attention is folded too: the rotary rotation at that position and
    the ``1/√d_head`` scale into the query/key columns, the scores against the prefix keys into a
    ``[d, H·P0]`` matrix applied to the normalised input, and the prefix values times ``W_O`` into a
    ``[H·P0, d]`` matrix applied to the attention pattern. What is left per call is three matrix
    products, the new key's scores, one softmax and the new value.
    """

    def __init__(self, model, index: int, entry, family: BlockFamily, act, p_new: int, work_dtype: torch.dtype):
        block = model.blocks[index]
        attn = block.attn
        cfg = block.cfg
        self.family = family
        d, self.d_head = attn.W_Q.shape[1], attn.W_Q.shape[2]
        dtype = attn.W_Q.dtype
        self.work_dtype = work_dtype  # residual stream, norms, softmax
        self.act = act
        # grouped-query attention keeps H_kv key/value heads in _W_K/_W_V (W_K/W_V repeat them)
        grouped = hasattr(attn, "_W_K")
        w_k, w_v = (attn._W_K, attn._W_V) if grouped else (attn.W_K, attn.W_V)
        b_k, b_v = (attn._b_K, attn._b_V) if grouped else (attn.b_K, attn.b_V)
        ln1 = (getattr(block.ln1, "w", None), getattr(block.ln1, "b", None))
        qkv_params = (attn.W_Q, w_k, w_v, attn.b_Q, b_k, b_v, *ln1)
        n_q = family.n_heads * self.d_head
        qk_width = n_q + family.n_kv_heads * self.d_head

        keys, values = entry.past_keys[0], entry.past_values[0]  # [P0, H_kv, d_head], pre-rotary
        p0 = keys.shape[0]
        mlp_flops = 0 if cfg.attn_only else (3 if family.gated else 2) * d * cfg.d_mlp
        block_flops = 2 * (d * (n_q + 2 * family.n_kv_heads * self.d_head) + n_q * d + mlp_flops)
        # folding the prefix costs d instead of d_head multiply-adds per head, prefix position and side
        # local (sliding-window) attention: keys at positions <= query - window are masked
        self.window = cfg.window_size if getattr(attn, "attn_type", "global") == "local" else None
        windowed = self.window is not None and p0 + p_new > self.window
        # per-head QK norms sit between the projection and the rotation: the scores cannot be folded
        self.single = (p_new == 1 and not family.qk_norm and not windowed
                       and 4 * family.n_heads * p0 * (d - self.d_head) <= FOLD_PREFIX_BUDGET * block_flops)
        self.eps = cfg.eps
        self.qk_norm = (attn.q_norm.w, attn.k_norm.w) if family.qk_norm else None
        # Gemma's norms after the sublayers: (kind, weight, bias) of ln1_post and ln2_post
        post = lambda ln: (norm_kind(ln), getattr(ln, "w", None), getattr(ln, "b", None))  # noqa: E731
        self.post_attn = post(block.ln1_post) if family.post_norms else None
        self.post_mlp = post(block.ln2_post) if family.post_norms and not cfg.attn_only else None
        self.mask = None  # [T·group, P0 + T] allowed keys, where the window cuts
        if windowed:
            q_pos = torch.arange(p0, p0 + p_new, device=keys.device).repeat_interleave(family.group)[:, None]
            k_pos = torch.arange(p0 + p_new, device=keys.device)[None, :]
            self.mask = (k_pos <= q_pos) & (k_pos > q_pos - self.window)

        rotary = None
        if family.positions == "rotary":
            device = keys.device
            cos, sin, perm = _rotary_tables(attn, torch.arange(p0 + p_new, device=device), self.d_head)
            if p0:
                keys = _rotate(keys, cos[:p0, None], sin[:p0, None], perm)
            rotary = (cos[p0:], sin[p0:], perm)  # [T, d_head] for the new positions

        def fused_qkv(at: int | None):
            """``[d, (H + 2·H_kv)·d_head]`` with the norm folded in; with ``at``, rotated for that
            position and the queries scaled by ``1/attn_scale`` (float64 arithmetic, then the model's dtype)."""
            w = torch.cat([_columns(t) for t in (attn.W_Q, w_k, w_v)], dim=1).double()
            b = torch.cat([_columns(t) for t in (attn.b_Q, b_k, b_v)]).double()
            w, b = _fold_norm(w, b, ln1)
            if at is not None:
                heads = lambda t: t.view(*t.shape[:-1], -1, self.d_head)  # noqa: E731
                qk_w, qk_b = heads(w[:, :qk_width]), heads(b[:qk_width])
                if rotary is not None:
                    cos, sin, perm = (rotary[0][at].double(), rotary[1][at].double(), rotary[2])
                    qk_w.copy_(_rotate(qk_w, cos, sin, perm))
                    qk_b.copy_(_rotate(qk_b, cos, sin, perm))
                w[:, :n_q] /= attn.attn_scale
                b[:n_q] /= attn.attn_scale
            return w.to(dtype), _nonzero(b.to(dtype))

        if self.single:
            position = p0  # absolute position of the one new token
            self.w_qkv, self.b_qkv = _derived(model, f"{index}.qkv@{position}", qkv_params, lambda: fused_qkv(0))
            self.rotary = None
            self.prefix = self._fold_prefix(attn, keys, values, dtype) if p0 else None
        else:
            self.w_qkv, self.b_qkv = _derived(model, f"{index}.qkv", qkv_params, lambda: fused_qkv(None))
            self.rotary = None if rotary is None else (rotary[0][:, None], rotary[1][:, None], rotary[2])
            self.scale = attn.attn_scale
            # prefix keys/values, shared by the batch: [H_kv, d_head, P0], [H_kv, P0, d_head]
            self.k_pre_t = keys.permute(1, 2, 0).contiguous()
            self.v_pre = values.permute(1, 0, 2).contiguous()
        self.p0 = p0
        self.w_o = attn.W_O.reshape(-1, d)  # [H·d_head, d]
        self.b_o = _nonzero(attn.b_O)

        self.mlp = None
        if not cfg.attn_only:
            mlp = block.mlp
            ln2 = (getattr(block.ln2, "w", None), getattr(block.ln2, "b", None))
            # [d, d_mlp] each, the norm folded in. Gate and up stay two products: one fused [d, 2·d_mlp]
            # product costs a [B, 2·d_mlp] concatenation of their gradients in the backward, which is
            # slower on CPU than the second product. A gated MLP's b_in is added after the gating.
            def fold(w, b):
                w, b = _fold_norm(w.double(), None if b is None else b.double(), ln2)
                return w.to(dtype), _nonzero(None if b is None else b.to(dtype))

            if family.gated:
                w_gate, c_gate = _derived(model, f"{index}.mlp_gate", (mlp.W_gate, *ln2), lambda: fold(mlp.W_gate, None))
                w_up, c_up = _derived(model, f"{index}.mlp_up", (mlp.W_in, *ln2), lambda: fold(mlp.W_in, None))
                self.mlp = (w_gate, c_gate, w_up, c_up, _nonzero(mlp.b_in), mlp.W_out, _nonzero(mlp.b_out))
            else:
                w_in, c_in = _derived(model, f"{index}.mlp_in", (mlp.W_in, mlp.b_in, *ln2), lambda: fold(mlp.W_in, mlp.b_in))
                self.mlp = (w_in, c_in, None, None, None, mlp.W_out, _nonzero(mlp.b_out))

    def _fold_prefix(self, attn, keys: Tensor, values: Tensor, dtype) -> tuple[Tensor, Tensor | None, Tensor]:
        """The prefix's part of the attention for one new position: scores ``x @ m + c`` ``[d, H·P0]``
        (from the folded, rotated, scaled query columns and the rotated prefix keys) and the output of
        the prefix values ``pattern @ vo`` ``[H·P0, d]``."""
        fam, dh = self.family, self.d_head
        p0 = keys.shape[0]
        n_q = fam.n_heads * dh
        w_q = self.w_qkv[:, :n_q].double().view(-1, fam.n_kv_heads, fam.group, dh)  # [d, H_kv, g, dh]
        k = keys.double().permute(1, 0, 2)  # [H_kv, P0, dh]
        m = torch.einsum("dkge,kpe->dkgp", w_q, k).reshape(w_q.shape[0], -1)  # column h·P0 + i
        c = None
        if self.b_qkv is not None:
            b_q = self.b_qkv[:n_q].double().view(fam.n_kv_heads, fam.group, dh)
            c = _nonzero(torch.einsum("kge,kpe->kgp", b_q, k).reshape(-1).to(dtype))
        w_o = attn.W_O.double().view(fam.n_kv_heads, fam.group, dh, -1)  # [H_kv, g, dh, d]
        vo = torch.einsum("kpe,kged->kgpd", values.double().permute(1, 0, 2), w_o).reshape(-1, w_o.shape[-1])
        return m.to(dtype), c, vo.to(dtype)

    def attend_single(self, h: Tensor) -> Tensor:  # [B, d] (normalised, weight dtype) -> [B, d]
        fam = self.family
        b, n_kv, group, d_head, p0 = h.shape[0], fam.n_kv_heads, fam.group, self.d_head, self.p0
        qkv = _linear(h, self.w_qkv, self.b_qkv)  # queries rotated and scaled, keys rotated
        q, k, v = qkv.split([fam.n_heads * d_head, n_kv * d_head, n_kv * d_head], dim=1)
        q = q.view(b, n_kv, group, d_head)  # head h = kv·group + j
        s_new = (q * k.view(b, n_kv, 1, d_head)).sum(-1, keepdim=True)  # [B, H_kv, g, 1]
        if p0:
            m, c, vo = self.prefix
            scores = torch.cat([_linear(h, m, c).view(b, n_kv, group, p0), s_new], dim=-1)
        else:
            scores = s_new
        pattern = scores.to(self.work_dtype).softmax(dim=-1).to(v.dtype)  # [B, H_kv, g, P0 + 1]
        z = (pattern[..., p0:] * v.view(b, n_kv, 1, d_head)).view(b, fam.n_heads * d_head)
        out = _linear(z, self.w_o, self.b_o)
        if p0:
            out = torch.addmm(out, pattern[..., :p0].reshape(b, fam.n_heads * p0), vo)
        return out

    def attend(self, h: Tensor) -> Tensor:  # [B, T, d] (normalised, weight dtype) -> [B·T, d]
        fam = self.family
        b, t, _ = h.shape
        n_kv, group, d_head, p0 = fam.n_kv_heads, fam.group, self.d_head, self.v_pre.shape[1]
        qkv = _linear(h.reshape(b * t, -1), self.w_qkv, self.b_qkv)  # [B·T, (H + 2·H_kv)·d_head]
        qk, v = qkv.split([(fam.n_heads + n_kv) * d_head, n_kv * d_head], dim=1)
        qk = qk.view(b, t, fam.n_heads + n_kv, d_head)
        if self.qk_norm is not None:  # RMS norm per head, queries and keys with their own weights
            q, k = qk.split([fam.n_heads, n_kv], dim=2)
            q = _normalize(q.to(self.work_dtype), "RMS", self.qk_norm[0], None, self.eps)
            k = _normalize(k.to(self.work_dtype), "RMS", self.qk_norm[1], None, self.eps)
            qk = torch.cat([q, k], dim=2).to(qkv.dtype)
        if self.rotary is not None:
            qk = _rotate(qk, *self.rotary)
        # queries grouped by their key/value head: [H_kv, B, T·group, d_head] (rows t·group + j)
        q = qk[:, :, : fam.n_heads].reshape(b, t, n_kv, group, d_head).permute(2, 0, 1, 3, 4)
        q = q.reshape(n_kv, b, t * group, d_head)
        k = qk[:, :, fam.n_heads :].permute(2, 0, 1, 3)  # [H_kv, B, T, d_head]
        v = v.view(b, t, n_kv, d_head).permute(2, 0, 1, 3)  # [H_kv, B, T, d_head]
        if t == 1:
            s_new = (q * k).sum(-1, keepdim=True)  # [H_kv, B, group, 1]
        else:
            s_new = q @ k.transpose(-1, -2)  # [H_kv, B, T·group, T]
            if self.mask is None:
                rows = torch.arange(t, device=h.device).repeat_interleave(group)
                causal = torch.arange(t, device=h.device)[None, :] > rows[:, None]
                s_new = s_new.masked_fill(causal, float("-inf"))
        if p0:
            s_pre = (q.reshape(n_kv, b * t * group, d_head) @ self.k_pre_t).view(n_kv, b, t * group, p0)
            scores = torch.cat([s_pre, s_new], dim=-1)
        else:
            scores = s_new
        if self.mask is not None:  # causal and sliding window together
            scores = scores.masked_fill(~self.mask, float("-inf"))
        pattern = (scores.to(self.work_dtype) / self.scale).softmax(dim=-1).to(v.dtype)  # [H_kv, B, T·g, P0+T]
        p_new = pattern[..., p0:]
        z = p_new * v if t == 1 else p_new @ v  # [H_kv, B, T·group, d_head]
        if p0:
            p_pre = pattern[..., :p0].reshape(n_kv, b * t * group, p0)
            z = z + (p_pre @ self.v_pre).view(n_kv, b, t * group, d_head)
        # back to head order h = kv·group + j: [B·T, H·d_head]
        z = z.view(n_kv, b, t, group, d_head).permute(1, 2, 0, 3, 4).reshape(b * t, fam.n_heads * d_head)
        return _linear(z, self.w_o, self.b_o)

    def __call__(self, x: Tensor, eps: float) -> Tensor:  # [B, T, d] (work dtype) -> [B, T, d]
        b, t, d = x.shape
        dtype = self.w_qkv.dtype
        h = _normalize(x, self.family.norm, None, None, eps).to(dtype)
        out = self.attend_single(h.view(b, d)) if self.single else self.attend(h)
        x = x + self._post(out, self.post_attn, eps).view(b, t, d)
        if self.mlp is None:
            return x
        w_in, c_in, w_up, c_up, b_in, w_out, b_out = self.mlp
        h = _normalize(x, self.family.norm, None, None, eps).to(dtype).reshape(b * t, d)
        post = self.act(_linear(h, w_in, c_in))
        if w_up is not None:  # gated: act(x W_gate) * x W_in + b_in
            post = post * _linear(h, w_up, c_up)
            if b_in is not None:
                post = post + b_in
        return x + self._post(_linear(post, w_out, b_out), self.post_mlp, eps).view(b, t, d)

    def _post(self, out: Tensor, norm, eps: float) -> Tensor:  # [N, d] -> [N, d] (work dtype)
        """A sublayer's output, normalised by its post-norm where the block has one (Gemma)."""
        out = out.to(self.work_dtype)
        return out if norm is None else _normalize(out, norm[0], norm[1], norm[2], eps)


class CompactStack:
    """Blocks ``layer..`` of a TransformerLens model (plus final norm and unembedding) as plain tensor
    ops on the positions from the perturbed one onwards, ``[B, T, d] -> [B, n_out]``.

    Args:
        model: a ``HookedTransformer`` that :func:`unsupported` accepts.
        layer: first block to run.
        prefix_cache: TransformerLens's key/value cache of the positions before the perturbed one
            (batch 1); its keys are pre-rotary, as TransformerLens stores them.
        n_new: how many positions each call runs (the perturbed one and those after it), ``T``.
        output_hook: ``None`` (logits), ``ln_final.hook_normalized`` or ``blocks.N.hook_resid_post``,
            read at one position.

    Weights and the prefix keys/values are taken from the model at construction.
    """

    def __init__(self, model, layer: int, prefix_cache, n_new: int, output_hook: str | None = None):
        cfg = model.cfg
        if not self.supports_output(output_hook):
            raise ValueError(
                f"output_hook {output_hook!r} is not supported by the compact path "
                "(allowed: None, 'ln_final.hook_normalized', 'blocks.N.hook_resid_post')"
            )
        self.family = block_family(model)
        self.eps = cfg.eps
        self.dtype = cfg.dtype
        self.work_dtype = torch.float32 if cfg.dtype in _LOW_PRECISION else cfg.dtype
        stop, self.final = cfg.n_layers, "logits"
        if output_hook == "ln_final.hook_normalized":
            self.final = "normalized"
        elif output_hook is not None:
            stop, self.final = int(_RESID_POST.match(output_hook).group(1)) + 1, "resid"
        # fused kernels for the common activations (TransformerLens spells gelu_new out op by op)
        if cfg.act_fn in _TANH_GELUS:
            act = partial(F.gelu, approximate="tanh")
        else:
            act = {"gelu": F.gelu, "relu": F.relu, "silu": F.silu}.get(cfg.act_fn)
        self.layers = [
            _Layer(
                model,
                i,
                prefix_cache.entries[i],
                self.family,
                act or (None if cfg.attn_only else model.blocks[i].mlp.act_fn),
                n_new,
                self.work_dtype,
            )
            for i in range(layer, stop)
        ]
        w = getattr(model.ln_final, "w", None)
        b = getattr(model.ln_final, "b", None)
        self.ln_final = tuple(None if t is None else t.to(self.work_dtype) for t in (w, b))
        self.unembed = (model.unembed.W_U, _nonzero(model.unembed.b_U))

    @staticmethod
    def supports_output(output_hook: str | None) -> bool:
        return output_hook in (None, "ln_final.hook_normalized") or bool(_RESID_POST.match(output_hook))

    def __call__(self, resid: Tensor, read: int) -> Tensor:  # [B, T, d] -> [B, n_out]
        x = resid.to(self.work_dtype)
        for layer in self.layers:
            x = layer(x, self.eps)
        x = x[:, read]
        if self.final == "resid":
            return x
        if self.final == "normalized":
            return _normalize(x, self.family.norm, None, None, self.eps)
        w_u, b_u = self.unembed
        return _linear(_normalize(x, self.family.norm, *self.ln_final, self.eps).to(self.dtype), w_u, b_u)
