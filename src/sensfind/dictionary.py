"""Dictionaries of feature directions: SAE decoders, loaded, built from tensors, or trained locally.

A :class:`Dictionary` holds the decoder rows of a sparse autoencoder (SAE) as unit vectors
(``decoder``, ``[n_latents, d]``; every cosine is taken against these) together with the raw row norms,
the hook name it was trained at, where it came from, and, when it has one, the SAELens SAE itself so
that ``encode`` runs SAELens' own encoder (whatever its architecture).

Ways to get one (this is the only sensfind module that imports ``sae_lens``):

- ``load_pretrained(release, sae_id)``: ``SAE.from_pretrained`` from the HuggingFace hub. Offline this
  raises one :class:`DictionaryUnavailableError` that says how to use a local SAE instead.
- ``load_from_disk(path)``: an SAE saved in SAELens' format (``cfg.json`` + ``sae_weights.safetensors``).
- ``from_sae(sae)``: any SAELens SAE object.
- ``from_tensors(W_dec, W_enc=None, ...)``: plain tensors; with an encoder it builds a ``StandardSAE``.
- ``train_sae(activations, hook_name, d_sae)``: trains a ``StandardTrainingSAE`` with SAELens'
  ``SAETrainer`` on activations held in memory, cached on disk by a hash of data and config.

``check_compatible`` checks a dictionary against a site (width and hook name) before matching.
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
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Iterator
from typing import Any, Literal

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from .configs import Config, check_bool, check_int
from .errors import MissingInputError

log = logging.getLogger(__name__)

__all__ = [
    "Dictionary",
    "DictionaryUnavailableError",
    "TrainSAEConfig",
    "check_compatible",
    "from_sae",
    "from_tensors",
    "load_from_disk",
    "load_pretrained",
    "neuronpedia_url",
    "train_sae",
]

# Neuronpedia pages exist for this release only (layer L resid_pre is "L-res-jb"; the one resid_post
# SAE, blocks.11.hook_resid_post, is "12-res-jb").
NEURONPEDIA_RELEASE = "gpt2-small-res-jb"
_NEURONPEDIA_URL = "https://www.neuronpedia.org/gpt2-small/{layer}-res-jb/{latent}"
_RESID_HOOK = re.compile(r"^blocks\.(\d+)\.hook_resid_(pre|post)$")

_META_FILE = "dictionary.json"
_TENSOR_FILE = "dictionary.safetensors"
_TRAIN_FILE = "train.json"
_SAE_CFG_FILE = "cfg.json"  # SAELens' config file name in a saved SAE directory


class DictionaryUnavailableError(RuntimeError):
    """Raised when a pretrained SAE cannot be fetched (typically: no network access to the hub)."""


@dataclass(frozen=True, eq=False, repr=False)
class Dictionary:
    """Decoder directions of an SAE (or any dictionary), unit-normalised, plus what produced them.

    Construct with the *raw* decoder rows; ``__post_init__`` validates them (finite, nonzero, every
    row is named by index when not), keeps their norms in ``decoder_norms`` and replaces ``decoder``
    by the unit rows.

    Attributes:
        decoder: ``[n_latents, d]`` unit decoder rows (after construction).
        encoder: ``[d, n_latents]`` encoder weights, or None.
        b_enc: ``[n_latents]`` encoder bias, or None.
        b_dec: ``[d]`` decoder bias, or None.
        hook_name: TransformerLens hook the dictionary was trained at, or None if unknown.
        source: where it came from, e.g. ``pretrained:gpt2-small-res-jb/blocks.1.hook_resid_pre``.
        sae: the SAELens SAE behind it, if any; ``encode`` uses its ``encode``.
        info: JSON-serialisable metadata (``release``/``sae_id`` for pretrained SAEs, training
            config and statistics for trained ones).
        decoder_norms: ``[n_latents]`` norms of the raw decoder rows (set at construction).
    """

    decoder: Tensor
    encoder: Tensor | None = None
    b_enc: Tensor | None = None
    b_dec: Tensor | None = None
    hook_name: str | None = None
    source: str = "tensors"
    sae: Any = field(default=None, repr=False)
    info: dict = field(default_factory=dict)
    decoder_norms: Tensor = field(init=False, repr=False)
    _raw_decoder: Tensor = field(init=False, repr=False)

    def __post_init__(self):
        dec = self.decoder
        if not isinstance(dec, Tensor):
            raise TypeError(f"decoder must be a torch.Tensor of shape [n_latents, d], got {type(dec).__name__}")
        if dec.ndim != 2 or dec.shape[0] == 0 or dec.shape[1] == 0:
            raise ValueError(f"decoder must have shape [n_latents, d] with both >= 1, got {tuple(dec.shape)}")
        if not dec.is_floating_point():
            raise ValueError(f"decoder must be a floating-point tensor, got dtype {dec.dtype}")
        dec = dec.detach()
        n, d = dec.shape
        finite = torch.isfinite(dec).all(dim=1)
        if not finite.all():
            i = int((~finite).nonzero()[0])
            raise ValueError(f"decoder row {i} contains NaN or inf values ({self.source})")
        norms = dec.norm(dim=1)
        if (norms == 0).any():
            i = int((norms == 0).nonzero()[0])
            raise ValueError(
                f"decoder row {i} is the zero vector ({self.source}); every latent needs a nonzero direction "
                "(drop dead latents before building the dictionary)"
            )
        expected = {"encoder": (d, n), "b_enc": (n,), "b_dec": (d,)}
        for name, shape in expected.items():
            t = getattr(self, name)
            if t is not None and (not isinstance(t, Tensor) or tuple(t.shape) != shape):
                got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
                raise ValueError(f"{name} must have shape {list(shape)} to match decoder {list(dec.shape)}, got {got}")
        if self.hook_name is not None and (not isinstance(self.hook_name, str) or not self.hook_name):
            raise ValueError(f"hook_name must be a non-empty string or None, got {self.hook_name!r}")
        object.__setattr__(self, "decoder_norms", norms)
        object.__setattr__(self, "_raw_decoder", dec)  # a reference (the SAE's W_dec), not a copy
        object.__setattr__(self, "decoder", dec / norms[:, None])
        for name in ("encoder", "b_enc", "b_dec"):
            t = getattr(self, name)
            if t is not None:
                object.__setattr__(self, name, t.detach())

    def __repr__(self) -> str:
        return (
            f"Dictionary(n_latents={self.n_latents}, d={self.d}, hook_name={self.hook_name!r}, "
            f"source={self.source!r}, encoder={self.encoder is not None})"
        )

    @property
    def n_latents(self) -> int:
        return self.decoder.shape[0]

    @property
    def d(self) -> int:
        return self.decoder.shape[1]

    @property
    def raw_decoder(self) -> Tensor:  # [n_latents, d] decoder rows as given (as trained)
        return self._raw_decoder

    @property
    def can_encode(self) -> bool:
        return self.sae is not None

    def encode(self, acts: Tensor) -> Tensor:
        """Latent activations ``[..., n_latents]`` of activations ``[..., d]``, by the SAE's own encoder."""
        if self.sae is None:
            raise ValueError(
                f"dictionary {self.source!r} has no SAE to encode with (built from decoder rows only); "
                "build it with from_tensors(W_dec, W_enc=...) or from an SAE to encode"
            )
        if not isinstance(acts, Tensor) or acts.ndim == 0 or acts.shape[-1] != self.d:
            shape = tuple(acts.shape) if isinstance(acts, Tensor) else type(acts).__name__
            raise ValueError(f"acts must have shape [..., {self.d}] (the dictionary's width), got {shape}")
        return self.sae.encode(acts.to(self.sae.dtype))

    @property
    def release(self) -> str | None:
        return self.info.get("release")

    def neuronpedia_url(self, latent: int) -> str | None:
        """Neuronpedia page of ``latent``; only for ``gpt2-small-res-jb`` SAEs, None otherwise."""
        if not isinstance(latent, int) or isinstance(latent, bool) or not 0 <= latent < self.n_latents:
            raise ValueError(f"latent must be an integer in [0, {self.n_latents}), got {latent!r}")
        return neuronpedia_url(self.release, self.hook_name, latent)

    def save(self, path: str | Path) -> Path:
        """Write ``dictionary.json`` and the weights: SAELens' files when there is an SAE (so
        :func:`load_from_disk` can read them too), else ``dictionary.safetensors``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        meta = dict(hook_name=self.hook_name, source=self.source, info=self.info, n_latents=self.n_latents,
                    d=self.d, format="sae_lens" if self.sae is not None else "tensors")
        if self.sae is not None:
            self.sae.save_model(path)
        else:
            tensors = {"decoder": self.raw_decoder.contiguous()}
            for name in ("encoder", "b_enc", "b_dec"):
                if getattr(self, name) is not None:
                    tensors[name] = getattr(self, name).contiguous()
            save_file(tensors, path / _TENSOR_FILE)
        (path / _META_FILE).write_text(json.dumps(meta, indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> Dictionary:
        """Read a dictionary written by :meth:`save`."""
        path = Path(path)
        if not (path / _META_FILE).is_file():
            raise MissingInputError(f"{path / _META_FILE} not found; is {path} a directory written by Dictionary.save?")
        meta = json.loads((path / _META_FILE).read_text())
        if meta["format"] == "sae_lens":
            sae = _sae_lens().SAE.load_from_disk(path, device=device)
            return from_sae(sae, hook_name=meta["hook_name"], source=meta["source"], info=meta["info"])
        tensors = load_file(path / _TENSOR_FILE, device=device)
        return cls(
            decoder=tensors["decoder"], encoder=tensors.get("encoder"), b_enc=tensors.get("b_enc"),
            b_dec=tensors.get("b_dec"), hook_name=meta["hook_name"], source=meta["source"], info=meta["info"],
        )


def neuronpedia_url(release: str | None, hook_name: str | None, latent: int) -> str | None:
    """``https://www.neuronpedia.org/gpt2-small/{layer}-res-jb/{latent}`` for ``gpt2-small-res-jb``
    residual-stream SAEs; None for any other release or hook."""
    if release != NEURONPEDIA_RELEASE or hook_name is None:
        return None
    m = _RESID_HOOK.match(hook_name)
    if m is None:
        return None
    layer = int(m.group(1)) + (1 if m.group(2) == "post" else 0)
    return _NEURONPEDIA_URL.format(layer=layer, latent=int(latent))


def check_compatible(dictionary: Dictionary, d: int, hook_name: str | None = None) -> Dictionary:
    """Raise ``ValueError`` unless ``dictionary`` fits a site of width ``d`` at ``hook_name``.

    A dictionary whose hook is unknown is accepted with a warning; ``hook_name=None`` skips that check.
    """
    if not isinstance(dictionary, Dictionary):
        raise TypeError(f"expected a sensfind Dictionary, got {type(dictionary).__name__}")
    if dictionary.d != d:
        raise ValueError(
            f"dictionary {dictionary.source!r} has decoder rows of width {dictionary.d}, but the site has width {d}; "
            "use a dictionary trained on activations of this site"
        )
    if hook_name is not None:
        if dictionary.hook_name is None:
            log.warning(
                "dictionary %r has no hook name; cannot check it was trained at %r", dictionary.source, hook_name
            )
        elif dictionary.hook_name != hook_name:
            raise ValueError(
                f"dictionary {dictionary.source!r} was trained at hook {dictionary.hook_name!r}, but the subject's "
                f"site is {hook_name!r}; use a dictionary for {hook_name!r}"
            )
    return dictionary


# ---------------------------------------------------------------------------------------------------
# Loaders


def _sae_lens():
    import sae_lens  # slow to import (~10 s); only loaded when a dictionary needs it

    return sae_lens


def from_sae(sae, hook_name: str | None = None, source: str | None = None, info: dict | None = None) -> Dictionary:
    """Wrap a SAELens SAE. ``hook_name`` defaults to the SAE's ``cfg.metadata.hook_name``."""
    sae_lens = _sae_lens()
    if not isinstance(sae, sae_lens.SAE):
        raise TypeError(f"sae must be a sae_lens.SAE, got {type(sae).__name__}")
    if getattr(sae.cfg, "reshape_activations", "none") != "none":
        log.warning("SAE reshapes its input (%s); decoder rows are in the flattened space", sae.cfg.reshape_activations)
    if getattr(sae.cfg, "normalize_activations", "none") != "none":
        log.warning(
            "SAE normalises its input (%s); its decoder directions live in the normalised space",
            sae.cfg.normalize_activations,
        )
    hook = hook_name if hook_name is not None else sae.cfg.metadata.hook_name
    b_enc = getattr(sae, "b_enc", None)
    return Dictionary(
        decoder=sae.W_dec,
        encoder=getattr(sae, "W_enc", None),
        b_enc=b_enc if isinstance(b_enc, Tensor) else None,
        b_dec=getattr(sae, "b_dec", None),
        hook_name=hook,
        source=source if source is not None else f"sae:{type(sae).__name__}",
        sae=sae,
        info=dict(info or {}),
    )


def from_tensors(
    W_dec: Tensor,
    W_enc: Tensor | None = None,
    b_enc: Tensor | None = None,
    b_dec: Tensor | None = None,
    hook_name: str | None = None,
    source: str = "tensors",
) -> Dictionary:
    """A dictionary from decoder rows ``W_dec [n_latents, d]``.

    With ``W_enc [d, n_latents]`` this builds a SAELens ``StandardSAE`` (ReLU encoder, ``b_dec``
    subtracted from the input, missing biases zero) so that ``encode`` works; without it the
    dictionary holds directions only.
    """
    if not isinstance(W_dec, Tensor) or W_dec.ndim != 2:
        shape = tuple(W_dec.shape) if isinstance(W_dec, Tensor) else type(W_dec).__name__
        raise ValueError(f"W_dec must be a tensor of shape [n_latents, d], got {shape}")
    if W_enc is None:
        if b_enc is not None:
            raise ValueError("b_enc given without W_enc; an encoder bias needs encoder weights")
        return Dictionary(decoder=W_dec, b_dec=b_dec, hook_name=hook_name, source=source)
    # Validate shapes and values before SAELens sees them.
    Dictionary(decoder=W_dec, encoder=W_enc, b_enc=b_enc, b_dec=b_dec, hook_name=hook_name, source=source)
    sae_lens = _sae_lens()
    from sae_lens.saes.sae import SAEMetadata

    n, d = W_dec.shape
    dtype = str(W_dec.dtype).removeprefix("torch.")
    cfg = sae_lens.StandardSAEConfig(
        d_in=d, d_sae=n, dtype=dtype, device=str(W_dec.device), metadata=SAEMetadata(hook_name=hook_name)
    )
    with torch.random.fork_rng(devices=[]):  # SAELens draws initial weights we overwrite at once
        sae = sae_lens.StandardSAE(cfg)
    zeros = W_dec.new_zeros
    state = {
        "W_dec": W_dec.detach().clone(),
        "W_enc": W_enc.detach().to(W_dec.dtype).clone(),
        "b_enc": (b_enc.detach().to(W_dec.dtype).clone() if b_enc is not None else zeros(n)),
        "b_dec": (b_dec.detach().to(W_dec.dtype).clone() if b_dec is not None else zeros(d)),
    }
    sae.load_state_dict(state)
    return from_sae(sae, hook_name=hook_name, source=source)


def load_from_disk(path: str | Path, device: str = "cpu", release: str | None = None) -> Dictionary:
    """Load an SAE saved in SAELens' format (``cfg.json`` + ``sae_weights.safetensors``).

    Pass ``release="gpt2-small-res-jb"`` for a local copy of that release to get Neuronpedia links.
    """
    path = Path(path)
    if not (path / _SAE_CFG_FILE).is_file():
        raise MissingInputError(
            f"no SAELens SAE at {path}: expected {_SAE_CFG_FILE} and sae_weights.safetensors there "
            "(as written by SAE.save_model or Dictionary.save)"
        )
    sae = _sae_lens().SAE.load_from_disk(path, device=device)
    info = {"release": release} if release is not None else {}
    return from_sae(sae, source=f"disk:{path}", info=info)


def load_pretrained(
    release: str = "gpt2-small-res-jb", sae_id: str = "blocks.1.hook_resid_pre", device: str = "cpu"
) -> Dictionary:
    """Load a pretrained SAE with ``SAE.from_pretrained`` (needs the HuggingFace hub or its cache).

    Raises ``ValueError`` for a release or SAE id that SAELens does not know, and one
    :class:`DictionaryUnavailableError` when the weights cannot be fetched.
    """
    sae_lens = _sae_lens()
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    directory = get_pretrained_saes_directory()
    if not isinstance(release, str) or release not in directory:
        near = sorted(r for r in directory if isinstance(release, str) and r.startswith(release.split("-")[0]))[:8]
        raise ValueError(
            f"unknown SAE release {release!r}; see SAELens' pretrained_saes.yaml for all releases"
            + (f" (similar: {near})" if near else "")
        )
    ids = list(directory[release].saes_map)
    if sae_id not in ids:
        shown = ids if len(ids) <= 12 else ids[:12] + ["..."]
        raise ValueError(f"unknown sae_id {sae_id!r} for release {release!r}; allowed: {shown}")
    from .models import hf_offline, hub_reachable

    offline = not hub_reachable()  # unreachable: use the HF cache only, instead of retrying for ~30 s
    try:
        with hf_offline(offline):
            sae = sae_lens.SAE.from_pretrained(release, sae_id, device=device)
    except OSError as exc:  # HF hub errors (offline, not cached, HTTP) are all OSError subclasses
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise DictionaryUnavailableError(
            f"could not fetch the SAE {release}/{sae_id} from the HuggingFace hub: {type(exc).__name__}: {first}. "
            "This needs network access to huggingface.co, or the files in the local HF cache. Offline, use a local SAE "
            "instead: sensfind.load_from_disk(path) for an SAE saved by SAELens (cfg.json + "
            "sae_weights.safetensors, e.g. copied from a machine with hub access), or train one on local "
            "activations with sensfind.train_sae(activations, hook_name, d_sae)."
        ) from exc
    return from_sae(sae, source=f"pretrained:{release}/{sae_id}", info={"release": release, "sae_id": sae_id})


# ---------------------------------------------------------------------------------------------------
# Training


@dataclass(frozen=True)
class TrainSAEConfig(Config):
    """Hyperparameters of :func:`train_sae`: a SAELens ``StandardTrainingSAE`` (ReLU, L1 penalty) or
    ``TopKTrainingSAE`` (the ``k`` largest latents kept, no sparsity penalty).

    Attributes:
        architecture: ``standard`` (sparsity from ``l1_coefficient``) or ``topk`` (sparsity ``k``).
        l1_coefficient: weight of the L1 sparsity penalty (on latent activations times decoder norms).
            With ``normalize_activations`` on it is independent of the activations' scale. Standard only.
        k: latents kept per activation. Top-k only.
        lr: Adam learning rate (constant).
        batch_size: activations per training step; at most the number of activations.
        epochs: passes over the activations (reshuffled each pass).
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
        for name in ("batch_size", "epochs", "k"):
            check_int(name, getattr(self, name), 1)
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
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.sae import SAEMetadata

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
        sae = trainer.fit()
    seconds = time.perf_counter() - start
    sae.save_inference_model(out)
    with torch.no_grad():
        x = acts.to(config.device)
        latents = sae.encode(x)
        fvu = float((sae.decode(latents) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
        l0 = float((latents > 0).float().sum(1).mean())
    log.info("trained SAE in %.1f s: explained variance %.3f, L0 %.2f", seconds, 1 - fvu, l0)
    return dict(train_seconds=seconds, explained_variance=1 - fvu, l0=l0, steps=steps)


def _load_trained(path: Path, source: str, keep_path: bool = True) -> Dictionary:
    stats = json.loads((path / _TRAIN_FILE).read_text())
    sae = _sae_lens().SAE.load_from_disk(path, device=stats["config"]["device"])
    info = {"trained": stats, "path": str(path) if keep_path else None}
    return from_sae(sae, hook_name=stats["hook_name"], source=source, info=info)
