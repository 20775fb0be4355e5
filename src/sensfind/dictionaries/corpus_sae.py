"""An SAE for a model's site, trained with SAELens on activations of the offline corpus, and its quality.

- :func:`window_activations` runs windows of tokens up to the site: ``[n, pos, d]``, every position.
- :func:`clean_activations` keeps those whose norm is not an outlier (massive activations: the first
  position of a window, the attention sink, and any position whose norm exceeds ``max_norm_ratio``
  times the median, :func:`massive_positions`), reporting what it dropped. :func:`massive_mask` is the
  per-window rule ``TransformerSubject`` warns with (a position against its window's other positions).
- :func:`train_corpus_sae` trains on them with :func:`sensfind.train_sae` (SAELens) and caches the
  result under ``~/.cache/sensfind/corpus-sae``, keyed by the model's weights up to the site, the corpus
  and the config, so a second call loads it in seconds without running the model.
- :func:`sae_quality` measures an SAE on held-out windows: explained variance, L0, dead fraction, and
  the next-token loss increase when its reconstruction is spliced in at the site, beside the increase
  for an error of the same norm in a random direction (Gurnee 2024: SAE errors hurt more than random ones).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from sensfind.configs import MAX_SEED, Config, check_bool, check_int, is_int
from sensfind.dictionaries.dictionary import Dictionary, from_sae
from sensfind.dictionaries.training import TrainSAEConfig, train_sae
from sensfind.models.prompts import load_corpus, resolve_cache_dir
from sensfind.models.transformer_subject import MASSIVE_NORM_RATIO, required_bos
from importlib.metadata import version

log = logging.getLogger(__name__)

__all__ = ["MAX_ACTIVATIONS", "CorpusSAEConfig", "SAEQuality", "SiteActivations", "clean_activations", "massive_mask", "massive_positions",
           "sae_quality", "train_corpus_sae", "window_activations"]

MAX_ACTIVATIONS = 2**22  # site activations collected at once (n_windows x window): 9.7 GB at d 576 in float32
_FORMAT = 2  # bump when what is cached changes (2: train_dead_fraction)
_BLOCK = re.compile(r"^blocks\.(\d+)\.")


@dataclass(frozen=True)
class CorpusSAEConfig(Config):
    """How :func:`train_corpus_sae` collects activations, trains and evaluates.

    Attributes:
        hook: TransformerLens hook of the site.
        expansion: latents per dimension of the site (``d_sae = expansion * d``; at most 256).
        architecture: ``standard`` (ReLU, L1 penalty ``l1_coefficient``) or ``topk`` (``k`` latents).
        l1_coefficient: sparsity penalty of a standard SAE (inputs normalised to mean norm sqrt(d)).
        k: latents kept by a top-k SAE (at most 65536).
        n_windows: training windows drawn from the corpus's ``train`` split (at most 100000; ``n_windows x
            window`` at most 4194304 activations, held in memory).
        window: tokens per window (training and evaluation; at most 1024).
        epochs: passes over the training activations (at most 1000).
        batch_size: activations per training step (at most 65536).
        lr: Adam learning rate (constant).
        max_norm_ratio: positions whose activation norm exceeds this multiple of the median norm are
            excluded as massive activations (from training and from splicing).
        exclude_first: also exclude the first position of every window (the attention sink).
        eval_windows: held-out windows (the corpus's ``test`` split) for :func:`sae_quality` (at most 10000).
        seed: windows, initial weights, shuffling and the random errors of the quality check (at most
            4294967295).
    """

    hook: str = "blocks.1.hook_resid_pre"
    expansion: int = 8
    architecture: Literal["standard", "topk"] = "standard"
    l1_coefficient: float = 2.0
    k: int = 32
    n_windows: int = 1024
    window: int = 64
    epochs: int = 2
    batch_size: int = 1024
    lr: float = 3e-3
    max_norm_ratio: float = 4.0
    exclude_first: bool = True
    eval_windows: int = 32
    seed: int = 0

    def __post_init__(self):
        if not isinstance(self.hook, str) or not self.hook:
            raise ValueError(f"hook must be a TransformerLens hook name, got {self.hook!r}")
        for name, hi in (("expansion", 256), ("n_windows", 100_000), ("eval_windows", 10_000)):
            check_int(name, getattr(self, name), 1, maximum=hi)
        if not is_int(self.window) or self.window < 2:
            raise ValueError(f"window must be an integer >= 2 (a next-token loss needs two tokens), got {self.window!r}")
        check_int("window", self.window, 2, maximum=1024)
        if self.n_windows * self.window > MAX_ACTIVATIONS:
            raise ValueError(f"n_windows x window must be at most {MAX_ACTIVATIONS} activations (held in memory), "
                             f"got {self.n_windows} x {self.window}")
        v = self.max_norm_ratio
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not (v > 1 or math.isinf(v)):
            raise ValueError(f"max_norm_ratio must be a number > 1 (inf: exclude none by norm), got {v!r}")
        check_bool("exclude_first", self.exclude_first)
        check_int("seed", self.seed, maximum=MAX_SEED)
        self.train_config()  # validates the training fields with TrainSAEConfig's messages

    def train_config(self) -> TrainSAEConfig:
        return TrainSAEConfig(l1_coefficient=self.l1_coefficient, lr=self.lr, batch_size=self.batch_size,
                              epochs=self.epochs, architecture=self.architecture, k=self.k)


# ---------------------------------------------------------------------------------------------------
# Activations, massive ones excluded


def massive_positions(norms: Tensor, max_norm_ratio: float = 4.0, exclude_first: bool = True) -> Tensor:
    """``[n, pos]`` bool: which positions of ``norms [n, pos]`` (activation norms) to exclude: norms above
    ``max_norm_ratio`` times the median norm of positions 1.. (the first one is the usual outlier), and
    the first position of every window when ``exclude_first``."""
    if norms.ndim != 2 or norms.shape[1] < 2:
        raise ValueError(f"norms must have shape [n, pos] with pos >= 2, got {tuple(norms.shape)}")
    median = norms[:, 1:].median()
    out = norms > max_norm_ratio * median
    if exclude_first:
        out[:, 0] = True
    return out


def massive_mask(norms: Tensor, ratio: float | None = None) -> Tensor:
    """``[n, pos]`` bool: positions whose norm exceeds ``ratio`` (default ``MASSIVE_NORM_RATIO``) times the
    median norm of the window's other positions (``norms [n, pos]``), the rule ``TransformerSubject`` warns with."""

    n, t = norms.shape
    others = norms[:, None, :].expand(n, t, t)[:, ~torch.eye(t, dtype=torch.bool)].reshape(n, t, t - 1)
    return norms > (ratio or MASSIVE_NORM_RATIO) * others.median(dim=-1).values


@dataclass(frozen=True, eq=False)
class SiteActivations:
    """Activations at a site for windows of tokens, massive ones excluded.

    Attributes:
        acts: ``[M, d]`` the kept activations (float32).
        index: ``[M, 2]`` (window, position) of each kept row.
        norms: ``[n, pos]`` activation norm at every position.
        excluded: ``[n, pos]`` which positions were excluded.
    """

    acts: Tensor
    index: Tensor
    norms: Tensor
    excluded: Tensor

    def exclusion(self) -> dict:
        """What was excluded, as JSON: counts, and the first position's norm against the others'."""
        n, pos = self.norms.shape
        later = self.norms[:, 1:]
        median = float(later.median())
        first_ratio = self.norms[:, 0] / median
        beyond_first = self.excluded[:, 1:]
        return dict(
            positions=n * pos,
            kept=int((~self.excluded).sum()),
            excluded=int(self.excluded.sum()),
            excluded_first=int(self.excluded[:, 0].sum()),
            excluded_later_by_norm=int(beyond_first.sum()),
            median_norm=median,
            first_position_norm_ratio_median=float(first_ratio.median()),
            first_position_norm_ratio_max=float(first_ratio.max()),
            later_norm_ratio_max=float(later.max()) / median,
            later_norm_ratio_p999=float(torch.quantile(later.flatten().float(), 0.999)) / median,
        )


def _stop_layer(model, hook: str) -> int | None:
    m = _BLOCK.match(hook)
    if m is None:
        return None
    stop = int(m.group(1)) + 1
    return stop if stop < model.cfg.n_layers else None


def _with_bos(model, tokens: Tensor) -> tuple[Tensor, int]:
    """``tokens [n, pos]`` behind a BOS column for models whose tokenizer starts every text with one
    (Gemma; ``transformer_subject.required_bos``), and how many positions were added (0 or 1): windows are
    then run in the context the model's subjects see, and the added position is dropped from outputs."""
    bos = required_bos(model)
    if bos is None:
        return tokens, 0
    return torch.cat([tokens.new_full((tokens.shape[0], 1), bos), tokens], dim=1), 1


@torch.no_grad()
def window_activations(model, windows: Tensor, hook: str, batch_size: int = 64) -> Tensor:
    """Activations ``[n, pos, d]`` (float32, CPU) at ``hook`` at every position of equal-length windows
    ``windows [n, pos]`` (token ids), running only the blocks up to the hook, ``batch_size`` windows at a time.
    For models that need a BOS token (Gemma) each window runs behind one, left out of the result."""
    windows = _check_windows(model, windows, min_pos=1)
    if hook not in model.hook_dict:
        raise ValueError(f"unknown hook {hook!r}; see model.hook_dict for the hook points of this model")
    stop = _stop_layer(model, hook)
    chunks = []
    for i in range(0, len(windows), batch_size):
        tokens, skip = _with_bos(model, windows[i : i + batch_size].to(model.cfg.device))
        _, cache = model.run_with_cache(tokens, names_filter=lambda name: name == hook, stop_at_layer=stop)
        chunks.append(cache[hook][:, skip:].float().cpu())
    return torch.cat(chunks)


@torch.no_grad()
def clean_activations(model, windows: Tensor, hook: str, max_norm_ratio: float = 4.0, exclude_first: bool = True,
                      batch_size: int = 64) -> SiteActivations:
    """Run ``windows [n, pos]`` (token ids) up to ``hook`` and keep the activations that are not massive
    (see :func:`massive_positions`)."""
    acts = window_activations(model, _check_windows(model, windows), hook, batch_size)  # [n, pos, d]
    norms = acts.norm(dim=-1)
    excluded = massive_positions(norms, max_norm_ratio, exclude_first)
    index = (~excluded).nonzero()
    return SiteActivations(acts[~excluded], index, norms, excluded)


def _check_windows(model, windows, min_pos: int = 2) -> Tensor:
    windows = torch.as_tensor(windows, dtype=torch.long)
    if windows.ndim != 2 or windows.shape[0] < 1 or windows.shape[1] < min_pos:
        raise ValueError(f"windows must be token ids of shape [n, pos] with n >= 1, pos >= {min_pos}, "
                         f"got {tuple(windows.shape)}")
    if (windows < 0).any() or (windows >= model.cfg.d_vocab).any():
        raise ValueError(f"token ids must lie in [0, {model.cfg.d_vocab}) for this model")
    return windows


# ---------------------------------------------------------------------------------------------------
# Quality


@dataclass(frozen=True)
class SAEQuality:
    """How well an SAE reconstructs a site, and what its errors cost downstream.

    All numbers are over the kept (non-massive) positions of the evaluation windows; losses are the
    next-token cross-entropy (nats) predicted at those positions, with the reconstruction (or the
    random error) spliced in at every kept position and the excluded ones left clean.

    Attributes:
        n_windows, window: evaluation windows and their length.
        n_tokens: kept positions evaluated; ``n_excluded``: positions left out (massive activations).
        explained_variance: ``1 - sum |x - x_hat|^2 / sum |x - mean x|^2``.
        l0: mean number of active latents per position.
        dead_fraction: latents active at none of the positions.
        relative_error: mean ``|x - x_hat| / |x|``.
        ce_clean, ce_sae, ce_random: mean cross-entropy clean, with the reconstruction, and with
            ``x + |x - x_hat| * r`` for a random unit ``r`` per position (same-norm random error).
        kl_sae, kl_random: mean ``KL(clean || spliced)`` of the next-token distributions.
    """

    n_windows: int
    window: int
    n_tokens: int
    n_excluded: int
    explained_variance: float
    l0: float
    dead_fraction: float
    relative_error: float
    ce_clean: float
    ce_sae: float
    ce_random: float
    kl_sae: float
    kl_random: float

    @property
    def ce_increase_sae(self) -> float:
        return self.ce_sae - self.ce_clean

    @property
    def ce_increase_random(self) -> float:
        return self.ce_random - self.ce_clean

    @property
    def kl_ratio(self) -> float:
        """KL with the SAE's error / KL with a same-norm random error (Gurnee: 2.2-4.5 for GPT-2 residual SAEs)."""
        return self.kl_sae / self.kl_random if self.kl_random > 0 else math.inf

    def to_dict(self) -> dict:
        return dict(asdict(self), ce_increase_sae=self.ce_increase_sae, ce_increase_random=self.ce_increase_random,
                    kl_ratio=self.kl_ratio)

    @classmethod
    def from_dict(cls, d: dict) -> SAEQuality:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})

    def summary(self) -> str:
        return (f"explained variance {self.explained_variance:.3f}, L0 {self.l0:.1f}, dead {self.dead_fraction:.1%}, "
                f"next-token loss {self.ce_increase_sae:+.3f} nats spliced (random error of the same norm: "
                f"{self.ce_increase_random:+.3f}), KL {self.kl_sae:.3f} vs {self.kl_random:.3f} "
                f"(ratio {self.kl_ratio:.1f}) over {self.n_tokens} tokens")


@torch.no_grad()
def sae_quality(model, dictionary: Dictionary, windows, hook: str | None = None, max_norm_ratio: float = 4.0,
                exclude_first: bool = True, seed: int = 0, batch_size: int = 16) -> SAEQuality:
    """Measure ``dictionary`` (an SAE that can encode) at ``hook`` (default: its own) on ``windows
    [n, pos]`` of token ids; see :class:`SAEQuality`."""
    if not isinstance(dictionary, Dictionary) or not dictionary.can_encode:
        raise ValueError("sae_quality needs a Dictionary with an SAE (encoder and decoder)")
    hook = hook if hook is not None else dictionary.hook_name
    if hook is None or hook not in model.hook_dict:
        raise ValueError(f"unknown hook {hook!r}; give the hook the SAE reads (see model.hook_dict)")
    windows = _check_windows(model, windows)
    sae = dictionary.sae
    g = torch.Generator().manual_seed(seed)
    sums = dict(sq_err=0.0, rel_err=0.0, l0=0.0, ce_clean=0.0, ce_sae=0.0, ce_random=0.0, kl_sae=0.0, kl_random=0.0)
    n_kept = n_excluded = n_pred = 0
    x_sum, x_sq = None, 0.0
    active = torch.zeros(dictionary.n_latents, dtype=torch.bool)
    for i in range(0, len(windows), batch_size):
        tokens = windows[i : i + batch_size].to(model.cfg.device)
        run_tokens, skip = _with_bos(model, tokens)  # Gemma: behind a BOS, which is neither measured nor replaced
        logits, cache = model.run_with_cache(run_tokens, names_filter=lambda name: name == hook)
        logits, x = logits[:, skip:], cache[hook][:, skip:]
        if x.shape[-1] != dictionary.d:
            raise ValueError(f"the SAE has width {dictionary.d} but {hook!r} has width {x.shape[-1]}")
        keep = (~massive_positions(x.norm(dim=-1).float().cpu(), max_norm_ratio, exclude_first)).to(x.device)
        latents = sae.encode(x.to(sae.dtype))
        recon = sae.decode(latents).to(x.dtype)
        err = recon - x
        r = torch.randn(x.shape, generator=g, dtype=torch.float32).to(x.device, x.dtype)
        noisy = x + err.norm(dim=-1, keepdim=True) * r / r.norm(dim=-1, keepdim=True)
        xs, es = x[keep].double(), err[keep].double()
        sums["sq_err"] += float(es.pow(2).sum())
        sums["rel_err"] += float((es.norm(dim=-1) / xs.norm(dim=-1)).sum())
        sums["l0"] += float((latents[keep] > 0).sum())
        active |= (latents[keep] > 0).any(0).cpu()
        x_sum = xs.sum(0) if x_sum is None else x_sum + xs.sum(0)
        x_sq += float(xs.pow(2).sum())
        n_kept += int(keep.sum())
        n_excluded += int((~keep).sum())
        # next-token losses predicted at kept positions (the last position has no next token)
        pred = keep[:, :-1]
        n_pred += int(pred.sum())
        target = tokens[:, 1:][pred][:, None]
        logp_clean = F.log_softmax(logits[:, :-1][pred].double(), dim=-1)
        sums["ce_clean"] += float(-logp_clean.gather(1, target).sum())
        for name, new in (("sae", recon), ("random", noisy)):
            acts = torch.where(keep[..., None], new, x)
            out = model.run_with_hooks(run_tokens, fwd_hooks=[
                (hook, lambda a, hook, acts=acts: torch.cat([a[:, :skip], acts.to(a.dtype)], dim=1))])[:, skip:]
            logp = F.log_softmax(out[:, :-1][pred].double(), dim=-1)
            sums[f"ce_{name}"] += float(-logp.gather(1, target).sum())
            sums[f"kl_{name}"] += float((logp_clean.exp() * (logp_clean - logp)).sum())
    if n_kept == 0 or n_pred == 0:
        raise ValueError("every position of the windows was excluded as massive; give longer windows")
    variance = x_sq - float(x_sum.pow(2).sum()) / n_kept
    return SAEQuality(
        n_windows=len(windows), window=windows.shape[1], n_tokens=n_kept, n_excluded=n_excluded,
        explained_variance=1 - sums["sq_err"] / variance, l0=sums["l0"] / n_kept,
        dead_fraction=float((~active).float().mean()), relative_error=sums["rel_err"] / n_kept,
        **{k: sums[k] / n_pred for k in ("ce_clean", "ce_sae", "ce_random", "kl_sae", "kl_random")},
    )


# ---------------------------------------------------------------------------------------------------
# Training, cached


def _model_key(model, hook: str | None) -> str:
    """Hash of what the activations at ``hook`` depend on: the architecture and the weights up to it
    (``None``: every weight, what the output depends on)."""
    m = _BLOCK.match(hook) if hook is not None else None
    last = int(m.group(1)) if m else None
    h = hashlib.blake2b(digest_size=16)
    cfg = model.cfg
    fields = ("model_name", "d_model", "n_layers", "n_heads", "n_key_value_heads", "d_head", "d_mlp", "d_vocab",
              "act_fn", "normalization_type", "positional_embedding_type", "rotary_base", "rotary_dim", "eps",
              "dtype", "original_architecture")
    h.update(json.dumps({f: str(getattr(cfg, f, None)) for f in fields}, sort_keys=True).encode())
    for name, p in sorted(model.state_dict().items()):
        b = _BLOCK.match(name)
        if last is None or (b is None and not name.startswith(("unembed", "ln_final"))) or (b and int(b.group(1)) <= last):
            h.update(name.encode())
            h.update(p.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def train_corpus_sae(model, config: CorpusSAEConfig = CorpusSAEConfig(),
                     cache_dir: str | Path | bool | None = True) -> Dictionary:
    """An SAE at ``config.hook`` trained on corpus activations of ``model`` (massive ones excluded), with
    its quality measured on held-out windows; cached in ``cache_dir/corpus-sae/<key>`` (``True``: sensfind's
    cache directory; ``None``: not cached), so a second call with the same model weights and config loads
    it without running the model.

    ``info`` of the result holds ``config``, ``exclusion`` (what :meth:`SiteActivations.exclusion`
    reports for the training windows, and ``train_dead_fraction``: latents active on none of the
    training activations), ``quality`` (:meth:`SAEQuality.to_dict`), ``trained``
    (SAELens training statistics) and ``seconds`` (collect / train / evaluate).
    """
    if not isinstance(config, CorpusSAEConfig):
        raise TypeError(f"config must be a CorpusSAEConfig, got {type(config).__name__}")
    if config.hook not in model.hook_dict:
        raise ValueError(f"unknown hook {config.hook!r}; see model.hook_dict for the hook points of this model")
    cache_dir = resolve_cache_dir(cache_dir)
    corpus = load_corpus(model)  # the tokenized corpus lives in sensfind's cache whatever cache_dir is
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps(dict(format=_FORMAT, config=config.to_dict(), model=_model_key(model, config.hook),
                             corpus=[corpus.tokenizer, corpus.version], sae_lens=_sae_lens_version()),
                        sort_keys=True).encode())
    key = h.hexdigest()
    target = cache_dir / "corpus-sae" / key if cache_dir is not None else None
    if target is not None and (target / "dictionary.json").is_file():
        log.info("loading the cached corpus SAE from %s", target)
        return Dictionary.load(target)
    seconds = {}
    start = time.perf_counter()
    train_windows = corpus.windows(config.n_windows, config.window, config.seed, split="train")
    site = clean_activations(model, train_windows, config.hook, config.max_norm_ratio, config.exclude_first)
    exclusion = site.exclusion()
    log.info("corpus SAE: %d activations from %d windows of %d tokens (%d excluded as massive)",
             exclusion["kept"], config.n_windows, config.window, exclusion["excluded"])
    seconds["collect"] = time.perf_counter() - start
    start = time.perf_counter()
    d = site.acts.shape[1]
    trained = train_sae(site.acts, config.hook, config.expansion * d, config=config.train_config(), seed=config.seed)
    seconds["train"] = time.perf_counter() - start
    with torch.no_grad():  # dead on the whole training set (sae_quality sees only the held-out windows)
        active = torch.zeros(trained.n_latents, dtype=torch.bool)
        for chunk in site.acts.split(8192):
            active |= (trained.encode(chunk) > 0).any(0).cpu()
    exclusion["train_dead_fraction"] = float((~active).float().mean())
    start = time.perf_counter()
    eval_windows = corpus.windows(config.eval_windows, config.window, config.seed, split="test")
    quality = sae_quality(model, trained, eval_windows, config.hook, config.max_norm_ratio, config.exclude_first,
                          config.seed)
    seconds["quality"] = time.perf_counter() - start
    log.info("corpus SAE: %s", quality.summary())
    info = dict(config=config.to_dict(), exclusion=exclusion, quality=quality.to_dict(),
                trained=trained.info["trained"], seconds=seconds, corpus=f"{corpus.tokenizer} {corpus.version}")
    dic = from_sae(trained.sae, hook_name=config.hook, source=f"corpus-sae:{key[:12]}", info=info)
    if target is None:
        return dic
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{key[:12]}-", dir=target.parent))
    try:
        dic.save(work)
        try:
            os.replace(work, target)
        except OSError:  # cached concurrently by another process; theirs is identical
            log.info("corpus SAE %s was cached concurrently; using the cached copy", key[:12])
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return Dictionary.load(target)


def _sae_lens_version() -> str:
    return version("sae_lens")
