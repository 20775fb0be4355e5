"""Study storage: URLs, opening (with retries against creation races), samplers, pruners, and the study itself."""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import optuna

from sensfind.errors import StorageError, StudyMismatchError
from sensfind.tuning._config import TuneConfig
from sensfind.tuning._space import SearchSpace
from sensfind.tuning._targets import Target, toy_targets, transformer_targets

log = logging.getLogger("sensfind.tuning")

_SETTINGS_ATTR = "sensfind"


def _display_url(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url  # lazy: only a SQL study storage needs it

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
    if config.toy:
        return toy_targets(config.subjects, config.metric, config.toy_input)
    return transformer_targets(config.model, config.sae, config.subjects, config.prompts, config.hook,
                               config.position, config.p_value, metric=config.metric, device=config.device)
