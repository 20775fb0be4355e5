"""One prompt of a real model, analysed end to end: discovery, baselines, dictionary matches, refinement.

``analyse_prompt`` is what the demo runs on one corpus prompt and what the central-result script runs
on many. For one subject (a site in a model) and a dictionary (an SAE at the same site) it

* discovers sensitivity optima (``optimize.discover``);
* scans, on one shared grid, the optima, isotropic, cov-random and real-other directions, and the
  SAE's active latents (encoded > 0 on the base) and a sample of inactive ones, each latent with the
  sign that blows up earlier; the effect curves are kept for figures and feature cards;
* matches the optima with the dictionary against an isotropic and a covariance-matched null, and with
  real-other directions (``match``);
* refines the most active latents by discovery (``optimize.refine``): how far they move and how much
  earlier they blow up;
* with ``mixture_pairs`` > 0, asks whether each kind is privileged: it also scans the top eigenvectors of
  the linear response (``linear``), the top principal axes of the covariance pool (``PCA``) and, where the
  caller gives them, contrastive targets (``contrastive``: the prompt with one token replaced), and runs the
  Lp mixture test (``core.mixture``) and the linear-response onset predictions of every kind.

Every scan is run once; figures, cards and summaries read the curves kept here. In sphere mode only the
part of a direction orthogonal to the base moves the activation, so decoder rows are compared after
projecting the base out of them (``compare.project_dictionary``).

:func:`massive_last_token` tells which corpus windows end on a massive activation (skipped as bases).
The SAE for a model without a hub dictionary is ``corpus_sae.train_corpus_sae``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from sensfind.core.baselines import cov_random_targets, cov_stats, isotropic, pca_directions
from sensfind.comparison.compare import project_dictionary, signed_rows
from sensfind.dictionaries.corpus_sae import massive_mask, window_activations
from sensfind.dictionaries.dictionary import Dictionary
from sensfind.comparison.match import Matches, NullConfig, RealOtherMatches, match_directions, match_real_other
from sensfind.configs import MAX_SEED, Config, check_int, check_number
from sensfind.core.geometry import directions_from_targets, effective_directions, is_base
from sensfind.discovery.optima import Discovery
from sensfind.discovery.config import DiscoverConfig
from sensfind.discovery.refinement import Refinement, refine
from sensfind.discovery.loop import discover
from sensfind.runio import Result, json_float, load_json, load_tensors, save_json, save_tensors, to_jsonable
from sensfind.core.scan import ScanConfig, scan, step_grid, zoomed_threshold
from sensfind.core.blowup import threshold_value
from sensfind.core.linear_response import linear_directions, linear_predictions
from sensfind.core.mixture import MixtureConfig, mixture_row

log = logging.getLogger(__name__)

__all__ = ["AnalysisConfig", "PromptAnalysis", "analyse_prompt", "KINDS", "PRIVILEGE_KINDS", "kinds_of", "massive_last_token"]

# upper bounds of the sizes (documented with each field); restarts, iterations, scan_steps as DiscoverConfig's
_LIMITS = {"restarts": 4096, "iterations": 10_000, "scan_steps": 1024, "n_random": 100_000, "n_cov": 100_000,
           "n_real_other": 100_000, "max_active": 10_000, "n_inactive": 10_000, "n_refine": 10_000,
           "refine_iterations": 10_000, "curve_steps": 100_000, "k": 1000, "n_null": 100_000}

# the kinds of direction scanned for every prompt, in the order figures and tables show them
KINDS = ("optima", "isotropic", "cov-random", "real-other", "SAE active", "SAE inactive")
# scanned too when the mixture test runs (``mixture_pairs`` > 0; ``contrastive`` where the caller gives targets)
PRIVILEGE_KINDS = ("linear", "PCA", "contrastive")
N_AXES = 4  # eigenvectors of G (``linear``) and principal axes (``PCA``), each scanned with both signs


def kinds_of(analyses: list) -> tuple[str, ...]:
    """:data:`KINDS`, then the :data:`PRIVILEGE_KINDS` that every one of ``analyses`` scanned."""
    return KINDS + tuple(k for k in PRIVILEGE_KINDS if all(k in a.effects for a in analyses))


@dataclass(frozen=True)
class AnalysisConfig(Config):
    """Sizes of one prompt's analysis.

    Attributes:
        max_points, restarts, iterations, scan_steps, lr: discovery (``DiscoverConfig``; other fields
            default): rounds of ``restarts`` restarts until ``max_points`` scan points are spent or a
            round finds nothing new (``None``: one round); limits as ``DiscoverConfig``'s: ``max_points`` at
            most 1000000000, ``restarts`` at most 4096, ``iterations`` at most 10000, ``scan_steps`` at most 1024.
        n_random, n_cov, n_real_other: isotropic, cov-random and real-other directions scanned (at most 100000).
        max_active: at most this many active latents (the most active) are scanned (at most 10000).
        n_inactive: inactive latents (encoded 0 on the base) scanned, a seeded sample (at most 10000).
        n_refine, refine_iterations: active latents (most active first) refined by discovery, and its
            iterations (each at most 10000).
        curve_steps, stop: the shared scan grid (0..stop degrees) of every threshold angle here (``curve_steps``
            at most 100000).
        tau: effect threshold (nats of next-token KL).
        k, n_null, alpha: dictionary matches per optimum (at most 1000), null size (at most 100000),
            significance level.
        seed: seeds discovery, baselines and samples (at most 4294967295).
        mixture_pairs: are the kinds privileged? When > 0: the top 4 eigenvectors of the linear response
            (kind ``linear``) and the top 4 principal axes of the covariance pool (``PCA``), both signs, and the
            caller's contrastive targets are scanned too, and every kind gets the Lp mixture test over at
            most this many pairs and its thresholds' ratio to their quadratic onsets (0: neither; at most 10000).
    """

    max_points: int | None = 6_000
    restarts: int = 16
    iterations: int = 25
    scan_steps: int = 16
    lr: float = 0.1
    n_random: int = 16
    n_cov: int = 16
    n_real_other: int = 16
    max_active: int = 8
    n_inactive: int = 8
    n_refine: int = 4
    refine_iterations: int = 4
    curve_steps: int = 31
    stop: float = 90.0
    tau: float = 0.5
    k: int = 5
    n_null: int = 1000
    alpha: float = 0.01
    seed: int = 0
    mixture_pairs: int = 0

    def __post_init__(self):
        check_int("mixture_pairs", self.mixture_pairs, 0, maximum=10_000)
        for name in ("restarts", "scan_steps", "n_random", "n_cov", "curve_steps", "k", "n_null"):
            check_int(name, getattr(self, name), 2 if name in ("scan_steps", "curve_steps") else 1, maximum=_LIMITS[name])
        for name in ("iterations", "n_real_other", "max_active", "n_inactive", "n_refine", "refine_iterations"):
            check_int(name, getattr(self, name), 0, maximum=_LIMITS[name])
        check_int("seed", self.seed, maximum=MAX_SEED)
        check_number("lr", self.lr, 0, lo_open=True)
        check_number("stop", self.stop, 0, 180, lo_open=True)  # degrees
        check_number("alpha", self.alpha, 0, 1, lo_open=True, hi_open=True)
        self.scan_config  # validates tau
        self.discover_config  # validates max_points

    @property
    def scan_config(self) -> ScanConfig:
        return ScanConfig(mode="sphere", stop=float(self.stop), steps=self.curve_steps, tau=self.tau, effect="kl")

    @property
    def discover_config(self) -> DiscoverConfig:
        return DiscoverConfig(restarts=self.restarts, iterations=self.iterations, scan_steps=self.scan_steps,
                              lr=self.lr, tau=self.tau, seed=self.seed, final_steps=self.curve_steps, stop=None,
                              max_points=self.max_points)


ZOOM_RESOLUTION = 0.5  # degrees: threshold angles are resolved this finely near each threshold


@dataclass
class PromptAnalysis(Result):
    """What ``analyse_prompt`` measured on one subject.

    Attributes:
        directions: kind -> ``[R, d]`` the unit directions scanned (optima, isotropic and latents: the part
            orthogonal to the base, latents signed; cov-random and real-other: towards their targets).
        effects: kind -> ``[R, S]`` next-token KL at ``steps`` (degrees).
        latents: ``SAE active`` / ``SAE inactive`` -> ``[R]`` latent ids (rows of ``directions``).
        activation: ``[R]`` the SAE's activation of each scanned active latent on the base.
        matches: null kind -> ``Matches`` of the optima with the (base-projected) dictionary.
        real_other: the optima against real-other directions.
        refinement: the refined latents (``refined_latents``) before and after discovery.
        privileged: kind -> the Lp mixture test's ``p`` (95% interval, pairs, scan points) and the median
            threshold over quadratic onset and early growth (``config.mixture_pairs`` > 0; else empty).

    ``save(directory)`` writes ``analysis.json`` (config and summary), ``analysis.safetensors`` (steps,
    curves, directions, latent ids, refinement tensors), ``config.json`` and the subdirectories
    ``discovery``, ``matches_<null>``, ``real_other`` and ``refinement`` (the refinement's discovery);
    ``PromptAnalysis.load(directory)`` reads them back.
    """

    MARKER = "analysis.safetensors"
    WHAT = "prompt analysis"

    config: AnalysisConfig
    steps: Tensor  # [S]
    directions: dict
    effects: dict
    latents: dict
    activation: Tensor
    discovery: Discovery
    matches: dict
    real_other: RealOtherMatches | None
    refinement: Refinement | None
    refined_latents: Tensor
    timings: dict = field(default_factory=dict)
    privileged: dict = field(default_factory=dict)
    thresholds: dict = field(default_factory=dict)  # kind -> [R] threshold angles resolved by a zoomed scan

    def threshold(self, kind: str) -> Tensor:
        """``[R]`` threshold angles (deg, inf: not reached within ``config.stop``) of a kind: resolved to
        ``ZOOM_RESOLUTION`` degrees by a zoomed scan where one was run, else the curve grid's step."""

        if kind in self.thresholds:
            return self.thresholds[kind].double()
        e = self.effects[kind]
        if e.numel() == 0:
            return torch.empty(0, dtype=torch.float64)
        return threshold_value(e, self.steps, self.config.tau).double()

    def significant(self, kind: str = "isotropic") -> Tensor:
        """``[N]`` bool: each optimum's best dictionary match beats the ``kind`` null at ``alpha``."""
        return self.matches[kind].p_value[:, 0] < self.config.alpha

    def summary(self) -> dict:
        def med(x: Tensor):
            f = x[torch.isfinite(x)]
            return float(f.median()) if f.numel() else None

        out = {"n_steps": len(self.steps), "stop_deg": self.config.stop, "tau": self.config.tau, "kinds": {}}
        for kind in self.effects:
            t = self.threshold(kind)
            out["kinds"][kind] = {"n": int(t.numel()), "median_deg": med(t), "reached": int(torch.isfinite(t).sum()),
                                  "threshold_deg": [json_float(v) for v in t.tolist()]}
        opt, real = self.threshold("optima"), self.threshold("real-other")
        real_med = med(real)
        out["optima_beating_real_other_median"] = int((opt < real_med).sum()) if real_med is not None else None
        for kind, m in self.matches.items():
            out[f"matches_{kind}"] = {"best_abs_cos": m.cos[:, 0].abs().tolist(), "best_latent": m.latents[:, 0].tolist(),
                                      "p_value": m.p_value[:, 0].tolist(),
                                      "n_significant": int(self.significant(kind).sum()),
                                      "null_best_median": float(m.null_best.median())}
        if self.real_other is not None:
            out["real_other_match"] = {"best_abs_cos": self.real_other.best_cos.abs().tolist(),
                                       "p_value": self.real_other.p_value.tolist(),
                                       "span_norm": self.real_other.span_norm.tolist()}
        if self.refinement is not None:
            r = self.refinement
            out["refinement"] = {"latents": self.refined_latents.tolist(), **to_jsonable(r.to_dict())}
        out["timings"] = self.timings
        out["privileged"] = self.privileged
        out["points_evaluated_discovery"] = self.discovery.points_evaluated
        return out

    def config_dict(self) -> dict:
        return self.config.to_dict()

    def _write(self, directory: Path) -> None:
        save_json(directory / "analysis.json", {"config": self.config.to_dict(), **self.summary()})
        tensors = {"steps": self.steps, "activation": self.activation, "refined_latents": self.refined_latents}
        for kind in self.effects:
            key = _key(kind)
            tensors[f"effects.{key}"] = self.effects[kind]
            tensors[f"directions.{key}"] = self.directions[kind]
            if kind in self.thresholds:
                tensors[f"thresholds.{key}"] = self.thresholds[kind]
        for kind, ids in self.latents.items():
            tensors[f"latents.{_key(kind)}"] = ids
        r = self.refinement
        if r is not None:
            tensors.update(refine_start=r.start, refine_end=r.end, refine_cos_start_end=r.cos_start_end,
                           refine_blowup_start=r.blowup_start, refine_blowup_end=r.blowup_end)
        save_tensors(directory / "analysis.safetensors", {k: v.clone() for k, v in tensors.items()})  # no shared storage
        self.discovery.save(directory / "discovery")
        for kind, m in self.matches.items():
            m.save(directory / f"matches_{kind}")
        if self.real_other is not None:
            self.real_other.save(directory / "real_other")
        if r is not None:
            r.discovery.save(directory / "refinement")

    @classmethod
    def _read(cls, directory: Path) -> "PromptAnalysis":
        meta = load_json(directory / "analysis.json")
        t = load_tensors(directory / "analysis.safetensors")
        kinds = list(meta["kinds"])  # in the order they were scanned; tensor keys spell spaces as "_"
        names = {_key(k): k for k in kinds}
        latent_keys = sorted((k.removeprefix("latents.") for k in t if k.startswith("latents.")),
                             key=lambda k: (kinds.index(names[k]) if k in names else len(kinds), k))
        refinement = None
        if "refine_start" in t:
            refinement = Refinement(t["refine_start"], t["refine_end"], t["refine_cos_start_end"],
                                    t["refine_blowup_start"], t["refine_blowup_end"], Discovery.load(directory / "refinement"))
        matches = {k.removeprefix("matches_"): Matches.load(directory / k) for k in meta if k.startswith("matches_")}
        real_other = RealOtherMatches.load(directory / "real_other") if (directory / "real_other").is_dir() else None
        return cls(config=AnalysisConfig.from_dict(meta["config"]), steps=t["steps"],
                   directions={k: t[f"directions.{_key(k)}"] for k in kinds},
                   effects={k: t[f"effects.{_key(k)}"] for k in kinds},
                   latents={names.get(k, k): t[f"latents.{k}"] for k in latent_keys}, activation=t["activation"],
                   discovery=Discovery.load(directory / "discovery"), matches=matches, real_other=real_other,
                   refinement=refinement, refined_latents=t["refined_latents"], timings=meta.get("timings", {}),
                   thresholds={k: t[f"thresholds.{_key(k)}"] for k in kinds if f"thresholds.{_key(k)}" in t},
                   privileged=meta.get("privileged", {}))


def _key(kind: str) -> str:
    """A kind's name in tensor keys (``SAE active`` -> ``SAE_active``)."""
    return kind.replace(" ", "_")


def analyse_prompt(
    subject,
    dictionary: Dictionary,
    others: Tensor,
    pool: Tensor,
    config: AnalysisConfig = AnalysisConfig(),
    progress: bool = False,
    contrastive: Tensor | None = None,
) -> PromptAnalysis:
    """Analyse one subject (see the module docstring).

    ``others [M, d]``: activations of other corpus prompts at the same site and position (real-other
    targets, the first ``n_real_other`` are scanned). ``pool [P, d]``: activations whose mean and
    covariance define the cov-random and PCA baselines and the covariance null. ``contrastive [C, d]``:
    activations at the site of the prompt with one token replaced (``models.prompts.one_token_variants``),
    scanned as the kind ``contrastive`` when the mixture test runs.
    """
    base = subject.base
    d = base.shape[0]
    cfg = config.scan_config
    timings: dict = {}
    t0 = time.perf_counter()
    dconf = config.discover_config
    found = discover(subject, dconf, progress=progress)
    timings["discover_seconds"] = time.perf_counter() - t0

    t = time.perf_counter()
    dirs: dict[str, Tensor] = {"optima": found.directions.to(base.dtype)}
    dirs["isotropic"] = effective_directions(isotropic(config.n_random, d, seed=config.seed + 2, dtype=base.dtype),
                                             base, "sphere")
    stats = cov_stats(pool.double(), d)
    dirs["cov-random"] = directions_from_targets(base, cov_random_targets(stats, config.n_cov, config.seed + 3).to(base.dtype))
    others = others[~is_base(others, base)]
    dirs["real-other"] = directions_from_targets(base, others[: config.n_real_other].to(base.dtype))
    eff: dict[str, Tensor] = {}
    with torch.no_grad():
        if config.mixture_pairs:
            dirs["linear"] = linear_directions(subject, 2 * N_AXES)
            dirs["PCA"] = effective_directions(pca_directions(stats, 2 * N_AXES).to(base.dtype), base, "sphere")
            if contrastive is not None:
                kept = contrastive[~is_base(contrastive, base)]  # a replaced token that changes nothing here
                if len(kept):
                    dirs["contrastive"] = directions_from_targets(base, kept.to(base.dtype))
        for kind in [k for k in ("optima", "isotropic", "cov-random", "real-other", *PRIVILEGE_KINDS) if k in dirs]:
            eff[kind] = scan(subject, dirs[kind], cfg, progress=progress, desc=kind).effects if len(dirs[kind]) \
                else torch.empty(0, config.curve_steps)
        # latents: active on the base (most active first) and a sample of inactive ones
        z = dictionary.encode(base[None].float())[0].detach().cpu()
        active_all = torch.nonzero(z > 0)[:, 0]
        order = z[active_all].argsort(descending=True)
        active = active_all[order][: config.max_active]
        inactive_all = torch.nonzero(z <= 0)[:, 0]
        g = torch.Generator().manual_seed(config.seed + 4)
        inactive = inactive_all[torch.randperm(len(inactive_all), generator=g)[: config.n_inactive]]
        latents = {"SAE active": active, "SAE inactive": inactive}
        for kind, ids in latents.items():
            rows = effective_directions(dictionary.decoder[ids].to(base.dtype), base, "sphere")
            signed = signed_rows(subject, rows, cfg, progress=progress)
            dirs[kind], eff[kind] = signed.rows, signed.effects
        steps_grid = step_grid(cfg, dtype=base.dtype, device=base.device)
        # every threshold angle resolved to ZOOM_RESOLUTION degrees: the curve grid alone ties most optima
        zoomed = {kind: zoomed_threshold(subject, dirs[kind], steps_grid, eff[kind], cfg, ZOOM_RESOLUTION, progress)
                  for kind in eff if len(dirs[kind])}
    timings["scan_seconds"] = time.perf_counter() - t

    t = time.perf_counter()
    target = project_dictionary(dictionary, base)
    opt = dirs["optima"]
    matches: dict[str, Matches] = {
        "isotropic": match_directions(opt, target, config.k, NullConfig("isotropic", config.n_null, config.seed)),
        "covariance": match_directions(opt, target, config.k, NullConfig("covariance", config.n_null, config.seed),
                                       activations=pool.to(base.dtype), base=base),
    }
    real_other = None
    if len(others) >= 2:
        real_other = match_real_other(opt, base, others.to(base.dtype), NullConfig("isotropic", config.n_null, config.seed))
    timings["match_seconds"] = time.perf_counter() - t

    t = time.perf_counter()
    privileged = {}
    if config.mixture_pairs:
        mconf = MixtureConfig(max_pairs=config.mixture_pairs, tau=config.tau, bootstrap=500, seed=config.seed)
        for kind, rows in dirs.items():
            rows = rows[::2] if kind in ("linear", "PCA") else rows  # one sign of each axis: an orthogonal set
            if len(rows) < 2:
                continue
            test = mixture_row(subject, rows, mconf)  # n_pairs 0: e.g. rows nearly parallel off the base
            thresholds = threshold_value(eff[kind], step_grid(cfg, dtype=torch.float64), config.tau).double()
            pred = linear_predictions(subject, dirs[kind], tau=config.tau, thresholds=thresholds).summary()
            row = {**test,
                   **{k: pred.get(k) for k in ("ratio_median", "early_growth_2deg_median", "early_growth_4deg_median")}}
            privileged[kind] = to_jsonable(row)  # as saved: non-finite numbers are None
    timings["privileged_seconds"] = time.perf_counter() - t

    t = time.perf_counter()
    refinement = None
    n_ref = min(config.n_refine, len(active))
    refined = active[:n_ref]
    if n_ref and config.refine_iterations:
        rconf = DiscoverConfig(iterations=config.refine_iterations, scan_steps=config.scan_steps, lr=config.lr,
                               tau=config.tau, seed=config.seed, final_steps=config.curve_steps, stop=None)
        refinement = refine(subject, dirs["SAE active"][:n_ref], rconf, progress=progress)
    timings["refine_seconds"] = time.perf_counter() - t
    timings["total_seconds"] = time.perf_counter() - t0
    return PromptAnalysis(config=config, steps=step_grid(cfg, dtype=torch.float64), directions=dirs, effects=eff, latents=latents,
                          activation=z[active], discovery=found, matches=matches, real_other=real_other,
                          refinement=refinement, refined_latents=refined, timings=timings,
                          privileged=privileged, thresholds=zoomed)



@torch.no_grad()
def massive_last_token(model, windows: Tensor, hook: str, ratio: float | None = None) -> Tensor:
    """``[W]`` bool: the last token's activation at ``hook`` is a massive activation (norm above ``ratio``
    times the median norm of the window's other positions), the test ``TransformerSubject`` applies to its
    base, for many windows in one batch."""
    norms = window_activations(model, windows, hook).norm(dim=-1)  # [W, L]
    return massive_mask(norms, ratio)[:, -1]
