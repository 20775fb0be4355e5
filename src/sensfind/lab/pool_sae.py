"""The SAE of a pool site: chosen by a spec, loaded or trained on the site's activations, and cached.

``auto`` picks the pretrained ``gpt2-small-res-jb`` SAE at the hook for ``gpt2``, the project's corpus SAE
for corpus sites (``sensfind.dictionaries.corpus_sae``) and an SAE trained with ``sensfind.train_sae`` on activations of
the pool's kind otherwise. ``pretrained:RELEASE/SAE_ID``, ``disk:PATH``, ``corpus``, ``train`` and ``none``
name one explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from sensfind.dictionaries.training import TrainSAEConfig, train_sae
from sensfind.configs import Config, check_int, check_number
from sensfind.lab.pool import PUBLISHED_MODEL, PoolSite
from sensfind.specs import DEFAULT_SAE_RELEASE, parse_spec
from sensfind.dictionaries.dictionary import load_dictionary_spec
from sensfind.dictionaries.corpus_sae import CorpusSAEConfig, train_corpus_sae
from sensfind.lab.synthetic import latent_stats, synthetic_baseline, synthetic_structured

__all__ = ["SAE_SPECS", "PoolSAEConfig", "dictionary_info", "load_pool_sae", "synthetic_activations"]

# kind -> what follows the colon (bare kinds take nothing)
SAE_SPECS = {"auto": "", "pretrained": "RELEASE/SAE_ID", "disk": "PATH", "corpus": "", "train": "", "none": ""}


@dataclass(frozen=True)
class PoolSAEConfig(Config):
    """Which SAE an experiment uses at its site, and how a local one is trained.

    Attributes:
        sae: auto (pretrained gpt2-small-res-jb for gpt2, the corpus SAE for corpus sites, trained locally otherwise),
            pretrained:RELEASE/SAE_ID, disk:PATH (SAELens format), corpus, train, or none
        sae_expansion: trained SAEs: latents per dimension (at most 256)
        sae_l1: trained SAEs: L1 coefficient
        sae_train: activations a local SAE is trained on (at most 1000000)
        sae_epochs: epochs of local SAE training (at most 1000)
    """

    sae: str = "auto"
    sae_expansion: int = 4
    sae_l1: float = 2.0
    sae_train: int = field(default=16384, metadata={"smoke": 4096})
    sae_epochs: int = field(default=5, metadata={"smoke": 3})

    def __post_init__(self):
        parse_spec(self.sae, SAE_SPECS, "sae")
        check_int("sae_expansion", self.sae_expansion, minimum=1, maximum=256)
        check_number("sae_l1", self.sae_l1, lo=0.0)
        check_int("sae_train", self.sae_train, minimum=1, maximum=1_000_000)
        check_int("sae_epochs", self.sae_epochs, minimum=1, maximum=1000)


def load_pool_sae(site: PoolSite, config: PoolSAEConfig, cache_dir: str | None = None, spec: str | None = None,
                  l1: float | None = None):
    """The SAE named by ``spec`` (default ``config.sae``), or None for ``none``; trained SAEs use ``l1``
    (default ``config.sae_l1``) and are cached in ``cache_dir``. Loaded once per site."""
    spec = config.sae if spec is None else spec
    l1 = config.sae_l1 if l1 is None else l1
    key = (spec, l1)
    if key in site.dictionaries:
        return site.dictionaries[key]
    parsed = parse_spec(spec, SAE_SPECS, "--sae")
    if parsed.kind == "none":
        return None
    if parsed.kind == "auto":
        parsed = parse_spec(f"pretrained:{DEFAULT_SAE_RELEASE}/{site.hook}" if site.name == PUBLISHED_MODEL
                            else "corpus" if site.corpus_train is not None else "train", SAE_SPECS, "--sae")
    if parsed.kind == "corpus":
        if site.model is None or site.model.tokenizer is None:
            raise ValueError("--sae corpus needs a pretrained model with a tokenizer (e.g. --model smollm2-135m)")

        dic = train_corpus_sae(site.model, CorpusSAEConfig(hook=site.hook))
    elif parsed.kind in ("pretrained", "disk"):
        dic = load_dictionary_spec(parsed, site.hook)
    else:  # train
        acts = site.training_activations(config.sae_train)
        train = TrainSAEConfig(l1_coefficient=l1, epochs=config.sae_epochs, batch_size=min(256, acts.shape[0]))
        dic = train_sae(acts, None if site.is_toy else site.hook, config.sae_expansion * site.d, config=train,
                           seed=site.seed, cache_dir=cache_dir)
    if dic.d != site.d:
        raise ValueError(f"SAE {dic.source!r} has width {dic.d} but the site has width {site.d}")
    if not dic.can_encode:
        raise ValueError(f"SAE {dic.source!r} has no encoder; these experiments need one")
    site.dictionaries[key] = dic
    return dic


def synthetic_activations(dic, site: PoolSite, n: int, seed: int) -> tuple[dict[str, Tensor], dict]:
    """``synthetic-baseline`` and ``synthetic-structured`` activations ``[n, d]`` matched to the pool by
    ``dic``, and the latent statistics' summary (both empty when ``dic`` is None)."""

    if dic is None:
        return {}, {}
    stats = latent_stats(dic, site.pool)
    acts = {"synthetic-baseline": synthetic_baseline(dic, stats, n, seed).acts,
            "synthetic-structured": synthetic_structured(dic, stats, n, seed + 1).acts}
    return acts, stats.summary()


def dictionary_info(dic) -> dict | None:
    """What a run records about its SAE: source, width, hook and, where known, its training quality."""
    if dic is None:
        return None
    info = dict(source=dic.source, n_latents=dic.n_latents, hook_name=dic.hook_name)
    trained = dic.info.get("trained")
    if trained:
        info.update(explained_variance=trained.get("explained_variance"), train_l0=trained.get("l0"))
    if dic.info.get("quality"):  # the corpus SAE's held-out quality (sensfind.dictionaries.corpus_sae.sae_quality)
        info["quality"] = dic.info["quality"]
    return info
