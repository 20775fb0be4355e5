"""The ``sensfind tune`` command and ``python -m sensfind.tuning``."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import optuna

from sensfind import flags
from sensfind.errors import error_boundary
from sensfind.flags import OneLineParser, add_config_args, load_config_file
from sensfind.runio import check_output_dir
from sensfind.tuning._config import TuneConfig
from sensfind.tuning._space import SPACE_FILE_FORMAT, SearchSpace
from sensfind.tuning._study import tune


_DESCRIPTION = "Tuning discovery settings with Optuna: each trial runs discover with suggested settings."


def _add_tune_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("tune run")
    g.add_argument("--config", default=None, help="JSON file of TuneConfig fields (flags override it)")
    g.add_argument("--out", default=None, help="results directory (default runs/tune-STUDY_NAME)")
    g.add_argument("--space", default=None, help="search space file (JSON/YAML) merged onto the default space; "
                   "its format is below")
    g.add_argument("--print-space", action="store_true", help="print the search space as JSON and exit")
    g.add_argument("--quiet", action="store_true", help="no progress bar and no per-trial log lines")
    add_config_args(p, TuneConfig)


def config_from_args(args) -> TuneConfig:
    """The ``TuneConfig`` of a ``--config`` file (if any) overridden by the flags that were given."""
    path = getattr(args, "config", None)
    return flags.config_from_args(TuneConfig, args, load_config_file(path, "tune"),
                                  f"--config {path!r}" if path else "the flags")


def cmd_tune(args) -> int:
    space = SearchSpace.load(args.space) if args.space else SearchSpace.default()
    if args.print_space:
        print(json.dumps(space.to_dict(), indent=2))
        return 0
    config = config_from_args(args)
    out = check_output_dir(Path(args.out) if args.out else Path("runs") / f"tune-{config.study_name}", overwrite=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING if args.quiet else optuna.logging.INFO)
    result = tune(config, space, out=out, progress=not args.quiet)
    print(result.table())
    print(result.summary())
    if result.best_config is not None:
        print(f"best settings -> {out / 'best_config.json'} (sensfind discover --config {out / 'best_config.json'})")
    return 0


def add_tune_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``sensfind tune`` on the CLI's subparsers (sets its own ``func``)."""
    p = subparsers.add_parser("tune", help="tune discovery settings with Optuna (distributed, pruned, resumable)",
                              description=_DESCRIPTION, epilog=SPACE_FILE_FORMAT,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_tune_args(p)
    p.set_defaults(func=cmd_tune)
    return p


def main(argv: list[str] | None = None) -> int:
    """``python -m sensfind.tuning ARGS``, the same as ``sensfind tune ARGS``."""
    parser = OneLineParser(prog="python -m sensfind.tuning", description=_DESCRIPTION,
                           epilog=SPACE_FILE_FORMAT, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log diagnostics")
    _add_tune_args(parser)

    def run() -> int:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help
            return exc.code if isinstance(exc.code, int) else 0
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                            format="%(levelname)s %(name)s: %(message)s")
        return cmd_tune(args)

    return error_boundary(run)
