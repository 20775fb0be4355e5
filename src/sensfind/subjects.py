"""Subjects: anything that maps activations at a site to an output vector, differentiably.

A subject holds one unperturbed activation (``base``, shape ``[d]``) and a ``run`` method taking a
batch of replacement activations ``[B, d]`` to outputs ``[B, n_out]`` (next-token logits, or a late
activation). Everything downstream (scans, effects, the optimiser) only talks to this protocol.

``TransformerSubject`` wraps a TransformerLens ``HookedTransformer`` at a site (prompt, hook name,
token position). Its ``run`` is the fast path: the key/value cache of the prefix is computed once, and
each batch runs only the positions from the perturbed one onwards through the layers from the hook's
layer onwards. For GPT-2-style blocks, and while no hooks are attached to the model, those layers run
as plain fused tensor ops sharing one copy of the prefix keys/values (``_CompactStack``, checked against
TransformerLens's forward when the subject is built); otherwise TransformerLens runs them with the cache
expanded to the batch. ``run_reference`` is the slow path used as ground truth: a full forward pass of
the whole prompt with a hook that writes the perturbed activation.
"""

from __future__ import annotations

import copy
import logging
import re
from functools import partial
from typing import Callable, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

log = logging.getLogger(__name__)

__all__ = ["Subject", "FunctionSubject", "TransformerSubject", "check_acts"]

# a base whose residual norm exceeds this multiple of the median over the prompt's other positions is
# flagged as a massive activation (SmolLM2 at blocks.3: 6-8x; ordinary tokens stay within ~2x)
MASSIVE_NORM_RATIO = 3.0

_RESID_PRE = re.compile(r"^blocks\.(\d+)\.hook_resid_pre$")
_BLOCK_HOOK = re.compile(r"^blocks\.(\d+)\.")


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


def encode_bytes(text: str) -> list[int]:
    """Byte-level token ids (UTF-8 bytes) for models built locally without a tokenizer."""
    return list(text.encode("utf-8"))


def tokenize_prompt(model, prompt) -> Tensor:
    """Prompt (text, or a sequence/tensor of token ids) -> ``[1, pos]`` long tensor on the model's device."""
    device = model.cfg.device
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError("prompt is empty; give text with at least one token, or token ids")
        if model.tokenizer is not None:
            tokens = model.to_tokens(prompt)
        else:
            if model.cfg.d_vocab < 256:
                raise ValueError(
                    f"this model has no tokenizer and a vocabulary of {model.cfg.d_vocab} < 256, so text "
                    "cannot be byte-encoded; pass token ids instead"
                )
            log.info("model has no tokenizer: encoding the prompt as UTF-8 bytes (ids 0-255)")
            tokens = torch.tensor([encode_bytes(prompt)], dtype=torch.long)
    else:
        tokens = torch.as_tensor(prompt, dtype=torch.long)
        if tokens.ndim == 2 and tokens.shape[0] == 1:
            tokens = tokens[0]
        if tokens.ndim != 1:
            raise ValueError(f"token ids must be a 1-D sequence, got shape {tuple(tokens.shape)}")
        if tokens.numel() == 0:
            raise ValueError("prompt is empty; give text with at least one token, or token ids")
        bad = tokens[(tokens < 0) | (tokens >= model.cfg.d_vocab)]
        if bad.numel():
            raise ValueError(f"token id {int(bad[0])} is outside the vocabulary [0, {model.cfg.d_vocab})")
        tokens = tokens[None]
    if tokens.shape[1] > model.cfg.n_ctx:
        raise ValueError(f"prompt has {tokens.shape[1]} tokens; the model's context is {model.cfg.n_ctx}")
    return tokens.to(device)


def _hook_layer(hook: str) -> int | None:
    m = _BLOCK_HOOK.match(hook)
    return int(m.group(1)) if m else None


class TransformerSubject:
    """A site in a TransformerLens model: prompt, hook name and token position.

    Args:
        model: a ``HookedTransformer``. Its parameters are frozen (``requires_grad_(False)``): the
            subject only needs gradients with respect to the activations, and weight gradients would
            double the cost of every backward pass.
        prompt: text, or token ids. Models without a tokenizer byte-encode text.
        hook: hook name of the site, e.g. ``blocks.1.hook_resid_pre``.
        position: token position of the site (negative counts from the end).
        output_hook: ``None`` for next-token logits, or a hook name whose activation at the read-off
            position is the output (e.g. ``blocks.11.hook_resid_post``, ``ln_final.hook_normalized``).
        read_position: position the output is read at (default: last). Must not precede ``position``.
        chunk_size: largest batch run at once; bigger batches are split (bounds memory).
    """

    def __init__(
        self,
        model,
        prompt,
        hook: str = "blocks.1.hook_resid_pre",
        position: int = -1,
        output_hook: str | None = None,
        read_position: int = -1,
        chunk_size: int = 256,
    ):
        self.model = model
        model.requires_grad_(False)
        self.tokens = tokenize_prompt(model, prompt)  # [1, P]
        n_pos = self.tokens.shape[1]
        self.hook = self._check_hook(hook, "hook")
        self.output_hook = None if output_hook is None else self._check_hook(output_hook, "output_hook")
        self.position = self._check_position(position, n_pos, "position")
        self.read_position = self._check_position(read_position, n_pos, "read_position")
        if self.read_position < self.position:
            raise ValueError(
                f"read_position {self.read_position} precedes the perturbed position {self.position}; "
                "causal attention means the output there cannot change"
            )
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.chunk_size = chunk_size
        layer = _hook_layer(self.hook)
        if self.output_hook is not None:
            out_layer = _hook_layer(self.output_hook)
            if out_layer is not None and layer is not None and out_layer < layer:
                raise ValueError(
                    f"output_hook {self.output_hook!r} runs before the site {self.hook!r}; "
                    "choose a hook in a later block or ln_final"
                )
        m = _RESID_PRE.match(self.hook)
        self.layer = int(m.group(1)) if m else None
        if self.layer is None:
            log.warning(
                "fast path supports blocks.L.hook_resid_pre only; %r uses the reference path (full forward)",
                self.hook,
            )

        with torch.no_grad():
            _, cache = model.run_with_cache(self.tokens, names_filter=lambda n: n == self.hook)
            acts = cache[self.hook][0].reshape(n_pos, -1)  # [P, d]
            base = acts[self.position].detach().clone()  # [d]
            self._check_base_norm(acts.float().norm(dim=-1))
            # low-precision models keep their base (and return their outputs) in float32
            self.base = base.float() if base.dtype in (torch.bfloat16, torch.float16) else base
            if self.layer is not None:
                self._prepare_fast_path()
            self.base_output = self._run_full(self.base[None])[0].detach()  # [n_out]

    # -- construction helpers -------------------------------------------------------------
    def _check_base_norm(self, norms: Tensor) -> None:
        """Record the base's norm beside the prompt's typical norm; warn when it is an outlier.

        Some models keep a few "massive activations" (tokens whose residual norm is several times the
        others', e.g. SmolLM2's first position from ``blocks.2`` on). A sphere-mode angle around such a
        base is not comparable with one around an ordinary token.
        """
        others = torch.cat([norms[: self.position], norms[self.position + 1 :]])
        self.base_norm = float(norms[self.position])
        self.typical_norm = float(others.median()) if others.numel() else self.base_norm
        self.base_norm_outlier = bool(others.numel() >= 2 and self.base_norm > MASSIVE_NORM_RATIO * self.typical_norm)
        if self.base_norm_outlier:
            log.warning(
                "the base activation at position %d has norm %.3g, %.1fx the prompt's typical norm %.3g (massive "
                "activation): sphere-mode angles around it are not comparable with those around ordinary tokens",
                self.position, self.base_norm, self.base_norm / self.typical_norm, self.typical_norm,
            )

    def norm_info(self) -> dict:
        """The base's norm, the median norm of the prompt's other positions, and whether the base is an outlier."""
        return {"base_norm": self.base_norm, "typical_norm": self.typical_norm, "base_norm_outlier": self.base_norm_outlier}

    def _check_hook(self, hook: str, what: str) -> str:
        if hook not in self.model.hook_dict:
            n = self.model.cfg.n_layers
            raise ValueError(
                f"unknown {what} {hook!r}; this model has hook points such as "
                f"'blocks.L.hook_resid_pre' / 'blocks.L.hook_resid_post' with L in 0..{n - 1}, "
                "'ln_final.hook_normalized' (see model.hook_dict for all)"
            )
        return hook

    @staticmethod
    def _check_position(pos: int, n_pos: int, what: str) -> int:
        if not isinstance(pos, int) or isinstance(pos, bool):
            raise TypeError(f"{what} must be an int, got {type(pos).__name__}")
        if not -n_pos <= pos < n_pos:
            raise ValueError(f"{what} {pos} is out of range for a prompt of {n_pos} tokens (allowed: {-n_pos}..{n_pos - 1})")
        return pos % n_pos

    def _prepare_fast_path(self) -> None:
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

        model = self.model
        self._prefix_cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, 1)
        if self.position > 0:
            prefix = self.tokens[:, : self.position]
            # the prompt has no padding: an all-ones mask (TransformerLens needs one to fill a cache)
            model(prefix, past_kv_cache=self._prefix_cache, attention_mask=torch.ones_like(prefix), return_type=None)
        self._prefix_cache.freeze()
        _, cache = model.run_with_cache(
            self.tokens, names_filter=lambda n: n == f"blocks.{self.layer}.hook_resid_pre"
        )
        # residual stream at the hook's layer for positions after the perturbed one: [1, P - pos - 1, d]
        self._suffix = cache[f"blocks.{self.layer}.hook_resid_pre"][:, self.position + 1 :].detach().clone()

        # the compact path (plain tensor ops, shared prefix K/V) where the architecture allows it,
        # checked against TransformerLens's own forward on a few probe points before it is trusted
        self._compact = None
        reason = _compact_unsupported(model, self.layer)
        if reason is None and not _CompactStack.supports_output(self.output_hook):
            reason = f"output_hook {self.output_hook!r}"
        if reason is not None:
            log.info("compact fast path unavailable (%s); using TransformerLens's forward with a KV cache", reason)
            return
        noise = torch.randn(2, self.d, generator=torch.Generator().manual_seed(0)).to(self.base)
        probe = torch.cat([self.base[None], self.base + noise * self.base.norm() / noise.norm(dim=1, keepdim=True)])
        expected = self._run_fast(probe)
        rel_tol = 1e-3 if model.cfg.dtype in (torch.float32, torch.float64) else 5e-2
        tol = rel_tol * max(1.0, float(expected.abs().max()))
        try:
            self._compact = _CompactStack(model, self.layer, self._prefix_cache, self.output_hook)
            err = float((self._run_fast(probe) - expected).abs().max())
        except (RuntimeError, TypeError, ValueError) as exc:  # e.g. an op this dtype/device lacks
            err = f"{type(exc).__name__}: {exc}"
        if not (isinstance(err, float) and err <= tol):
            log.warning(
                "compact fast path disagrees with TransformerLens's forward on this model (%s, tolerance %.3g); "
                "using TransformerLens's forward with a KV cache",
                err,
                tol,
            )
            self._compact = None

    # -- running ---------------------------------------------------------------------------
    @property
    def d(self) -> int:
        return self.base.shape[0]

    def run(self, acts: Tensor) -> Tensor:
        """Fast path: outputs ``[B, n_out]`` for replacement activations ``[B, d]`` at the site."""
        check_acts(acts, self.d)
        if self.layer is None:
            return self.run_reference(acts)
        outs = [self._run_fast(a) for a in acts.split(self.chunk_size)]
        return outs[0] if len(outs) == 1 else torch.cat(outs)  # one chunk: no [B, n_out] copy

    def run_reference(self, acts: Tensor) -> Tensor:
        """Reference path: full forward of the whole prompt, the site's activation replaced by a hook."""
        check_acts(acts, self.d)
        return torch.cat([self._run_full(a) for a in acts.split(self.chunk_size)])

    def _expanded_cache(self, batch: int):
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
        from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry

        entries = [
            TransformerLensKeyValueCacheEntry(
                past_keys=e.past_keys.expand(batch, -1, -1, -1),
                past_values=e.past_values.expand(batch, -1, -1, -1),
                frozen=True,
            )
            for e in self._prefix_cache.entries
        ]
        mask = self._prefix_cache.previous_attention_mask.expand(batch, -1)
        return TransformerLensKeyValueCache(entries=entries, previous_attention_mask=mask, frozen=True)

    def _run_fast(self, acts: Tensor) -> Tensor:
        batch = acts.shape[0]
        dtype = self.model.cfg.dtype
        resid = torch.cat([acts[:, None, :].to(dtype), self._suffix.expand(batch, -1, -1)], dim=1)
        read = self.read_position - self.position
        if self._compact is not None and not _has_hooks(self.model):
            return self._compact(resid, read).to(self.base.dtype)
        kwargs = dict(start_at_layer=self.layer, past_kv_cache=self._expanded_cache(batch))
        return self._forward(resid, read, kwargs)

    def _run_full(self, acts: Tensor) -> Tensor:
        batch = acts.shape[0]
        dtype = self.model.cfg.dtype
        pos = self.position

        def write(act, hook):
            act = act.clone()
            act[:, pos] = acts.to(dtype)
            return act

        tokens = self.tokens.expand(batch, -1)
        with self.model.hooks(fwd_hooks=[(self.hook, write)]):
            return self._forward(tokens, self.read_position, {})

    def _forward(self, inp: Tensor, read: int, kwargs: dict) -> Tensor:
        if self.output_hook is None:
            return self.model(inp, **kwargs)[:, read].to(self.base.dtype)
        captured: list[Tensor] = []

        def capture(act, hook):
            captured.append(act[:, read].reshape(act.shape[0], -1))

        out_layer = _hook_layer(self.output_hook)
        stop = None if out_layer is None else out_layer + 1
        if stop is not None and stop >= self.model.cfg.n_layers:
            stop = None
        with self.model.hooks(fwd_hooks=[(self.output_hook, capture)]):
            self.model(inp, return_type=None, stop_at_layer=stop, **kwargs)
        return captured[0].to(self.base.dtype)

    # -- variants ----------------------------------------------------------------------------
    def to_dtype(self, dtype: torch.dtype) -> "TransformerSubject":
        """The same site on a copy of the model cast to ``dtype`` (e.g. ``torch.bfloat16``)."""
        model = copy.deepcopy(self.model)
        model.to(dtype, print_details=False)
        return TransformerSubject(
            model,
            self.tokens[0].tolist(),
            hook=self.hook,
            position=self.position,
            output_hook=self.output_hook,
            read_position=self.read_position,
            chunk_size=self.chunk_size,
        )

    def __repr__(self) -> str:
        return (
            f"TransformerSubject(hook={self.hook!r}, position={self.position}, n_tokens={self.tokens.shape[1]}, "
            f"output={'logits' if self.output_hook is None else self.output_hook!r}, "
            f"path={'fast' if self.layer is not None else 'reference'})"
        )


# -- compact fast path ----------------------------------------------------------------------------
# TransformerLens's forward pays for generality: hook points, layer norm and gelu_new as chains of
# small elementwise ops, weights rearranged (copied) on every call, W_U^T copied for every unembed,
# and a key/value cache that must be expanded and concatenated per layer for every batch. For the
# common GPT-2-style block the same maths is a handful of fused ops; the prefix keys/values are kept
# once, [H, P0, d_head], and every point's queries attend to them with one matmul per head.

_TANH_GELUS = ("gelu_new", "gelu_fast", "gelu_pytorch_tanh")
_QK_NORM_ARCHITECTURES = ("OlmoeForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM")
_RESID_POST = re.compile(r"^blocks\.(\d+)\.hook_resid_post$")


def _has_hooks(model) -> bool:
    """Whether any module of ``model`` has a hook attached (the compact path would skip it)."""
    return any(
        m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
        for m in model.modules()
    )


def _softcap_on(cap) -> bool:
    return cap is not None and cap > 0


def _compact_unsupported(model, layer: int) -> str | None:
    """Why the compact path cannot run this model from ``layer`` on, or ``None`` if it can."""
    from transformer_lens.components import MLP, Attention, LayerNorm, LayerNormPre, TransformerBlock
    from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

    cfg = model.cfg
    norms = (LayerNorm, LayerNormPre)
    checks = {
        "positional_embedding_type != 'standard'": cfg.positional_embedding_type == "standard",
        "model spread over several devices": getattr(cfg, "n_devices", 1) == 1,
        "4-bit weights": not getattr(cfg, "load_in_4bit", False),
        "non-causal attention": getattr(cfg, "attention_dir", "causal") == "causal",
        "local attention (attn_types)": getattr(cfg, "attn_types", None) is None,
        "parallel attention and MLP": not getattr(cfg, "parallel_attn_mlp", False),
        "post-norm blocks": getattr(cfg, "original_architecture", None) not in POST_NORM_ARCHITECTURES,
        "norms before and after sublayers": not getattr(cfg, "use_normalization_before_and_after", False),
        "QK norm": not getattr(cfg, "use_qk_norm", False)
        and getattr(cfg, "original_architecture", None) not in _QK_NORM_ARCHITECTURES,
        "clipped QKV": getattr(cfg, "clip_qkv", None) is None,
        "attention sinks": not getattr(cfg, "use_attention_sinks", False),
        "log-n attention scaling": not getattr(cfg, "use_logn_attn", False),
        "attention score soft cap": not _softcap_on(getattr(cfg, "attn_scores_soft_cap", None)),
        "output logit soft cap": not _softcap_on(getattr(cfg, "output_logits_soft_cap", None)),
        "grouped-query attention": getattr(cfg, "n_key_value_heads", None) in (None, cfg.n_heads),
        "layer-norm activation (SoLU-LN)": not cfg.is_layer_norm_activation(),
        "final norm is not LayerNorm / LayerNormPre": type(getattr(model, "ln_final", None)) in norms,
        "a block is not plain attention + MLP with LayerNorm": all(
            type(block) is TransformerBlock
            and type(block.attn) is Attention
            and getattr(block.attn, "_attention_dir_override", None) in (None, "causal")
            and type(block.ln1) in norms
            and (cfg.attn_only or (type(block.ln2) in norms and type(block.mlp) is MLP))
            for block in model.blocks[layer:]
        ),
    }
    failed = [reason for reason, ok in checks.items() if not ok]
    return ", ".join(failed) if failed else None


class _CompactLayer:
    """One block's weights in the layout the compact path multiplies with (views where possible)."""

    def __init__(self, block, entry, act):
        attn = block.attn
        self.n_heads, self.d_head = attn.W_Q.shape[0], attn.W_Q.shape[2]
        d = attn.W_Q.shape[1]
        self.ln1 = (getattr(block.ln1, "w", None), getattr(block.ln1, "b", None))
        # fused [d, 3·H·d_head]: the only weight copy the compact path makes
        self.w_qkv = torch.cat([w.permute(1, 0, 2).reshape(d, -1) for w in (attn.W_Q, attn.W_K, attn.W_V)], 1)
        self.b_qkv = torch.cat([attn.b_Q.reshape(-1), attn.b_K.reshape(-1), attn.b_V.reshape(-1)])
        self.w_o = attn.W_O.reshape(-1, d)  # [H·d_head, d]
        self.b_o = attn.b_O
        self.scale = attn.attn_scale
        # prefix keys/values, shared by the batch: [H, d_head, P0] and [H, P0, d_head]
        self.k_pre_t = entry.past_keys[0].permute(1, 2, 0).contiguous()
        self.v_pre = entry.past_values[0].permute(1, 0, 2).contiguous()
        self.mlp = None
        if not block.cfg.attn_only:
            self.ln2 = (getattr(block.ln2, "w", None), getattr(block.ln2, "b", None))
            self.mlp = (block.mlp.W_in, block.mlp.b_in, block.mlp.W_out, block.mlp.b_out)
        self.act = act

    def attend(self, h: Tensor) -> Tensor:  # [B, T, d] (normalised) -> [B·T, d]
        b, t, _ = h.shape
        n_heads, d_head, p0 = self.n_heads, self.d_head, self.v_pre.shape[1]
        qkv = torch.addmm(self.b_qkv, h.reshape(b * t, -1), self.w_qkv)
        q, k, v = qkv.view(b, t, 3, n_heads, d_head).permute(2, 3, 0, 1, 4).unbind(0)  # [H, B, T, d_head]
        if t == 1:
            s_new = (q * k).sum(-1, keepdim=True)  # [H, B, 1, 1]
        else:
            s_new = q @ k.transpose(-1, -2)  # [H, B, T, T]
            causal = torch.ones(t, t, dtype=torch.bool, device=h.device).triu(1)
            s_new = s_new.masked_fill(causal, float("-inf"))
        if p0:
            s_pre = (q.reshape(n_heads, b * t, d_head) @ self.k_pre_t).view(n_heads, b, t, p0)
            scores = torch.cat([s_pre, s_new], dim=-1)
        else:
            scores = s_new
        pattern = (scores / self.scale).softmax(dim=-1)  # [H, B, T, P0 + T]
        p_new = pattern[..., p0:]
        z = p_new * v if t == 1 else p_new @ v  # [H, B, T, d_head]
        if p0:
            p_pre = pattern[..., :p0].reshape(n_heads, b * t, p0)
            z = z + (p_pre @ self.v_pre).view(n_heads, b, t, d_head)
        z = z.permute(1, 2, 0, 3).reshape(b * t, n_heads * d_head)
        return torch.addmm(self.b_o, z, self.w_o)

    def __call__(self, x: Tensor, eps: float) -> Tensor:  # [B, T, d] -> [B, T, d]
        b, t, d = x.shape
        x = x + self.attend(F.layer_norm(x, (d,), *self.ln1, eps)).view(b, t, d)
        if self.mlp is None:
            return x
        w_in, b_in, w_out, b_out = self.mlp
        h = F.layer_norm(x, (d,), *self.ln2, eps).reshape(b * t, d)
        return x + torch.addmm(b_out, self.act(torch.addmm(b_in, h, w_in)), w_out).view(b, t, d)


class _CompactStack:
    """Blocks ``layer..`` of a GPT-2-style TransformerLens model (plus final norm and unembed) as
    plain tensor ops on the positions from the perturbed one onwards, ``[B, T, d]``.

    The output is read at one position: logits (``output_hook=None``), ``ln_final.hook_normalized``,
    or ``blocks.N.hook_resid_post``. Hook points are not called, so the subject uses this only while
    the model has no hooks attached. Weights and the prefix keys/values are taken from the model at
    construction, like the rest of the subject's state.
    """

    def __init__(self, model, layer: int, prefix_cache, output_hook: str | None):
        cfg = model.cfg
        self.eps = cfg.eps
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
        self.layers = []
        for i in range(layer, stop):
            block = model.blocks[i]
            block_act = act or (None if cfg.attn_only else block.mlp.act_fn)
            self.layers.append(_CompactLayer(block, prefix_cache.entries[i], block_act))
        self.ln_final = (getattr(model.ln_final, "w", None), getattr(model.ln_final, "b", None))
        self.unembed = (model.unembed.W_U, model.unembed.b_U)

    @staticmethod
    def supports_output(output_hook: str | None) -> bool:
        return output_hook in (None, "ln_final.hook_normalized") or bool(_RESID_POST.match(output_hook))

    def __call__(self, resid: Tensor, read: int) -> Tensor:  # [B, T, d] -> [B, n_out]
        x = resid
        for layer in self.layers:
            x = layer(x, self.eps)
        x = x[:, read]
        d = x.shape[-1]
        if self.final == "resid":
            return x
        if self.final == "normalized":
            return F.layer_norm(x, (d,), None, None, self.eps)
        w_u, b_u = self.unembed
        return torch.addmm(b_u, F.layer_norm(x, (d,), *self.ln_final, self.eps), w_u)
