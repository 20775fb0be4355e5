"""The ``sensfind`` command line. Each subcommand maps its flags one-to-one onto a config dataclass.

Bad input prints one line (``sensfind: error: ...``) and exits with status 2; nothing half-written
is left in the results directory.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

log = logging.getLogger("sensfind")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}


class CLIError(ValueError):
    """A bad command-line value."""


def add_site_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("site")
    g.add_argument("--model", default="random:gpt2",
                   help="TransformerLens model name (e.g. gpt2; needs the HuggingFace hub) or random:gpt2 / random:tiny "
                        "(local architecture, random weights). Default: random:gpt2")
    g.add_argument("--prompt", default="The old lighthouse keeper climbed the stairs every evening",
                   help="prompt text (models without a tokenizer encode it as UTF-8 bytes)")
    g.add_argument("--tokens", default=None, help="comma-separated token ids instead of --prompt")
    g.add_argument("--hook", default="blocks.1.hook_resid_pre", help="hook name of the site")
    g.add_argument("--position", type=int, default=-1, help="token position of the site (default: last)")
    g.add_argument("--output-hook", default=None,
                   help="read the output at this hook instead of the logits (e.g. blocks.11.hook_resid_post)")
    g.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
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
    model = load_model(args.model, seed=args.seed)
    subject = TransformerSubject(model, prompt, hook=args.hook, position=args.position, output_hook=args.output_hook)
    if DTYPES[args.dtype] != torch.float32:
        subject = subject.to_dtype(DTYPES[args.dtype])
    return model, subject


def site_config(args) -> dict:
    return {k: getattr(args, k) for k in ("model", "prompt", "tokens", "hook", "position", "output_hook", "dtype", "seed")}


def resolve_directions(spec: str, model, subject, args) -> tuple[torch.Tensor, str]:
    """``random:N`` | ``file:PATH`` | ``targets:builtin`` | ``targets:PATH`` -> (directions [R, d], kind)."""
    from .baselines import isotropic, load_directions
    from .prompts import load_prompts, site_activations
    from .scan import directions_from_targets

    kind, _, value = spec.partition(":")
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
    if kind == "targets":
        prompts = load_prompts(value or "builtin")
        targets = site_activations(model, prompts, subject.hook, args.position)
        # real-other means *other* prompts: drop targets identical to the base (the subject's own prompt)
        same = (targets - subject.base).norm(dim=1) <= 1e-6 * subject.base.norm()
        if same.all():
            raise CLIError(f"every prompt in {value or 'builtin'!r} gives the base activation itself; give other prompts")
        if same.any():
            log.info("dropped %d target prompt(s) identical to the subject's prompt", int(same.sum()))
        return directions_from_targets(subject.base, targets[~same]), "real-other"
    raise CLIError(f"--directions must be random:N, file:PATH or targets:PATH|builtin, got {spec!r}")


def cmd_scan(args) -> int:
    from .plots import plot_effect_curves
    from .runio import save_json, save_tensors, staged_dir
    from .scan import ScanConfig, scan

    config = ScanConfig(mode=args.mode, start=args.start, stop=args.stop, steps=args.steps,
                        effect=args.effect, tau=args.tau, scale=args.scale)
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
        save_json(tmp / "config.json", {"command": "scan", "site": site_config(args), "scan": config.to_dict(),
                                        "directions": args.directions, "path": args.path})
        save_json(tmp / "results.json", {"summary": summary, "threshold": result.threshold,
                                         "threshold_index": result.threshold_index,
                                         "max_slope_index": result.max_slope_index})
        save_tensors(tmp / "tensors.safetensors", {"directions": directions, "steps": result.steps,
                                                   "effects": result.effects, "base": subject.base})
        plot_effect_curves(tmp / "effect_vs_step.png", {kind: (result.steps, result.effects)},
                           xlabel=f"step ({config.unit})", effect=config.effect, tau=config.tau,
                           title=f"{args.model} {args.hook} pos {args.position}: {config.mode} scan")
    reached = summary["n_reached"]
    med = summary.get("threshold_median")
    print(f"scanned {summary['n_directions']} directions x {summary['n_steps']} steps in {seconds:.2f}s; "
          f"threshold reached by {reached}" + (f", median {med:.3g} {config.unit}" if med is not None else "")
          + f" -> {out}")
    return 0


class _Runner:
    """A subject view whose ``run`` is a chosen path (fast or reference)."""

    def __init__(self, subject, run):
        self.base = subject.base
        self.base_output = getattr(subject, "base_output", None)
        self.run = run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sensfind", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log diagnostics")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("scan", help="scan effect vs angle/step along directions at a site")
    add_site_args(p)
    g = p.add_argument_group("scan")
    g.add_argument("--directions", default="random:16",
                   help="random:N (isotropic), file:PATH (.safetensors/.pt/.npy [R, d]), targets:builtin or "
                        "targets:PATH (directions towards other prompts' activations). Default random:16")
    g.add_argument("--mode", choices=["sphere", "straight"], default="sphere")
    g.add_argument("--start", type=float, default=None, help="first step (default 0)")
    g.add_argument("--stop", type=float, default=None, help="last step (default 180 deg sphere, 1 straight)")
    g.add_argument("--steps", type=int, default=91, help="number of scan points (>= 2)")
    g.add_argument("--effect", choices=["kl", "l2", "cos"], default="kl")
    g.add_argument("--tau", type=float, default=0.5, help="threshold on the effect (nats for kl)")
    g.add_argument("--scale", choices=["relative", "absolute"], default="relative", help="straight mode step units")
    g.add_argument("--path", choices=["fast", "reference"], default="fast", help="fast path or full forward")
    g.add_argument("--out", default=None, help="results directory (default runs/scan-TIMESTAMP)")
    g.add_argument("--overwrite", action="store_true", help="replace a non-empty results directory")
    p.set_defaults(func=cmd_scan)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .models import ModelUnavailableError

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ValueError, ModelUnavailableError, FileNotFoundError) as exc:
        print(f"sensfind: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
