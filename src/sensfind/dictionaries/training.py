"""Training a sparse autoencoder on activations held in memory, with SAELens, cached on disk.

:func:`train_sae` trains a SAELens ``StandardTrainingSAE`` or ``TopKTrainingSAE`` with its ``SAETrainer``
(deterministic in the seed), saves it in SAELens' inference format and loads it back as a
:class:`~sensfind.dictionaries.dictionary.Dictionary`; :class:`TrainSAEConfig` holds its hyperparameters.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from sensfind.configs import Config, check_bool, check_int
from sensfind.dictionaries.dictionary import Dictionary, _sae_lens, from_sae

log = logging.getLogger(__name__)

__all__ = ["TrainSAEConfig", "train_sae"]

_TRAIN_FILE = "train.json"


@dataclass(frozen=True)
class TrainSAEConfig(Config):
    """Hyperparameters of :func:`train_sae`: a SAELens ``StandardTrainingSAE`` (ReLU, L1 penalty) or
    ``TopKTrainingSAE`` (the ``k`` largest latents kept, no sparsity penalty).

    Attributes:
        architecture: ``standard`` (sparsity from ``l1_coefficient``) or ``topk`` (sparsity ``k``).
        l1_coefficient: weight of the L1 sparsity penalty (on latent activations times decoder norms).
            With ``normalize_activations`` on it is independent of the activations' scale. Standard only.
        k: latents kept per activation (at most 65536). Top-k only.
        lr: Adam learning rate (constant).
        batch_size: activations per training step; at most the number of activations, and at most 65536.
        epochs: passes over the activations (reshuffled each pass; at most 1000).
        normalize_activations: scale inputs to mean norm ``sqrt(d)`` while training (SAELens'
            ``expected_average_only_in``); the scale is folded into the saved weights afterwards.
        device: where to train.
    """

    l1_coefficient: float = 2.0
    lr: float = 3e-3
    batch_size: int = 256
    epochs: int = 5
    normalize_activations: bool = True
    device: str = "cpu"
    architecture: Literal["standard", "topk"] = "standard"
    k: int = 32

    def __post_init__(self):
        if self.architecture not in ("standard", "topk"):
            raise ValueError(f"architecture must be 'standard' or 'topk', got {self.architecture!r}")
        for name in ("l1_coefficient", "lr"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if self.lr == 0:
            raise ValueError("lr must be > 0, got 0")
        for name, hi in (("batch_size", 65536), ("epochs", 1000), ("k", 65536)):
            check_int(name, getattr(self, name), 1, maximum=hi)
        check_bool("normalize_activations", self.normalize_activations)
        if not isinstance(self.device, str) or not self.device:
            raise ValueError(f"device must be a device string such as 'cpu' or 'cuda', got {self.device!r}")


class _ShuffledBatches(Iterator[Tensor]):
    """SAELens data provider over activations in memory: seeded shuffle each epoch, full batches."""

    def __init__(self, acts: Tensor, batch_size: int, seed: int):
        self.acts, self.batch_size = acts, batch_size
        self.gen = torch.Generator().manual_seed(seed)
        self.order, self.pos = torch.empty(0, dtype=torch.long), 0

    def __next__(self) -> Tensor:
        if self.pos + self.batch_size > len(self.order):
            self.order, self.pos = torch.randperm(self.acts.shape[0], generator=self.gen), 0
        idx = self.order[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        return self.acts[idx]


def _check_activations(activations: Tensor) -> Tensor:
    if not isinstance(activations, Tensor):
        raise TypeError(f"activations must be a torch.Tensor of shape [N, d], got {type(activations).__name__}")
    if activations.ndim != 2 or activations.shape[0] == 0 or activations.shape[1] == 0:
        raise ValueError(f"activations must have shape [N, d] with N, d >= 1, got {tuple(activations.shape)}")
    if not torch.isfinite(activations).all():
        i = int((~torch.isfinite(activations).all(dim=1)).nonzero()[0])
        raise ValueError(f"activation row {i} contains NaN or inf values")
    return activations.detach().to("cpu", torch.float32).contiguous()


def _cache_key(acts: Tensor, hook_name: str | None, d_sae: int, seed: int, config: TrainSAEConfig) -> str:
    h = hashlib.blake2b(digest_size=16)
    settings = dict(
        format=1, shape=list(acts.shape), hook_name=hook_name, d_sae=d_sae, seed=seed,
        config=config.to_dict(), sae_lens=_sae_lens().__version__,
    )
    h.update(json.dumps(settings, sort_keys=True).encode())
    h.update(acts.numpy())  # buffer protocol: no copy
    return h.hexdigest()


def train_sae(
    activations: Tensor,
    hook_name: str | None,
    d_sae: int,
    *,
    config: TrainSAEConfig = TrainSAEConfig(),
    seed: int = 0,
    cache_dir: str | Path | None = None,
) -> Dictionary:
    """Train an SAE on ``activations [N, d]`` with SAELens' ``SAETrainer``; deterministic in ``seed``.

    The trainer takes any iterator of activation batches as its data provider (what SAELens' own
    ``train_toy_sae`` does for synthetic data), so the activations are fed from memory, shuffled by a
    generator seeded with ``seed``; the initial weights are drawn from ``seed`` too, without touching
    the global RNG. The trained SAE is saved in SAELens' inference format and loaded back.

    With ``cache_dir`` the result lives in ``cache_dir/sae-<hash>`` (hash of the activations, hook name,
    ``d_sae``, ``seed``, ``config`` and the SAELens version) next to ``train.json`` (config and
    statistics); a later call with the same inputs loads it instead of training.
    """
    acts = _check_activations(activations)
    if not isinstance(d_sae, int) or isinstance(d_sae, bool) or d_sae < 1:
        raise ValueError(f"d_sae must be an integer >= 1, got {d_sae!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if not isinstance(config, TrainSAEConfig):
        raise TypeError(f"config must be a TrainSAEConfig, got {type(config).__name__}")
    if hook_name is not None and (not isinstance(hook_name, str) or not hook_name):
        raise ValueError(f"hook_name must be a non-empty string or None, got {hook_name!r}")
    n, d = acts.shape
    if n < config.batch_size:
        raise ValueError(
            f"need at least batch_size={config.batch_size} activations, got {n}; "
            "collect more or lower TrainSAEConfig.batch_size"
        )
    key = _cache_key(acts, hook_name, d_sae, seed, config)
    source = f"trained:{key[:12]}"
    if cache_dir is not None:
        target = Path(cache_dir) / f"sae-{key}"
        if (target / _TRAIN_FILE).is_file():
            log.info("loading cached SAE from %s", target)
            return _load_trained(target, source)
        target.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".sae-{key[:12]}-", dir=target.parent))
    else:
        target = None
        work = Path(tempfile.mkdtemp(prefix="sensfind-sae-"))
    try:
        stats = _fit(acts, hook_name, d_sae, seed, config, work)
        stats.update(
            key=key, n_activations=n, d=d, d_sae=d_sae, seed=seed, hook_name=hook_name, config=config.to_dict()
        )
        (work / _TRAIN_FILE).write_text(json.dumps(stats, indent=2))
        if target is None:
            return _load_trained(work, source, keep_path=False)
        try:
            os.replace(work, target)
        except OSError:  # another process cached the same SAE first; theirs is identical
            log.info("SAE %s was cached concurrently; using the cached copy", key[:12])
        return _load_trained(target, source)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)


def _fit(acts: Tensor, hook_name: str | None, d_sae: int, seed: int, config: TrainSAEConfig, out: Path) -> dict:
    """Train with SAELens' SAETrainer and save the inference SAE to ``out``; returns statistics."""
    sae_lens = _sae_lens()
    from sae_lens.config import SAETrainerConfig  # lazy: optional-weight dependency, slow to import (kept out of `import sensfind`)
    from sae_lens.saes.sae import SAEMetadata  # lazy: optional-weight dependency, slow to import (kept out of `import sensfind`)

    n, d = acts.shape
    steps_per_epoch = n // config.batch_size
    if config.architecture == "topk" and config.k > d_sae:
        raise ValueError(f"TrainSAEConfig.k={config.k} exceeds d_sae={d_sae}; a top-k SAE keeps at most d_sae latents")
    common = dict(
        d_in=d,
        d_sae=d_sae,
        normalize_activations="expected_average_only_in" if config.normalize_activations else "none",
        device=config.device,
        metadata=SAEMetadata(hook_name=hook_name),
    )
    if config.architecture == "topk":
        sae_cls, sae_cfg = sae_lens.TopKTrainingSAE, sae_lens.TopKTrainingSAEConfig(k=config.k, **common)
    else:
        sae_cls = sae_lens.StandardTrainingSAE
        sae_cfg = sae_lens.StandardTrainingSAEConfig(l1_coefficient=config.l1_coefficient, **common)
    trainer_cfg = SAETrainerConfig(
        total_training_samples=steps_per_epoch * config.epochs * config.batch_size,
        train_batch_size_samples=config.batch_size,
        lr=config.lr,
        lr_end=config.lr,
        lr_scheduler_name="constant",
        device=config.device,
        n_batches_for_norm_estimate=min(steps_per_epoch, 1000),
        logger=sae_lens.LoggingConfig(log_to_wandb=False),
    )
    steps = trainer_cfg.total_training_steps
    log.info("training SAE d_sae=%d on %d activations of width %d (%d steps)", d_sae, n, d, steps)
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sae = sae_cls(sae_cfg)
        batches = _ShuffledBatches(acts, config.batch_size, seed)
        trainer = sae_lens.SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=batches)
        with _sae_lens_bars():
            sae = trainer.fit()
    seconds = time.perf_counter() - start
    sae.save_inference_model(out)
    with torch.no_grad():  # in chunks: the latents of every activation at once can outgrow memory ([n, d_sae])
        mean = (sum(c.double().sum(0) for c in acts.split(_STATS_CHUNK)) / n).to(config.device)  # no [n, d] copy
        err, var, active = 0.0, 0.0, 0.0
        for chunk in acts.split(_STATS_CHUNK):
            x = chunk.to(config.device)
            latents = sae.encode(x)
            err += float((sae.decode(latents) - x).double().pow(2).sum())
            var += float((x.double() - mean).pow(2).sum())
            active += float((latents > 0).sum())
        fvu, l0 = err / var, active / n
    log.info("trained SAE in %.1f s: explained variance %.3f, L0 %.2f", seconds, 1 - fvu, l0)
    return dict(train_seconds=seconds, explained_variance=1 - fvu, l0=l0, steps=steps)


_STATS_CHUNK = 8192  # activations per chunk of the after-training statistics


def _sae_lens_bars():
    """SAELens draws its own progress bars on stderr; where its logger is set above INFO (the command line
    without ``--verbose``), they are not shown (a context that swallows what the trainer writes to stderr;
    log records still reach their handlers)."""
    if logging.getLogger("sae_lens").level > logging.INFO:
        return contextlib.redirect_stderr(io.StringIO())
    return contextlib.nullcontext()


def _load_trained(path: Path, source: str, keep_path: bool = True) -> Dictionary:
    stats = json.loads((path / _TRAIN_FILE).read_text())
    sae = _sae_lens().SAE.load_from_disk(path, device=stats["config"]["device"])
    info = {"trained": stats, "path": str(path) if keep_path else None}
    return from_sae(sae, hook_name=stats["hook_name"], source=source, info=info)
