"""The search space: which ``DiscoverConfig`` fields a trial draws, and how (``ParamSpec``, ``SearchSpace``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

import optuna

from sensfind.configs import is_number
from sensfind.discovery.config import DiscoverConfig
from sensfind.discovery.rounds import round_cost
from sensfind.runio import read_text


SPACE_FILE_FORMAT = """\
search space file (--space FILE, JSON, or YAML for .yaml/.yml): a JSON object of parameter -> spec,
merged onto the default space (entries replace the default entry of the same name; print the
result with --print-space). A spec is one of:
  {"type": "float", "low": L, "high": H, "log": false}   (int: the same with integers)
  {"type": "categorical", "choices": [A, B, ...]}
  {"type": "fixed", "value": V}   or just V               (a fixed parameter is not tuned)
Parameters: DiscoverConfig fields (every discover flag but --seed and --init) and the derived
temperature_ratio (temperature_final = temperature x ratio), lr_ratio (lr_final = lr x ratio) and
stop_fraction (stop = fraction x full range). The default space fixes the objective (effect kl,
mode sphere, tau 0.5) and searches the optimiser. Example, fixing a budget and tau:
  {"max_points": 20000, "tau": 1.0, "restarts": {"type": "int", "low": 8, "high": 16},
   "optimizer": "sgd"}"""

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
        name: a ``DiscoverConfig`` field or a derived parameter (see the ``sensfind.tuning`` docstring).
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
    # the objective is fixed (DiscoverConfig's defaults), so that every trial's score measures the same thing
    **{name: {"type": "fixed", "value": getattr(DiscoverConfig(), name)} for name in ("effect", "mode", "tau")},
    # the optimiser and its surrogate are searched
    "temperature": {"type": "float", "low": 0.01, "high": 0.3, "log": True},
    "temperature_ratio": {"type": "float", "low": 0.05, "high": 1.0, "log": True},
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
    """Parameters a trial suggests (and fixed values), by name; see the ``sensfind.tuning`` docstring."""

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

    def _extreme(self, name: str, high: bool):
        """The largest (``high``) or smallest value the space gives ``name`` (its default when absent)."""
        spec = self.params.get(name)
        if spec is None:
            return getattr(DiscoverConfig(), name)
        if spec.type in ("float", "int"):
            return spec.high if high else spec.low
        values = list(spec.choices) if spec.type == "categorical" else [spec.value]
        if None in values:
            return None  # no budget among the choices
        return max(values) if high else min(values)

    def check_budget(self) -> None:
        """Refuse a space whose largest ``max_points`` cannot pay for one restart of its cheapest settings
        (``ValueError``, before a study starts)."""
        budget = self._extreme("max_points", high=True)
        if budget is None:
            return
        cheapest = replace(DiscoverConfig(), init="metric", iterations=self._extreme("iterations", False),
                           scan_steps=self._extreme("scan_steps", False), final_steps=self._extreme("final_steps", False),
                           polish_iterations=0)
        cost = round_cost(cheapest)
        if budget < cost:
            raise ValueError(f"search space: max_points={budget} cannot pay for one restart of its cheapest settings "
                             f"(iterations {cheapest.iterations} x scan_steps {cheapest.scan_steps} + final_steps "
                             f"{cheapest.final_steps} + 1 = {cost} scan points); raise max_points or lower those")
