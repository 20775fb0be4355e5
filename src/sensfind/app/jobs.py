"""The commands' work as library functions: ``run_scan``, ``run_discover`` and ``run_compare`` take a site,
a config and a results directory, write the directory whole (``config.json``, results, figures; nothing
half-written on failure) and return a named result. The command line only builds their arguments.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from sensfind.configs import Config, check_choice, check_int
from sensfind.errors import InputFileError, NoUsablePairsError
from sensfind.app.site import DiscoverySiteConfig, Site, SiteConfig
from sensfind.specs import (DEFAULT_SAE_RELEASE, DICTIONARY_KINDS, DIRECTION_KINDS, Spec, dictionary_width,
                            parse_model_spec, parse_spec)
from sensfind.dictionaries.corpus_sae import CorpusSAEConfig, train_corpus_sae
from sensfind.dictionaries.dictionary import check_dictionary_dir
from sensfind.core.baselines import isotropic, load_directions
from sensfind.core.geometry import directions_from_targets, effective_directions, is_base, tangent_rotations
from sensfind.core.linear_response import linear_directions, linear_predictions
from sensfind.core.mixture import MixtureConfig, MixtureTest, mixture_row, mixture_test, no_pair_row, test_row
from sensfind.models.prompts import check_prompt_source, load_prompts, prompt_activations
from sensfind.reporting.plots import plot_effect_curves, plot_mixture_curves
from sensfind.runio import out_lock, remove_litter, save_json, save_tensors, staged_dir
from sensfind.core.scan import scan, step_grid
from sensfind.discovery.rounds import round_cost
from sensfind.progress import Stages
from sensfind.runio import load_json
from sensfind.discovery.loop import discover
from sensfind.discovery.starts import initial_directions
from sensfind.discovery.checkpoint import load_checkpoint
from sensfind.reporting.plots import plot_history
from sensfind.runio import check_output_dir
from sensfind.core.recovery import recovery
from sensfind.dictionaries.training import TrainSAEConfig, train_sae
from sensfind.dictionaries.dictionary import load_dictionary_spec
from sensfind.models.prompts import site_activations_all_positions
from sensfind.comparison.compare import compare
from sensfind.reporting.report import prompt_markup, write_compare_report
from sensfind.comparison.cards import comparison_cards, save_cards
from sensfind.dictionaries.corpus_sae import clean_activations
from sensfind.models.prompts import load_corpus
from sensfind.errors import CorpusUnavailableError
import html

log = logging.getLogger("sensfind")

__all__ = ["CompareRun", "CompareRunConfig", "DiscoverRun", "DiscoverRunConfig", "ScanRun", "ScanRunConfig", "check_dictionary_spec", "check_run_settings", "directions_from_spec",
           "discovery_run_site", "discovery_summary", "incomplete_dir", "load_run_config", "run_compare", "run_discover", "run_scan",
           "site_dictionary"]

RANDOM_BASELINE_SEED_OFFSET = 7919  # the isotropic baseline of a discovery run draws apart from the restarts
TRAIN_SEED_OFFSET = 10  # the toy's stream an SAE of ``train:D_SAE`` is trained on
TOY_RECOVERY_KEYS = ("threshold", "fraction_reached", "n_distinct_features", "distinct_features")
MAX_RANDOM_DIRECTIONS = 100_000  # random:N of scan, and a discovery run's random baseline
MAX_LINEAR_DIRECTIONS = 1024  # linear:N of scan (eigenvectors of the pullback metric: at most d anyway)
MAX_CHECKPOINT_EVERY = 10_000
CARD_CONTEXT_WINDOWS = 200  # corpus windows searched for the compare report's card contexts (a second or two)
CARD_CONTEXT_LENGTH = 32  # tokens per such window


# -- run-level settings (what a command runs on, beside the site and the method's config) ----------------

@dataclass(frozen=True)
class ScanRunConfig(Config):
    """What ``sensfind scan`` scans, and along which path.

    Attributes:
        directions: random:N (isotropic; N at most 100000), linear:N (top eigenvectors of the linear response,
            both signs; N at most 1024), file:PATH (.safetensors/.pt/.npy [R, d]), or targets:PROMPTS: directions
            towards other prompts' activations, PROMPTS being builtin, corpus:N (N windows of the offline corpus),
            openwebtext:N or a prompt file
        path: the fast path (prefix cache, last position only) or the reference (full forward with a hook)
        max_points: budget of scan points (directions x steps; None: none; at most 1000000000); a scan over
            it is refused before it starts
    """

    directions: str = "random:16"
    path: Literal["fast", "reference"] = "fast"
    max_points: int | None = None

    def __post_init__(self):
        check_directions_spec(self.directions)
        check_choice("path", self.path, ("fast", "reference"))
        if self.max_points is not None:
            check_int("max_points", self.max_points, 1, maximum=10**9)


@dataclass(frozen=True)
class DiscoverRunConfig(Config):
    """The run-level settings of ``sensfind discover`` (saved in its config.json beside the site).

    Attributes:
        init_file: initial directions for init 'given' (.safetensors/.pt/.npy of shape [restarts, d])
        random_baseline: isotropic directions scanned finely for comparison with the optima (at most 100000)
        checkpoint_every: iterations between checkpoints (what --resume continues from; at most 10000)
    """

    init_file: str | None = None
    random_baseline: int = 64
    checkpoint_every: int = 10

    def __post_init__(self):
        if self.init_file is not None and (not isinstance(self.init_file, str) or not self.init_file):
            raise ValueError(f"init_file must be a file path or None, got {self.init_file!r}")
        check_run_settings(self.random_baseline, self.checkpoint_every)


@dataclass(frozen=True)
class CompareRunConfig(Config):
    """The dictionary ``sensfind compare`` compares with.

    Attributes:
        dictionary: auto (the model's own: corpus for smollm2-135m, gguf:PATH and hub models, pretrained
            gpt2-small-res-jb for gpt2, train for random weights and the toy), corpus (the SAE trained on the
            model's offline corpus at the site's hook, cached: the one sensfind demo trains), disk:PATH (a
            saved SAE, e.g. runs/demo/sae), pretrained:RELEASE[/SAE_ID] (HuggingFace hub; the release's SAE at
            the site's hook) or train:D_SAE (trained here on the site's prompts' activations; D_SAE at most 65536)
    """

    dictionary: str = "auto"

    def __post_init__(self):
        check_dictionary_spec(self.dictionary)


# -- scan ----------------------------------------------------------------------------------------------

@dataclass
class ScanRun:
    """A scan run: the scan, its summary (as in ``results.json``), the direction kind and the directory."""

    scan: object
    summary: dict
    direction_kind: str
    out: Path


def check_directions_spec(spec: str, what: str = "directions") -> Spec:
    """A direction spec checked without the model: its kind, the count of ``random:N`` and ``linear:N``, a
    path for ``file:``."""
    parsed = parse_spec(spec, DIRECTION_KINDS, what)
    if parsed.kind in ("random", "linear"):
        kind, value = parsed.kind, parsed.value or "16"
        limit = MAX_RANDOM_DIRECTIONS if kind == "random" else MAX_LINEAR_DIRECTIONS
        if not value.lstrip("-").isdigit():
            raise ValueError(f"{what} {kind}:N needs an integer N, got {value!r}")
        if int(value) < 1:
            raise ValueError(f"{what} {kind}:N needs N >= 1, got {value}")
        if int(value) > limit:
            raise ValueError(f"{what} {kind}:N needs N <= {limit} (its limit), got {value}")
    if parsed.kind == "file" and not parsed.value:
        raise ValueError(f"{what} file:PATH needs the path of a .safetensors/.pt/.npy file, got {spec!r}")
    return parsed


def read_direction_inputs(spec: str):
    """What a direction spec reads from disk, read before the model loads: the directions of ``file:``
    (shape checked), the prompts of ``targets:PATH`` (``None`` for the others)."""
    parsed = check_directions_spec(spec, "--directions")
    if parsed.kind == "file":
        return load_directions(parsed.value)
    if parsed.kind == "targets" and parsed.value not in ("", "builtin"):
        check_prompt_source(parsed.value)
    return None


def directions_from_spec(spec: str, site: SiteConfig, model, subject, loaded: Tensor | None = None
                         ) -> tuple[Tensor, str]:
    """``random:N`` | ``linear:N`` | ``file:PATH`` | ``targets:builtin`` | ``targets:PATH`` -> (directions
    [R, d], kind). ``linear:N``: the top eigenvectors of the pullback metric at the base, both signs.
    ``loaded``: the file's directions, if already read (``read_direction_inputs``)."""

    parsed = check_directions_spec(spec, "--directions")
    kind, value = parsed.kind, parsed.value
    if kind in ("random", "linear"):
        n = int(value or 16)
        if kind == "linear":
            return linear_directions(subject, n), "linear"
        return isotropic(n, subject.d, seed=site.seed), "naive-random"
    if kind == "file":
        return (load_directions(value) if loaded is None else loaded), "file"
    prompts = load_prompts(value or "builtin", model)
    targets = prompt_activations(model, prompts, subject.hook, site.position)
    # real-other means *other* prompts: drop targets identical to the base (the subject's own prompt)
    same = is_base(targets, subject.base)
    if same.all():
        raise ValueError(f"every prompt in {value or 'builtin'!r} gives the base activation itself; give other prompts")
    if same.any():
        log.info("dropped %d target prompt(s) identical to the subject's prompt", int(same.sum()))
    return directions_from_targets(subject.base, targets[~same]), "real-other"


class _Runner:
    """A subject view whose ``run`` is a chosen path (fast or reference)."""

    def __init__(self, subject, run):
        self.base = subject.base
        self.base_output = getattr(subject, "base_output", None)
        self.run = run


def check_scan_budget(n_directions: int, steps: int, max_points: int | None) -> None:
    """Refuse a scan of ``n_directions x steps`` points over ``max_points`` (``ValueError``)."""
    if max_points is not None and n_directions * steps > max_points:
        raise ValueError(f"max_points={max_points} is less than the scan's {n_directions} directions x {steps} steps "
                         f"= {n_directions * steps} points; raise --max-points, or scan fewer directions or steps")


def run_scan(site: SiteConfig, config, out: str | Path, directions: str = "random:16",
             path: Literal["fast", "reference"] = "fast", overwrite: bool = False, max_points: int | None = None,
             progress: bool | None = None) -> ScanRun:
    """Scan ``site``'s subject along the directions of the spec ``directions`` with ``config`` (a
    ``ScanConfig``); writes config.json, results.json, summary.json (with ``timings``),
    tensors.safetensors and effect_vs_step.png. A scan over ``max_points`` points is refused before it
    starts (``random:N``: before the model loads); ``progress``: a bar on stderr (``None``: in a terminal)."""

    stages = Stages()
    out = Path(out)
    spec = parse_spec(directions, DIRECTION_KINDS, "--directions")
    loaded = read_direction_inputs(directions)  # bad files are refused before the model loads
    if spec.kind == "random" and spec.value.isdigit():
        check_scan_budget(int(spec.value), config.steps, max_points)
    elif loaded is not None:
        check_scan_budget(loaded.shape[0], config.steps, max_points)
    with staged_dir(out, overwrite=overwrite) as tmp:
        with stages("load", progress, f"loading {site.model}"):
            model = site.load_model()
            subject = site.subject(model)
        with stages("directions", progress, f"directions {directions}"):
            dirs, kind = directions_from_spec(directions, site, model, subject, loaded)
        check_scan_budget(dirs.shape[0], config.steps, max_points)
        use_reference = path == "reference"
        run = subject.run_reference if use_reference and hasattr(subject, "run_reference") else subject.run
        t0 = time.perf_counter()
        with torch.no_grad(), stages("scan"):
            result = scan(_Runner(subject, run), dirs, config, progress=progress, desc=f"scan ({kind})")
        seconds = time.perf_counter() - t0
        summary = result.summary() | {"seconds": seconds, "path": path, "direction_kind": kind,
                                      "points": dirs.shape[0] * config.steps, "max_points": max_points}
        summary |= subject.norm_info() if hasattr(subject, "norm_info") else {}
        save_json(tmp / "config.json", {"command": "scan", "site": site.to_dict(), "scan": config.to_dict(),
                                        "directions": directions, "path": path, "max_points": max_points})
        save_json(tmp / "results.json", {"summary": summary, "threshold": result.threshold,
                                         "threshold_index": result.threshold_index,
                                         "max_slope_index": result.max_slope_index})
        save_tensors(tmp / "tensors.safetensors", {"directions": dirs, "steps": result.steps,
                                                   "effects": result.effects, "base": subject.base})
        plot_effect_curves(tmp / "effect_vs_step.png", {kind: (result.steps, result.effects)},
                           xlabel=config.axis_label, effect=config.effect, tau=config.tau,
                           title=f"{site.model} {site.hook} pos {site.position}: {config.mode} scan")
        summary["timings"] = stages.timings()
        save_json(tmp / "summary.json", summary)
    return ScanRun(result, summary, kind, out)


# -- discover ------------------------------------------------------------------------------------------

@dataclass
class DiscoverRun:
    """A discovery run: the optima, the summary (as in ``summary.json``), the final scans' config and
    the directory."""

    discovery: object
    summary: dict
    final_config: object
    out: Path


def incomplete_dir(out: Path) -> Path:
    """Where a discovery run into ``out`` works until it is complete: a hidden sibling holding its
    ``config.json`` and ``checkpoint.pt`` (what ``--resume`` continues from)."""
    out = Path(out)
    return out.parent / f".{out.name}.incomplete"


def load_run_config(path: Path, key: str | None = None) -> dict:
    """A run's ``config.json``, checked: a JSON object with a ``site`` object (and ``key``, if given)."""

    data = load_json(path, "run config")
    if not isinstance(data, dict) or not isinstance(data.get("site"), dict):
        raise InputFileError(f"run config {str(path)!r} has no 'site' settings; is it the config.json of a "
                             "sensfind discover run?")
    if key is not None and not isinstance(data.get(key), dict):
        raise InputFileError(f"run config {str(path)!r} has no {key!r} settings; is it the config.json of a "
                             f"sensfind {key} run?")
    return data


def discovery_run_site(path: Path, data: dict | None = None) -> DiscoverySiteConfig:
    """The site saved in a run's ``config.json`` at ``path`` (``data``: its contents, if already read)."""
    data = load_run_config(path) if data is None else data
    try:
        return DiscoverySiteConfig.from_dict(data["site"])
    except (TypeError, ValueError) as exc:
        raise InputFileError(f"run config {str(path)!r}: {exc}") from None


def check_run_settings(random_baseline: int = 64, checkpoint_every: int = 10) -> None:
    """The run-level settings of ``run_discover``; ``ValueError`` naming the bad one."""
    if not isinstance(checkpoint_every, int) or isinstance(checkpoint_every, bool) or checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be an integer >= 1 (iterations between checkpoints), "
                         f"got {checkpoint_every}")
    if not isinstance(random_baseline, int) or isinstance(random_baseline, bool) or random_baseline < 1:
        raise ValueError(f"random_baseline must be an integer >= 1 (isotropic directions scanned for comparison), "
                         f"got {random_baseline!r}")
    check_int("checkpoint_every", checkpoint_every, 1, maximum=MAX_CHECKPOINT_EVERY)
    check_int("random_baseline", random_baseline, 1, maximum=MAX_RANDOM_DIRECTIONS)


BASELINE_SHARE = 4  # a discovery run with a budget spends at most 1/BASELINE_SHARE of it on the random baseline


def discover_budget(config, random_baseline: int, mixture_pairs: int = 6) -> tuple[object, int, int, dict]:
    """How a discovery run with ``config.max_points`` splits its budget: the discovery's own config (its
    ``max_points`` less the baseline), the random baseline's directions, the mixture test's pairs (none
    under a budget: its cost is not known before it runs) and what was cut (name -> ``[asked, kept]``).
    Without a budget nothing is cut. ``ValueError`` when what is left cannot pay for one restart."""
    if config.max_points is None:
        return config, random_baseline, mixture_pairs, {}
    steps = config.final_steps
    n = min(random_baseline, config.max_points // (BASELINE_SHARE * steps))
    cut = {"random_baseline": [random_baseline, n]} if n < random_baseline else {}
    if mixture_pairs:
        cut["mixture_pairs"] = [mixture_pairs, 0]
    left = config.max_points - n * steps
    if left < round_cost(config):
        raise ValueError(f"max_points={config.max_points} cannot pay for one restart (start + iterations * scan_steps "
                         f"+ final_steps = {round_cost(config)} scan points) beside the random baseline "
                         f"({n} x {steps} points); raise --max-points or lower --iterations/--scan-steps/--final-steps")
    return dataclasses.replace(config, max_points=left), n, 0, cut


def privileged_summary(subject, found, config, mixture_pairs: int = 6, seed: int = 0) -> dict:
    """Are the optima features? Each optimum's threshold over its quadratic (linear-response) onset and
    its early growth at 2° and 4°, and the mixture (Lp) test among the optima (``mixture_pairs`` pairs at
    most; 0 or fewer than two optima: none). Its scan points are reported apart from discovery's."""
    pred = linear_predictions(subject, found.directions, tau=config.tau, thresholds=found.blowup_deg)
    out = {"linear": pred.summary(), "optima_linear_ratio": pred.ratio, "optima_early_growth": pred.early_growth}
    if mixture_pairs and len(found) >= 2:
        out["mixture"] = mixture_row(subject, found.directions, MixtureConfig(max_pairs=mixture_pairs, tau=config.tau,
                                                                              bootstrap=500, seed=seed))
    return out


def pure_thresholds(test: MixtureTest) -> Tensor:
    """``[n]`` each given direction's own critical angle (deg) as the mixture test measured it (φ = 0° for a
    pair's first direction, 90° for its second); ``nan`` for a direction in no pair."""
    out = torch.full((test.n_directions,), math.nan, dtype=torch.float64)
    for j, (a, b) in enumerate(test.pairs.tolist()):
        out[a], out[b] = float(test.thresholds[j, 0]), float(test.thresholds[j, -1])
    return out


CONTROL_AXES = 4  # directions per control kind of the mixture test (one sign each: 6 pairs)


CONTROL_ROTATIONS = (15.0, 30.0, 60.0)  # degrees each optimum is turned away from itself, a control kind each


def rotated_kind(deg: float) -> str:
    return f"optima turned {deg:g}°"


def control_mixtures(subject, tau: float, seed: int = 0, pairs: int = 6, optima: Tensor | None = None) -> dict:
    """The mixture (Lp) test at ``tau`` on the controls of the optima's: ``isotropic`` (4 random directions,
    base projected out), ``linear`` (G's top 4 eigenvectors, one sign each) and, given the ``optima`` (at
    least two), the optima each turned by 15°, 30° and 60° towards a random tangent direction
    (:func:`rotated_kind`): on planted features p falls towards 2 as they are turned away, so p that stays
    high says the region, not the directions, makes it. Each kind also gets its threshold over its quadratic
    onset and early growth. kind -> the row ``privileged_summary`` gives the optima."""
    base = subject.base
    kinds = {"isotropic": effective_directions(isotropic(CONTROL_AXES, base.shape[0], seed=seed + 2, dtype=base.dtype),
                                               base, "sphere"),
             "linear": linear_directions(subject, 2 * CONTROL_AXES)[::2]}
    if optima is not None and optima.shape[0] >= 2:
        u = effective_directions(optima.detach().to(base.dtype), base, "sphere")
        for deg in CONTROL_ROTATIONS:
            kinds[rotated_kind(deg)] = tangent_rotations(u, base, 1, deg, seed=seed + 3)[:, 0]
    out = {}
    for kind, rows in kinds.items():
        config = MixtureConfig(max_pairs=pairs, tau=tau, bootstrap=500, seed=seed)
        try:
            test = mixture_test(subject, rows, config)
        except NoUsablePairsError as exc:
            row, thresholds = no_pair_row(exc), None
        else:
            row, thresholds = test_row(test), pure_thresholds(test)
        pred = linear_predictions(subject, rows, tau=tau, thresholds=thresholds).summary()
        out[kind] = {**row, **{k: pred.get(k) for k in ("ratio_median", "early_growth_2deg_median",
                                                        "early_growth_4deg_median")}}
    return out


def discovery_summary(site: DiscoverySiteConfig, subject, found, config, random_baseline: int = 64,
                      mixture_pairs: int = 6, progress: bool | None = False):
    """What a discovery run reports beside its optima (``summary.json``): the optima's blowups against
    ``random_baseline`` isotropic directions scanned on the final grid (0: none), the scan points spent
    (``points``: discovery, random baseline, a rescan of the optima, the mixture test), whether the
    optima look privileged (:func:`privileged_summary`, for next-token KL in sphere mode) and, on the toy,
    the recovery of its planted features. Returns (summary, the isotropic scan or None, the optima's
    effects ``[N, final_steps]``)."""

    final_cfg = config.final_scan_config
    points = {"discover": found.points_evaluated, "random_baseline": random_baseline * final_cfg.steps}
    with torch.no_grad():
        random_dirs = isotropic(max(random_baseline, 1), subject.base.shape[0],
                                seed=site.seed + RANDOM_BASELINE_SEED_OFFSET, dtype=subject.base.dtype)[:random_baseline]
        rand = scan(subject, random_dirs, final_cfg, progress=progress, desc="random baseline") if random_baseline else None
        # the optima's curves come from the final scan that measured them (a resumed old checkpoint: scan)
        if found.final_effects is not None:
            opt = found.final_effects
        else:
            opt = scan(subject, found.directions, final_cfg, progress=progress, desc="optima").effects
            points["optima"] = len(found) * final_cfg.steps
    summary = {"n_optima": len(found), "best_blowup": float(found.blowup_deg.min()),
               "optima_blowup": found.blowup_deg, "optima_counts": found.counts,
               "random_blowup_median": float(rand.threshold.median()) if rand is not None else None,
               "random_reached": int(torch.isfinite(rand.threshold).sum()) if rand is not None else 0,
               "points_evaluated": found.points_evaluated, "iterations_run": len(found.history),
               "rounds_run": found.rounds_run, "stop_reason": found.stop_reason}
    summary |= subject.norm_info() if hasattr(subject, "norm_info") else {}
    if config.effect == "kl" and config.mode == "sphere":  # the pullback metric is the KL's second order
        summary |= privileged_summary(subject, found, config, mixture_pairs, seed=site.seed)
        points["mixture"] = int(summary.get("mixture", {}).get("scan_points", 0))
    if site.is_toy:
        rec = recovery(found.restart_directions, subject.signed_features(), subject.base)
        summary["toy_recovery"] = {k: v for k, v in rec.to_dict().items() if k in TOY_RECOVERY_KEYS}
    summary["points"] = points
    return summary, rand, opt


def run_discover(site: DiscoverySiteConfig, config, out: str | Path, *, init_file: str | None = None,
                 random_baseline: int = 64, checkpoint_every: int = 10, resume: bool = False,
                 overwrite: bool = False, progress: bool | None = None) -> DiscoverRun:
    """Discover sensitivity optima at ``site`` with ``config`` (a ``DiscoverConfig``), scan them and
    ``random_baseline`` isotropic directions finely, and write the run into ``out``.

    ``config.max_points`` bounds every scan point of the run, the random baseline's included: the
    baseline gets at most a quarter of it (fewer directions, logged and in the summary's ``budget``).
    ``progress``: bars on stderr (``None``: when stderr is a terminal); ``summary["timings"]`` holds
    every stage's seconds.

    The run works in :func:`incomplete_dir` (``out``'s hidden sibling) and checkpoints there every
    ``checkpoint_every`` iterations; ``resume`` continues from that checkpoint when there is one.
    A previous complete run in ``out`` is kept until the new one is complete (``overwrite``). The run
    holds ``out``'s lock throughout (``runio.out_lock``): a second run on ``out`` is refused at once."""

    out = Path(out)
    check_run_settings(random_baseline, checkpoint_every)
    discover_budget(config, random_baseline)  # a budget that cannot pay for one restart: refused before the lock
    check_output_dir(out, overwrite=True)  # a file in its place, an unwritable place: refused before the lock
    with out_lock(out):
        remove_litter(incomplete_dir(out))  # what a run killed while saving into its work directory left
        return _discover_locked(site, config, out, init_file, random_baseline, checkpoint_every, resume, overwrite,
                                progress)


def _discover_locked(site, config, out: Path, init_file, random_baseline, checkpoint_every, resume, overwrite,
                     progress) -> DiscoverRun:
    stages = Stages()
    stage = incomplete_dir(out)
    resuming = bool(resume and (stage / "checkpoint.pt").is_file())
    if not resuming and stage.exists() and not overwrite:
        raise ValueError(f"{str(out)!r} has an interrupted run (in {str(stage)!r}); continue it with --resume, "
                         "or start over with --overwrite")
    run_config, n_random, mixture_pairs, cut = discover_budget(config, random_baseline)  # before any work
    if cut:
        log.warning("discover: to fit max_points=%d scan points, cut %s (asked -> kept)", config.max_points,
                    ", ".join(f"{k} {a} -> {b}" for k, (a, b) in cut.items()))
    check_output_dir(out, overwrite=overwrite or resuming)
    init = None
    if config.init == "given":
        if init_file is None:
            raise ValueError("init 'given' needs init_file (.safetensors/.pt/.npy of shape [restarts, d])")
        init = load_directions(init_file)  # read before the model loads
        if init.shape[0] != config.restarts:
            config = dataclasses.replace(config, restarts=init.shape[0])
            run_config = dataclasses.replace(run_config, restarts=init.shape[0])
    with stages("load", progress, f"loading {site.model} and the real-other activations"):
        subject, model, others = site.build()
    if config.init in ("given", "covariance"):
        initial_directions(subject, config, init, others)  # validates init before anything is written
    if resuming:
        load_checkpoint(stage / "checkpoint.pt", run_config, (config.restarts, subject.base.shape[0]))
    elif stage.exists():
        shutil.rmtree(stage)  # overwrite: an interrupted run is started over
    # everything is validated: from here on the run is written, into the stage, then moved into place

    def keep(exc: BaseException) -> bool:  # an interrupted run keeps its checkpoint (if any) for --resume
        return resuming or (not isinstance(exc, Exception) and (stage / "checkpoint.pt").is_file())

    with staged_dir(out, overwrite=True, stage=stage, keep=keep) as tmp:
        if not resuming:
            save_json(tmp / "config.json", {"command": "discover", "site": site.to_dict(), "discover": config.to_dict(),
                                            "init_file": init_file, "random_baseline": random_baseline})
        with stages("discover"):
            found = discover(subject, run_config, init_directions=init, activations=others, progress=progress,
                             checkpoint=tmp / "checkpoint.pt", checkpoint_every=checkpoint_every, resume=resuming)
        found.save(tmp, overwrite=True)  # beside the run's config.json and checkpoint
        final_cfg = config.final_scan_config
        with stages("baselines"):
            summary, rand, opt = discovery_summary(site, subject, found, config, n_random, mixture_pairs, progress)
        summary["budget"] = {"max_points": config.max_points, "points": summary.pop("points"), "cut": cut}
        summary["budget"]["total_points"] = sum(summary["budget"]["points"].values())
        with stages("report"):
            plot_history(tmp / "objective.png", found.history)
            curves = {"discovered optima": (step_grid(final_cfg, dtype=opt.dtype), opt)}
            if rand is not None:
                curves = {"naive-random": (rand.steps, rand.effects)} | curves
            plot_effect_curves(tmp / "effect_vs_angle.png", curves, xlabel=final_cfg.axis_label, effect=config.effect,
                               tau=config.tau, title=f"{site.model}: sensitivity optima vs isotropic random directions")
        summary["timings"] = stages.timings()
        save_json(tmp / "summary.json", summary)
        (tmp / "checkpoint.pt").unlink(missing_ok=True)
    return DiscoverRun(found, summary, final_cfg, out)


# -- compare -------------------------------------------------------------------------------------------

@dataclass
class CompareRun:
    """A comparison run: the comparison, the directions compared, the dictionary and the directory."""

    comparison: object
    directions: Tensor
    dictionary: object
    out: Path


def check_dictionary_spec(text: str) -> Spec:
    """Refuse a malformed dictionary spec before any work; the parsed ``Spec``."""
    spec = parse_spec(text, DICTIONARY_KINDS, "--dictionary")
    if spec.kind in ("pretrained", "disk") and not spec.value.strip("/"):
        raise ValueError(f"--dictionary {spec.kind}:{DICTIONARY_KINDS[spec.kind]} needs a "
                         f"{'release, e.g. pretrained:gpt2-small-res-jb' if spec.kind == 'pretrained' else 'path'}, "
                         f"got {text!r}")
    if spec.kind == "disk":
        check_dictionary_dir(spec.value)
    if spec.kind == "train":
        dictionary_width(spec)
    return spec


def auto_dictionary(site: SiteConfig) -> Spec:
    """The dictionary ``auto`` stands for at ``site``: the pretrained GPT-2 SAEs for ``gpt2``, the cached
    corpus SAE for other trained models, an SAE trained here for random weights and the toy."""
    model = parse_model_spec(site.model)
    if model.kind in ("toy", "random"):
        return Spec("train")
    if model.kind == "hub" and model.value == "gpt2":
        return Spec("pretrained", DEFAULT_SAE_RELEASE)
    return Spec("corpus")


def resolved_dictionary(text: str, site: SiteConfig) -> Spec:
    """The dictionary spec ``text`` with ``auto`` resolved for ``site``; ``ValueError`` before any work for a
    ``corpus`` SAE of a model without a corpus (random weights, the toy)."""
    spec = check_dictionary_spec(text)
    spec = auto_dictionary(site) if spec.kind == "auto" else spec
    if spec.kind == "corpus" and parse_model_spec(site.model).kind in ("toy", "random"):
        raise ValueError(f"--dictionary corpus needs a trained model with a tokenizer (smollm2-135m, gguf:PATH, a hub "
                         f"model), not {site.model!r}; use train:D_SAE or disk:PATH")
    return spec


def site_dictionary(text: str, site: DiscoverySiteConfig, built: Site):
    """``auto`` | ``corpus`` | ``pretrained:RELEASE[/SAE_ID]`` | ``disk:PATH`` | ``train:D_SAE`` -> Dictionary.
    ``corpus`` is the cached SAE of ``train_corpus_sae`` at the site's hook; ``train`` fits an SAE on the
    site's activations: the toy's inputs, or every position of the site's prompts."""

    spec = resolved_dictionary(text, site)
    subject, model = built.subject, built.model
    if spec.kind == "corpus":
        return train_corpus_sae(model, CorpusSAEConfig(hook=subject.hook))
    if spec.kind != "train":
        return load_dictionary_spec(spec, getattr(subject, "hook", None))
    d_sae = dictionary_width(spec) or 4 * subject.base.shape[0]
    if model is None:  # the toy: train on its own inputs
        acts, hook = subject.model.sample(20000, seed=site.seed + TRAIN_SEED_OFFSET).acts, None
    else:

        acts = site_activations_all_positions(model, load_prompts(site.prompts, model), subject.hook)
        hook = subject.hook
    return train_sae(acts, hook, d_sae, seed=site.seed, config=TrainSAEConfig(batch_size=min(256, acts.shape[0])),
                     cache_dir=Path.home() / ".cache" / "sensfind")


def run_compare(site: DiscoverySiteConfig, config, out: str | Path, directions: Tensor, *,
                dictionary: str = "auto", sources: dict | None = None,
                overwrite: bool = False, progress: bool | None = None) -> CompareRun:
    """Compare ``directions`` ``[N, d]`` at ``site`` with the dictionary of the spec ``dictionary`` and the
    real-other directions (``config``: a ``CompareConfig``, whose ``max_points`` bounds every scan);
    writes the comparison, config.json (with ``sources``: where the directions came from), summary.json
    (the budget spent and cut, and every stage's seconds) and report.html. ``progress``: bars on stderr
    (``None``: when stderr is a terminal)."""

    stages = Stages()
    out = Path(out)
    check_output_dir(out, overwrite)
    spec = resolved_dictionary(dictionary, site)
    with staged_dir(out, overwrite=overwrite) as tmp:
        # a stored dictionary is read before the model loads (a damaged or unreachable one fails at once)
        dic = load_dictionary_spec(spec, None if site.is_toy else site.hook) if spec.kind in ("pretrained", "disk") \
            else None
        with stages("load", progress, f"loading {site.model} and the real-other activations"):
            built = site.build()
        with stages("dictionary", progress, f"dictionary {spec}" + (" (auto)" if dictionary == "auto" else "")):
            dic = site_dictionary(dictionary, site, built) if dic is None else dic
        result = compare(built.subject, directions, dic, built.others, config,
                         hook_name=getattr(built.subject, "hook", None), progress=progress)
        stages.add({k: v for k, v in (result.timings or {}).items() if k != "total_seconds"})
        with stages("report"):
            result.save(tmp)
            save_json(tmp / "config.json", {"command": "compare", "site": site.to_dict(), "compare": config.to_dict(),
                                            "dictionary": dictionary} | (sources or {}))
        with stages("cards", progress, "feature cards (corpus contexts, token changes)"):
            cards, prompt = compare_cards(site, built, dic, result, directions)
            save_cards(tmp / "cards.json", cards)
        with stages("report"):
            write_compare_report(tmp, result, f"sensfind compare: {site.model} vs {dic.source}", cards=cards,
                                 prompt=prompt)
        s = result.summary()
        save_json(tmp / "summary.json", {"n_directions": int(directions.shape[0]), "dictionary": dic.source,
                                         "n_latents": dic.n_latents, "budget": s.get("budget"),
                                         "matches_isotropic": s["matches_isotropic"]["fraction_significant"],
                                         "fraction_local_optima": s["dictionary_sensitivity"]["fraction_local_optima"],
                                         "timings": stages.timings()})
    return CompareRun(result, directions, dic, out)


def compare_cards(site: DiscoverySiteConfig, built: Site, dictionary, comparison, directions: Tensor) -> tuple[list, str]:
    """The compare report's feature cards (``comparison_cards``) and its prompt (HTML). The cards' contexts come
    from ``CARD_CONTEXT_WINDOWS`` train-split windows of the offline corpus; where there is no corpus (the toy,
    the corpus package missing, a vocabulary too small to byte-encode it) the cards say so in one line."""
    subject, model = built.subject, built.model
    if model is None:
        return comparison_cards(comparison, subject, directions, dictionary,
                                no_contexts="no corpus contexts: the toy has no text"), html.escape(f"toy input {site.input}")
    prompt = str(prompt_markup(subject.tokens[0].tolist(), subject.position, model.tokenizer))
    try:
        corpus = load_corpus(model)
    except (CorpusUnavailableError, ValueError) as exc:
        note = f"no corpus contexts: {str(exc).splitlines()[0]}"
        return comparison_cards(comparison, subject, directions, dictionary, no_contexts=note), prompt
    windows = corpus.windows(CARD_CONTEXT_WINDOWS, CARD_CONTEXT_LENGTH, seed=site.seed, split="train")
    contexts = clean_activations(model, windows, subject.hook)
    return comparison_cards(comparison, subject, directions, dictionary, contexts, windows, model.tokenizer), prompt


# -- mixture -------------------------------------------------------------------------------------------

@dataclass
class MixtureRun:
    """A mixture (Lp) test run: the test, the linear-response predictions of its directions, the summary
    (as in ``summary.json``), the direction kind and the directory."""

    test: MixtureTest
    predictions: object
    summary: dict
    direction_kind: str
    out: Path


def run_mixture(site: DiscoverySiteConfig, config: MixtureConfig, out: str | Path, directions: str | Tensor = "random:8",
                overwrite: bool = False, kind: str | None = None) -> MixtureRun:
    """The mixture (Lp) test of ``directions`` (a spec, or a tensor ``[n, d]`` such as a discovery run's
    optima, named ``kind``) at ``site``'s subject, with each direction's linear-response predictions
    (quadratic onset, measured-to-predicted threshold ratio, early growth). Writes the test
    (``mixture.json``, ``mixture.safetensors``), config.json, summary.json and ``mixture_curves.png``."""
    out = Path(out)
    with staged_dir(out, overwrite=overwrite) as tmp:
        model = None if site.is_toy else site.load_model()
        subject = site.subject(model)
        if isinstance(directions, str):
            dirs, kind = directions_from_spec(directions, site, model, subject)
        else:
            dirs, kind = directions.to(subject.base.dtype), kind or "given"
        test = mixture_test(subject, dirs, config)
        pure = test.thresholds[:, [0, -1]] if test.n_pairs else None
        thresholds = None
        if pure is not None:  # each direction's own threshold: from the pairs it took part in (phi = 0 or 90)
            thresholds = torch.full((dirs.shape[0],), float("nan"), dtype=torch.float64)
            for (a, b), (ra, rb) in zip(test.pairs.tolist(), pure.tolist()):
                thresholds[a], thresholds[b] = ra, rb
        predictions = linear_predictions(subject, dirs, tau=config.tau, thresholds=thresholds)
        summary = {"direction_kind": kind, "n_directions": int(dirs.shape[0]), **test.summary(),
                   "linear": predictions.summary()}
        test.save(tmp, overwrite=True)
        save_json(tmp / "config.json", {"command": "mixture", "site": site.to_dict(), "mixture": config.to_dict(),
                                        "directions": directions if isinstance(directions, str) else kind})
        save_json(tmp / "summary.json", summary)
        save_tensors(tmp / "directions.safetensors", {"directions": dirs, "rayleigh": predictions.rayleigh,
                                                      "onset_deg": predictions.onset_deg,
                                                      "early_growth": predictions.early_growth})
        if test.n_pairs:
            plot_mixture_curves(tmp / "mixture_curves.png", test,
                                title=f"{site.model} {site.hook}: {kind}, p = {test.p:.3g} [{test.p_low:.3g}, {test.p_high:.3g}]")
    return MixtureRun(test, predictions, summary, kind, out)
