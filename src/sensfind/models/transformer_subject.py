"""The TransformerLens subject: a ``HookedTransformer`` at a site, and prompt tokenisation.

``TransformerSubject`` wraps a TransformerLens ``HookedTransformer`` at a site (prompt, hook name,
token position). Its ``run`` is the fast path: the key/value cache of the prefix is computed once, and
each batch runs only the positions from the perturbed one onwards through the layers from the hook's
layer onwards. For the pre-norm block families of GPT-2- and Llama-style models, and while no hooks are
attached to the model, those layers run as plain fused tensor ops sharing one copy of the prefix
keys/values (:class:`sensfind.models.fused_blocks.CompactStack`, checked against TransformerLens's forward when the
subject is built); otherwise TransformerLens runs them with the cache expanded to the batch, and the
fallback is announced once at WARNING level. ``run_reference`` is the slow path used as ground truth: a full forward pass of
the whole prompt with a hook that writes the perturbed activation.
"""

from __future__ import annotations

import copy
import logging
import re

import torch
from torch import Tensor

from sensfind.models.fused_blocks import CompactStack
from sensfind.models.blocks import has_hooks, unsupported
from sensfind.core.subject import check_acts

log = logging.getLogger(__name__)

__all__ = ["TransformerSubject", "tokenize_prompt", "encode_bytes", "required_bos", "MASSIVE_NORM_RATIO"]

# a base whose residual norm exceeds this multiple of the median over the prompt's other positions is
# flagged as a massive activation (SmolLM2 at blocks.3: 6-8x; ordinary tokens stay within ~2x)
MASSIVE_NORM_RATIO = 3.0

_RESID_PRE = re.compile(r"^blocks\.(\d+)\.hook_resid_pre$")
_BLOCK_HOOK = re.compile(r"^blocks\.(\d+)\.")
_FALLBACKS_ANNOUNCED: set[str] = set()  # why the compact path was unavailable, announced once each


def encode_bytes(text: str) -> list[int]:
    """Byte-level token ids (UTF-8 bytes) for models built locally without a tokenizer."""
    return list(text.encode("utf-8"))


def required_bos(model) -> int | None:
    """The BOS token id when the model's own tokenizer starts every text with it (Gemma: 2; not GPT-2 or
    SmolLM2, whose tokenizers add none), else ``None``."""
    tok = getattr(model, "tokenizer", None)
    cfg = model.cfg
    if tok is None or not cfg.tokenizer_prepends_bos or not cfg.default_prepend_bos:
        return None
    return getattr(tok, "bos_token_id", None)


def tokenize_prompt(model, prompt) -> Tensor:
    """Prompt (text, or a sequence/tensor of token ids) -> ``[1, pos]`` long tensor on the model's device.

    Text is tokenized by the model (``to_tokens``, with the BOS token where the model's config prepends
    one). Token ids are taken as given, except that for a model whose tokenizer starts every text with a
    BOS token (:func:`required_bos`: Gemma) ids that do not start with it get it prepended, so that corpus
    windows see the context the model was trained with (positions then count the BOS)."""
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
        bos = required_bos(model)
        if bos is not None and int(tokens[0]) != bos:  # as the model's tokenizer would start the text
            tokens = torch.cat([tokens.new_tensor([bos]), tokens])
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

        with torch.no_grad():
            _, cache = model.run_with_cache(self.tokens, names_filter=lambda n: n in (self.hook, self.output_hook))
            self._check_site_shape(cache[self.hook], n_pos, "hook")
            if self.output_hook is not None:
                self._check_site_shape(cache[self.output_hook], n_pos, "output_hook")
            if self.layer is None:
                log.warning(
                    "fast path supports blocks.L.hook_resid_pre only; %r uses the reference path (full forward)",
                    self.hook,
                )
            acts = cache[self.hook][0].reshape(n_pos, -1)  # [P, d]
            base = acts[self.position].detach().clone()  # [d]
            self._check_base_norm(acts.float().norm(dim=-1))
            # low-precision models keep their base (and return their outputs) in float32
            self.base = base.float() if base.dtype in (torch.bfloat16, torch.float16) else base
            if self.layer is not None:
                self._prepare_fast_path()
            self.base_output = self._run_full(self.base[None])[0].detach()  # [n_out]

    # -- construction helpers -------------------------------------------------------------
    def _check_site_shape(self, acts: Tensor, n_pos: int, what: str) -> None:
        """The site (and the output hook) must hold one vector per token position (``[1, P, d]``), like the
        residual stream; attention patterns (``[1, heads, P, P]``) and per-head activations
        (``[1, P, heads, d_head]``) cannot be perturbed as a direction or read as an output."""
        if acts.ndim != 3 or acts.shape[:2] != (1, n_pos):
            name = self.hook if what == "hook" else self.output_hook
            raise ValueError(
                f"{what} {name!r} gives activations of shape {list(acts.shape)}, not one vector per token "
                f"position ([1, {n_pos}, d]); choose a residual-stream hook such as blocks.1.hook_resid_pre "
                "(or blocks.L.hook_resid_mid, hook_resid_post, hook_attn_out, hook_mlp_out)"
            )

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
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache  # lazy: TransformerLens takes seconds to import

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
        reason = unsupported(model, self.layer)
        if reason is None and not CompactStack.supports_output(self.output_hook):
            reason = f"output_hook {self.output_hook!r}"
        if reason is not None:
            level = logging.INFO if reason in _FALLBACKS_ANNOUNCED else logging.WARNING
            _FALLBACKS_ANNOUNCED.add(reason)
            log.log(level, "compact fast path unavailable (%s); using TransformerLens's forward with a KV cache "
                    "(slower)", reason)
            return
        noise = torch.randn(2, self.d, generator=torch.Generator().manual_seed(0)).to(self.base)
        probe = torch.cat([self.base[None], self.base + noise * self.base.norm() / noise.norm(dim=1, keepdim=True)])
        expected = self._run_fast(probe)
        # in bf16/fp16 TransformerLens's own forward is no exact reference: on Gemma 3 with random tokens it
        # errs by 1.4 (6% of the largest logit) against float32 where the compact path errs by 0.7; a wrong
        # architecture errs by the size of the logits, so 10% still tells the two apart
        rel_tol = 1e-3 if model.cfg.dtype in (torch.float32, torch.float64) else 0.1
        tol = rel_tol * max(1.0, float(expected.abs().max()))
        try:
            n_new = self.tokens.shape[1] - self.position
            self._compact = CompactStack(model, self.layer, self._prefix_cache, n_new, self.output_hook)
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
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache  # lazy: TransformerLens takes seconds to import
        from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry  # lazy: TransformerLens takes seconds to import

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
        if self._compact is not None and not has_hooks(self.model):
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
