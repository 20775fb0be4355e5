"""Command-line flags generated from config dataclasses, and configs built back from them.

``add_config_args`` gives each field a ``--field-name`` flag whose help is the field's doc, its allowed
values (``Literal`` fields) and its default; ``config_from_args`` builds the config from a ``--config``
file overridden by the flags that were given. Every check stays the config's own, so a bad value gets
the config's one-line message.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing

from sensfind.errors import CLIError
from sensfind.configs import field_choices, field_docs
from sensfind.runio import load_json

__all__ = ["CLIError", "OneLineParser", "add_config_args", "config_from_args", "flag_error", "load_config_file"]


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors (a bad int, a bad choice, an unknown flag) are ``CLIError``s, so
    that they reach the error boundary and print the project's one line instead of the usage block.
    Subparsers made by ``add_subparsers`` are of this class too."""

    def error(self, message: str):
        raise CLIError(f"{message} (see {self.prog} --help)")


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _flag_type(hint):
    """The argparse type of a field annotation (``X | None`` counts as ``X``)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is typing.Union or type(hint).__name__ == "UnionType":
        hint = args[0] if len(args) == 1 else hint
    if hint is bool:
        return bool
    if hint in (int, float):
        return hint
    if typing.get_origin(hint) is tuple:
        return _int_list
    return str


def add_config_args(p: argparse.ArgumentParser, cls, skip=(), only=None, defaults: bool = False,
                    title: str | None = None) -> None:
    """One flag per field of ``cls`` (``--field-name``; ``skip`` leaves some out, ``only`` keeps some).
    Flags default to ``None`` (the config's default, or the ``--config`` file's value) unless
    ``defaults``. A bool field takes ``--flag``, ``--flag true|false`` and ``--no-flag``."""
    docs, choices, hints = field_docs(cls), field_choices(cls), typing.get_type_hints(cls)
    g = p.add_argument_group(title or cls.__name__)
    for f in dataclasses.fields(cls):
        if f.name in skip or (only is not None and f.name not in only):
            continue
        flag, kind = "--" + f.name.replace("_", "-"), _flag_type(hints[f.name])
        allowed = f"one of {', '.join(map(str, choices[f.name]))}; " if f.name in choices else ""
        shown = str(f.default).lower() if kind is bool else f.default
        if kind is _int_list and f.default is not None:
            shown = ",".join(map(str, f.default))
        text = (docs.get(f.name, "").replace("``", "") + f" [{allowed}default {shown}]").strip().replace("%", "%%")
        default = f.default if defaults else None
        if kind is bool:
            g.add_argument(flag, nargs="?", const="true", choices=["true", "false"], default=default, help=text)
            g.add_argument("--no-" + f.name.replace("_", "-"), dest=f.name, action="store_const", const="false",
                           help=f"same as {flag} false")
        else:
            g.add_argument(flag, type=kind, default=default, help=text)


def config_from_args(cls, args, base: dict | None = None, source: str = "the flags", fixed: dict | None = None):
    """``cls`` from ``base`` (e.g. a ``--config`` file) overridden by the flags that were given, then by
    ``fixed``. A bad or unknown value is a ``CLIError`` naming ``source``."""
    values = dict(base or {})
    for f in dataclasses.fields(cls):
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = (v in (True, "true")) if isinstance(f.default, bool) else v
    values |= fixed or {}
    try:
        return cls.from_dict(values)  # strict: an unknown key is a ValueError naming it and the allowed ones
    except (TypeError, ValueError) as exc:
        raise CLIError(f"{source}: {exc}") from None


def flag_error(exc: Exception, names) -> CLIError:
    """``exc`` as a ``CLIError`` whose leading field name (one of ``names``) is spelled as its flag."""
    text = str(exc)
    first = text.split(" ", 1)[0]
    if first in names:
        text = "--" + first.replace("_", "-") + text[len(first):]
    return CLIError(text)


def load_config_file(path: str | None, key: str | None = None) -> dict:
    """A JSON config: a flat dict of fields, or a run's config.json holding it under ``key``."""

    if path is None:
        return {}
    data = load_json(path, "config file")
    if not isinstance(data, dict):
        raise CLIError(f"config file {path!r} must hold a JSON object of settings, got {type(data).__name__}")
    if key is not None and isinstance(data.get(key), dict):
        data = data[key]
    elif "command" in data and "site" in data:
        raise CLIError(f"config file {path!r} is the config.json of a sensfind {data['command']!r} run and holds no "
                       f"{key!r} settings; give a file of {key} settings")
    return data
