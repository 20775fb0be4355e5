"""The objective of a trial and the tuning loop (``tune``)."""

from __future__ import annotations

import logging
import math
import os
import socket
import warnings
from pathlib import Path
from typing import Sequence

import optuna
from optuna.trial import TrialState

from sensfind.errors import NonFiniteOutputError
from sensfind.discovery.rounds import round_cost
from sensfind.progress import progress_enabled
from sensfind.runio import check_output_dir
from sensfind.tuning._config import TuneConfig
from sensfind.tuning._results import TuneResult
from sensfind.tuning._space import SearchSpace
from sensfind.tuning._storage import _targets, open_study, storage_url
from sensfind.tuning._targets import Target, _Stop, evaluate

log = logging.getLogger("sensfind.tuning")


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
        cost = round_cost(discover_config)
        if discover_config.max_points is not None and discover_config.max_points < cost:
            return self._fail(trial, f"invalid settings: max_points={discover_config.max_points} cannot pay for one "
                                     f"restart ({cost} scan points)", 0)
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


class _InterruptedTrialFilter(logging.Filter):
    """Optuna logs a trial stopped by Ctrl-C as a failure with its traceback (then re-raises the interrupt);
    the command line says "interrupted" once instead. Genuine failures keep their records."""

    def __init__(self):
        super().__init__()
        self.interrupted = False

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt):
            self.interrupted = True
            return False
        return not (self.interrupted and "failed with value None" in record.getMessage())


def _optimize(study: optuna.Study, objective, config: TuneConfig, callbacks, progress: bool | None = None) -> None:
    quiet = _InterruptedTrialFilter()
    optuna_log = logging.getLogger("optuna.study._optimize")  # where Optuna reports failed trials
    optuna_log.addFilter(quiet)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.optimize(objective, n_trials=config.n_trials, timeout=config.timeout, callbacks=callbacks,
                           show_progress_bar=progress_enabled(progress) and (config.n_trials or config.timeout) is not None)
    finally:
        optuna_log.removeFilter(quiet)


def tune(
    config: TuneConfig = TuneConfig(),
    space: SearchSpace | None = None,
    *,
    out: str | Path | None = None,
    targets: Sequence[Target] | None = None,
    storage: optuna.storages.BaseStorage | None = None,
    progress: bool | None = None,
) -> TuneResult:
    """Run ``config.n_trials`` trials of the study (creating or joining it) and summarise the whole study.

    ``progress``: Optuna's bar over the trials on stderr (``None``: when stderr is a terminal; shown when
    ``n_trials`` or ``timeout`` bounds the run).

    ``targets`` overrides the subjects built from ``config`` (e.g. a custom ``Subject`` and score).
    With ``out``, results are written there (``TuneResult.save``) and the default storage is ``out/study.db``.
    """
    space = space or SearchSpace.default()
    space.check_budget()  # a budget no trial can pay for is refused before the study starts
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
        _optimize(study, objective, config, callbacks, progress)
    where = type(storage).__name__ if storage is not None else storage_url(config.storage, out)
    result = TuneResult.from_study(study, config, where, ran=objective.ran)
    if out is not None:
        result.save(out, study, overwrite=True)  # out holds the study's storage; workers share it
    return result


def _study_full(study: optuna.Study, config: TuneConfig) -> bool:
    if config.max_trials is None:
        return False
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
    return len(done) >= config.max_trials
