"""Tuning discovery settings with Optuna: each trial runs ``discover`` with suggested settings.

The only module that imports ``optuna``.

A trial draws a ``DiscoverConfig`` from a search space, runs discovery on every training subject and
scores what it found:

* on the toy (ground truth, ``--model toy``, subjects are ``ToyConfig`` seeds):
  ``reached`` = fraction of restarts that reach a planted feature (``sensfind.recovery``), or
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
    tau                float        0.1 - 2.0             yes   tau (effect units: nats for kl)
    temperature        float        0.01 - 0.3            yes   temperature
    temperature_ratio  float        0.05 - 1.0            yes   temperature_final = temperature * ratio
    mode               categorical  sphere, straight            mode
    effect             categorical  kl, l2, cos                 effect
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
defaults on the training subjects. ``tau`` is in the effect's units, so tuning ``effect`` and ``tau``
together lets the (multivariate TPE) sampler find pairs that work; narrow them when fixing one.

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

import argparse
import csv
import io
import json
import logging
import math
import os
import socket
import sys
import time
import warnings
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from torch import Tensor

from .configs import Config, check_int, is_number
from .errors import error_boundary
from .geometry import effective_directions, reject
from .optima import Discovery, cluster_directions, distinct_sensitive
from .optimize import DiscoverConfig, NonFiniteOutputError, discover
from .runio import check_output_dir, save_json, write_atomic
from .specs import load_dictionary_dir
from .scan import scan
from .subjects import Subject

log = logging.getLogger(__name__)

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
    "add_tune_parser",
    "main",
]

REPORTS_PER_SUBJECT = 5
Metric = Literal["reached", "distinct", "sae", "sensitive"]
_METRICS = ("reached", "distinct", "sae", "sensitive")
_MAX_COS = 0.5  # optima closer than this count as one for the 'sensitive' metric
_REAL_OTHERS_TOY = 64
_SETTINGS_ATTR = "sensfind"

# --------------------------------------------------------------------------------------------------
# Search space
# --------------------------------------------------------------------------------------------------

ParamType = Literal["float", "int", "categorical", "fixed"]
_TYPES = ("float", "int", "categorical", "fixed")
# derived parameter -> the DiscoverConfig field it sets
_DERIVED = {"temperature_ratio": "temperature_final", "lr_ratio": "lr_final", "stop_fraction": "stop"}
_NOT_TUNABLE = ("seed", "init")  # the tuner keeps the seed fixed; 'given'/'covariance' need inputs


def _allowed_names() -> list[str]:
    return sorted({f.name for f in fields(DiscoverConfig)} - set(_NOT_TUNABLE) | set(_DERIVED))


@dataclass(frozen=True)
class ParamSpec:
    """One parameter of a search space.

    Attributes:
        name: a ``DiscoverConfig`` field or a derived parameter (see the module docstring).
        type: ``float`` | ``int`` (``low``..``high`` inclusive, ``log`` for a log scale),
            ``categorical`` (``choices``) or ``fixed`` (``value``, not tuned).
    """

    name: str
    type: ParamType
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple = ()
    value: Any = None

    def __post_init__(self):
        where = f"search space parameter {self.name!r}"
        if self.name not in _allowed_names():
            raise ValueError(f"unknown {where}; allowed: {_allowed_names()}")
        if self.type not in _TYPES:
            raise ValueError(f"{where}: type must be one of {list(_TYPES)}, got {self.type!r}")
        if not isinstance(self.log, bool):
            raise ValueError(f"{where}: log must be true or false, got {self.log!r}")
        if self.type in ("float", "int"):
            for end in ("low", "high"):
                v = getattr(self, end)
                if not is_number(v) or (self.type == "int" and not isinstance(v, int)):
                    kind = "an integer" if self.type == "int" else "a finite number"
                    raise ValueError(f"{where}: {end} must be {kind}, got {v!r}")
            if not self.low < self.high:
                raise ValueError(
                    f"{where}: empty range, low ({self.low}) must be < high ({self.high}); "
                    'to keep one value use {"type": "fixed", "value": ...}'
                )
            if self.log and self.low <= 0:
                raise ValueError(f"{where}: a log scale needs low > 0, got low={self.low}")
            endpoints = [self.low, self.high]
        elif self.type == "categorical":
            choices = self.choices
            if not isinstance(choices, (list, tuple)) or not choices:
                raise ValueError(f"{where}: choices must be a non-empty list, got {choices!r}")
            if any(not isinstance(c, (str, int, float, bool)) and c is not None for c in choices):
                raise ValueError(f"{where}: choices must be strings, numbers, booleans or null, got {choices!r}")
            if len(set(map(repr, choices))) != len(choices):
                raise ValueError(f"{where}: choices contain duplicates: {list(choices)}")
            object.__setattr__(self, "choices", tuple(choices))
            endpoints = list(self.choices)
        else:
            endpoints = [self.value]
        for v in endpoints:  # every value the space can produce must make a valid DiscoverConfig
            try:
                _apply(DiscoverConfig(), {self.name: v})
            except (ValueError, TypeError) as exc:
                raise ValueError(f"{where}: value {v!r} is not allowed: {exc}") from None

    @property
    def tuned(self) -> bool:
        return self.type != "fixed"

    def suggest(self, trial: optuna.Trial):
        if self.type == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log)
        if self.type == "int":
            return trial.suggest_int(self.name, self.low, self.high, log=self.log)
        if self.type == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        return self.value

    def contains(self, v) -> bool:
        if self.type in ("float", "int"):
            return is_number(v) and self.low <= v <= self.high and (self.type == "float" or float(v).is_integer())
        if self.type == "categorical":
            return v in self.choices
        return v == self.value

    def to_dict(self) -> dict:
        if self.type == "categorical":
            return {"type": "categorical", "choices": list(self.choices)}
        if self.type == "fixed":
            return {"type": "fixed", "value": self.value}
        return {"type": self.type, "low": self.low, "high": self.high, "log": self.log}

    @classmethod
    def from_json(cls, name: str, spec) -> ParamSpec:
        """From a file entry: ``{"type": ..., ...}`` or a plain value (fixed)."""
        if not isinstance(spec, dict):
            return cls(name, "fixed", value=spec)
        keys = {"type", "low", "high", "log", "choices", "value"}
        unknown = sorted(set(spec) - keys)
        if unknown:
            raise ValueError(f"search space parameter {name!r}: unknown key(s) {unknown}; allowed: {sorted(keys)}")
        if "type" not in spec:
            raise ValueError(f"search space parameter {name!r}: needs a 'type' (one of {list(_TYPES)})")
        needed = {"float": ("low", "high"), "int": ("low", "high"), "categorical": ("choices",), "fixed": ("value",)}
        for key in needed.get(spec["type"], ()):
            if key not in spec:
                raise ValueError(f"search space parameter {name!r}: type {spec['type']!r} needs {key!r}")
        return cls(name, spec["type"], low=spec.get("low"), high=spec.get("high"), log=spec.get("log", False),
                   choices=spec.get("choices", ()), value=spec.get("value"))


def _apply(base: DiscoverConfig, values: dict) -> DiscoverConfig:
    """``base`` with parameter values applied, derived parameters resolved (validated)."""
    direct = {k: v for k, v in values.items() if k not in _DERIVED}
    cfg = replace(base, **direct)
    derived = {}
    if "temperature_ratio" in values:
        derived["temperature_final"] = cfg.temperature * values["temperature_ratio"]
    if "lr_ratio" in values:
        derived["lr_final"] = cfg.lr * values["lr_ratio"]
    if "stop_fraction" in values:
        f = values["stop_fraction"]
        if not is_number(f) or not 0 < f <= 1:
            raise ValueError(f"stop_fraction must be in (0, 1], got {f!r}")
        derived["stop"] = replace(cfg, start=None, stop=None).scan_config.range[1] * f
    return replace(cfg, **derived) if derived else cfg


def _derived_values(cfg: DiscoverConfig) -> dict:
    """The derived parameters that reproduce ``cfg``."""
    full = replace(cfg, start=None, stop=None).scan_config.range[1]
    return {
        "temperature_ratio": 1.0 if cfg.temperature_final is None else cfg.temperature_final / cfg.temperature,
        "lr_ratio": 1.0 if cfg.lr_final is None else cfg.lr_final / cfg.lr,
        "stop_fraction": 1.0 if cfg.stop is None else cfg.stop / full,
    }


_DEFAULT_SPACE = {
    "tau": {"type": "float", "low": 0.1, "high": 2.0, "log": True},
    "temperature": {"type": "float", "low": 0.01, "high": 0.3, "log": True},
    "temperature_ratio": {"type": "float", "low": 0.05, "high": 1.0, "log": True},
    "mode": {"type": "categorical", "choices": ["sphere", "straight"]},
    "effect": {"type": "categorical", "choices": ["kl", "l2", "cos"]},
    "scan_steps": {"type": "int", "low": 8, "high": 48},
    "stop_fraction": {"type": "float", "low": 0.25, "high": 1.0},
    "optimizer": {"type": "categorical", "choices": ["sgd", "adam"]},
    "lr": {"type": "float", "low": 0.01, "high": 0.5, "log": True},
    "lr_ratio": {"type": "float", "low": 0.01, "high": 1.0, "log": True},
    "restarts": {"type": "int", "low": 4, "high": 32, "log": True},
    "iterations": {"type": "int", "low": 10, "high": 80},
    "polish_iterations": {"type": "int", "low": 0, "high": 20},
    "polish_lr": {"type": "float", "low": 0.01, "high": 0.2, "log": True},
}


@dataclass(frozen=True)
class SearchSpace:
    """Parameters a trial suggests (and fixed values), by name; see the module docstring."""

    params: dict[str, ParamSpec]

    def __post_init__(self):
        for derived, target in _DERIVED.items():
            if derived in self.params and target in self.params:
                raise ValueError(
                    f"search space sets both {derived!r} and {target!r}, which set the same DiscoverConfig field; "
                    "keep one"
                )

    @classmethod
    def default(cls) -> SearchSpace:
        return cls.from_dict({})

    @classmethod
    def from_dict(cls, entries: dict) -> SearchSpace:
        """Entries as in a space file, replacing the default entries of the same name."""
        if not isinstance(entries, dict):
            raise ValueError(f"a search space must be a JSON object of parameter -> spec, got {type(entries).__name__}")
        base = dict(_DEFAULT_SPACE)
        for derived, target in _DERIVED.items():
            if target in entries and derived not in entries:
                base.pop(derived, None)
        base.update(entries)
        return cls({name: ParamSpec.from_json(name, spec) for name, spec in base.items()})

    @classmethod
    def load(cls, path: str | Path) -> SearchSpace:
        """A JSON (or ``.yaml``/``.yml``) space file merged onto the default space."""
        from .runio import read_text

        path = Path(path)
        text = read_text(path, "search space file")
        try:
            if path.suffix in (".yaml", ".yml"):
                import yaml  # optuna depends on PyYAML

                data = yaml.safe_load(text)
            else:
                data = json.loads(text)
        except Exception as exc:  # noqa: BLE001 - any parse error is the user's file
            raise ValueError(f"search space file {str(path)!r} could not be parsed: {exc}") from None
        return cls.from_dict(data if data is not None else {})

    def suggest(self, trial: optuna.Trial) -> DiscoverConfig:
        """The trial's ``DiscoverConfig`` (raises ``ValueError`` for an invalid combination)."""
        values = {name: spec.suggest(trial) for name, spec in self.params.items()}
        return _apply(DiscoverConfig(), values)

    def default_params(self) -> dict | None:
        """The tuned parameter values that reproduce ``DiscoverConfig()`` with the space's fixed values,
        or None if that lies outside the space."""
        cfg = _apply(DiscoverConfig(), {n: s.value for n, s in self.params.items() if not s.tuned})
        full = cfg.to_dict() | _derived_values(cfg)
        out = {}
        for name, spec in self.params.items():
            if not spec.contains(full[name]):
                return None
            if spec.tuned:
                out[name] = full[name]
        return out

    def to_dict(self) -> dict:
        return {name: spec.to_dict() for name, spec in self.params.items()}


# --------------------------------------------------------------------------------------------------
# Subjects and scores
# --------------------------------------------------------------------------------------------------


@dataclass
class Target:
    """A subject trials run discovery on, and how to score directions found on it.

    ``score(directions [R, d], config)`` gets effective unit directions (in sphere mode the base
    projected out, like ``Discovery.restart_directions``) and returns the quality (higher is better);
    it also scores the current directions during a run (for pruning). A target scored on the whole
    result instead has ``final(discovery, config)`` and no ``score``.
    """

    name: str
    subject: Subject
    score: Callable[[Tensor, DiscoverConfig], float] | None
    final: Callable[[Discovery, DiscoverConfig], float] | None = None

    def evaluate(self, found: Discovery, config: DiscoverConfig) -> float:
        if self.final is not None:
            return self.final(found, config)
        return self.score(found.restart_directions, config)


def sensitive_target(name: str, subject: Subject, others: Tensor) -> Target:
    """A target scored by metric ``sensitive``: distinct optima that blow up before the median of the
    real-other directions towards ``others`` ``[M, d]`` (activations of other inputs at the site), per
    100k scan points. The median is measured with each trial's final scan settings (cached)."""
    from .geometry import directions_from_targets

    directions = directions_from_targets(subject.base, others)
    medians: dict[str, float] = {}

    def final(found: Discovery, config: DiscoverConfig) -> float:
        scan_cfg = config.final_scan_config
        key = json.dumps(scan_cfg.to_dict(), sort_keys=True)
        if key not in medians:
            with torch.no_grad():
                medians[key] = float(scan(subject, directions, scan_cfg).threshold.median())
        kept = distinct_sensitive(found.directions, found.blowup_deg, medians[key], _MAX_COS)
        return len(kept) * 1e5 / max(found.points_evaluated, 1)

    return Target(name, subject, None, final)


def toy_targets(seeds: Sequence[int], metric: Metric = "reached", input_index: int = 0) -> list[Target]:
    """One ``ToyModel(ToyConfig(seed=s)).subject(input_index)`` per seed, scored against its planted features."""
    from .recovery import recovery
    from .toy import ToyConfig, ToyModel

    if metric not in ("reached", "distinct", "sensitive"):
        raise ValueError(f"the toy is scored by metric 'reached', 'distinct' or 'sensitive', got {metric!r}")
    targets = []
    for s in seeds:
        subject = ToyModel(ToyConfig(seed=int(s))).subject(input_index)
        if metric == "sensitive":
            targets.append(sensitive_target(f"toy:{s}", subject, subject.real_others(_REAL_OTHERS_TOY, seed=int(s) + 1)))
            continue
        features = subject.signed_features()

        def score(dirs: Tensor, config: DiscoverConfig, subject=subject, features=features) -> float:
            rec = recovery(dirs, features, subject.base, mode=config.mode)
            return rec.fraction_reached if metric == "reached" else float(len(rec.distinct_features))

        targets.append(Target(f"toy:{s}", subject, score))
    return targets


def transformer_targets(
    model_name: str, sae: str | None, prompt_indices: Sequence[int], prompts: str = "builtin",
    hook: str = "blocks.1.hook_resid_pre", position: int = -1, p_value: float = 0.01, seed: int = 0,
    metric: Metric = "sae",
) -> list[Target]:
    """Transformer subjects (one per prompt index) scored by metric ``sae``: the fraction of distinct
    optima whose best match in the SAE dictionary at ``sae`` (a ``Dictionary.save`` or SAELens
    directory) has ``p < p_value``; or by metric ``sensitive`` against the other prompts' activations."""
    from .dictionary import check_compatible
    from .match import match_directions
    from .models import load_model
    from .prompts import load_prompts, prompt_activations
    from .subjects import TransformerSubject

    model = load_model(model_name, seed=seed)
    texts = load_prompts(prompts)
    for i in prompt_indices:
        if not 0 <= i < len(texts):
            raise ValueError(f"prompt index {i} is out of range; {prompts!r} holds {len(texts)} prompts")
    if metric == "sensitive":
        acts = prompt_activations(model, texts, hook, position)
        targets = []
        for i in prompt_indices:
            subject = TransformerSubject(model, texts[i], hook=hook, position=position)
            keep = (acts - subject.base).norm(dim=1) > 1e-6 * subject.base.norm()
            keep[i] = False
            targets.append(sensitive_target(f"prompt:{i}", subject, acts[keep]))
        return targets
    dictionary = load_dictionary_dir(sae)
    check_compatible(dictionary, model.cfg.d_model, hook)
    targets = []
    for i in prompt_indices:
        subject = TransformerSubject(model, texts[i], hook=hook, position=position)

        def score(dirs: Tensor, config: DiscoverConfig) -> float:
            clusters = cluster_directions(dirs, torch.zeros(dirs.shape[0]), config.cluster_threshold)
            optima = dirs[[c[0] for c in clusters]]
            matches = match_directions(optima, dictionary, k=1)
            return float((matches.p_value[:, 0] < p_value).double().mean())

        targets.append(Target(f"prompt:{i}", subject, score))
    return targets


class _Probe:
    """A subject view that keeps the last batch it ran, to read the current directions off it.

    ``scan`` runs ``[R * K, d]`` perturbed activations, restart-major; the last point of each restart
    minus the base is along the direction being optimised (for sphere mode once the base is projected out).
    """

    def __init__(self, subject: Subject):
        self.inner = subject
        self.base = subject.base
        out = getattr(subject, "base_output", None)
        if out is None:
            with torch.no_grad():
                out = subject.run(subject.base[None])[0]
        self.base_output = out.detach()
        self.last: Tensor | None = None

    def __getattr__(self, name):
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def run(self, acts: Tensor) -> Tensor:
        self.last = acts.detach()
        return self.inner.run(acts)

    def directions(self, restarts: int, mode: str) -> Tensor | None:  # [R, d] effective unit directions
        if self.last is None or self.last.shape[0] % restarts:
            return None
        tips = self.last.reshape(restarts, -1, self.last.shape[-1]) - self.base  # [R, K, d]
        if mode == "sphere":  # only the part orthogonal to the base carries the direction (0 at 0 and 180 deg)
            tips = reject(tips, self.base)
        best = tips.norm(dim=-1).argmax(dim=1)  # [R] the scan point that shows the direction best
        tips = tips[torch.arange(restarts), best]
        if (tips.norm(dim=1) == 0).any():
            return None
        return effective_directions(tips, self.base, mode)


# --------------------------------------------------------------------------------------------------
# Evaluating a configuration
# --------------------------------------------------------------------------------------------------


@dataclass
class Evaluation:
    """Scores of one ``DiscoverConfig`` on some targets: their mean ``quality`` and the ``points`` spent."""

    quality: float
    points: int
    scores: dict[str, float]
    n_optima: dict[str, int]
    seconds: float


class _Stop(Exception):
    """Raised from the discovery callback to prune a trial."""


def evaluate(
    config: DiscoverConfig,
    targets: Sequence[Target],
    report: Callable[[int, float, int], None] | None = None,
) -> Evaluation:
    """Run ``discover`` with ``config`` on every target and score it.

    ``report(step, running_quality, points_so_far)`` is called ``REPORTS_PER_SUBJECT`` times per target
    (it may raise to stop); the running quality averages the finished targets' scores and the current
    target's score of its current directions. Raises ``NonFiniteOutputError`` for a non-finite output.
    """
    if not targets:
        raise ValueError("no targets to evaluate on")
    t0 = time.perf_counter()
    scores: dict[str, float] = {}
    n_optima: dict[str, int] = {}
    points = 0
    for k, target in enumerate(targets):
        probe = _Probe(target.subject)
        last_step = 0

        def callback(it: int, record: dict, k=k, probe=probe, target=target, done=points) -> None:
            nonlocal last_step
            if config.max_points is not None:  # progress through the budget, else through the one round
                step = REPORTS_PER_SUBJECT * record["points"] // config.max_points
            else:
                step = REPORTS_PER_SUBJECT * (record["round_iteration"] + 1) // max(config.iterations, 1)
            if report is None or target.score is None or step <= last_step or step >= REPORTS_PER_SUBJECT:
                return  # the last step of each target is reported with its final score
            dirs = probe.directions(record["restarts_scanned"], config.mode)
            if dirs is None:
                return
            last_step = step
            running = (sum(scores.values()) + target.score(dirs, config)) / (k + 1)
            report(k * REPORTS_PER_SUBJECT + step, running, done + record["points"])

        found = discover(probe, config, callback=callback if report is not None else None)
        points += found.points_evaluated
        scores[target.name] = float(target.evaluate(found, config))
        n_optima[target.name] = len(found)
        if report is not None:
            report((k + 1) * REPORTS_PER_SUBJECT, sum(scores.values()) / (k + 1), points)
    quality = sum(scores.values()) / len(scores)
    return Evaluation(quality, points, scores, n_optima, time.perf_counter() - t0)


# --------------------------------------------------------------------------------------------------
# Tuning configuration, storage and study
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TuneConfig(Config):
    """Settings of a tuning run (one worker). The CLI flags map onto these one-to-one.

    Study:
        study_name: workers with the same storage and name join one study.
        storage: database URL or SQLite file path (``None``: ``<out>/study.db``; ``memory``: in-process).
        n_trials: trials this worker runs (``None``: until ``timeout`` or ``max_trials``).
        max_trials: stop once the study holds this many finished trials, whoever ran them.
        timeout: seconds after which this worker starts no new trial.
        metric: ``reached`` | ``distinct`` (toy), ``sae`` (transformer with an SAE) or ``sensitive`` (any).
        multi_objective: maximise the metric and minimise points (Pareto front) instead of the metric alone.
        sampler: ``tpe`` (multivariate TPE) or ``random``; sampler_seed seeds it (None: random).
        pruner: ``auto`` (median for single-objective, none for multi-objective), ``median`` or ``none``.
        enqueue_defaults: make ``DiscoverConfig()`` (if inside the space) the first trial of a new study.
    Failure handling:
        heartbeat_interval: seconds between a running trial's heartbeats (RDB storages).
        grace_period: seconds without a heartbeat after which a trial is failed (None: 3 x interval).
        retries: how many times a trial failed that way is re-queued.
    Subjects:
        model: ``toy``, or a model name for ``sensfind.load_model`` (e.g. ``random:tiny``, ``gpt2``).
        subjects: toy seeds (``--model toy``), or prompt indices into ``prompts``.
        toy_input: which input of each toy model's stream is the base.
        sae: dictionary directory (``Dictionary.save`` or SAELens format) for metric ``sae``.
        prompts, hook, position: site of transformer subjects.
        p_value: significance level of a dictionary match for metric ``sae``.
    """

    study_name: str = "sensfind-tune"
    storage: str | None = None
    n_trials: int | None = 20
    max_trials: int | None = None
    timeout: float | None = None
    metric: Metric = "reached"
    multi_objective: bool = False
    sampler: Literal["tpe", "random"] = "tpe"
    sampler_seed: int | None = None
    pruner: Literal["auto", "median", "none"] = "auto"
    enqueue_defaults: bool = True
    heartbeat_interval: int = 10
    grace_period: int | None = None
    retries: int = 1
    model: str = "toy"
    subjects: tuple[int, ...] = (0, 1, 2)
    toy_input: int = 0
    sae: str | None = None
    prompts: str = "builtin"
    hook: str = "blocks.1.hook_resid_pre"
    position: int = -1
    p_value: float = 0.01

    def __post_init__(self):
        def count(name, minimum, optional=True):
            check_int(name, getattr(self, name), minimum, optional)

        if not isinstance(self.study_name, str) or not self.study_name.strip():
            raise ValueError(f"study_name must be a non-empty string, got {self.study_name!r}")
        count("n_trials", 0)
        count("max_trials", 1)
        count("sampler_seed", 0)
        count("heartbeat_interval", 1, optional=False)
        count("grace_period", 1)
        count("retries", 0, optional=False)
        count("toy_input", 0, optional=False)
        if self.grace_period is not None and self.grace_period <= self.heartbeat_interval:
            raise ValueError(f"grace_period ({self.grace_period}) must exceed heartbeat_interval ({self.heartbeat_interval})")
        if self.timeout is not None and (not is_number(self.timeout) or self.timeout <= 0):
            raise ValueError(f"timeout must be a number of seconds > 0 or None, got {self.timeout!r}")
        if self.n_trials is None and self.timeout is None and self.max_trials is None:
            raise ValueError("n_trials, max_trials and timeout are all None; the worker would never stop")
        if self.metric not in _METRICS:
            raise ValueError(f"metric must be one of {list(_METRICS)}, got {self.metric!r}")
        if self.sampler not in ("tpe", "random"):
            raise ValueError(f"sampler must be 'tpe' or 'random', got {self.sampler!r}")
        if self.pruner not in ("auto", "median", "none"):
            raise ValueError(f"pruner must be 'auto', 'median' or 'none', got {self.pruner!r}")
        if self.pruner == "median" and self.multi_objective:
            raise ValueError("Optuna does not support pruning in multi-objective studies; use pruner 'auto' or 'none'")
        object.__setattr__(self, "subjects", tuple(self.subjects))
        if not self.subjects or any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in self.subjects):
            raise ValueError(f"subjects must be a non-empty list of integers >= 0, got {list(self.subjects)}")
        if self.model == "toy" and self.metric == "sae":
            raise ValueError("metric 'sae' needs a transformer model and --sae; on the toy use 'reached', "
                             "'distinct' or 'sensitive'")
        if self.model != "toy" and self.metric != "sensitive" and (self.metric != "sae" or self.sae is None):
            raise ValueError(f"model {self.model!r} has no planted features: use metric 'sensitive', "
                             "or metric 'sae' with --sae DIR")
        if not is_number(self.p_value) or not 0 < self.p_value < 1:
            raise ValueError(f"p_value must be in (0, 1), got {self.p_value!r}")

    @property
    def pruning(self) -> bool:
        return self.pruner == "median" or (self.pruner == "auto" and not self.multi_objective)

    @property
    def directions(self) -> list[str]:
        return ["maximize", "minimize"] if self.multi_objective else ["maximize"]

    @property
    def metric_names(self) -> list[str]:
        return [self.metric, "points"] if self.multi_objective else [self.metric]

    def study_settings(self, space: SearchSpace) -> dict:
        """What every worker of one study must agree on (stored in the study's user attributes)."""
        keys = ("metric", "multi_objective", "model", "subjects", "toy_input", "sae", "prompts", "hook",
                "position", "p_value")
        return json.loads(json.dumps({k: getattr(self, k) for k in keys} | {"space": space.to_dict()}))


class StorageError(ValueError):
    """The study storage cannot be opened (unreachable server, missing driver, bad URL)."""


class StudyMismatchError(ValueError):
    """A study of that name exists with other directions or settings."""


def _display_url(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - only for messages
        return url


def storage_url(storage: str | None, out: str | Path | None) -> str:
    """The storage URL for a ``storage`` spec: a URL as given (``postgresql://`` uses psycopg 3), a file path as
    SQLite, ``None`` as ``<out>/study.db``."""
    if storage is None:
        if out is None:
            raise ValueError("no storage given and no output directory to put the default study.db in")
        storage = str(Path(out) / "study.db")
    if storage == "memory" or "://" in storage:
        for plain in ("postgresql://", "postgres://"):  # psycopg 3 whatever SQLAlchemy's default driver
            if storage.startswith(plain):
                return "postgresql+psycopg://" + storage[len(plain):]
        return storage
    path = Path(storage).expanduser().resolve()
    if path.is_dir():
        raise StorageError(f"storage {storage!r} is a directory; give a file path (e.g. {storage}/study.db) or a URL")
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


_OPEN_ATTEMPTS = 5
# messages of workers racing to create the tables of a new storage (SQLite, PostgreSQL)
_CREATION_RACE = ("already exists", "database is locked", "duplicate key", "UniqueViolation", "UNIQUE constraint")


def open_storage(config: TuneConfig, out: str | Path | None = None) -> optuna.storages.BaseStorage:
    """Open (and create the tables of) the study storage, with heartbeats and retries of stale trials."""
    url = storage_url(config.storage, out)
    shown = _display_url(config.storage if config.storage and "://" in config.storage else url)
    if url == "memory":
        return optuna.storages.InMemoryStorage()
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    grace = config.grace_period if config.grace_period is not None else 3 * config.heartbeat_interval
    for attempt in range(_OPEN_ATTEMPTS):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                stale_callback = (optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=config.retries)
                                  if config.retries > 0 else None)
                return optuna.storages.RDBStorage(
                    url, engine_kwargs=engine_kwargs, heartbeat_interval=config.heartbeat_interval,
                    grace_period=grace, heartbeat_stale_trial_callback=stale_callback,
                )
        except ImportError as exc:
            hint = " (pip install 'psycopg[binary]')" if url.startswith("postgres") else ""
            raise StorageError(f"cannot open storage {shown!r}: database driver missing: {exc}{hint}") from None
        except Exception as exc:  # noqa: BLE001 - sqlalchemy/driver errors of many kinds: one clear line
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            if attempt + 1 < _OPEN_ATTEMPTS and any(m in reason for m in _CREATION_RACE):
                log.info("storage tables being created by another worker (%s); retrying", reason)
                time.sleep(0.5 + attempt)
                continue
            raise StorageError(f"cannot open storage {shown!r}: {reason}") from None


def _sampler(config: TuneConfig) -> optuna.samplers.BaseSampler:
    if config.sampler == "random":
        return optuna.samplers.RandomSampler(seed=config.sampler_seed)
    return optuna.samplers.TPESampler(seed=config.sampler_seed, multivariate=True, constant_liar=True)


def _pruner(config: TuneConfig) -> optuna.pruners.BasePruner:
    if not config.pruning:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2)


def open_study(config: TuneConfig, space: SearchSpace | None = None, out: str | Path | None = None,
               storage: optuna.storages.BaseStorage | None = None) -> optuna.Study:
    """Create the study, or join it if it exists (checking that its directions and settings agree)."""
    space = space or SearchSpace.default()
    storage = storage if storage is not None else open_storage(config, out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = optuna.create_study(storage=storage, study_name=config.study_name, directions=config.directions,
                                    sampler=_sampler(config), pruner=_pruner(config), load_if_exists=True)
    have = [d.name.lower() for d in study.directions]
    if have != config.directions:
        raise StudyMismatchError(
            f"study {config.study_name!r} exists with directions {have} but this run needs {config.directions} "
            f"({'multi-objective: metric and points' if config.multi_objective else 'single-objective'}); "
            "use another --study-name or the study's own objective setting"
        )
    settings = config.study_settings(space)
    stored = study.user_attrs.get(_SETTINGS_ATTR)
    if stored is None:
        study.set_user_attr(_SETTINGS_ATTR, settings)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(config.metric_names)
        if config.enqueue_defaults and not study.get_trials(deepcopy=False):
            defaults = space.default_params()
            if defaults is not None:
                study.enqueue_trial(defaults, user_attrs={"enqueued": "defaults"})
    elif stored != settings:
        diff = sorted(k for k in set(stored) | set(settings) if stored.get(k) != settings.get(k))
        raise StudyMismatchError(
            f"study {config.study_name!r} exists with other settings ({', '.join(diff)} differ); "
            "run with the same settings and search space, or use another --study-name"
        )
    return study


def _targets(config: TuneConfig) -> list[Target]:
    if config.model == "toy":
        return toy_targets(config.subjects, config.metric, config.toy_input)
    return transformer_targets(config.model, config.sae, config.subjects, config.prompts, config.hook,
                               config.position, config.p_value, metric=config.metric)


# --------------------------------------------------------------------------------------------------
# The objective and the tuning loop
# --------------------------------------------------------------------------------------------------


class _Objective:
    def __init__(self, config: TuneConfig, space: SearchSpace, targets: Sequence[Target]):
        self.config, self.space, self.targets = config, space, targets
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.ran = 0

    def __call__(self, trial: optuna.Trial):
        self.ran += 1
        trial.set_user_attr("worker", self.worker)
        try:
            discover_config = self.space.suggest(trial)
        except ValueError as exc:
            return self._fail(trial, f"invalid settings: {exc}", 0)
        trial.set_user_attr("discover_config", discover_config.to_dict())
        spent = 0

        def report(step: int, value: float, points: int) -> None:
            nonlocal spent
            spent = points
            if not math.isfinite(value):
                raise NonFiniteOutputError(f"the score turned non-finite ({value}) at step {step}")
            trial.report(value, step)
            if trial.should_prune():
                raise _Stop(f"pruned at step {step} with running {self.config.metric} {value:.4g}")

        try:
            ev = evaluate(discover_config, self.targets, report=report if self.config.pruning else None)
        except NonFiniteOutputError as exc:
            return self._fail(trial, f"non-finite: {' '.join(str(exc).split())}", spent)
        except _Stop as stop:
            trial.set_user_attr("points", spent)
            raise optuna.TrialPruned(str(stop)) from None
        trial.set_user_attr("points", ev.points)
        trial.set_user_attr("seconds", ev.seconds)
        trial.set_user_attr("scores", ev.scores)
        trial.set_user_attr("n_optima", ev.n_optima)
        if not math.isfinite(ev.quality):
            return self._fail(trial, f"non-finite: the {self.config.metric} score is {ev.quality}", ev.points)
        return (ev.quality, float(ev.points)) if self.config.multi_objective else ev.quality

    def _fail(self, trial: optuna.Trial, reason: str, points: int):
        """Record why and return NaN, which Optuna stores as a FAIL without stopping the study."""
        log.warning("trial %d failed: %s", trial.number, reason)
        trial.set_user_attr("fail_reason", reason)
        trial.set_user_attr("points", points)
        return (math.nan, math.nan) if self.config.multi_objective else math.nan


def tune(
    config: TuneConfig = TuneConfig(),
    space: SearchSpace | None = None,
    *,
    out: str | Path | None = None,
    targets: Sequence[Target] | None = None,
    storage: optuna.storages.BaseStorage | None = None,
) -> TuneResult:
    """Run ``config.n_trials`` trials of the study (creating or joining it) and summarise the whole study.

    ``targets`` overrides the subjects built from ``config`` (e.g. a custom ``Subject`` and score).
    With ``out``, results are written there (``TuneResult.save``) and the default storage is ``out/study.db``.
    """
    space = space or SearchSpace.default()
    if out is not None:
        check_output_dir(out, overwrite=True)  # workers share out: only a file or an unwritable place is refused
    targets = list(targets) if targets is not None else _targets(config)  # bad --sae etc. fail before any storage
    study = open_study(config, space, out, storage)
    objective = _Objective(config, space, targets)
    callbacks = []
    if config.max_trials is not None:
        finished = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        callbacks.append(optuna.study.MaxTrialsCallback(config.max_trials, states=finished))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # trials of dead workers are failed, also before a report (n_trials 0)
    if config.n_trials != 0 and not _study_full(study, config):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.optimize(objective, n_trials=config.n_trials, timeout=config.timeout, callbacks=callbacks)
    where = type(storage).__name__ if storage is not None else storage_url(config.storage, out)
    result = TuneResult.from_study(study, config, where, ran=objective.ran)
    if out is not None:
        result.save(out, study)
    return result


def _study_full(study: optuna.Study, config: TuneConfig) -> bool:
    if config.max_trials is None:
        return False
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
    return len(done) >= config.max_trials


# --------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------


@dataclass
class TuneResult:
    """A study's trials and best settings.

    Attributes:
        study_name, storage: where the study lives (password hidden).
        directions: ``["maximize"]`` or ``["maximize", "minimize"]`` (metric, points).
        metric: the quality metric.
        trials: one row per trial: number, state, quality, points, seconds, worker, fail_reason, params.
        best: the best trial (single-objective) or the Pareto front sorted by points, as rows with ``config``.
        best_config: ``DiscoverConfig`` fields of the best trial (multi-objective: the highest quality on the
            front), or None before any trial completed. ``sensfind discover --config`` accepts it.
        ran: trials this worker ran.
        config: this worker's ``TuneConfig``; settings: what the study's workers share (search space included).
    """

    study_name: str
    storage: str
    directions: list[str]
    metric: str
    trials: list[dict]
    best: list[dict]
    best_config: dict | None
    ran: int = 0
    config: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)

    @classmethod
    def from_study(cls, study: optuna.Study, config: TuneConfig, storage: str = "", ran: int = 0) -> TuneResult:
        trials = [_row(t) for t in study.get_trials(deepcopy=False)]
        best: list[FrozenTrial] = []
        if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if config.multi_objective:
                best = sorted(study.best_trials, key=lambda t: (t.values[1], -t.values[0]))
            else:
                best = [study.best_trial]
        best_rows = [_row(t) | {"config": t.user_attrs.get("discover_config")} for t in best]
        best_config = None
        if best:
            top = max(best, key=lambda t: (t.values[0], -(t.values[1] if len(t.values) > 1 else 0)))
            best_config = top.user_attrs.get("discover_config")
        return cls(study.study_name, _display_url(storage), config.directions, config.metric, trials, best_rows,
                   best_config, ran, config.to_dict(), study.user_attrs.get(_SETTINGS_ATTR, {}))

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for row in self.trials:
            out[row["state"]] = out.get(row["state"], 0) + 1
        return out

    @property
    def points_spent(self) -> int:
        return sum(int(r["points"] or 0) for r in self.trials)

    def table(self, limit: int | None = 10) -> str:
        """Markdown table of the finished trials, best first."""
        rows = sorted((r for r in self.trials if r["quality"] is not None),
                      key=lambda r: (-r["quality"], r["points"] or 0))
        rows = rows[:limit] if limit is not None else rows
        names = sorted({k for r in rows for k in r["params"]})
        head = ["trial", "state", self.metric, "points", "seconds"] + names
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rows:
            cells = [r["number"], r["state"], _fmt(r["quality"]), r["points"], _fmt(r["seconds"])]
            cells += [_fmt(r["params"].get(n)) for n in names]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
        return "\n".join(lines)

    def summary(self) -> str:
        counts = ", ".join(f"{v} {k.lower()}" for k, v in sorted(self.counts().items()))
        lines = [(f"study {self.study_name!r} ({self.storage}): {len(self.trials)} trials ({counts}); "
                  f"this worker ran {self.ran}; {self.points_spent} points spent in all")]
        if self.best:
            b = self.best[0] if len(self.best) == 1 else max(self.best, key=lambda r: r["quality"])
            front = f", Pareto front of {len(self.best)}" if len(self.best) > 1 or len(self.directions) > 1 else ""
            lines.append(f"best {self.metric} {b['quality']:.4g} (trial {b['number']}, {b['points']} points){front}")
        return "\n".join(lines)

    def save(self, out: str | Path, study: optuna.Study | None = None) -> Path:
        """Write ``best_config.json`` (flat ``DiscoverConfig`` fields), ``pareto.json`` (multi-objective),
        ``trials.csv``, ``summary.md``, ``tune.json`` and, given the study, PNG plots into ``out``."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        if self.best_config is not None:
            save_json(out / "best_config.json", self.best_config)
        if len(self.directions) > 1:
            save_json(out / "pareto.json", self.best)
        write_atomic(out / "trials.csv", self._csv())
        write_atomic(out / "summary.md", f"# {self.study_name}\n\n{self.summary()}\n\n{self.table(None)}\n")
        save_json(out / "tune.json", {"config": self.config, "settings": self.settings, "summary": self.summary(),
                                      "counts": self.counts(), "best": self.best})
        if study is not None:
            save_plots(study, out, self.metric)
        return out

    def _csv(self) -> str:
        names = sorted({k for r in self.trials for k in r["params"]})
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["number", "state", self.metric, "points", "seconds", "worker", "fail_reason"] + names)
        for r in self.trials:
            w.writerow([r["number"], r["state"], r["quality"], r["points"], r["seconds"], r["worker"],
                        r["fail_reason"]] + [r["params"].get(n) for n in names])
        return buf.getvalue()


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def _row(t: FrozenTrial) -> dict:
    values = t.values or []
    return {
        "number": t.number,
        "state": t.state.name,
        "quality": values[0] if values else None,
        "points": t.user_attrs.get("points"),
        "seconds": t.user_attrs.get("seconds"),
        "worker": t.user_attrs.get("worker"),
        "fail_reason": t.user_attrs.get("fail_reason"),
        "params": dict(t.params),
    }


def save_plots(study: optuna.Study, out: str | Path, metric: str) -> list[Path]:
    """Optimisation history, parameter importances, intermediate values (pruning) and the Pareto front
    (multi-objective) as PNG files; a plot that the study cannot support yet is skipped with a log line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    out = Path(out)
    multi = len(study.directions) > 1
    target = (lambda t: t.values[0]) if multi else None
    plots = {
        "history.png": lambda: vis.plot_optimization_history(study, target=target, target_name=metric),
        "importances.png": lambda: vis.plot_param_importances(study, target=target, target_name=metric),
    }
    if multi:
        plots["pareto.png"] = lambda: vis.plot_pareto_front(study, target_names=[metric, "points"])
    elif any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
        plots["intermediate.png"] = lambda: vis.plot_intermediate_values(study)
    written = []
    for name, make in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = make()
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
            plt.close(fig)
            write_atomic(out / name, buf.getvalue())
            written.append(out / name)
        except Exception as exc:  # noqa: BLE001 - e.g. too few trials for importances; never fail the run
            log.info("skipped %s: %s", name, exc)
            plt.close("all")
    return written


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _add_tune_args(p: argparse.ArgumentParser) -> None:
    d = TuneConfig()
    g = p.add_argument_group("study")
    g.add_argument("--study-name", default=d.study_name, help=f"workers with the same storage and name share a study "
                   f"(default {d.study_name})")
    g.add_argument("--storage", default=None, help="database URL (postgresql://user@host/db, sqlite:///f.db) or SQLite "
                   "file path; default OUT/study.db. 'optuna-dashboard <URL>' opens it")
    g.add_argument("--out", default=None, help="results directory (default runs/tune-STUDY_NAME)")
    g.add_argument("--n-trials", type=int, default=d.n_trials, help="trials this worker runs (0: only write results)")
    g.add_argument("--max-trials", type=int, default=None, help="stop once the study holds this many finished trials")
    g.add_argument("--timeout", type=float, default=None, help="seconds after which no new trial starts")
    g.add_argument("--metric", choices=_METRICS, default=d.metric,
                   help="reached: fraction of restarts on a planted feature (toy); distinct: planted features found "
                        "(toy); sae: fraction of optima matching an SAE latent with p < --p-value; sensitive: "
                        "distinct optima (|cos| < 0.5) blowing up before the real-other median, per 100k points")
    g.add_argument("--multi-objective", action="store_true", help="maximise the metric and minimise points (Pareto)")
    g.add_argument("--space", default=None, help="search space file (JSON/YAML) merged onto the default space")
    g.add_argument("--print-space", action="store_true", help="print the search space as JSON and exit")
    g.add_argument("--sampler", choices=["tpe", "random"], default=d.sampler)
    g.add_argument("--sampler-seed", type=int, default=None)
    g.add_argument("--pruner", choices=["auto", "median", "none"], default=d.pruner,
                   help="auto: median pruning for single-objective studies, none for multi-objective")
    g.add_argument("--no-enqueue-defaults", dest="enqueue_defaults", action="store_false",
                   help="do not make DiscoverConfig() the first trial of a new study")
    g.add_argument("--heartbeat-interval", type=int, default=d.heartbeat_interval, help="seconds between heartbeats")
    g.add_argument("--grace-period", type=int, default=None, help="seconds without heartbeat before a trial is failed "
                   "(default 3 x interval)")
    g.add_argument("--retries", type=int, default=d.retries, help="re-queue a trial failed by a dead worker this often")
    g.add_argument("--quiet", action="store_true", help="no per-trial log lines")
    g = p.add_argument_group("subjects")
    g.add_argument("--model", default=d.model, help="toy (ground truth), or a model for an SAE-scored run "
                   "(e.g. random:tiny with --sae DIR)")
    g.add_argument("--subjects", type=_int_list, default=d.subjects,
                   help="comma-separated toy seeds (--model toy) or prompt indices; default 0,1,2")
    g.add_argument("--toy-input", type=int, default=d.toy_input, help="input of each toy model used as the base")
    g.add_argument("--sae", default=None, help="dictionary directory for --metric sae")
    g.add_argument("--prompts", default=d.prompts, help="prompt file for transformer subjects (default builtin)")
    g.add_argument("--hook", default=d.hook)
    g.add_argument("--position", type=int, default=d.position)
    g.add_argument("--p-value", type=float, default=d.p_value)


def config_from_args(args) -> TuneConfig:
    return TuneConfig(**{f.name: getattr(args, f.name) for f in fields(TuneConfig)})


def cmd_tune(args) -> int:
    space = SearchSpace.load(args.space) if args.space else SearchSpace.default()
    if args.print_space:
        print(json.dumps(space.to_dict(), indent=2))
        return 0
    config = config_from_args(args)
    out = check_output_dir(Path(args.out) if args.out else Path("runs") / f"tune-{config.study_name}", overwrite=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING if args.quiet else optuna.logging.INFO)
    result = tune(config, space, out=out)
    print(result.table())
    print(result.summary())
    if result.best_config is not None:
        print(f"best settings -> {out / 'best_config.json'} (sensfind discover --config {out / 'best_config.json'})")
    return 0


def add_tune_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``sensfind tune`` on the CLI's subparsers (sets its own ``func``)."""
    p = subparsers.add_parser("tune", help="tune discovery settings with Optuna (distributed, pruned, resumable)",
                              description=__doc__.splitlines()[0])
    _add_tune_args(p)
    p.set_defaults(func=cmd_tune)
    return p


def main(argv: list[str] | None = None) -> int:
    """``python -m sensfind.tuning ARGS``, the same as ``sensfind tune ARGS``."""
    parser = argparse.ArgumentParser(prog="python -m sensfind.tuning", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log diagnostics")
    _add_tune_args(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    return error_boundary(lambda: cmd_tune(args))


if __name__ == "__main__":
    sys.exit(main())
