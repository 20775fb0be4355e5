"""Sphere and straight scans grouped by kind: what the plateaus and sensitive-directions experiments measure.

A *kind* names a group of scans. For plateaus it is a kind of base (real activations, cov-random and
isotropic samples, synthetic activations) perturbed towards the same directions (:func:`plateau_bases`,
:func:`scan_plateaus`); for sensitive directions it is a kind of direction from real bases
(:data:`PERTURBATION_KINDS`, :class:`DirectionKinds`, :func:`scan_direction_kinds`). Every group is scanned
twice by :class:`~sensfind.lab.experiment.Scans`: sphere (KL, threshold angle) and straight (LASR: max-slope
step, first step above the threshold). :class:`KindScans` collects the scans and summarises each kind
against a reference kind.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from sensfind.core.baselines import cov_random_targets, isotropic
from sensfind.core.geometry import directions_from_targets
from sensfind.lab.pool import pick
from sensfind.reporting.stats import describe, ks
from sensfind.lab.latents import decoder_rows

__all__ = ["PERTURBATION_KINDS", "SAE_KINDS", "DirectionKinds", "KindScans", "check_direction_kinds", "plateau_bases",
           "resolve_direction_kinds", "scan_direction_kinds", "scan_plateaus"]

SAE_KINDS = ("sae-active+", "sae-active-", "sae-inactive+", "sae-inactive-")
PERTURBATION_KINDS = ("real-other", "feature", "cov-random", "cov-mixture", "naive-random", *SAE_KINDS,
                   "synthetic-baseline", "synthetic-structured")
REFERENCE = "real-other"  # every direction kind is compared with this one


@dataclass
class KindScans:
    """Sphere and straight scans of each kind, one :class:`~sensfind.core.scan.Scan` per base and mode."""

    sphere: dict[str, list] = field(default_factory=dict)
    straight: dict[str, list] = field(default_factory=dict)

    def add(self, kind: str, sphere, straight) -> None:
        self.sphere.setdefault(kind, []).append(sphere)
        self.straight.setdefault(kind, []).append(straight)

    @property
    def kinds(self) -> list[str]:
        """The kinds scanned at least once, in the order they were first added."""
        return list(self.sphere)

    def threshold_deg(self, kind: str) -> Tensor:
        """Sphere threshold angles ``[N]`` in degrees (``inf``: never crossed τ)."""
        return torch.cat([s.threshold for s in self.sphere[kind]])

    def max_slope_step(self, kind: str) -> Tensor:
        """Straight max-slope step indices ``[N]`` (float64)."""
        return torch.cat([s.max_slope_index.double() for s in self.straight[kind]])

    def plateau_steps(self, kind: str) -> Tensor:
        """First straight step above τ ``[N]`` (float64, ``inf`` where never reached)."""
        idx = torch.cat([s.threshold_index for s in self.straight[kind]])
        return torch.where(idx >= 0, idx.double(), torch.full(idx.shape, math.inf, dtype=torch.float64))

    def sphere_effects(self) -> dict[str, Tensor]:
        """Effect curves ``[N, K]`` of each kind's sphere scans."""
        return {k: torch.cat([s.effects for s in v]) for k, v in self.sphere.items()}

    def straight_effects(self) -> dict[str, Tensor]:
        """Effect curves ``[N, K]`` of each kind's straight scans."""
        return {k: torch.cat([s.effects for s in v]) for k, v in self.straight.items()}

    def direction_summary(self, angle_cap: float, reference: str = REFERENCE) -> dict:
        """Per kind: directions scanned, threshold angle and max-slope step (``describe``) and KS tests
        against ``reference``."""
        thr, slope = self.threshold_deg(reference), self.max_slope_step(reference)
        return {k: dict(n_directions=int(self.threshold_deg(k).numel()),
                        threshold_deg=describe(self.threshold_deg(k), angle_cap),
                        max_slope_step=describe(self.max_slope_step(k)),
                        ks_vs_real_other_threshold=ks(self.threshold_deg(k), thr, angle_cap),
                        ks_vs_real_other_max_slope=ks(self.max_slope_step(k), slope)) for k in self.kinds}

    def plateau_summary(self, bases: dict[str, Tensor], angle_cap: float, step_cap: float,
                        reference: str = "real") -> dict:
        """Per kind of base: mean base norm, plateau lengths (sphere degrees, straight steps; ``describe``)
        and KS tests against ``reference``."""
        ref_angle, ref_steps = self.threshold_deg(reference), self.plateau_steps(reference)
        return {k: dict(base_norm=float(bases[k].norm(dim=1).mean()),
                        sphere_threshold_deg=describe(self.threshold_deg(k), angle_cap),
                        straight_plateau_steps=describe(self.plateau_steps(k), step_cap),
                        ks_vs_real_sphere=ks(self.threshold_deg(k), ref_angle, angle_cap),
                        ks_vs_real_straight=ks(self.plateau_steps(k), ref_steps, step_cap)) for k in self.kinds}


# -- plateaus: kinds of base --------------------------------------------------------------------------------
def plateau_bases(site, n: int) -> dict[str, Tensor]:
    """The bases ``[n, d]`` of each kind: the pool's first ``n`` rows (real), cov-random samples, and
    isotropic directions scaled to the real bases' norms."""
    real = site.pool[:n]
    return {"real": real, "cov-random": cov_random_targets(site.cov(), n, seed=site.seed + 11).float(),
            "isotropic": isotropic(n, site.d, seed=site.seed + 12) * real.norm(dim=1, keepdim=True)}


@torch.no_grad()
def scan_plateaus(site, bases: dict[str, Tensor], directions: str, n_dirs: int, scans) -> KindScans:
    """Scan every base of every kind, in the context of pool row ``i``, along ``n_dirs`` directions per
    row shared by all kinds: towards cov-random targets (``directions="cov-random"``) or isotropic."""
    n, d, seed = next(iter(bases.values())).shape[0], site.d, site.seed
    if directions == "cov-random":
        targets = cov_random_targets(site.cov(), n * n_dirs, seed=seed + 21).float().reshape(n, n_dirs, d)
    elif directions == "isotropic":
        iso = isotropic(n * n_dirs, d, seed=seed + 21).reshape(n, n_dirs, d)
    else:
        raise ValueError(f"directions must be one of cov-random, isotropic, got {directions!r}")
    out = KindScans()
    for i in range(n):
        ctx, ctx_out = scans.contexts(site, i)
        for kind, b in bases.items():
            s_sph = ctx if kind == "real" else site.with_base(ctx, b[i])
            s_str = ctx_out if kind == "real" else site.with_base(ctx_out, b[i])
            dirs = directions_from_targets(s_sph.base, targets[i]) if directions == "cov-random" else iso[i]
            out.add(kind, *scans.run(s_sph, s_str, dirs))
    return out


# -- sensitive directions: kinds of direction -------------------------------------------------------------
def check_direction_kinds(kinds: str) -> None:
    """A ``ValueError`` unless ``kinds`` is ``all`` or comma-separated names of :data:`PERTURBATION_KINDS`."""
    bad = [k.strip() for k in kinds.split(",") if k.strip() not in PERTURBATION_KINDS] if kinds != "all" else []
    if bad or not kinds.strip(","):
        raise ValueError(f"unknown direction kind(s) {bad or kinds!r}; allowed: {', '.join(PERTURBATION_KINDS)}")


def resolve_direction_kinds(kinds: str, is_toy: bool, with_sae: bool) -> list[str]:
    """The kinds of ``kinds`` to run, real-other first; ``all`` keeps those the site supports (feature
    needs the toy; SAE and synthetic kinds need an SAE)."""
    if kinds == "all":
        return [k for k in PERTURBATION_KINDS if (k != "feature" or is_toy)
                and (with_sae or not (k in SAE_KINDS or k.startswith("synthetic")))]
    out = [k.strip() for k in kinds.split(",") if k.strip()]
    if "feature" in out and not is_toy:
        raise ValueError("direction kind 'feature' needs the ground-truth toy (--model toy)")
    return out if REFERENCE in out else [REFERENCE, *out]


@dataclass
class DirectionKinds:
    """Where each kind's directions come from.

    Attributes:
        kinds: the kinds, real-other first.
        pool: ``[M, d]`` real activations; ``others`` are the rows real-other targets are drawn from.
        n_dirs: directions of each kind per base.
        seed: seed of the per-base draws.
        fixed: per kind ``[n_bases, n_dirs, d]``: targets (cov-random, synthetic kinds) or directions
            (cov-mixture, naive-random) drawn once for all bases.
        dictionary: the SAE whose decoder rows the sae-* kinds use (None without those kinds).
    """

    kinds: list[str]
    pool: Tensor
    others: Tensor
    n_dirs: int
    seed: int
    fixed: dict[str, Tensor]
    dictionary: object | None = None

    @classmethod
    def build(cls, site, kinds: list[str], others: Tensor, n_bases: int, n_dirs: int, dictionary=None,
              synthetic: dict[str, Tensor] | None = None) -> "DirectionKinds":
        """The sources for ``n_bases`` bases; ``synthetic``: ``[n_bases · n_dirs, d]`` targets by kind."""
        n, r, d, seed = n_bases, n_dirs, site.d, site.seed
        stats = site.cov()
        fixed = {"cov-random": cov_random_targets(stats, n * r, seed=seed + 32).float().reshape(n, r, d),
                 "cov-mixture": (cov_random_targets(stats, n * r, seed=seed + 33) - stats.mean).float().reshape(n, r, d),
                 "naive-random": isotropic(n * r, d, seed=seed + 34).reshape(n, r, d),
                 **{k: v.reshape(n, r, d) for k, v in (synthetic or {}).items()}}
        return cls(kinds=list(kinds), pool=site.pool, others=others, n_dirs=r, seed=seed, fixed=fixed,
                   dictionary=dictionary)

    def directions(self, kind: str, i: int, subject) -> Tensor | None:
        """Up to ``n_dirs`` directions ``[≤n_dirs, d]`` of ``kind`` from base ``i`` (``subject``); None for
        an SAE kind with no such latent on this base."""

        if kind not in self.kinds:
            raise ValueError(f"direction kind {kind!r} is not one of this source's kinds: {', '.join(self.kinds)}")
        s = self.seed + 1000 * i + self.kinds.index(kind)
        if kind == "real-other":
            return directions_from_targets(subject.base, self.pool[pick(self.others, self.n_dirs, s)])
        if kind in ("cov-mixture", "naive-random"):
            return self.fixed[kind][i]
        if kind in self.fixed:  # cov-random and synthetic targets
            return directions_from_targets(subject.base, self.fixed[kind][i])
        if kind == "feature":
            return pick(subject.signed_features(), self.n_dirs, s)
        if kind not in SAE_KINDS:
            raise ValueError(f"unknown direction kind {kind!r}; allowed: {', '.join(PERTURBATION_KINDS)}")
        rows = decoder_rows(self.dictionary, subject.base, kind.startswith("sae-active"), self.n_dirs, s)
        return None if rows is None else rows if kind.endswith("+") else -rows


@torch.no_grad()
def scan_direction_kinds(site, bases: Tensor, source: DirectionKinds, scans) -> KindScans:
    """Scan each kind's directions from each of ``bases`` (pool rows); kinds with no direction on any base
    are left out."""
    out = KindScans()
    for i, b in enumerate(bases.tolist()):
        subj, subj_out = scans.contexts(site, b)
        for kind in source.kinds:
            dirs = source.directions(kind, i, subj)
            if dirs is not None:
                out.add(kind, *scans.run(subj, subj_out, dirs))
    order = [k for k in source.kinds if k in out.sphere]  # the requested order, not first-found
    return KindScans({k: out.sphere[k] for k in order}, {k: out.straight[k] for k in order})
