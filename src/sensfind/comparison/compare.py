"""Comparing sensitivity optima with a dictionary (SAE decoder rows) and with real-other directions.

``compare`` answers, for one subject:

* do the discovered directions match dictionary latents better than random directions do
  (``match.match_directions`` with isotropic and covariance-matched nulls)?
* do they lie along real-other directions or in their span (``match.match_real_other``)?
* is the dictionary itself sensitive: how early does each decoder row (either sign) blow up compared
  with random and real-other directions, and is it a local optimum — do small rotations of it blow up
  no earlier (``dictionary_sensitivity``)?
* refinement: started from decoder rows, where does discovery take them, and how much earlier do
  they blow up (``optimize.refine``)?

In sphere mode only the part of a direction orthogonal to the base moves the activation, so with
``project_base`` (default) decoder rows are compared after projecting the base out of them too.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from sensfind.core.baselines import isotropic
from sensfind.core.objective_config import EffectConfig
from sensfind.configs import MAX_SEED, check_int
from sensfind.dictionaries.dictionary import Dictionary, check_compatible
from sensfind.comparison.budget import plan_compare
from sensfind.comparison.match import Matches, NullConfig, RealOtherMatches, match_directions, match_real_other
from sensfind.core.blowup import threshold_value
from sensfind.core.geometry import directions_from_targets, effective_directions, tangent_rotations
from sensfind.discovery.config import DiscoverConfig
from sensfind.discovery.refinement import Refinement, refine
from sensfind.discovery.optima import Discovery
from sensfind.runio import Result, load_json, load_tensors, save_json, save_tensors
from sensfind.core.scan import ScanConfig, scan
from sensfind.core.subject import Subject
from sensfind.progress import Stages

log = logging.getLogger(__name__)

__all__ = ["CompareConfig", "Comparison", "DictionarySensitivity", "compare", "dictionary_sensitivity",
           "project_dictionary", "latents_to_probe", "SignedRows", "signed_rows"]


@dataclass(frozen=True)
class CompareConfig(EffectConfig):
    """Settings of ``compare`` (``effect`` and ``tau`` are :class:`~sensfind.configs.EffectConfig`'s).

    Attributes:
        k: dictionary matches reported per direction (at most 1000).
        n_null: random directions per null (p-values cannot go below 1/(1 + n_null); at most 100000: memory).
        alpha: significance level for "matches a latent".
        project_base: compare in the space orthogonal to the base (sphere mode).
        latents: which decoder rows get a sensitivity scan: ``active`` (encoded > 0 on the base, needs
            an encoder), ``matched`` (top match of each direction), ``sample`` (``n_latents`` random
            ones) — several joined by ``+``, e.g. ``active+matched+sample``.
        n_latents: size of the random sample of latents (at most 10000).
        probes: rotations of each row in random directions (by ``probe_deg``) that test whether the row
            is a local optimum of the threshold angle (at most 1000).
        probe_deg: the angle in degrees by which each probe rotates a row.
        scan_steps: points of the fine scan used for every threshold angle here (at most 100000).
        stop: last angle in degrees of that scan (it starts at 0).
        refine_iterations: discovery iterations when refining from decoder rows (0: no refinement; at most
            10000).
        n_random: isotropic random directions scanned as the baseline of the latents' threshold angles
            (at most 100000).
        max_points: budget of scan points for every scan of the comparison (curves, baselines, latents,
            probes, refinement; ``None``: no budget; at most 1000000000). What does not fit is cut (``comparison.budget``
            and a log line say what): the baselines, the resolution, then latents and probes, then
            refinement. The default takes about 3 minutes of scans for SmolLM2-135M on 2 CPU cores.
        seed: seeds nulls, samples and probes (at most 4294967295).
    """

    k: int = 5
    n_null: int = 1000
    alpha: float = 0.01
    project_base: bool = True
    latents: str = "active+matched+sample"
    n_latents: int = 32
    probes: int = 8
    probe_deg: float = 5.0
    scan_steps: int = 361
    stop: float = 90.0
    refine_iterations: int = 40
    n_random: int = 64
    max_points: int | None = 50_000
    seed: int = 0

    def __post_init__(self):
        super().__post_init__()  # effect, tau
        for name, lo, hi in (("k", 1, 1000), ("n_null", 1, 100_000), ("n_latents", 0, 10_000), ("probes", 1, 1000),
                             ("scan_steps", 2, 100_000), ("refine_iterations", 0, 10_000), ("seed", None, MAX_SEED),
                             ("n_random", 1, 100_000)):
            check_int(name, getattr(self, name), lo, maximum=hi)
        if self.max_points is not None:
            check_int("max_points", self.max_points, 1, maximum=10**9)
        if not (isinstance(self.alpha, float) and 0 < self.alpha < 1):
            raise ValueError(f"alpha must be a number in (0, 1), got {self.alpha!r}")
        if not (isinstance(self.probe_deg, (int, float)) and 0 < self.probe_deg < 90):
            raise ValueError(f"probe_deg must be in (0, 90) degrees, got {self.probe_deg!r}")
        parts = self.latents.split("+")
        bad = [p for p in parts if p not in ("active", "matched", "sample")]
        if bad or not parts:
            raise ValueError(f"latents must be 'active', 'matched' or 'sample' joined by '+', got {self.latents!r}")
        self.scan_config  # validates stop

    @property
    def scan_config(self) -> ScanConfig:
        return ScanConfig(mode="sphere", stop=float(self.stop), steps=self.scan_steps, tau=self.tau, effect=self.effect)


def project_dictionary(dictionary: Dictionary, base: Tensor) -> Dictionary:
    """The dictionary's rows with ``base`` projected out (unit rows), for sphere-mode comparisons."""
    rows = effective_directions(dictionary.decoder.to(base.dtype), base, "sphere")
    return Dictionary(decoder=rows, hook_name=dictionary.hook_name, source=f"{dictionary.source} (base projected out)",
                      info=dictionary.info)


@dataclass
class DictionarySensitivity:
    """Threshold angles of signed decoder rows, and whether each is a local optimum."""

    latents: Tensor  # [L] latent ids
    sign: Tensor  # [L] +1 / -1 (the sign that blows up earlier)
    blowup: Tensor  # [L] threshold angle (deg) of the signed row; inf if not reached
    probe_blowup: Tensor  # [L, P] threshold angles of the rotated rows
    local_optimum: Tensor  # [L] bool: no rotation blows up earlier
    random_blowup: Tensor  # [R] isotropic random directions
    real_other_blowup: Tensor  # [M] real-other directions (empty without others)
    groups: dict = field(default_factory=dict)  # why each latent was chosen: name -> list of ids
    effects: Tensor | None = None  # [L, K] effect curves of the signed rows
    random_effects: Tensor | None = None  # [R, K] effect curves of the random directions

    def summary(self) -> dict:
        def med(x):
            f = x[torch.isfinite(x)]
            return float(f.median()) if f.numel() else math.inf

        return {
            "n_latents": int(self.latents.numel()),
            "latent_blowup_median": med(self.blowup),
            "random_blowup_median": med(self.random_blowup),
            "real_other_blowup_median": med(self.real_other_blowup),
            "fraction_local_optima": float(self.local_optimum.float().mean()) if self.latents.numel() else 0.0,
            "groups": {k: len(v) for k, v in self.groups.items()},
        }


def latents_to_probe(subject: Subject, dictionary: Dictionary, matched: Tensor | None, config: CompareConfig) -> dict:
    """Latent ids per group (``active``, ``matched``, ``sample``) as chosen by ``config.latents``."""
    groups: dict[str, list[int]] = {}
    parts = config.latents.split("+")
    if "active" in parts and dictionary.can_encode:
        with torch.no_grad():
            z = dictionary.encode(subject.base[None].to(torch.float32))[0]
        groups["active"] = torch.nonzero(z > 0)[:, 0].tolist()
    if "matched" in parts and matched is not None:
        groups["matched"] = sorted(set(matched.tolist()))
    if "sample" in parts and config.n_latents > 0:
        g = torch.Generator().manual_seed(config.seed + 1)
        n = min(config.n_latents, dictionary.n_latents)
        groups["sample"] = torch.randperm(dictionary.n_latents, generator=g)[:n].tolist()
    return groups


class SignedRows(NamedTuple):
    """Rows with the sign that blows up earlier (``rows [R, d]``, ``sign [R]`` of ±1), their threshold
    angles ``[R]`` (inf if not reached) and effect curves ``[R, S]``."""

    rows: Tensor
    sign: Tensor
    threshold: Tensor
    effects: Tensor


@torch.no_grad()
def signed_rows(subject: Subject, rows: Tensor, config: ScanConfig, progress: bool | None = False) -> SignedRows:
    """Scan each row ``[R, d]`` and its negative; keep the sign whose threshold angle is smaller."""
    if rows.shape[0] == 0:
        empty = torch.empty(0, dtype=torch.float64)
        return SignedRows(rows, torch.empty(0, dtype=torch.long), empty,
                          torch.empty(0, config.steps, dtype=subject.base.dtype))
    s = scan(subject, torch.cat([rows, -rows]), config, progress=progress, desc="latents (both signs)")
    both = s.threshold.view(2, -1)
    effects = s.effects.view(2, rows.shape[0], -1)
    neg = both[1] < both[0]
    return SignedRows(torch.where(neg[:, None], -rows, rows), torch.where(neg, -1, 1), torch.where(neg, both[1], both[0]),
                      torch.where(neg[:, None], effects[1], effects[0]))


@torch.no_grad()
def dictionary_sensitivity(
    subject: Subject, dictionary: Dictionary, groups: dict, others: Tensor | None = None,
    config: CompareConfig = CompareConfig(), progress: bool | None = False,
) -> DictionarySensitivity:
    """Threshold angle of each chosen decoder row with the sign that blows up earlier, against
    ``config.n_random`` random and the real-other directions, and a local-optimum test by small rotations.
    ``progress``: a bar per scan (``None``: when stderr is a terminal)."""
    base = subject.base
    ids = sorted({i for v in groups.values() for i in v})
    cfg = config.scan_config
    latents = torch.tensor(ids, dtype=torch.long)
    rand_scan = scan(subject, isotropic(config.n_random, base.shape[0], seed=config.seed + 2, dtype=base.dtype), cfg,
                     progress=progress, desc="random baseline")
    rand = rand_scan.threshold
    real = torch.empty(0, dtype=torch.float64)
    if others is not None and len(others):
        real = scan(subject, directions_from_targets(base, others.to(base.dtype)), cfg, progress=progress,
                    desc="real-other").threshold
    if not ids:
        empty = torch.empty(0, dtype=torch.float64)
        return DictionarySensitivity(latents, latents.clone(), empty, torch.empty(0, config.probes, dtype=torch.float64),
                                     torch.empty(0, dtype=torch.bool), rand, real, groups,
                                     torch.empty(0, cfg.steps, dtype=base.dtype), rand_scan.effects)
    rows = effective_directions(dictionary.decoder[latents].to(base.dtype), base, "sphere")
    signed, sign, blowup, effects = signed_rows(subject, rows, cfg, progress=progress)
    rot = tangent_rotations(signed, base, config.probes, config.probe_deg, config.seed + 3)
    probe = scan(subject, rot.reshape(-1, rot.shape[-1]), cfg, progress=progress,
                 desc="latent probes").threshold.view(len(ids), config.probes)
    local = (probe >= blowup[:, None]).all(dim=1) & torch.isfinite(blowup)
    return DictionarySensitivity(latents, sign, blowup, probe, local, rand, real, groups, effects, rand_scan.effects)


@dataclass
class Comparison(Result):
    """Everything ``compare`` measured.

    ``steps [K]`` and ``optima_effects [N, K]`` are the effect curves of the compared directions on the
    fine scan (the signed rows' and random directions' curves are in ``sensitivity``), so that a report
    needs no scan. ``dictionary`` is None for a loaded comparison unless one is passed to ``load``.

    ``save(directory)`` writes ``comparison.json``, ``comparison.safetensors``, ``curves.safetensors``,
    ``groups.json``, ``dictionary.json``, ``config.json`` and the subdirectories ``matches_<null>``,
    ``real_other`` and ``refinement``; ``Comparison.load(directory)`` reads them back.
    """

    MARKER = "comparison.safetensors"
    WHAT = "comparison results"

    config: CompareConfig
    matches: dict  # null kind -> Matches
    real_other: RealOtherMatches | None
    sensitivity: DictionarySensitivity
    refinement: Refinement | None
    refined_latents: Tensor | None  # [L] latent ids refined (signed by `refined_sign`)
    refined_sign: Tensor | None
    dictionary: Dictionary | None
    steps: Tensor | None = None  # [K] angles (deg) of the fine scan
    optima_effects: Tensor | None = None  # [N, K]
    budget: dict | None = None  # ComparePlan.to_dict(): sizes run, points per stage, what the budget cut
    timings: dict | None = None  # seconds per stage

    def significant(self, kind: str = "isotropic") -> Tensor:
        """[N] bool: the best match of each direction beats the ``kind`` null at level ``alpha``."""
        return self.matches[kind].p_value[:, 0] < self.config.alpha

    @property
    def optima_blowup(self) -> Tensor | None:
        """[N] threshold angles of the compared directions (inf if not reached); None without curves."""
        if self.optima_effects is None:
            return None
        return threshold_value(self.optima_effects, self.steps, self.config.tau)

    def summary(self) -> dict:
        out = {"config": self.config.to_dict()}
        for kind, m in self.matches.items():
            out[f"matches_{kind}"] = {
                "best_abs_cos": m.cos[:, 0].abs().tolist(), "best_latent": m.latents[:, 0].tolist(),
                "p_value": m.p_value[:, 0].tolist(), "fraction_significant": float(self.significant(kind).float().mean()),
                "null_best_median": float(m.null_best.median()),
            }
        if self.real_other is not None:
            out["real_other"] = self.real_other.summary()
        out["dictionary_sensitivity"] = self.sensitivity.summary()
        if self.budget is not None:
            out["budget"] = self.budget
        if self.timings is not None:
            out["timings"] = self.timings
        if self.refinement is not None:
            out["refinement"] = {"latents": self.refined_latents.tolist(), "sign": self.refined_sign.tolist(),
                                 **self.refinement.to_dict()}
        return out

    def config_dict(self) -> dict:
        return self.config.to_dict()

    def _write(self, directory: Path) -> None:
        save_json(directory / "comparison.json", self.summary())
        for kind, m in self.matches.items():
            m.save(directory / f"matches_{kind}")
        if self.real_other is not None:
            self.real_other.save(directory / "real_other")
        s = self.sensitivity
        tensors = {"latents": s.latents, "sign": s.sign, "blowup": s.blowup, "probe_blowup": s.probe_blowup,
                   "local_optimum": s.local_optimum.to(torch.uint8), "random_blowup": s.random_blowup,
                   "real_other_blowup": s.real_other_blowup}
        if self.refinement is not None:
            tensors.update(refine_start=self.refinement.start, refine_end=self.refinement.end)
        save_tensors(directory / "comparison.safetensors", tensors)
        curves = {"steps": self.steps, "optima": self.optima_effects, "rows": s.effects, "random": s.random_effects}
        save_tensors(directory / "curves.safetensors", {k: v for k, v in curves.items() if v is not None})
        save_json(directory / "groups.json", s.groups)
        d = self.dictionary
        save_json(directory / "dictionary.json", None if d is None else
                  {"source": d.source, "hook_name": d.hook_name, "n_latents": d.n_latents, "d": d.decoder.shape[1]})
        if self.refinement is not None:
            _RefinementFiles(self.refinement, self.refined_latents, self.refined_sign).save(directory / "refinement")

    @classmethod
    def load(cls, directory: str | Path, dictionary: Dictionary | None = None) -> "Comparison":
        """Read a saved comparison; ``dictionary`` (not saved: it can be large) is attached as given."""
        out = super().load(directory)
        out.dictionary = dictionary
        return out

    @classmethod
    def _read(cls, directory: Path) -> "Comparison":
        meta = load_json(directory / "comparison.json")
        t = load_tensors(directory / "comparison.safetensors")
        curves = load_tensors(directory / "curves.safetensors") if (directory / "curves.safetensors").is_file() else {}
        groups = load_json(directory / "groups.json") if (directory / "groups.json").is_file() else {}
        kinds = [k.removeprefix("matches_") for k in meta if k.startswith("matches_")]
        matches = {k: Matches.load(directory / f"matches_{k}") for k in kinds}
        real_other = RealOtherMatches.load(directory / "real_other") if (directory / "real_other").is_dir() else None
        sens = DictionarySensitivity(t["latents"], t["sign"], t["blowup"], t["probe_blowup"], t["local_optimum"].bool(),
                                     t["random_blowup"], t["real_other_blowup"], groups, curves.get("rows"),
                                     curves.get("random"))
        refinement = refined_latents = refined_sign = None
        if (directory / "refinement").is_dir():
            r = _RefinementFiles.load(directory / "refinement")
            refinement, refined_latents, refined_sign = r.refinement, r.latents, r.sign
        return cls(CompareConfig.from_dict(meta["config"]), matches, real_other, sens, refinement, refined_latents,
                   refined_sign, None, curves.get("steps"), curves.get("optima"), meta.get("budget"), meta.get("timings"))


@dataclass
class _RefinementFiles(Result):
    """A ``Refinement`` with the latents it started from, saved as ``refinement.safetensors`` beside its
    discovery's files."""

    MARKER = "refinement.safetensors"
    WHAT = "refinement results"

    refinement: Refinement
    latents: Tensor
    sign: Tensor

    def _write(self, directory: Path) -> None:
        r = self.refinement
        save_tensors(directory / "refinement.safetensors",
                     {"start": r.start, "end": r.end, "cos_start_end": r.cos_start_end, "blowup_start": r.blowup_start,
                      "blowup_end": r.blowup_end, "latents": self.latents, "sign": self.sign})
        r.discovery._write(directory)

    @classmethod
    def _read(cls, directory: Path) -> "_RefinementFiles":
        t = load_tensors(directory / "refinement.safetensors")
        r = Refinement(t["start"], t["end"], t["cos_start_end"], t["blowup_start"], t["blowup_end"],
                       Discovery.load(directory))
        return cls(r, t["latents"], t["sign"])


def compare(
    subject: Subject,
    directions: Tensor,
    dictionary: Dictionary,
    others: Tensor | None = None,
    config: CompareConfig = CompareConfig(),
    hook_name: str | None = None,
    discover_config: DiscoverConfig | None = None,
    progress: bool | None = None,
) -> Comparison:
    """Compare ``directions [N, d]`` (e.g. ``Discovery.directions``) with ``dictionary`` at ``subject``.

    ``others [M, d]`` are activations of other inputs at the same site (real-other directions and the
    covariance null); ``hook_name`` is the subject's site, checked against the dictionary's. Every scan
    counts against ``config.max_points`` (``comparison.budget`` says what it cut, see
    ``sensfind.comparison.budget``); ``progress``: bars on stderr (``None``: when stderr is a terminal).
    """
    stages = Stages()
    base = subject.base
    d = base.shape[0]
    check_compatible(dictionary, d, hook_name)
    dirs = directions.to(base.dtype)
    if dirs.ndim != 2 or dirs.shape[1] != d or dirs.shape[0] == 0:
        raise ValueError(f"directions must have shape [N, {d}] with N >= 1, got {tuple(directions.shape)}")
    if config.k > dictionary.n_latents:
        raise ValueError(f"k={config.k} is larger than the dictionary ({dictionary.n_latents} latents)")
    with stages("matching"):
        if config.project_base:
            dirs = effective_directions(dirs, base, "sphere")
            target = project_dictionary(dictionary, base)
        else:
            target = dictionary
        matches = {"isotropic": match_directions(dirs, target, config.k,
                                                 NullConfig("isotropic", config.n_null, config.seed))}
        real_other = None
        if others is not None and len(others) >= 2:
            others = others.to(base.dtype)
            matches["covariance"] = match_directions(dirs, target, config.k,
                                                     NullConfig("covariance", config.n_null, config.seed),
                                                     activations=others, base=base)
            real_other = match_real_other(dirs, base, others, NullConfig("isotropic", config.n_null, config.seed))
        # urls name the original latents
        groups = latents_to_probe(subject, dictionary, matches["isotropic"].latents[:, 0], config)
    dc = None
    if config.refine_iterations > 0:
        dc = replace(discover_config or DiscoverConfig(), iterations=config.refine_iterations, tau=config.tau,
                     effect=config.effect, seed=config.seed, init="given", abandon=False, max_points=None, rounds=1)
    plan = plan_compare(config.max_points, n_directions=dirs.shape[0], n_random=config.n_random,
                        n_others=len(others) if others is not None else 0, groups=groups,
                        scan_steps=config.scan_steps, probes=config.probes, refine=dc)
    if plan.cut:
        log.warning("compare: to fit max_points=%d scan points, cut %s (asked -> kept); raise --max-points to keep more",
                    config.max_points, ", ".join(f"{k} {a} -> {b}" for k, (a, b) in plan.cut.items()))
    kept = set(plan.latents)
    groups = {k: [i for i in v if i in kept] for k, v in groups.items()}
    run_config = replace(config, scan_steps=plan.scan_steps, probes=plan.probes, n_random=max(plan.n_random, 1))
    with stages("latents"):
        sensitivity = dictionary_sensitivity(subject, dictionary, groups,
                                             others[: plan.n_others] if others is not None else None, run_config,
                                             progress=progress)
    with torch.no_grad(), stages("curves"):
        curves = scan(subject, dirs, run_config.scan_config, progress=progress, desc="compared directions")
    refinement = refined_latents = refined_sign = None
    if dc is not None and plan.n_refine > 0 and sensitivity.latents.numel():
        with stages("refine"):
            pick = torch.argsort(sensitivity.blowup, stable=True)[: plan.n_refine].sort().values  # the most sensitive
            refined_latents, refined_sign = sensitivity.latents[pick], sensitivity.sign[pick]
            rows = effective_directions(dictionary.decoder[refined_latents].to(base.dtype), base, "sphere")
            refinement = refine(subject, rows * refined_sign[:, None].to(rows.dtype), dc, progress=progress)
    return Comparison(run_config, matches, real_other, sensitivity, refinement, refined_latents, refined_sign,
                      dictionary, curves.steps, curves.effects, plan.to_dict(), stages.timings())
