"""Tuning discovery settings with Optuna: each trial runs ``discover`` with suggested settings.

The only module that imports ``optuna``.

A trial draws a ``DiscoverConfig`` from a search space, runs discovery on every training subject and
scores what it found:

* on the toy (ground truth, ``--model toy``, subjects are ``ToyConfig`` seeds):
  ``reached`` = fraction of restarts that reach a planted feature (``sensfind.core.recovery``), or
  ``distinct`` = number of distinct planted features reached, averaged over subjects;
* with an SAE dictionary (``--model random:tiny --sae DIR``, subjects are prompt indices):
  ``sae`` = fraction of the distinct optima whose best decoder match is significant
  (``p < p_value`` against ``match_directions``' isotropic null);
* on any subject, planted features or not (``--model smollm2-135m``, subjects are prompt indices; or
  the toy): ``sensitive`` = distinct optima (pairwise |cos| < 0.5, ``optima.distinct_sensitive``) that
  blow up before the median real-other direction (directions to the other prompts' activations at
  the site, or to other toy inputs), per 100k scan points. Set a budget for it (``max_points`` as a
  fixed value in the space file): the score is per point, and one round without a budget is cheap.

The compute a trial spent is always recorded (``points``: scan points run through the subject,
``Discovery.points_evaluated``, summed over subjects). Single-objective studies maximise the score;
``multi_objective`` studies maximise the score and minimise ``points`` (a Pareto front).

Default search space (``SearchSpace.default()``; ``sensfind tune --print-space`` prints it as JSON)::

    parameter          type         range / choices       log   maps to
    effect             fixed        kl                          effect   } the objective: fixed, so that
    mode               fixed        sphere                      mode     } every trial's score measures
    tau                fixed        0.5                         tau      } the same thing
    temperature        float        0.01 - 0.3            yes   temperature
    temperature_ratio  float        0.05 - 1.0            yes   temperature_final = temperature * ratio
    scan_steps         int          8 - 48                      scan_steps
    stop_fraction      float        0.25 - 1.0                  stop = fraction * full range (180 deg / 1)
    optimizer          categorical  sgd, adam                   optimizer
    lr                 float        0.01 - 0.5            yes   lr
    lr_ratio           float        0.01 - 1.0            yes   lr_final = lr * ratio
    restarts           int          4 - 32                yes   restarts
    iterations         int          10 - 80                     iterations
    polish_iterations  int          0 - 20                      polish_iterations
    polish_lr          float        0.01 - 0.2            yes   polish_lr

Every other ``DiscoverConfig`` field keeps its default. ``DiscoverConfig()`` lies inside this space
(with the space's fixed values, e.g. a budget) and is enqueued as the first trial of a new study, so the best trial is never worse than the
defaults on the training subjects. The objective (``effect``, ``mode``, ``tau``) is fixed: trials that
blew up under different effects or thresholds would optimise different things, and their scores would
not compare. To tune another objective, fix it in a space file (``{"effect": "l2", "tau": 20}``).
A space whose budget (``max_points``) cannot pay for one restart of its cheapest settings is refused
before the study starts.

A search-space file (JSON, or YAML by suffix) narrows or widens this per parameter; entries replace
the default entry of the same name, everything else is kept::

    {"lr": {"type": "float", "low": 0.02, "high": 0.2, "log": true},
     "optimizer": {"type": "categorical", "choices": ["sgd"]},
     "restarts": {"type": "int", "low": 8, "high": 16},
     "mode": "sphere",                                  # a plain value fixes a parameter
     "momentum": {"type": "fixed", "value": 0.9}}

Allowed names: the ``DiscoverConfig`` fields except ``seed`` and ``init``, plus the three derived
ones above (``temperature_ratio``, ``lr_ratio``, ``stop_fraction``). Giving ``temperature_final``,
``lr_final`` or ``stop`` drops the default entry of the derived parameter it replaces.

Storage and distribution
------------------------
``storage`` is a database URL (``postgresql://user@host/db``, ``sqlite:///path.db``, ...) or a file
path (an SQLite file); by default ``<out>/study.db``. SQLite rather than Optuna's journal file,
because Optuna's heartbeat (which fails the trials of killed workers) exists only for its RDB
storages. SQLite suits a few workers on one machine's local disk; for many workers or machines
use PostgreSQL. Every ``sensfind tune --storage URL --study-name NAME`` process joins the same study
(``load_if_exists``), runs its own ``--n-trials`` and stops early once the study holds
``--max-trials`` finished trials. A running trial writes a heartbeat every ``heartbeat_interval``
seconds; one silent for ``grace_period`` seconds (a killed worker) is marked FAIL by the next trial
start of any worker, and re-queued ``retries`` times. A restarted worker resumes the study with its
history (the sampler sees every past trial). ``optuna-dashboard <storage URL>`` opens a study
(``pip install optuna-dashboard``; not needed by sensfind).

Pruning
-------
During discovery the trial reports, ``REPORTS_PER_SUBJECT`` times per subject, the running mean of
the score (finished subjects' scores and the current subject's score of its current directions,
read off the last scan batch), at step ``subject * REPORTS_PER_SUBJECT + k``. A ``MedianPruner``
stops trials whose running score falls below the median of earlier trials at the same step.
Optuna does not support pruning in multi-objective studies (``Trial.report`` raises), so
``pruner='auto'`` disables it there and ``pruner='median'`` is refused.

A trial whose subject output turns non-finite (``NonFiniteOutputError``), whose score is NaN, or
whose suggested settings are an invalid combination is recorded FAIL with ``fail_reason`` in its
user attributes, and the study goes on.
"""

from __future__ import annotations

from sensfind.tuning._cli import add_tune_parser, cmd_tune, config_from_args, main
from sensfind.tuning._config import TuneConfig
from sensfind.tuning._results import TuneResult, save_plots
from sensfind.tuning._space import ParamSpec, SearchSpace
from sensfind.errors import StorageError, StudyMismatchError
from sensfind.tuning._storage import open_storage, open_study, storage_url
from sensfind.tuning._study import tune
from sensfind.tuning._targets import REPORTS_PER_SUBJECT, Evaluation, Metric, Target, evaluate, sensitive_target, toy_targets
from sensfind.tuning._targets import transformer_targets

__all__ = [
    "ParamSpec",
    "SearchSpace",
    "Target",
    "TuneConfig",
    "TuneResult",
    "Evaluation",
    "StorageError",
    "StudyMismatchError",
    "tune",
    "evaluate",
    "open_storage",
    "open_study",
    "toy_targets",
    "transformer_targets",
    "sensitive_target",
    "storage_url",
    "save_plots",
    "Metric",
    "REPORTS_PER_SUBJECT",
    "add_tune_parser",
    "cmd_tune",
    "config_from_args",
    "main",
]
