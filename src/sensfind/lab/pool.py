"""The experiments' site: a model (or the ground-truth toy) at a hook with a pool of real activations.

:func:`load_pool_site` builds a :class:`PoolSite` from a :class:`PoolConfig`:

- ``gpt2`` (any hub model name): the prompts of ``prompts`` cut to ``seq_len`` tokens (``builtin`` by default);
  the configuration of the published numbers, so it needs the HuggingFace hub;
- ``random:ARCH``: a local architecture with random weights and random token sequences as prompts;
- ``toy``: the ground-truth toy (:mod:`sensfind.core.toy`); its "prompts" are its inputs;
- any other pretrained model (``smollm2-135m``): windows of the offline corpus (test split for the pool,
  train split for SAE training data).

The pool (``[M, d]``, the activation at ``position`` of each prompt) gives bases (its first rows),
real-other targets (the rest) and covariance statistics. Prompts whose activation is massive (norm
``MASSIVE_NORM_RATIO`` times the median of its window's other positions) are skipped and counted in
``PoolSite.exclusion``; SAE training data drops such positions too.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from sensfind.models.loading import load_model
from sensfind.core.toy import ToyConfig, ToyModel
from sensfind.configs import MAX_SEED, Config, check_int
from sensfind.specs import TOY, parse_model_spec
from sensfind.dictionaries.corpus_sae import window_activations
from sensfind.models.prompts import load_prompts, text_windows
from sensfind.dictionaries.corpus_sae import massive_mask
from sensfind.models.transformer_subject import MASSIVE_NORM_RATIO
from sensfind.models.transformer_subject import TransformerSubject
from sensfind.core.subject import FunctionSubject
from sensfind.core.baselines import cov_stats

__all__ = ["PUBLISHED_MODEL", "TOY", "TRAIN_SEED_OFFSET", "PoolConfig", "PoolSite", "collect_activations",
           "exclusion_line", "load_pool_site", "pick", "split_pool"]

log = logging.getLogger("sensfind.lab.pool")

PUBLISHED_MODEL = "gpt2"
TRAIN_SEED_OFFSET = 7001  # SAE-training data is drawn apart from the bases and targets of the same seed
MIN_POOL = 8


@dataclass(frozen=True)
class PoolConfig(Config):
    """Where the experiment looks and how many real activations it collects there.

    Attributes:
        model: gpt2 (real weights and the gpt2-small-res-jb SAE: needs the HuggingFace hub), smollm2-135m (corpus
            windows), random:gpt2 / random:tiny (local architecture, random weights) or toy (ground-truth toy)
        hook: site hook (transformers)
        position: token position of the site (-1: last)
        prompts: pretrained models: prompt file (one per line), 'builtin', or 'corpus' (windows of the offline corpus);
            auto = builtin for gpt2, corpus otherwise. The published runs used 1000 10-token OpenWebText prompts
        seq_len: tokens per prompt (at most 1024)
        seed: seeds weights of random models, prompts and directions (at most 4294967295)
        n_pool: real activations collected (bases + real-other targets + statistics; at most 100000)
    """

    model: str = "random:tiny"
    hook: str = "blocks.1.hook_resid_pre"
    position: int = -1
    prompts: str = "auto"
    seq_len: int = 10
    seed: int = 0
    n_pool: int = field(default=512, metadata={"smoke": 160})

    def __post_init__(self):
        parse_model_spec(self.model)
        for name in ("model", "hook", "prompts"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{name} must be a non-empty string, got {getattr(self, name)!r}")
        check_int("position", self.position)
        check_int("seq_len", self.seq_len, minimum=2, maximum=1024)
        check_int("seed", self.seed, minimum=0, maximum=MAX_SEED)
        check_int("n_pool", self.n_pool, minimum=MIN_POOL, maximum=100_000)


@torch.no_grad()
def collect_activations(model, tokens: Tensor, hook: str, position: int | None = -1, batch: int = 128) -> Tensor:
    """Activations at ``hook`` of equal-length prompts ``tokens [N, T]``: ``[N, d]`` at ``position``, or
    ``[N·(T-1), d]`` at every position but the first when ``position`` is None."""

    out = []
    for chunk in tokens.split(batch):
        acts = window_activations(model, chunk, hook, batch_size=len(chunk))  # [n, T, d]
        out.append(acts[:, 1:].reshape(-1, acts.shape[-1]) if position is None else acts[:, position])
    return torch.cat(out)


@dataclass
class PoolSite:
    """A model (or the toy) at a hook, with a pool of real activations ``[M, d]`` and their prompts."""

    name: str
    hook: str
    position: int
    pool: Tensor  # [M, d] real activations
    model: object | None = None  # HookedTransformer
    toy: object | None = None  # sensfind.ToyModel
    prompts: list | None = None  # token ids of each pool row (transformers)
    next_tokens: Tensor | None = None  # [M] token that follows each prompt, -1 if unknown
    seed: int = 0
    exclusion: dict | None = None  # massive-activation exclusion counts (pretrained models)
    corpus_train: Callable[[int], Tensor] | None = None  # n -> [n, T] train-split windows (corpus sites)
    dictionaries: dict = field(default_factory=dict)  # SAEs loaded for this site, by (spec, l1)

    @property
    def d(self) -> int:
        return self.pool.shape[1]

    @property
    def is_toy(self) -> bool:
        return self.toy is not None

    @property
    def late_hook(self) -> str | None:
        """The last block's residual stream, where the LASR L2 effect is read (None for the toy)."""
        return None if self.model is None else f"blocks.{self.model.cfg.n_layers - 1}.hook_resid_post"

    def subject(self, i: int, output_hook: str | None = None):
        """The subject of pool row ``i``, in its own prompt's context."""

        if self.toy is not None:
            if output_hook is not None:
                raise ValueError("the toy has no hooks; its output is always its logits")
            return self.toy.subject(self.pool[i])
        return TransformerSubject(self.model, self.prompts[i], hook=self.hook, position=self.position,
                                  output_hook=output_hook)

    @staticmethod
    def with_base(subject, base: Tensor):
        """The same model and context with another activation ``base [d]`` (random, synthetic) as the base."""

        return FunctionSubject(base.to(subject.base.dtype), subject.run)

    def cov(self):
        """Mean and covariance of the pool (``sensfind.core.baselines.cov_stats``)."""

        return cov_stats(self.pool)

    def training_activations(self, n: int) -> Tensor:
        """``[n, d]`` activations of the pool's kind to train a local SAE on, drawn with a fixed seed."""
        if self.toy is not None:
            return self.toy.sample(n, seed=self.seed + TRAIN_SEED_OFFSET).acts.float()
        if parse_model_spec(self.name).kind == "random":
            t = len(self.prompts[0])
            g = torch.Generator().manual_seed(self.seed + TRAIN_SEED_OFFSET)
            tokens = torch.randint(self.model.cfg.d_vocab, (math.ceil(n / (t - 1)), t), generator=g)
            return collect_activations(self.model, tokens, self.hook, position=None)[:n]
        if self.corpus_train is not None:
            return self._corpus_training_activations(n)
        acts = torch.cat([collect_activations(self.model, torch.tensor([p]), self.hook, position=None)
                          for p in self.prompts if len(p) > 1])  # every position but the first of the pool's prompts
        if acts.shape[0] < n:
            log.warning("only %d activations to train the SAE on (asked for %d)", acts.shape[0], n)
        return acts[:n]

    def _corpus_training_activations(self, n: int) -> Tensor:
        """Every position but the first of train-split windows, massive ones dropped (``exclusion["sae_train"]``)."""

        tokens = self.corpus_train(math.ceil(1.2 * n / (self.corpus_train.length - 1)) + 1)
        acts = window_activations(self.model, tokens, self.hook)
        keep = ~massive_mask(acts.norm(dim=-1))
        keep[:, 0] = False
        counts = dict(windows=int(tokens.shape[0]), positions=int(tokens.numel() - tokens.shape[0]),
                      excluded_massive=int((~keep[:, 1:]).sum()))
        acts = acts[keep]
        if acts.shape[0] < n:
            raise ValueError(f"only {acts.shape[0]} non-massive training activations for the SAE (asked for {n})")
        counts["used"] = n
        if self.exclusion is not None:
            self.exclusion["sae_train"] = counts
        log.info("SAE training data: %s", counts)
        return acts[:n]


def _pretrained_prompts(config: PoolConfig, model) -> tuple[list, list, str]:
    """Candidate prompts' token ids ``[:seq_len]``, each one's next token (-1 if unknown), and their source."""

    source, t = config.prompts, config.seq_len
    if source == "auto":
        source = "builtin" if config.model == PUBLISHED_MODEL else "corpus"
    if source == "corpus":
        draw = 2 * config.n_pool + 16  # spare windows replace the massive-activation ones
        w = text_windows(model, draw, t + 1, seed=config.seed + 1, source="corpus", split="test")
        return [x[:t] for x in w.tokens], [x[t] for x in w.tokens], w.source + " (test split)"
    prompts, nxt = [], []
    for text in load_prompts(source, model=model):
        ids = model.to_tokens(text)[0].tolist() if isinstance(text, str) else list(text)
        prompts.append(ids[:t])
        nxt.append(ids[t] if len(ids) > t else -1)
    return prompts, nxt, source


def _corpus_train_sampler(config: PoolConfig, model) -> Callable[[int], Tensor]:
    def sample(n: int) -> Tensor:
        return torch.tensor(text_windows(model, n, config.seq_len + 1, seed=config.seed + TRAIN_SEED_OFFSET,
                                         source="corpus", split="train").tokens)

    sample.length = config.seq_len + 1
    return sample


def load_pool_site(config: PoolConfig) -> PoolSite:
    """The site of ``config.model`` with ``config.n_pool`` pool rows; a model that cannot be loaded raises
    its loader's error (``ModelUnavailableError`` offline)."""

    n, c = config.n_pool, config
    kind = parse_model_spec(c.model).kind
    if kind == "toy":
        toy = ToyModel(ToyConfig(seed=c.seed))
        return PoolSite(name=TOY, hook="toy", position=0, pool=toy.sample(n, seed=c.seed + 1).acts.float(), toy=toy,
                        seed=c.seed)
    model = load_model(c.model, seed=c.seed)
    torch.manual_seed(c.seed)
    if kind == "random":
        g = torch.Generator().manual_seed(c.seed + 1)
        tokens = torch.randint(model.cfg.d_vocab, (n, c.seq_len + 1), generator=g)
        prompts, nxt = tokens[:, : c.seq_len], tokens[:, c.seq_len]
        return PoolSite(name=c.model, hook=c.hook, position=c.position, model=model, prompts=prompts.tolist(),
                        pool=collect_activations(model, prompts, c.hook, c.position), next_tokens=nxt, seed=c.seed)
    candidates, next_ids, source = _pretrained_prompts(c, model)
    prompts, nxt, pool, excluded = [], [], [], []
    for ids, t in zip(candidates, next_ids):
        acts = window_activations(model, torch.tensor([ids]), c.hook)[0]  # [T, d]
        pos = c.position if c.position >= 0 else len(ids) + c.position
        if not 0 <= pos < len(ids):
            raise ValueError(f"position {c.position} is out of range for a prompt of {len(ids)} tokens")
        if len(ids) > 1 and bool(massive_mask(acts.norm(dim=-1)[None])[0, pos]):
            excluded.append(model.to_string(ids[pos]) if model.tokenizer is not None else str(ids[pos]))
            continue
        prompts.append(ids)
        nxt.append(t)
        pool.append(acts[pos])
        if len(prompts) == n:
            break
    if len(prompts) < n:
        (log.warning if source != "corpus" else log.error)(
            "only %d usable prompts from %r (asked for n_pool %d; %d excluded as massive activations)",
            len(prompts), source, n, len(excluded))
        if len(prompts) < MIN_POOL:
            raise ValueError(f"only {len(prompts)} usable prompts from {source!r}; give more")
    exclusion = dict(rule=f"base norm > {MASSIVE_NORM_RATIO:g} x median norm of the window's other positions",
                     source=source, examined=len(prompts) + len(excluded), excluded=len(excluded),
                     excluded_tokens=sorted(set(excluded)))
    return PoolSite(name=c.model, hook=c.hook, position=c.position, pool=torch.stack(pool), model=model,
                    prompts=prompts, next_tokens=torch.tensor(nxt), seed=c.seed, exclusion=exclusion,
                    corpus_train=_corpus_train_sampler(c, model) if source.startswith("corpus") else None)


def split_pool(site: PoolSite, n_bases: int) -> tuple[Tensor, Tensor]:
    """Indices of the bases (the first ``n_bases`` rows) and of the real-other targets (the rest)."""
    m = site.pool.shape[0]
    if n_bases >= m:
        raise ValueError(f"n_bases {n_bases} leaves no real-other activations in a pool of {m}; "
                         f"lower it or raise n_pool")
    return torch.arange(n_bases), torch.arange(n_bases, m)


def pick(rows: Tensor, n: int, seed: int) -> Tensor:
    """``n`` rows of ``rows`` drawn without replacement (all of them, shuffled, when there are fewer)."""
    g = torch.Generator().manual_seed(seed)
    return rows[torch.randperm(rows.shape[0], generator=g)[:n]]


def exclusion_line(site: PoolSite) -> str:
    """The massive-activation exclusion as closing line(s) of a summary ("" for sites without one)."""
    ex = site.exclusion
    if not ex:
        return ""
    tokens = f" (tokens {', '.join(map(repr, ex['excluded_tokens'][:8]))})" if ex["excluded"] else ""
    text = (f"\nmassive activations ({ex['rule']}): {ex['excluded']} of {ex['examined']} candidate prompts "
            f"excluded from the pool{tokens}")
    tr = ex.get("sae_train")
    if tr:
        text += (f"; SAE training: {tr['excluded_massive']} of {tr['positions']} positions excluded "
                 f"(first positions of {tr['windows']} windows dropped too)")
    return text
