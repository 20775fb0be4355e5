"""sensfind: discover the features a language model uses by maximising sensitivity."""

from .blowup import max_slope_index, soft_blowup, threshold_index, threshold_value
from .dictionary import (
    Dictionary,
    DictionaryUnavailableError,
    TrainSAEConfig,
    check_compatible,
    train_sae,
)
from .corpus_sae import CorpusSAEConfig, SAEQuality, sae_quality, train_corpus_sae
from .match import Matches, NullConfig, RealOtherMatches, match_directions, match_real_other
from .effects import EFFECTS, get_effect
from .objective import adaptive_grid, sensitivity_objective
from .geometry import check_directions, directions_from_targets, effective_directions, perturb, project_out
from .optima import Discovery, cluster_directions, distinct_sensitive
from .optimize import DiscoverConfig, NonFiniteOutputError, Refinement, discover, refine
from .recovery import Recovery, recovery
from .models import ModelUnavailableError, load_model, local_config
from .scan import Scan, ScanConfig, scan, step_grid
from .configs import EffectConfig, ObjectiveConfig
from .jobs import run_compare, run_discover, run_scan
from .site import DiscoverySiteConfig, SiteConfig
from .landscape import Landscape, landscape, simplex_directions, simplex_grid
from .synthetic import LatentStats, Synthetic, latent_stats, synthetic_baseline, synthetic_structured
from .baselines import cov_random_targets, cov_stats, isotropic, load_directions
from .toy import ToyConfig, ToyModel, ToySample, ToySubject, feature_cosines
from .subjects import FunctionSubject, Subject, TransformerSubject
from .linear_response import LinearResponse, LinearResponseConfig, linear_response  # the function shadows its module here
from .mixture import MixtureConfig, MixtureTest, mixture_test

__all__ = [
    "PoolConfig",
    "PoolSAEConfig",
    "PoolSite",
    "RunOptions",
    "ScanSettings",
    "load_pool_site",
    "run_experiment",
    "SearchSpace",
    "Target",
    "TuneConfig",
    "TuneResult",
    "evaluate",
    "tune",
    "Landscape",
    "LatentStats",
    "Synthetic",
    "cov_random_targets",
    "cov_stats",
    "isotropic",
    "landscape",
    "latent_stats",
    "load_directions",
    "simplex_directions",
    "simplex_grid",
    "synthetic_baseline",
    "synthetic_structured",
    "ToyConfig",
    "ToyModel",
    "ToySample",
    "ToySubject",
    "feature_cosines",
    "project_out",
    "CorpusSAEConfig",
    "SAEQuality",
    "sae_quality",
    "train_corpus_sae",
    "Dictionary",
    "DictionaryUnavailableError",
    "TrainSAEConfig",
    "check_compatible",
    "train_sae",
    "Matches",
    "NullConfig",
    "RealOtherMatches",
    "match_directions",
    "match_real_other",
    "DiscoverConfig",
    "Discovery",
    "NonFiniteOutputError",
    "Recovery",
    "Refinement",
    "recovery",
    "refine",
    "adaptive_grid",
    "cluster_directions",
    "distinct_sensitive",
    "discover",
    "effective_directions",
    "sensitivity_objective",
    "EFFECTS",
    "FunctionSubject",
    "ModelUnavailableError",
    "Scan",
    "ScanConfig",
    "SiteConfig",
    "DiscoverySiteConfig",
    "EffectConfig",
    "ObjectiveConfig",
    "run_scan",
    "run_discover",
    "run_compare",
    "Subject",
    "TransformerSubject",
    "check_directions",
    "directions_from_targets",
    "get_effect",
    "load_model",
    "local_config",
    "max_slope_index",
    "perturb",
    "scan",
    "soft_blowup",
    "step_grid",
    "threshold_index",
    "threshold_value",
    "LinearResponse",
    "LinearResponseConfig",
    "linear_response",
    "MixtureConfig",
    "MixtureTest",
    "mixture_test",
]

__version__ = "0.1.0"

# The tuning names load sensfind.tuning (and optuna, slow to import) on first use only; the experiments'
# machinery (sensfind.pool, sensfind.pool_sae, sensfind.experiment) loads on first use too.
_LAZY = {name: "tuning" for name in ("SearchSpace", "Target", "TuneConfig", "TuneResult", "evaluate", "tune")}
_LAZY.update({name: "pool" for name in ("PoolConfig", "PoolSite", "load_pool_site")})
_LAZY.update({"PoolSAEConfig": "pool_sae", "RunOptions": "experiment", "ScanSettings": "experiment",
              "run_experiment": "experiment"})


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
