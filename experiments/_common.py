"""Plumbing shared by the experiment scripts: arguments, the site, run directories, tables, figures.

A *site* bundles what every experiment needs:

- ``--model gpt2`` (or any pretrained TransformerLens name): the real model (HuggingFace hub), the
  prompts of ``--prompts`` cut to their first ``--seq-len`` tokens, and the pretrained
  ``gpt2-small-res-jb`` SAE at the hook. This is the configuration the published numbers come from.
- ``--model random:gpt2`` / ``random:tiny``: a locally built architecture with random weights; its
  prompts are random token sequences (the model has no language, so text would be byte noise too).
- ``--model toy``: the ground-truth toy (``sensfind.toy``); its "prompts" are inputs of the toy.
- ``--model smollm2-135m`` (any other pretrained model): windows of real text from the offline corpus
  (``sensfind.prompts``, held-out ``test`` split for the pool, ``train`` split for SAE training), and an
  the project's corpus SAE (``sensfind.corpus_sae``, SAELens, cached) unless ``--sae`` names another.

Massive activations (a token whose residual norm at the hook is ``MASSIVE_NORM_RATIO`` times the median
of its window's other positions, e.g. SmolLM2's first position from ``blocks.2`` on, and some " the"
tokens at ``blocks.3``) are excluded from the pool (bases, real-other targets, covariance) and from SAE
training data; ``Site.exclusion`` counts what was dropped and every run reports it.

The pool of real activations (``[M, d]``, last position of each prompt) serves as bases (its first
rows), as real-other targets (the rest) and for covariance statistics. Local models get an SAE trained
with ``sensfind.train_sae`` on activations of the same kind, cached under ``--cache-dir``.

A run writes ``config.json``, the experiment's results and figures into one directory that appears
whole or not at all (``sensfind.runio.staged_dir``). Expected failures (offline model, bad value)
print one line ``<script>: error: ...`` and exit with status 2.
"""

from __future__ import annotations

import argparse
import logging
import math
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

import sensfind as sf
from sensfind.baselines import cov_stats
from sensfind.corpus_sae import massive_mask, window_activations
from sensfind.dictionary import DictionaryUnavailableError
from sensfind.models import ModelUnavailableError
from sensfind.prompts import DatasetUnavailableError
from sensfind.subjects import MASSIVE_NORM_RATIO
from sensfind.runio import save_json, staged_dir
from sensfind.specs import DEFAULT_SAE_RELEASE, load_dictionary_spec, parse_spec

log = logging.getLogger("sensfind.experiments")

TOY = "toy"
PUBLISHED_MODEL = "gpt2"
PUBLISHED_SAE_RELEASE = DEFAULT_SAE_RELEASE
TRAIN_SEED_OFFSET = 7001  # SAE-training data is drawn apart from the bases and targets of the same seed
# --sae: kind -> what follows the colon (bare kinds take nothing)
SAE_SPECS = {"auto": "", "pretrained": "RELEASE/SAE_ID", "disk": "PATH", "corpus": "", "train": "", "none": ""}

# design.md §3: what the anchors report for GPT-2 small, layer 1 -> output, last token, 10-token prompts
PUBLISHED = {
    "lasr_max_slope": {  # 100 steps of 0.5 towards the target, L2 at blocks.11.hook_resid_post; mean, sd, KS vs real
        "real-other": (51.7, 7.4, None),
        "cov-random": (64.9, 10.5, 0.62),
        "synthetic-structured": (55.7, 11.3, 0.22),
        "synthetic-baseline": (57.1, 11.3, 0.27),
    },
    "lasr_plateau": {"real": (15.1, 8.6), "cov-random": (8.3, 3.8)},  # first step with L2 >= 20, step 0.5
    "heimersheim_plateau_deg": 40.0,  # real bases plateau until ~40 deg of slerp
    "gurnee_kl_ratio": (2.2, 4.5),  # KL(SAE reconstruction) / KL(same-norm random error), residual SAEs
}


# -- arguments ---------------------------------------------------------------------------------------
class Sizes:
    """Size arguments with a full default and a ``--smoke`` default (tiny, for tests)."""

    def __init__(self, parser: argparse.ArgumentParser):
        self.parser, self.defaults = parser, {}
        self.group = parser.add_argument_group("sizes (defaults: full run / --smoke)")

    def add(self, flag: str, full, smoke, help: str, type=int) -> None:
        dest = flag.lstrip("-").replace("-", "_")
        self.defaults[dest] = (full, smoke)
        self.group.add_argument(flag, type=type, default=None, help=f"{help} (default {full}; --smoke {smoke})")

    def resolve(self, args: argparse.Namespace) -> None:
        for dest, (full, smoke) in self.defaults.items():
            if getattr(args, dest) is None:
                setattr(args, dest, smoke if args.smoke else full)


def experiment_parser(description: str, sae: bool = False) -> tuple[argparse.ArgumentParser, Sizes]:
    p = argparse.ArgumentParser(description=description)
    g = p.add_argument_group("site")
    g.add_argument("--model", default="random:tiny",
                   help="gpt2 (real weights and the gpt2-small-res-jb SAE: needs the HuggingFace hub), "
                        "random:gpt2 / random:tiny (local architecture, random weights) or toy (ground-truth toy). "
                        "Default random:tiny")
    g.add_argument("--hook", default="blocks.1.hook_resid_pre", help="site hook (transformers)")
    g.add_argument("--position", type=int, default=-1, help="token position of the site (default: last)")
    g.add_argument("--prompts", default="auto",
                   help="pretrained models: prompt file (one per line), 'builtin', or 'corpus' (windows of the "
                        "offline corpus); auto = builtin for gpt2, corpus otherwise. The published runs used 1000 "
                        "10-token OpenWebText prompts")
    g.add_argument("--seq-len", type=int, default=10, help="tokens per prompt")
    g.add_argument("--seed", type=int, default=0, help="seeds weights of random models, prompts and directions")
    g = p.add_argument_group("run")
    g.add_argument("--out", default=None, help="run directory (default runs/<experiment>-<model>-<time>)")
    g.add_argument("--overwrite", action="store_true", help="replace a non-empty run directory")
    g.add_argument("--smoke", action="store_true", help="tiny sizes, for tests")
    g.add_argument("--cache-dir", default="runs/.cache", help="where locally trained SAEs are cached")
    g.add_argument("-v", "--verbose", action="store_true", help="log diagnostics")
    sizes = Sizes(p)
    sizes.add("--n-pool", 512, 160, "real activations collected (bases + real-other targets + statistics)")
    if sae:
        g = p.add_argument_group("SAE")
        g.add_argument("--sae", default="auto",
                       help="auto (pretrained gpt2-small-res-jb for gpt2, trained locally otherwise), "
                            "pretrained:RELEASE/SAE_ID, disk:PATH (SAELens format), train, or none")
        g.add_argument("--sae-expansion", type=int, default=4, help="trained SAEs: latents per dimension")
        g.add_argument("--sae-l1", type=float, default=2.0, help="trained SAEs: L1 coefficient")
        sizes.add("--sae-train", 16384, 4096, "activations a local SAE is trained on")
        sizes.add("--sae-epochs", 5, 3, "epochs of local SAE training")
    return p, sizes


def check_positive(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        v = getattr(args, name)
        if not isinstance(v, (int, float)) or v < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {v!r}")


# -- the site ------------------------------------------------------------------------------------------
@torch.no_grad()
def collect_activations(model, tokens: Tensor, hook: str, position: int | None = -1, batch: int = 128) -> Tensor:
    """Activations at ``hook`` for equal-length prompts ``tokens [N, T]``: ``[N, d]`` at ``position``,
    or ``[N·(T-1), d]`` at every position but the first when ``position`` is None. Stops after the
    hook's block."""
    out = []
    for chunk in tokens.split(batch):
        acts = window_activations(model, chunk, hook, batch_size=len(chunk))  # [n, T, d]
        out.append(acts[:, 1:].reshape(-1, acts.shape[-1]) if position is None else acts[:, position])
    return torch.cat(out)


@dataclass
class Site:
    """A model (or the toy) at a hook, with a pool of real activations and their prompts."""

    name: str
    hook: str
    position: int
    pool: Tensor  # [M, d] real activations
    model: object | None = None  # HookedTransformer
    toy: sf.ToyModel | None = None
    prompts: list | None = None  # token ids of each pool row (transformers)
    next_tokens: Tensor | None = None  # [M] token that follows each prompt, -1 if unknown
    seed: int = 0
    exclusion: dict | None = None  # massive-activation exclusion counts (pretrained models)
    corpus_train: Callable[[int], Tensor] | None = None  # [n, T] train-split windows (corpus sites)
    _dictionaries: dict = field(default_factory=dict)

    @property
    def d(self) -> int:
        return self.pool.shape[1]

    @property
    def is_toy(self) -> bool:
        return self.toy is not None

    @property
    def late_hook(self) -> str | None:
        """The late residual stream the LASR L2 effect is read at (None for the toy: logits only)."""
        return None if self.model is None else f"blocks.{self.model.cfg.n_layers - 1}.hook_resid_post"

    def subject(self, i: int, output_hook: str | None = None):
        """The subject of real activation ``i`` of the pool (its own prompt as context)."""
        if self.toy is not None:
            if output_hook is not None:
                raise ValueError("the toy has no hooks; its output is always its logits")
            return self.toy.subject(self.pool[i])
        return sf.TransformerSubject(self.model, self.prompts[i], hook=self.hook, position=self.position,
                                     output_hook=output_hook)

    @staticmethod
    def with_base(subject, base: Tensor):
        """The same model and context with another activation (random, synthetic) as the base."""
        return sf.FunctionSubject(base.to(subject.base.dtype), subject.run)

    def cov(self):
        return cov_stats(self.pool)

    def training_activations(self, n: int) -> Tensor:
        """Activations of the pool's kind to train a local SAE on (``[n, d]``, drawn with a fixed seed)."""
        if self.toy is not None:
            return self.toy.sample(n, seed=self.seed + TRAIN_SEED_OFFSET).acts.float()
        if self.name.startswith("random:"):
            t = len(self.prompts[0])
            g = torch.Generator().manual_seed(self.seed + TRAIN_SEED_OFFSET)
            tokens = torch.randint(self.model.cfg.d_vocab, (math.ceil(n / (t - 1)), t), generator=g)
            return collect_activations(self.model, tokens, self.hook, position=None)[:n]
        if self.corpus_train is not None:
            return self._corpus_training_activations(n)
        # a pretrained model: every position but the first of the pool's prompts
        acts = torch.cat([collect_activations(self.model, torch.tensor([p]), self.hook, position=None)
                          for p in self.prompts if len(p) > 1])
        if acts.shape[0] < n:
            log.warning("only %d activations to train the SAE on (asked for %d)", acts.shape[0], n)
        return acts[:n]


    def _corpus_training_activations(self, n: int) -> Tensor:
        """``[n, d]`` activations at every position but the first of train-split corpus windows, massive
        ones dropped (counted in ``exclusion["sae_train"]``)."""
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


def _pretrained_prompts(args: argparse.Namespace, model) -> tuple[list, list, str]:
    """Token ids of the candidate prompts ``[:seq_len]``, each one's next token (-1 if unknown), and the source."""
    source = args.prompts
    if source == "auto":
        source = "builtin" if args.model == PUBLISHED_MODEL else "corpus"
    if source == "corpus":
        from sensfind.prompts import text_windows

        draw = 2 * args.n_pool + 16  # spare windows replace the massive-activation ones
        w = text_windows(model, draw, args.seq_len + 1, seed=args.seed + 1, source="corpus", split="test")
        return [t[: args.seq_len] for t in w.tokens], [t[args.seq_len] for t in w.tokens], w.source + " (test split)"
    from sensfind.prompts import load_prompts

    prompts, nxt = [], []
    for text in load_prompts(source, model=model):
        ids = model.to_tokens(text)[0].tolist() if isinstance(text, str) else list(text)
        prompts.append(ids[: args.seq_len])
        nxt.append(ids[args.seq_len] if len(ids) > args.seq_len else -1)
    return prompts, nxt, source


def _corpus_train_sampler(args: argparse.Namespace, model) -> Callable[[int], Tensor]:
    from sensfind.prompts import text_windows

    def sample(n: int) -> Tensor:
        return torch.tensor(text_windows(model, n, args.seq_len + 1, seed=args.seed + TRAIN_SEED_OFFSET, source="corpus",
                                         split="train").tokens)

    sample.length = args.seq_len + 1
    return sample


def load_site(args: argparse.Namespace) -> Site:
    """Build the site of ``--model``; fails with the loader's own error when the model is unavailable."""
    if args.seq_len < 2:
        raise ValueError(f"--seq-len must be >= 2, got {args.seq_len}")
    n = args.n_pool
    if n < 8:
        raise ValueError(f"--n-pool must be >= 8, got {n}")
    if args.model == TOY:
        toy = sf.ToyModel(sf.ToyConfig(seed=args.seed))
        pool = toy.sample(n, seed=args.seed + 1).acts.float()
        return Site(name=TOY, hook="toy", position=0, pool=pool, toy=toy, seed=args.seed)
    model = sf.load_model(args.model, seed=args.seed)
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed + 1)
    if args.model.startswith("random:"):
        tokens = torch.randint(model.cfg.d_vocab, (n, args.seq_len + 1), generator=g)
        prompts, nxt = tokens[:, : args.seq_len], tokens[:, args.seq_len]
        pool = collect_activations(model, prompts, args.hook, args.position)
        return Site(name=args.model, hook=args.hook, position=args.position, pool=pool, model=model,
                    prompts=prompts.tolist(), next_tokens=nxt, seed=args.seed)
    candidates, next_ids, source = _pretrained_prompts(args, model)
    prompts, nxt, pool, excluded = [], [], [], []
    for ids, t in zip(candidates, next_ids):
        acts = window_activations(model, torch.tensor([ids]), args.hook)[0]  # [T, d]
        pos = args.position if args.position >= 0 else len(ids) + args.position
        if not 0 <= pos < len(ids):
            raise ValueError(f"--position {args.position} is out of range for a prompt of {len(ids)} tokens")
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
            "only %d usable prompts from %r (asked for --n-pool %d; %d excluded as massive activations)",
            len(prompts), source, n, len(excluded))
        if len(prompts) < 8:
            raise ValueError(f"only {len(prompts)} usable prompts from {source!r}; give more")
    exclusion = dict(rule=f"base norm > {MASSIVE_NORM_RATIO:g} x median norm of the window's other positions",
                     source=source, examined=len(prompts) + len(excluded), excluded=len(excluded),
                     excluded_tokens=sorted(set(excluded)))
    return Site(name=args.model, hook=args.hook, position=args.position, pool=torch.stack(pool), model=model,
                prompts=prompts, next_tokens=torch.tensor(nxt), seed=args.seed, exclusion=exclusion,
                corpus_train=_corpus_train_sampler(args, model) if source.startswith("corpus") else None)


def load_dictionary(site: Site, args: argparse.Namespace, spec: str | None = None, l1: float | None = None):
    """The SAE named by ``--sae`` (or ``spec``); ``None`` for ``none``. Trained SAEs are cached."""
    spec = args.sae if spec is None else spec
    l1 = args.sae_l1 if l1 is None else l1
    key = (spec, l1)
    if key in site._dictionaries:
        return site._dictionaries[key]
    parsed = parse_spec(spec, SAE_SPECS, "--sae")
    if parsed.kind == "none":
        return None
    if parsed.kind == "auto":
        parsed = parse_spec(f"pretrained:{PUBLISHED_SAE_RELEASE}/{site.hook}" if site.name == PUBLISHED_MODEL
                            else "corpus" if site.corpus_train is not None else "train", SAE_SPECS, "--sae")
    kind = parsed.kind
    if kind == "corpus":
        if site.model is None or site.model.tokenizer is None:
            raise ValueError("--sae corpus needs a pretrained model with a tokenizer (e.g. --model smollm2-135m)")
        from sensfind.corpus_sae import CorpusSAEConfig, train_corpus_sae

        dic = train_corpus_sae(site.model, CorpusSAEConfig(hook=site.hook))
    elif kind in ("pretrained", "disk"):
        dic = load_dictionary_spec(parsed, site.hook)
    else:  # train
        acts = site.training_activations(args.sae_train)
        config = sf.TrainSAEConfig(l1_coefficient=l1, epochs=args.sae_epochs, batch_size=min(256, acts.shape[0]))
        hook = None if site.is_toy else site.hook
        dic = sf.train_sae(acts, hook, args.sae_expansion * site.d, config=config, seed=site.seed,
                           cache_dir=args.cache_dir)
    if dic.d != site.d:
        raise ValueError(f"SAE {dic.source!r} has width {dic.d} but the site has width {site.d}")
    if not dic.can_encode:
        raise ValueError(f"SAE {dic.source!r} has no encoder; these experiments need one")
    site._dictionaries[key] = dic
    return dic


def synthetic_activations(site: Site, args: argparse.Namespace, n: int, seed: int, run: Run | None = None
                          ) -> dict[str, Tensor]:
    """``synthetic-baseline`` and ``synthetic-structured`` activations ``[n, d]`` matched to the pool by
    the site's SAE (empty when ``--sae none``)."""
    from sensfind.synthetic import latent_stats, synthetic_baseline, synthetic_structured

    dic = load_dictionary(site, args)
    if dic is None:
        return {}
    stats = latent_stats(dic, site.pool)
    if run is not None:
        run.config["sae"] = dictionary_info(dic)
        run.config["latent_stats"] = stats.summary()
    return {"synthetic-baseline": synthetic_baseline(dic, stats, n, seed).acts,
            "synthetic-structured": synthetic_structured(dic, stats, n, seed + 1).acts}


def dictionary_info(dic) -> dict | None:
    if dic is None:
        return None
    info = dict(source=dic.source, n_latents=dic.n_latents, hook_name=dic.hook_name)
    trained = dic.info.get("trained")
    if trained:
        info.update(explained_variance=trained.get("explained_variance"), train_l0=trained.get("l0"))
    if dic.info.get("quality"):  # the corpus SAE's held-out quality (sensfind.corpus_sae.sae_quality)
        info["quality"] = dic.info["quality"]
    return info


def split_pool(site: Site, n_bases: int) -> tuple[Tensor, Tensor]:
    """Indices of the bases (first rows) and of the real-other targets (the rest) of the pool."""
    m = site.pool.shape[0]
    if n_bases >= m:
        raise ValueError(f"--n-bases {n_bases} leaves no real-other activations in a pool of {m}; "
                         f"lower it or raise --n-pool")
    return torch.arange(n_bases), torch.arange(n_bases, m)


def pick(rows: Tensor, n: int, seed: int) -> Tensor:
    """``n`` rows of ``rows`` drawn without replacement (all of them, shuffled, when there are fewer)."""
    g = torch.Generator().manual_seed(seed)
    return rows[torch.randperm(rows.shape[0], generator=g)[:n]]


# -- scans ----------------------------------------------------------------------------------------------
def add_scan_args(parser: argparse.ArgumentParser, sizes: Sizes) -> None:
    g = parser.add_argument_group("scans")
    g.add_argument("--tau", type=float, default=0.5, help="sphere mode: KL threshold in nats (default 0.5)")
    g.add_argument("--straight-effect", choices=["auto", "kl", "l2"], default="auto",
                   help="straight mode effect: auto = l2 at the last block's hook_resid_post for gpt2 (LASR), "
                        "kl otherwise")
    g.add_argument("--straight-tau", type=float, default=None,
                   help="straight mode threshold (default 20 for l2, LASR's GPT-2 value; 0.5 nats for kl)")
    g.add_argument("--step", type=float, default=None,
                   help="straight mode step, absolute (default 0.5 for gpt2 as LASR; otherwise the median "
                        "distance between real activations / (straight steps - 1))")
    sizes.add("--angle-steps", 91, 31, "sphere scan points over 0-180 deg")
    sizes.add("--straight-steps", 101, 41, "straight scan points (the first is the base)")


@dataclass(frozen=True)
class Scans:
    sphere: sf.ScanConfig  # slerp, KL, threshold angle in degrees
    straight: sf.ScanConfig  # LASR: absolute steps; plateau = first step index above the threshold
    straight_output_hook: str | None  # where the straight effect is read (None: logits)
    step: float


def scan_configs(args: argparse.Namespace, site: Site, run: Run) -> Scans:
    """Sphere and straight scan configs for this site (resolving the auto settings), recorded in the run."""
    effect = args.straight_effect
    if effect == "auto":
        effect = "l2" if site.name == PUBLISHED_MODEL else "kl"
    if effect == "l2" and site.is_toy:
        raise ValueError("the toy has no late residual stream; use --straight-effect kl")
    tau = args.straight_tau if args.straight_tau is not None else (20.0 if effect == "l2" else 0.5)
    if effect == "l2" and args.straight_tau is None and site.name != PUBLISHED_MODEL:
        log.warning("straight threshold 20 is calibrated on GPT-2's blocks.11 residual stream; set --straight-tau")
    step = args.step
    if step is None:
        if site.name == PUBLISHED_MODEL:
            step = 0.5
        else:
            x = site.pool[:256].double()
            dist = torch.cdist(x, x)
            step = float(dist[~torch.eye(x.shape[0], dtype=torch.bool)].median()) / (args.straight_steps - 1)
    if not step > 0:
        raise ValueError(f"--step must be > 0, got {step}")
    scans = Scans(
        sphere=sf.ScanConfig(mode="sphere", steps=args.angle_steps, effect="kl", tau=args.tau),
        straight=sf.ScanConfig(mode="straight", scale="absolute", start=0.0, stop=step * (args.straight_steps - 1),
                               steps=args.straight_steps, effect=effect, tau=tau),
        straight_output_hook=site.late_hook if effect == "l2" else None,
        step=step,
    )
    run.config["scans"] = dict(sphere=scans.sphere.to_dict(), straight=scans.straight.to_dict(),
                               straight_output_hook=scans.straight_output_hook, step=step)
    return scans


# -- statistics and tables --------------------------------------------------------------------------
def describe(values, cap: float | None = None) -> dict:
    """Mean, sd, median and sample size of ``values``; ``inf`` (never reached) is counted at ``cap``
    (a lower bound) and reported as ``n_censored``."""
    v = np.asarray(values, dtype=np.float64).ravel()
    censored = ~np.isfinite(v)
    if cap is not None:
        v = np.where(censored, cap, v)
    else:
        v = v[~censored]
    n = int(v.size)
    return dict(
        n=int(censored.size), n_censored=int(censored.sum()),
        mean=float(v.mean()) if n else math.nan, sd=float(v.std(ddof=1)) if n > 1 else math.nan,
        median=float(np.median(v)) if n else math.nan, se=float(v.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan,
    )


def ks(a, b, cap: float | None = None) -> dict:
    """Two-sample Kolmogorov–Smirnov statistic and p-value (never-reached values counted at ``cap``)."""
    from scipy.stats import ks_2samp

    a, b = (np.asarray(x, dtype=np.float64).ravel() for x in (a, b))
    if cap is not None:
        a, b = np.where(np.isfinite(a), a, cap), np.where(np.isfinite(b), b, cap)
    if a.size == 0 or b.size == 0:
        return dict(statistic=math.nan, pvalue=math.nan)
    r = ks_2samp(a, b)
    return dict(statistic=float(r.statistic), pvalue=float(r.pvalue))


def fmt(stats: dict, digits: int = 1) -> str:
    """``mean ± sd`` (``≥`` when some values were never reached)."""
    if not stats or not math.isfinite(stats.get("mean", math.nan)):
        return "not reached" if stats and stats.get("n") else "-"
    sd = stats["sd"] if math.isfinite(stats["sd"]) else 0.0
    s = f"{stats['mean']:.{digits}f} ± {sd:.{digits}f}"
    if stats.get("n_censored"):
        s = f"≥{s} ({stats['n_censored']}/{stats['n']} not reached)"
    return s


def table(rows: list[dict], columns: list[str]) -> str:
    """A plain-text table of ``rows`` (dicts keyed by ``columns``)."""
    cells = [[str(c) for c in columns]] + [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# -- figures ------------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_distributions(path: Path, groups: dict[str, np.ndarray], xlabel: str, title: str,
                       cap: float | None = None) -> Path:
    """Histogram (left) and empirical CDF (right) per group; never-reached values drawn at ``cap``."""
    plt = _plt()
    fig, (ax_h, ax_c) = plt.subplots(1, 2, figsize=(11, 4.2))
    finite = [np.asarray(v, dtype=float) for v in groups.values()]
    allv = np.concatenate([np.where(np.isfinite(v), v, cap if cap is not None else np.nan) for v in finite])
    allv = allv[np.isfinite(allv)]
    bins = np.linspace(allv.min(), allv.max(), 30) if allv.size and allv.max() > allv.min() else 10
    for i, (name, v) in enumerate(groups.items()):
        v = np.asarray(v, dtype=float)
        n_inf = int((~np.isfinite(v)).sum())
        v = np.where(np.isfinite(v), v, cap) if cap is not None else v[np.isfinite(v)]
        label = f"{name} (n={v.size}" + (f", {n_inf} not reached" if n_inf else "") + ")"
        style = dict(color=f"C{i % 10}", ls="-" if i < 10 else "--", label=label)
        ax_h.hist(v, bins=bins, histtype="step", lw=1.5, **style)
        xs = np.sort(v)
        ax_c.step(xs, np.arange(1, xs.size + 1) / max(xs.size, 1), where="post", **style)
    ax_h.set_xlabel(xlabel)
    ax_h.set_ylabel("count")
    ax_c.set_xlabel(xlabel)
    ax_c.set_ylabel("cumulative fraction")
    for ax in (ax_h, ax_c):
        ax.grid(alpha=0.3)
    ax_c.legend(fontsize=7, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_mean_curves(path: Path, groups: dict[str, tuple[Tensor, Tensor]], xlabel: str, ylabel: str,
                     title: str, tau: float | None = None) -> Path:
    """Mean effect ± 1 sd per group; ``groups[name] = (steps [K], effects [R, K])``."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (name, (steps, effects)) in enumerate(groups.items()):
        e = effects.detach().double().cpu()
        x = steps.detach().double().cpu()
        m, s = e.mean(0), e.std(0) if e.shape[0] > 1 else torch.zeros_like(e[0])
        color = f"C{i % 10}"
        ax.plot(x, m, color=color, ls="-" if i < 10 else "--", label=f"{name} (n={e.shape[0]})")
        ax.fill_between(x, m - s, m + s, color=color, alpha=0.15)
    if tau is not None:
        ax.axhline(tau, color="k", ls="--", lw=1, label=f"threshold τ = {tau:g}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def exclusion_line(site: Site) -> str:
    """The massive-activation exclusion, as the last line(s) of a summary ("" for sites without one)."""
    ex = site.exclusion
    if not ex:
        return ""
    text = (f"\nmassive activations ({ex['rule']}): {ex['excluded']} of {ex['examined']} candidate prompts "
            f"excluded from the pool" + (f" (tokens {', '.join(map(repr, ex['excluded_tokens'][:8]))})" if ex["excluded"] else ""))
    tr = ex.get("sae_train")
    if tr:
        text += (f"; SAE training: {tr['excluded_massive']} of {tr['positions']} positions excluded "
                 f"(first positions of {tr['windows']} windows dropped too)")
    return text


# -- running ------------------------------------------------------------------------------------------
@dataclass
class Run:
    """The run being written: its (staging) directory and the config recorded beside the results."""

    name: str
    dir: Path
    config: dict
    published: bool

    def path(self, name: str) -> Path:
        return self.dir / name


def _environment() -> dict:
    import sae_lens
    import transformer_lens

    return dict(python=platform.python_version(), torch=torch.__version__, sensfind=sf.__version__,
                transformer_lens=getattr(transformer_lens, "__version__", "?"),
                sae_lens=getattr(sae_lens, "__version__", "?"), argv=sys.argv)


def run_experiment(name: str, parser: argparse.ArgumentParser, sizes: Sizes,
                   body: Callable[[argparse.Namespace, Site, Run], str], argv: list[str] | None = None) -> int:
    """Parse ``argv``, build the site, run ``body`` in a staged run directory, print its summary.

    ``body`` returns the summary text (a table); it is printed and saved as ``summary.txt``.
    """
    args = parser.parse_args(argv)
    sizes.resolve(args)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else Path("runs") / f"{name}-{args.model.replace(':', '-')}-{stamp}"
    try:
        site = load_site(args)
        with staged_dir(out, overwrite=args.overwrite) as tmp:
            config = dict(experiment=name, args=vars(args), environment=_environment(), d=site.d,
                          n_pool=int(site.pool.shape[0]), massive_activations=site.exclusion)
            run = Run(name=name, dir=tmp, config=config, published=args.model == PUBLISHED_MODEL)
            t0 = time.perf_counter()
            text = body(args, site, run) + exclusion_line(site)
            config["seconds"] = time.perf_counter() - t0
            save_json(tmp / "config.json", config)
            (tmp / "summary.txt").write_text(text + "\n")
    except (ModelUnavailableError, DictionaryUnavailableError, DatasetUnavailableError, ValueError,
            FileNotFoundError) as exc:
        print(f"{name}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    print(text)
    print(f"-> {out}")
    return 0
