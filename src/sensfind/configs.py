"""What every config dataclass shares: field checks with one message style, and a strict ``from_dict``.

A config class inherits :class:`Config` (``to_dict`` / ``from_dict``) and validates its fields in
``__post_init__`` with the ``check_*`` helpers, which raise ``ValueError``s saying what was wrong and
what is allowed. ``from_dict`` rejects unknown keys, naming them and the allowed ones, and builds
nested config fields (``DemoConfig.compare``) from dicts.

The objective's settings are declared, documented and checked once here and inherited:
:class:`EffectConfig` (``effect``, ``tau``; ``CompareConfig``) and :class:`ObjectiveConfig` (those plus
``mode``, ``start``, ``stop``; ``ScanConfig`` and ``DiscoverConfig``). A subclass's dict stays flat.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
import typing
from typing import Any, Iterable, TypeVar

import numpy as np


__all__ = ["MAX_SEED", "Config", "check_bool", "check_choice", "check_int", "check_number", "config_from_dict", "field_choices",
           "field_docs", "is_int", "is_number", "unknown_keys_error"]

C = TypeVar("C")

MAX_SEED = 2**32 - 1  # the largest seed: what NumPy's legacy generators (and so Optuna's samplers) accept


def is_int(v) -> bool:
    """An integer (Python or NumPy), not a bool."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def is_number(v) -> bool:
    """A finite real number (Python or NumPy), not a bool."""
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)


def check_int(name: str, v, minimum: int | None = None, optional: bool = False, maximum: int | None = None) -> None:
    """``v`` is an integer ``>= minimum`` and ``<= maximum`` (or ``None`` when ``optional``). Every count
    and size of a config has a ``maximum`` (documented with its field) so that no value runs for ever or
    overflows."""
    if v is None and optional:
        return
    if not is_int(v) or (minimum is not None and v < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise ValueError(f"{name} must be an integer{bound}{' or None' if optional else ''}, got {v!r}")
    if maximum is not None and v > maximum:
        raise ValueError(f"{name} must be at most {maximum} (its limit), got {v!r}")


def check_number(name: str, v, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
                 hi_open: bool = False, optional: bool = False) -> None:
    """``v`` is a finite number within ``[lo, hi]`` (ends open where asked; ``None`` when ``optional``)."""
    if v is None and optional:
        return
    if not is_number(v):
        raise ValueError(f"{name} must be a finite number{' or None' if optional else ''}, got {v!r}")
    if lo is not None and (v <= lo if lo_open else v < lo):
        raise ValueError(f"{name} must be {'>' if lo_open else '>='} {lo}, got {v!r}")
    if hi is not None and (v >= hi if hi_open else v > hi):
        raise ValueError(f"{name} must be {'<' if hi_open else '<='} {hi}, got {v!r}")


def check_choice(name: str, v, choices: Iterable) -> None:
    """``v`` is one of ``choices``."""
    choices = tuple(choices)
    if v not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {v!r}")


def check_bool(name: str, v) -> None:
    if not isinstance(v, bool):
        raise ValueError(f"{name} must be True or False, got {v!r}")


def unknown_keys_error(cls_name: str, unknown: Iterable[str], allowed: Iterable[str]) -> ValueError:
    """The one error for unknown config keys: names them and the allowed ones."""
    return ValueError(f"unknown {cls_name} field(s) {sorted(unknown)}; allowed: {sorted(allowed)}")


def config_from_dict(cls: type[C], d: dict) -> C:
    """``cls(**d)``, strictly: ``d`` must be a dict of ``cls``'s fields (unknown keys are an error naming
    them and the allowed ones); a field whose type is itself a config dataclass may be given as a dict."""
    if not isinstance(d, dict):
        raise TypeError(f"{cls.__name__}.from_dict needs a dict of field -> value, got {type(d).__name__}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(d) - set(names)
    if unknown:
        raise unknown_keys_error(cls.__name__, unknown, names)
    try:
        hints = typing.get_type_hints(cls)
    except (NameError, TypeError):  # an annotation that cannot be resolved here: no nested configs then
        hints = {}
    values: dict[str, Any] = {}
    for key, v in d.items():
        sub = hints.get(key)
        if isinstance(v, dict) and isinstance(sub, type) and dataclasses.is_dataclass(sub):
            v = config_from_dict(sub, v)
        values[key] = v
    return cls(**values)


_ENTRY = re.compile(r"^(\s+)([a-z_][a-z0-9_]*(?:, [a-z_][a-z0-9_]*)*):\s+(.*)$")


def field_docs(cls) -> dict[str, str]:
    """Each field's description from the ``name: text`` entries of the docstrings of ``cls`` and its
    bases (the class's own entry wins; ``a, b: text`` documents both; deeper-indented lines continue
    an entry), on one line."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        docs |= _docstring_entries(inspect.cleandoc(klass.__dict__.get("__doc__") or ""))
    fields = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in docs.items() if k in fields}


def _docstring_entries(text: str) -> dict[str, str]:
    docs: dict[str, str] = {}
    names: list[str] = []
    indent = -1
    for line in text.splitlines():
        m = _ENTRY.match(line)
        if m and (not names or len(m.group(1)) <= indent):
            names, indent = m.group(2).split(", "), len(m.group(1))
            for n in names:
                docs[n] = m.group(3).strip()
        elif names and line.strip() and len(line) - len(line.lstrip()) > indent:
            for n in names:
                docs[n] += " " + line.strip()
        else:
            names, indent = [], -1
    return docs


def field_choices(cls) -> dict[str, tuple]:
    """The allowed values of each field typed ``Literal[...]`` (or ``Literal[...] | None``)."""
    try:
        hints = typing.get_type_hints(cls)
    except (NameError, TypeError):
        return {}
    out = {}
    for name, hint in hints.items():
        args = [hint] if typing.get_origin(hint) is typing.Literal else list(typing.get_args(hint))
        for a in args:
            if typing.get_origin(a) is typing.Literal:
                out[name] = typing.get_args(a)
    return out


class Config:
    """Mixin of config dataclasses: ``to_dict`` (plain values) and a strict ``from_dict``."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, d: dict):
        return config_from_dict(cls, d)
