"""Settings of a tuning run (``TuneConfig``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal


from sensfind.configs import MAX_SEED, Config, check_int, is_number
from sensfind.specs import parse_model_spec
from sensfind.tuning._space import SearchSpace
from sensfind.tuning._targets import _METRICS, Metric
from sensfind.models.loading import resolve_device


# upper bounds of the counts (documented with each field)
_LIMITS = {"n_trials": 100_000, "max_trials": 100_000, "sampler_seed": MAX_SEED, "heartbeat_interval": 3600,
           "grace_period": 86_400, "retries": 100, "toy_input": MAX_SEED}
MAX_SUBJECTS = 1000


@dataclass(frozen=True)
class TuneConfig(Config):
    """Settings of a tuning run (one worker). The CLI flags map onto these one-to-one.

    Study:
        study_name: workers with the same storage and name join one study.
        storage: database URL (``postgresql://user@host/db``, ``sqlite:///f.db``) or SQLite file path (``None``:
            ``<out>/study.db``; ``memory``: in-process); ``optuna-dashboard <URL>`` opens it.
        n_trials: trials this worker runs (``None``: until ``timeout`` or ``max_trials``; at most 100000).
        max_trials: stop once the study holds this many finished trials, whoever ran them (at most 100000).
        timeout: seconds after which this worker starts no new trial.
        metric: ``reached``: fraction of restarts on a planted feature (toy); ``distinct``: planted features
            found (toy); ``sae``: fraction of optima matching an SAE latent with p < ``p_value``;
            ``sensitive``: distinct optima (|cos| < 0.5) blowing up before the real-other median, per 100k
            points (any model).
        multi_objective: maximise the metric and minimise points (Pareto front) instead of the metric alone.
        sampler: ``tpe`` (multivariate TPE) or ``random``.
        sampler_seed: seeds the sampler (None: random; at most 4294967295).
        pruner: ``auto`` (median for single-objective, none for multi-objective), ``median`` or ``none``.
        enqueue_defaults: make ``DiscoverConfig()`` (if inside the space) the first trial of a new study.
    Failure handling:
        heartbeat_interval: seconds between a running trial's heartbeats (RDB storages; at most 3600).
        grace_period: seconds without a heartbeat after which a trial is failed (None: 3 x interval; at most
            86400).
        retries: how many times a trial failed that way is re-queued (at most 100).
    Subjects:
        model: ``toy`` (ground truth), or a model for an SAE-scored or sensitive run: a ``sensfind.load_model``
            name (e.g. ``random:tiny`` with ``sae``, ``smollm2-135m``, ``gpt2``).
        subjects: toy seeds (``--model toy``), or prompt indices into ``prompts`` (at most 1000 of them, each
            at most 4294967295).
        toy_input: which input of each toy model's stream is the base (at most 4294967295).
        sae: dictionary directory (``Dictionary.save`` or SAELens format) for metric ``sae``.
        prompts: prompts of transformer subjects (``subjects`` indexes them): builtin, corpus:N or a file.
        hook: hook name of the site of transformer subjects.
        position: token position of the site of transformer subjects (-1: the last).
        device: where transformer subjects run: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:N``.
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
    device: str = "auto"
    p_value: float = 0.01

    def __post_init__(self):
        def count(name, minimum, optional=True):
            check_int(name, getattr(self, name), minimum, optional, maximum=_LIMITS[name])

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

        resolve_device(self.device)  # an unknown or unavailable device fails here, before any work
        if not isinstance(self.subjects, (list, tuple)):
            raise ValueError(f"subjects must be a non-empty list of integers >= 0, got {self.subjects!r}")
        object.__setattr__(self, "subjects", tuple(self.subjects))
        if not self.subjects or len(self.subjects) > MAX_SUBJECTS or any(
                not isinstance(s, int) or isinstance(s, bool) or not 0 <= s <= MAX_SEED for s in self.subjects):
            raise ValueError(f"subjects must be a non-empty list of at most {MAX_SUBJECTS} integers >= 0 and <= "
                             f"{MAX_SEED}, got {list(self.subjects)[:10]}{' ...' if len(self.subjects) > 10 else ''}")
        check_int("position", self.position)
        parse_model_spec(self.model, "model")
        if self.toy and self.metric == "sae":
            raise ValueError("metric 'sae' needs a transformer model and --sae; on the toy use 'reached', "
                             "'distinct' or 'sensitive'")
        if not self.toy and self.metric != "sensitive" and (self.metric != "sae" or self.sae is None):
            raise ValueError(f"model {self.model!r} has no planted features: use metric 'sensitive', "
                             "or metric 'sae' with --sae DIR")
        if not is_number(self.p_value) or not 0 < self.p_value < 1:
            raise ValueError(f"p_value must be in (0, 1), got {self.p_value!r}")

    @property
    def toy(self) -> bool:
        """Whether the subjects are toy models (``model`` is ``toy``)."""
        return parse_model_spec(self.model).is_toy

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
