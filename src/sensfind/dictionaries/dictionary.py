"""Dictionaries of feature directions: SAE decoders, loaded, built from tensors, or trained locally.

A :class:`Dictionary` holds the decoder rows of a sparse autoencoder (SAE) as unit vectors
(``decoder``, ``[n_latents, d]``; every cosine is taken against these) together with the raw row norms,
the hook name it was trained at, where it came from, and, when it has one, the SAELens SAE itself so
that ``encode`` runs SAELens' own encoder (whatever its architecture).

Ways to get one (this module and its training half, ``sensfind.dictionaries.training``, are the only ones that
import ``sae_lens``):

- ``load_pretrained(release, sae_id)``: ``SAE.from_pretrained`` from the HuggingFace hub. Offline this
  raises one :class:`DictionaryUnavailableError` that says how to use a local SAE instead.
- ``load_from_disk(path)``: an SAE saved in SAELens' format (``cfg.json`` + ``sae_weights.safetensors``).
- ``from_sae(sae)``: any SAELens SAE object.
- ``from_tensors(W_dec, W_enc=None, ...)``: plain tensors; with an encoder it builds a ``StandardSAE``.
- ``train_sae(activations, hook_name, d_sae)`` (in ``sensfind.dictionaries.training``): trains a ``StandardTrainingSAE`` with SAELens'
  ``SAETrainer`` on activations held in memory, cached on disk by a hash of data and config.

``check_compatible`` checks a dictionary against a site (width and hook name) before matching.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from sensfind.errors import DictionaryUnavailableError, InputFileError
from sensfind.errors import MissingInputError
from sensfind.models.loading import hf_offline, hub_reachable
from sensfind.specs import DEFAULT_SAE_RELEASE, Spec

log = logging.getLogger(__name__)

__all__ = [
    "check_dictionary_dir",
    "load_dictionary_dir",
    "load_dictionary_spec",
    "Dictionary",
    "check_compatible",
    "from_sae",
    "from_tensors",
    "load_from_disk",
    "load_pretrained",
    "neuronpedia_url",
]

# Neuronpedia pages exist for this release only (layer L resid_pre is "L-res-jb"; the one resid_post
# SAE, blocks.11.hook_resid_post, is "12-res-jb").
NEURONPEDIA_RELEASE = "gpt2-small-res-jb"
_NEURONPEDIA_URL = "https://www.neuronpedia.org/gpt2-small/{layer}-res-jb/{latent}"
_RESID_HOOK = re.compile(r"^blocks\.(\d+)\.hook_resid_(pre|post)$")

_META_FILE = "dictionary.json"
_TENSOR_FILE = "dictionary.safetensors"
_SAE_CFG_FILE = "cfg.json"  # SAELens' config file name in a saved SAE directory
_SAE_WEIGHTS_FILE = "sae_weights.safetensors"  # SAELens' weights file name beside it


def _check_weights(path: Path) -> None:
    """``InputFileError`` naming ``path`` unless it is a readable .safetensors file (its header and size;
    the tensors themselves are read when the dictionary loads)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputFileError(f"SAE weights {str(path)!r} are not a readable .safetensors file: "
                             f"{' '.join(str(exc).split())[:200]}") from None


def _reading(path: Path, load):
    """``load()``, with a damaged file of the SAE directory ``path`` as one ``InputFileError`` naming it."""
    for name in (_TENSOR_FILE, _SAE_WEIGHTS_FILE):
        if (path / name).is_file():
            _check_weights(path / name)
    try:
        return load()
    except (SafetensorError, ValueError, KeyError, OSError) as exc:
        if isinstance(exc, (MissingInputError, InputFileError, DictionaryUnavailableError)):
            raise
        raise InputFileError(f"SAE directory {str(path)!r} cannot be read: {type(exc).__name__}: "
                             f"{' '.join(str(exc).split())[:200]}") from None


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
        return _reading(path, lambda: cls._load(path, device))

    @classmethod
    def _load(cls, path: Path, device: str) -> Dictionary:
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
    from sae_lens.saes.sae import SAEMetadata  # lazy: optional-weight dependency, slow to import (kept out of `import sensfind`)

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
    sae = _reading(path, lambda: _sae_lens().SAE.load_from_disk(path, device=device))
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
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory  # lazy: optional-weight dependency, slow to import (kept out of `import sensfind`)

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


def check_dictionary_dir(path: str | Path) -> Path:
    """``path`` if it is a directory whose weights file (if any) is readable; one-line errors naming it."""
    p = Path(path)
    if not p.is_dir():
        raise ValueError(f"SAE directory {str(path)!r} does not exist" if not p.exists()
                         else f"SAE directory {str(path)!r} is not a directory")
    for name in (_TENSOR_FILE, _SAE_WEIGHTS_FILE):
        if (p / name).is_file():
            _check_weights(p / name)
    return p


def load_dictionary_dir(path: str | Path):
    """A dictionary from a directory: written by ``Dictionary.save`` or in SAELens format."""

    p = Path(path)
    if (p / "dictionary.json").is_file():
        return Dictionary.load(p)
    return load_from_disk(p)


def load_dictionary_spec(spec: Spec, hook: str | None = None):
    """The dictionary of a ``pretrained:`` or ``disk:`` spec. ``pretrained:`` defaults to the
    ``gpt2-small-res-jb`` release and to ``hook`` as the SAE id. Other kinds need the caller's activations."""
    if spec.kind == "pretrained":

        release, _, sae_id = spec.value.partition("/")
        return load_pretrained(release or DEFAULT_SAE_RELEASE, sae_id or hook or "blocks.1.hook_resid_pre")
    if spec.kind == "disk":
        return load_dictionary_dir(check_dictionary_dir(spec.value))
    raise ValueError(f"a {spec.kind!r} dictionary is built by the caller, not loaded from a spec")
