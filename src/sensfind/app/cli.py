"""The ``sensfind`` command line. Each subcommand maps its flags one-to-one onto a config dataclass.

Bad input prints one line (``sensfind: error: ...``) and exits with status 2; nothing half-written
is left in the results directory. Ctrl-C prints ``sensfind: interrupted`` and exits with status 130.
Libraries (transformers, TransformerLens, SAELens, the hub) say only warnings and errors unless
``--verbose``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shlex
import sys
import time
from pathlib import Path

from sensfind.app.jobs import incomplete_dir, read_direction_inputs, run_mixture
from sensfind.core.mixture import MixtureConfig
from sensfind.errors import InputFileError, error_boundary
from sensfind.errors import CLIError
from sensfind.flags import OneLineParser, add_config_args, config_from_args, flag_error, load_config_file
from sensfind.app.site import DiscoverySiteConfig, SiteConfig
from sensfind.app.jobs import ScanRunConfig, run_scan
from sensfind.core.scan import ScanConfig
from sensfind.discovery.config import DiscoverConfig
from sensfind.app.jobs import load_run_config
from sensfind.app.jobs import DiscoverRunConfig, discovery_run_site, run_discover
from sensfind.core.baselines import load_directions
from sensfind.comparison.compare import CompareConfig
from sensfind.app.jobs import CompareRunConfig, run_compare
from sensfind.discovery.optima import Discovery
from sensfind.models.loading import resolve_device
from sensfind.app.demo import DemoConfig, ModelDemoConfig, run_demo, run_model_demo
from sensfind.runio import check_output_dir, out_lock
from sensfind.tuning import add_tune_parser
from sensfind.app.sweep import SweepConfig, aggregate, run_sweep

__all__ = ["CLIError", "LIBRARY_LOGGERS", "build_parser", "incomplete_dir", "library_output", "main"]

# the libraries whose informational output (logging below WARNING, progress bars) the command line hides
LIBRARY_LOGGERS = ("transformers", "transformer_lens", "sae_lens", "huggingface_hub", "datasets", "accelerate")


def library_output(verbose: bool) -> None:
    """Without ``verbose``, libraries log only warnings and errors and draw no download, conversion or
    training progress bars (the hub's and transformers' bars read these variables when first imported;
    those already imported are told directly; SAELens' training bars follow its logger's level). With it,
    their informational logs are shown too."""
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
    if verbose:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "info")
        return
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["TRANSFORMERS_VERBOSITY"] = "warning"
    if "huggingface_hub" in sys.modules:
        sys.modules["huggingface_hub"].utils.disable_progress_bars()
    if "transformers" in sys.modules:
        sys.modules["transformers"].utils.logging.disable_progress_bar()


VERBOSE_HELP = "log diagnostics, libraries' informational output and progress bars included"


def site_from_args(cls, args, **fixed):
    """The config ``cls`` of flags that carry their defaults (the site, the run-level settings), then
    ``fixed``; a bad value is one line naming its flag."""
    try:
        return cls.from_dict({f.name: getattr(args, f.name) for f in dataclasses.fields(cls)} | fixed)
    except ValueError as exc:
        raise flag_error(exc, {f.name for f in dataclasses.fields(cls)}) from None


def _out(args, command: str) -> Path:
    return Path(args.out) if args.out else Path("runs") / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}"


def _from_file(cls, args, key: str, **fixed):
    """``cls`` from the ``--config`` file (if any) overridden by the flags, then by ``fixed``."""
    return config_from_args(cls, args, load_config_file(args.config, key),
                            f"--config {args.config!r}" if args.config else "the flags", fixed)


def cmd_scan(args) -> int:
    site = site_from_args(SiteConfig, args)
    job = site_from_args(ScanRunConfig, args)
    config = _from_file(ScanConfig, args, "scan")
    out = _out(args, "scan")
    s = run_scan(site, config, out, job.directions, job.path, args.overwrite, job.max_points, not args.quiet).summary
    med = s.get("threshold_median")
    print(f"scanned {s['n_directions']} directions x {s['n_steps']} steps in {s['seconds']:.2f}s; "
          f"threshold reached by {s['n_reached']}" + (f", median {med:.3g} {config.unit}" if med is not None else "")
          + f" -> {out}")
    return 0


def _given_dests(args) -> set[str]:
    """Options given on the command line: those spelled out in argv, and any whose value is not the default."""
    spelled = {tok[2:].split("=", 1)[0].replace("-", "_") for tok in getattr(args, "argv", []) if tok.startswith("--")}
    defaults = vars(build_parser().parse_args([args.command]))
    return {k for k, v in vars(args).items() if k in spelled or (k in defaults and defaults[k] != v)}


def _resume_conflicts(saved: dict, args) -> list[str]:
    """``key (saved X, given Y)`` for each setting given with --resume that differs from the run's own."""

    given = _given_dests(args)
    fields = {f.name: f for f in dataclasses.fields(DiscoverConfig)}
    wanted = dict(load_config_file(args.config, "discover")) if args.config else {}
    for name in given & (set(fields) - {"seed"}):  # --seed is a site flag, compared below
        v = getattr(args, name)
        if v is not None:
            wanted[name] = (v in (True, "true")) if isinstance(fields[name].default, bool) else v
    have = saved["discover"]
    diffs = [f"{k} (saved {have.get(k)!r}, given {v!r})" for k, v in sorted(wanted.items()) if have.get(k) != v]
    runlevel = {"init_file": saved.get("init_file"), "random_baseline": saved.get("random_baseline", 64)}
    for k in sorted(given & (set(saved["site"]) | set(runlevel))):
        old = saved["site"][k] if k in saved["site"] else runlevel[k]
        if getattr(args, k) != old:
            diffs.append(f"{k} (saved {old!r}, given {getattr(args, k)!r})")
    return diffs


def _saved_discovery(args, out: Path):
    """What ``--resume`` continues: the saved run's config.json (``None``: start afresh), or ``"done"``."""

    stage = incomplete_dir(out)
    if not args.resume:
        return None
    if (stage / "checkpoint.pt").is_file():
        return load_run_config(stage / "config.json", "discover"), stage / "config.json"
    finished = (out / "config.json").is_file() and (out / "summary.json").is_file()
    if finished and not args.overwrite:
        return "done"
    if not args.overwrite:
        raise CLIError(f"--resume: no checkpoint to resume from in {str(out)!r} ({str(stage / 'checkpoint.pt')!r} is "
                       "missing: the run was never started there or stopped before its first checkpoint); run "
                       "without --resume, or add --overwrite to start over")
    return (load_run_config(out / "config.json", "discover"), out / "config.json") if finished else None


def _p(v) -> str:
    """An exponent p for a line: inf (JSON null) as ∞."""
    return "∞" if v is None or v == float("inf") else f"{v:.3g}"


def cmd_discover(args) -> int:
    site_from_args(DiscoverRunConfig, args)  # refuse bad run-level flags before anything else
    if args.resume and args.out is None:
        raise CLIError("--resume needs --out DIR: the run directory to continue")
    out = _out(args, "discover")
    check_output_dir(out, overwrite=True)  # a file in its place, an unwritable place: refused before the lock
    with out_lock(out):  # another run on out is refused at once, whatever it is doing
        return _discover(args, out)


def _discover(args, out: Path) -> int:
    saved = _saved_discovery(args, out)
    if saved == "done":
        print(f"the run in {out} is already finished; nothing to do (add --overwrite to run it again)")
        return 0
    if saved is not None:
        (saved, path), diffs = saved, _resume_conflicts(saved[0], args)
        if diffs:
            raise CLIError(f"--resume continues the run with its own settings; these flags differ from them: "
                           f"{'; '.join(diffs)}. Drop them, or start a new run")
        site = discovery_run_site(path, saved)
        try:
            config = DiscoverConfig.from_dict(saved["discover"])
        except (TypeError, ValueError) as exc:
            raise InputFileError(f"run config {str(path)!r}: {exc}") from None
        job = site_from_args(DiscoverRunConfig, args, init_file=saved.get("init_file"),
                             random_baseline=saved.get("random_baseline", args.random_baseline))
    else:
        site = site_from_args(DiscoverySiteConfig, args)
        config = _from_file(DiscoverConfig, args, "discover", seed=site.seed)  # --seed seeds the restarts too
        job = site_from_args(DiscoverRunConfig, args)
    if config.init == "given" and job.init_file is None:
        raise CLIError("--init given needs --init-file PATH (.safetensors/.pt/.npy of shape [restarts, d])")
    try:
        run = run_discover(site, config, out, **job.to_dict(), resume=args.resume, overwrite=args.overwrite,
                           progress=not args.quiet)
    except ValueError as exc:
        raise flag_error(exc, {"random_baseline", "checkpoint_every"}) from None
    except KeyboardInterrupt:
        if not (incomplete_dir(out) / "checkpoint.pt").is_file():
            raise
        raise KeyboardInterrupt(f"the run is kept in {str(incomplete_dir(out))!r}; continue it with: sensfind "
                                f"discover --resume --out {shlex.quote(str(out))}") from None
    found, summary = run.discovery, run.summary
    budget = f" of {config.max_points}" if config.max_points is not None else ""
    rand = summary["random_blowup_median"]
    line = (f"{len(found)} distinct optima from {len(found.restart_directions)} restarts in {found.rounds_run} round(s) "
            f"({summary['budget']['total_points']}{budget} scan points, stopped: {found.stop_reason}); best blowup "
            f"{summary['best_blowup']:.3g} {run.final_config.unit} vs random median "
            + (f"{rand:.3g}" if rand is not None else "(no random baseline within the budget)"))
    if "linear" in summary:
        line += f"; threshold / quadratic onset median {summary['linear'].get('ratio_median', float('nan')):.2g}"
    if "mixture" in summary:
        m = summary["mixture"]
        line += f"; Lp mixture among optima p = {_p(m['p'])} [{_p(m['p_low'])}, {_p(m['p_high'])}]"
    if "toy_recovery" in summary:
        tr = summary["toy_recovery"]
        line += f"; {tr['fraction_reached']:.0%} of restarts reached a planted feature ({tr['n_distinct_features']} distinct)"
    print(line + f" -> {out}")
    return 0


def cmd_compare(args) -> int:
    if (args.run is None) == (args.directions is None):
        raise CLIError("give exactly one of --run DIR (a discovery run) or --directions FILE")
    job = site_from_args(CompareRunConfig, args)
    if args.run is not None:
        run = Path(args.run)
        if not (run / "config.json").is_file():
            raise CLIError(f"--run {str(run)!r} is not a discovery run directory (config.json missing)")
        site = discovery_run_site(run / "config.json")  # the run's site, whatever the site flags say
        directions = Discovery.load(run).directions
    else:
        site = site_from_args(DiscoverySiteConfig, args)
        directions = load_directions(args.directions)
    config = _from_file(CompareConfig, args, "compare", seed=site.seed)
    out = _out(args, "compare")
    result = run_compare(site, config, out, directions, dictionary=job.dictionary, overwrite=args.overwrite,
                         sources={"run": args.run, "directions": args.directions}, progress=not args.quiet)
    s = result.comparison.summary()
    print(f"{len(directions)} directions vs {result.dictionary.n_latents} latents: "
          f"{s['matches_isotropic']['fraction_significant']:.0%} match a latent at p < {config.alpha}; "
          f"{s['dictionary_sensitivity']['fraction_local_optima']:.0%} of scanned latents are local optima -> {out}")
    return 0


def cmd_demo(args) -> int:
    toy = args.model == "toy"
    cls = DemoConfig if toy else ModelDemoConfig
    start = (cls.quick() if args.quick else cls()).to_dict() | load_config_file(args.config, "demo")
    flags = {f.name for c in (DemoConfig, ModelDemoConfig) for f in dataclasses.fields(c)} - {"model"}
    given = {k: getattr(args, k) for k in sorted(flags) if getattr(args, k, None) is not None}  # others: refused
    config = config_from_args(cls, argparse.Namespace(), start, f"--config {args.config!r}" if args.config else
                              "the flags", given | ({} if toy else {"model": args.model}))
    if not toy:
        resolve_device(args.device)  # an unknown or missing device is refused before the model loads
    out = check_output_dir(args.out, args.overwrite)
    if toy:
        summary = run_demo(out, config, progress=not args.quiet, overwrite=args.overwrite)
        print(f"demo: SAE recovers planted features with mean best |cos| {summary['sae_mean_best_cos_to_planted']:.3f}; "
              f"{summary['restarts_reaching_planted']:.0%} of restarts reached a planted feature "
              f"({summary['distinct_planted_found']} distinct); {summary['optima_matching_sae']} of "
              f"{summary['distinct_optima']} optima match an SAE latent (cos >= 0.9, p < {config.compare.alpha}) "
              f"in {summary['timings']['total_seconds']:.0f}s -> {out / 'report.html'}")
        return 0
    s = run_model_demo(out, config, progress=not args.quiet, overwrite=args.overwrite, device=args.device)
    n = s["n_optima"]
    print(f"demo: {n} optima on {s['prompt_text']!r}; {s['optima_beating_real_other_median']} of {n} blow up earlier "
          f"than the real-other median; {s['optima_matching_sae_isotropic']} / {s['optima_matching_sae_covariance']} "
          f"of {n} match an SAE latent at p < {s['alpha']:g} (isotropic / covariance null) "
          f"in {s['timings']['total_seconds']:.0f}s -> {out / 'report.html'}")
    return 0


def cmd_sweep(args) -> int:

    out = _out(args, "sweep")
    if args.aggregate:
        aggregate(out)
        print(f"pooled the finished units -> {out / 'results.json'}")
        return 0
    names = {f.name for f in dataclasses.fields(DiscoverySiteConfig)} - {"prompt", "tokens", "input", "prompts"}
    try:  # --prompts is the sweep's source; the site's real-other prompts are --other-prompts
        site = DiscoverySiteConfig.from_dict({k: getattr(args, k) for k in names} | {"prompts": args.other_prompts})
    except ValueError as exc:
        raise flag_error(exc, names | {"prompts"}) from None
    discover = _from_file(DiscoverConfig, args, "discover", seed=site.seed)  # --seed seeds the restarts too
    fields = [f for f in dataclasses.fields(SweepConfig) if f.name not in ("site", "discover")]
    given = {f.name: getattr(args, f.name) for f in fields if getattr(args, f.name) is not None}
    given |= {f.name: given[f.name] in (True, "true") for f in fields if isinstance(f.default, bool) and f.name in given}
    try:
        config = SweepConfig(site=site, discover=discover, **given)
    except ValueError as exc:
        raise flag_error(exc, {f.name for f in fields}) from None
    if not args.quiet:
        logging.getLogger("sensfind.app.sweep").setLevel(logging.INFO)  # a line per unit
    s = run_sweep(config, out, progress=not args.quiet)
    print(f"{s.done} done, {s.failed} failed of {s.units} units ({s.skipped} done before this run) in "
          f"{s.wall_seconds:.0f}s -> {out}")
    return 0


def cmd_mixture(args) -> int:
    if args.run is not None and args.directions is not None:
        raise CLIError("give one of --run DIR (a discovery run's optima) or --directions SPEC, not both")
    if args.run is not None:
        run = Path(args.run)
        if not (run / "config.json").is_file():
            raise CLIError(f"--run {str(run)!r} is not a discovery run directory (config.json missing)")
        site = discovery_run_site(run / "config.json")  # the run's site, whatever the site flags say
        directions, kind = Discovery.load(run).directions, "discovered optima"
    else:
        site = site_from_args(DiscoverySiteConfig, args)
        directions, kind = args.directions or "random:8", None
        read_direction_inputs(directions)  # its spelling, counts and files, before the model loads
    config = _from_file(MixtureConfig, args, "mixture", seed=site.seed)
    out = _out(args, "mixture")
    r = run_mixture(site, config, out, directions, overwrite=args.overwrite, kind=kind)
    s = r.summary
    print(f"{r.direction_kind}: p = {_p(s['p'])} [{_p(s['p_low'])}, {_p(s['p_high'])}] (95%) from {s['n_pairs']} pairs, "
          f"{s['scan_points']} scan points in {s['seconds']:.1f}s; threshold / quadratic onset median "
          f"{s['linear'].get('ratio_median', float('nan')):.3g} -> {out}")
    return 0


def _run_args(g, command: str, config: str, overwrite: str = "replace a non-empty results directory",
              out: str | None = None) -> None:
    g.add_argument("--config", default=None, help=f"JSON file of {config} fields, or a run's config.json (flags "
                   "override it)")
    g.add_argument("--out", default=out, help=f"results directory (default {out or f'runs/{command}-TIMESTAMP'})")
    g.add_argument("--overwrite", action="store_true", help=overwrite)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="sensfind", description=__doc__.splitlines()[0].replace("``", ""))
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("scan", help="scan effect vs angle/step along directions at a site")
    add_config_args(p, SiteConfig, defaults=True, title="site")
    add_config_args(p, ScanRunConfig, defaults=True, title="scan run")
    _run_args(g := p.add_argument_group("output"), "scan", "ScanConfig")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_args(p, ScanConfig)
    p.set_defaults(func=cmd_scan)

    p = sub.add_parser("discover", help="optimise directions for sensitivity (restarts on the sphere)")
    add_config_args(p, DiscoverySiteConfig, defaults=True, title="site")
    add_config_args(p, DiscoverRunConfig, defaults=True, title="discovery run")
    g = p.add_argument_group("output")
    g.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in --out from its checkpoint, with its own settings (flags that "
                        "differ are refused). On a finished run it does nothing; with --overwrite it runs it again, "
                        "or starts over where there is no checkpoint")
    _run_args(g, "discover", "DiscoverConfig", "replace a non-empty run directory")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_args(p, DiscoverConfig, skip=("seed",))  # --seed (site) seeds the restarts too
    p.set_defaults(func=cmd_discover)

    p = sub.add_parser("compare", help="compare directions with an SAE dictionary and real-other directions")
    add_config_args(p, DiscoverySiteConfig, defaults=True, title="site")
    g = p.add_argument_group("directions (one of)")
    g.add_argument("--run", default=None, help="a discovery run directory (its site is reused)")
    g.add_argument("--directions", default=None, help="or a file of directions [N, d]")
    add_config_args(p, CompareRunConfig, defaults=True, title="comparison run")
    _run_args(g := p.add_argument_group("output"), "compare", "CompareConfig")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    add_config_args(p, CompareConfig, skip=("seed",))
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("mixture", help="the Lp mixture test of privileged directions, with linear-response predictions")
    add_config_args(p, DiscoverySiteConfig, defaults=True, title="site")
    g = p.add_argument_group("directions (one of)")
    g.add_argument("--run", default=None, help="a discovery run directory: its optima (its site is reused)")
    g.add_argument("--directions", default=None, help="or a spec: random:N, linear:N (top eigenvectors of the "
                   "linear response), file:PATH, targets:builtin|PATH [default random:8]")
    _run_args(p.add_argument_group("output"), "mixture", "MixtureConfig")
    add_config_args(p, MixtureConfig, skip=("seed",))  # --seed (site) seeds the bootstrap too
    p.set_defaults(func=cmd_mixture)

    p = sub.add_parser("demo", help="offline demo: SmolLM2 corpus prompt -> SAE -> discovery -> comparison -> report")
    add_config_args(p, ModelDemoConfig, only=("model",), defaults=True, title="model")
    add_config_args(p, ModelDemoConfig, skip=("model", "sae", "analysis"), title="demo with a real model")  # nested: --config
    add_config_args(p, DemoConfig, skip=("seed", "input", "n_others", "compare"), title="demo with --model toy")
    g = p.add_argument_group("demo run")
    g.add_argument("--device", default="cpu", help="torch device for the real model (default cpu)")
    g.add_argument("--quick", action="store_true", help="small sizes (seconds instead of minutes)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    _run_args(g, "demo", "ModelDemoConfig (DemoConfig with --model toy)", "replace an existing results directory",
              out="runs/demo")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("sweep", help="discovery (or the full analysis) over many prompts, locally or on a Ray cluster")
    add_config_args(p, DiscoverySiteConfig, skip=("prompt", "tokens", "input", "prompts"), defaults=True,
                    title="site template (each unit sets its prompt)")
    p.add_argument("--other-prompts", default="builtin", help="prompt file of the real-other activations of "
                   "discover work (covariance init); builtin: the built-in prompts [default builtin]")
    add_config_args(p, SweepConfig, skip=("site", "discover"), title="sweep")
    g = p.add_argument_group("output")
    g.add_argument("--config", default=None, help="JSON file of DiscoverConfig fields, or a run's config.json (flags "
                   "override it)")
    g.add_argument("--out", default=None, help="run directory; a sweep run again into it skips the finished units "
                   "(default runs/sweep-TIMESTAMP)")
    g.add_argument("--aggregate", action="store_true", help="only pool the finished units in --out into results.json")
    g.add_argument("--quiet", action="store_true", help="no progress bar nor per-unit lines")
    add_config_args(p, DiscoverConfig, skip=("seed",))  # --seed (site) seeds the restarts too
    p.set_defaults(func=cmd_sweep)
    add_tune_parser(sub)
    for p in sub.choices.values():  # also after the command: sensfind scan --verbose ...
        p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a command. Bad input (the flags' own syntax included) and unwritable results print
    ``sensfind: error: ...`` and exit 2 with nothing half-written; Ctrl-C prints ``sensfind: interrupted``
    and exits 130 (the previous results intact, the partial work removed); anything else is a bug and
    keeps its traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return error_boundary(lambda: _run(argv))


def _run(argv: list[str]) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    args.argv = argv
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    library_output(args.verbose)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
