"""The ``sensfind tune`` command and ``python -m sensfind.tuning``."""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import fields
from pathlib import Path

import optuna

from ..errors import error_boundary
from ..runio import check_output_dir
from ._config import TuneConfig
from ._space import SearchSpace
from ._study import tune
from ._targets import _METRICS


_DESCRIPTION = "Tuning discovery settings with Optuna: each trial runs ``discover`` with suggested settings."


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
    g.add_argument("--device", default=d.device, help="auto (CUDA when available, else CPU), cpu, cuda or cuda:N. "
                   "Default: auto")
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
                              description=_DESCRIPTION)
    _add_tune_args(p)
    p.set_defaults(func=cmd_tune)
    return p


def main(argv: list[str] | None = None) -> int:
    """``python -m sensfind.tuning ARGS``, the same as ``sensfind tune ARGS``."""
    parser = argparse.ArgumentParser(prog="python -m sensfind.tuning", description=_DESCRIPTION)
    parser.add_argument("-v", "--verbose", action="store_true", help="log diagnostics")
    _add_tune_args(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    return error_boundary(lambda: cmd_tune(args))
