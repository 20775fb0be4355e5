"""sensfind: discover the features a language model uses by maximising sensitivity.

The public surface, by layer: subjects and models, the scan, discovery, dictionaries, comparison, the
command-line jobs, and the error types. Everything else is importable from its module
(``sensfind.core.geometry``, ``sensfind.discovery.starts``, ...); the experiments' machinery lives in
``sensfind.lab`` and tuning in ``sensfind.tuning``.
"""

from sensfind.app.jobs import run_compare, run_discover, run_scan
from sensfind.app.site import DiscoverySiteConfig, SiteConfig
from sensfind.app.sweep import SweepConfig, run_sweep
from sensfind.comparison.compare import CompareConfig, Comparison, compare
from sensfind.comparison.match import match_directions
from sensfind.core.linear_response import linear_response
from sensfind.core.mixture import MixtureConfig, mixture_test
from sensfind.core.objective_config import ObjectiveConfig
from sensfind.core.scan import Scan, ScanConfig, scan
from sensfind.core.subject import FunctionSubject, Subject
from sensfind.core.toy import ToyConfig, ToyModel
from sensfind.dictionaries.corpus_sae import CorpusSAEConfig, sae_quality, train_corpus_sae
from sensfind.dictionaries.dictionary import Dictionary
from sensfind.dictionaries.training import TrainSAEConfig, train_sae
from sensfind.discovery.config import DiscoverConfig
from sensfind.discovery.loop import discover
from sensfind.discovery.optima import Discovery, distinct_sensitive
from sensfind.discovery.refinement import Refinement, refine
from sensfind.errors import DictionaryUnavailableError, ModelUnavailableError, NonFiniteOutputError, SensfindError
from sensfind.models.loading import load_model
from sensfind.models.transformer_subject import TransformerSubject

__all__ = [
    # subjects and models
    "Subject",
    "FunctionSubject",
    "TransformerSubject",
    "load_model",
    "ToyConfig",
    "ToyModel",
    # sites and scans
    "SiteConfig",
    "DiscoverySiteConfig",
    "ObjectiveConfig",
    "ScanConfig",
    "Scan",
    "scan",
    # are they features? the linear-response control and the mixture (Lp) test
    "linear_response",
    "MixtureConfig",
    "mixture_test",
    # discovery
    "DiscoverConfig",
    "Discovery",
    "discover",
    "distinct_sensitive",
    "Refinement",
    "refine",
    # dictionaries
    "Dictionary",
    "TrainSAEConfig",
    "train_sae",
    "CorpusSAEConfig",
    "train_corpus_sae",
    "sae_quality",
    # comparison
    "CompareConfig",
    "Comparison",
    "compare",
    "match_directions",
    # the command line's jobs
    "run_scan",
    "run_discover",
    "run_compare",
    "SweepConfig",
    "run_sweep",
    # errors
    "SensfindError",
    "ModelUnavailableError",
    "DictionaryUnavailableError",
    "NonFiniteOutputError",
]

__version__ = "0.1.0"
