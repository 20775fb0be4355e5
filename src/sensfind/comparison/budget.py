"""How ``compare`` spends a budget of scan points (``CompareConfig.max_points``).

Every scan of a comparison is counted: the compared directions' curves (``N·S`` points for ``S`` scan
steps), the random baseline and the real-other directions (one scan each), each chosen latent's row
in both signs (``2·S``) and its probes (``P·S``), and refinement from decoder rows (a discovery round
per refined latent, and its before/after scans). :func:`plan_compare` keeps everything when it fits.
Otherwise it cuts, in this order, until it does:

1. the scan's resolution (``scan_steps`` 361 -> 181 -> 91), to the finest at which the curves and
   ``FAIR_BASELINE`` random and real-other directions fit in half the budget; then the baselines to at
   most that half (random and real-other directions alike, at least ``MIN_BASELINE`` each);
2. the latents scanned (``matched`` first, then ``active``, then ``sample``) and their probes (down to
   ``MIN_PROBES``), so that the latents that fit get the most probes they can;
3. refinement: only as many latents (the most sensitive first) as the points left pay for.

A budget that cannot pay for the compared directions' curves and the smallest baselines is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sensfind.discovery.config import DiscoverConfig
from sensfind.discovery.rounds import round_cost

__all__ = ["ComparePlan", "FAIR_BASELINE", "MIN_BASELINE", "MIN_PROBES", "plan_compare", "refine_cost"]

MIN_BASELINE = 8  # random and real-other directions kept at least, when the budget cuts them
FAIR_BASELINE = 16  # the resolution is cut before the baselines fall below this many directions each
MIN_PROBES = 2  # probes per latent kept at least
COARSER_STEPS = (181, 91)  # the scan's resolutions tried, finest first, when the baselines do not fit


@dataclass
class ComparePlan:
    """The sizes a comparison runs with, the points each stage costs and what the budget cut
    (``cut``: name -> ``[asked, kept]``)."""

    scan_steps: int
    n_random: int
    n_others: int
    latents: list[int]  # the latents scanned, in priority order (matched, active, sample)
    probes: int
    n_refine: int
    points: dict = field(default_factory=dict)
    cut: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"scan_steps": self.scan_steps, "n_random": self.n_random, "n_others": self.n_others,
                "n_latents": len(self.latents), "probes": self.probes, "n_refine": self.n_refine,
                "points": dict(self.points), "total_points": sum(self.points.values()), "cut": dict(self.cut)}


def refine_cost(discover_config: DiscoverConfig) -> int:
    """Scan points one refined latent costs: its discovery round and its before/after scans."""
    return round_cost(discover_config) + 2 * discover_config.final_steps


def _ordered_latents(groups: dict) -> list[int]:
    seen, out = set(), []
    for name in ("matched", "active", "sample", *sorted(groups)):
        for i in groups.get(name, []):
            if i not in seen:
                seen.add(i)
                out.append(i)
    return out


def plan_compare(max_points: int | None, *, n_directions: int, n_random: int, n_others: int, groups: dict,
                 scan_steps: int, probes: int, refine: DiscoverConfig | None) -> ComparePlan:
    """The sizes of a comparison within ``max_points`` scan points (``None``: everything as asked).
    ``groups``: latent ids per reason (``matched``, ``active``, ``sample``); ``refine``: the discovery
    config of refinement (``None``: no refinement). ``ValueError`` when the budget cannot pay for the
    compared directions' curves and the smallest baselines."""
    latents = _ordered_latents(groups)
    n_ref_asked = len(latents) if refine is not None else 0
    per_refine = refine_cost(refine) if refine is not None else 0
    if max_points is None:
        plan = ComparePlan(scan_steps, n_random, n_others, latents, probes, n_ref_asked)
        plan.points = _points(plan, n_directions, per_refine)
        return plan
    budget, cut = max_points, {}
    min_random, min_others = min(n_random, MIN_BASELINE), min(n_others, MIN_BASELINE)
    fair = n_directions + min(n_random, FAIR_BASELINE) + min(n_others, FAIR_BASELINE)
    for steps in (scan_steps, *[s for s in COARSER_STEPS if s < scan_steps]):
        if fair * steps <= budget // 2:
            break
    need = (n_directions + min_random + min_others) * steps
    if need > budget:
        raise ValueError(f"max_points={max_points} cannot pay for the compared directions' curves and the smallest "
                         f"baselines ({n_directions} + {min_random} + {min_others} directions x {steps} steps = {need} "
                         "scan points); raise --max-points or lower --scan-steps")
    if steps != scan_steps:
        cut["scan_steps"] = [scan_steps, steps]
    # 1. baselines: as asked if they fit in half the budget, else shrunk together (at least MIN_BASELINE each)
    share = max(budget // 2 - n_directions * steps, (min_random + min_others) * steps) // steps
    kept_random, kept_others = n_random, n_others
    if n_random + n_others > share:
        frac = share / (n_random + n_others)
        kept_others = max(min_others, int(n_others * frac))
        kept_random = max(min_random, min(n_random, share - kept_others))
    if kept_random < n_random:
        cut["n_random"] = [n_random, kept_random]
    if kept_others < n_others:
        cut["n_others"] = [n_others, kept_others]
    left = budget - (n_directions + kept_random + kept_others) * steps
    # 2. latents and probes: all latents with as many probes as fit (at least MIN_PROBES), else fewer latents
    kept_probes, n_lat = probes, len(latents)
    if n_lat and n_lat * (2 + probes) * steps > left:
        kept_probes = max(min(probes, MIN_PROBES), min(probes, left // (n_lat * steps) - 2))
        n_lat = min(n_lat, left // ((2 + kept_probes) * steps))
    if kept_probes < probes:
        cut["probes"] = [probes, kept_probes]
    if n_lat < len(latents):
        cut["latents"] = [len(latents), n_lat]
    left -= n_lat * (2 + kept_probes) * steps
    # 3. refinement of the most sensitive latents, as many as the rest pays for
    n_ref = min(n_lat, left // per_refine) if refine is not None and per_refine else 0
    if n_ref < n_ref_asked:
        cut["refine"] = [n_ref_asked, n_ref]
    plan = ComparePlan(steps, kept_random, kept_others, latents[:n_lat], kept_probes, n_ref, cut=cut)
    plan.points = _points(plan, n_directions, per_refine)
    return plan


def _points(plan: ComparePlan, n_directions: int, per_refine: int) -> dict:
    s = plan.scan_steps
    return {"curves": n_directions * s, "random": plan.n_random * s, "real_other": plan.n_others * s,
            "latents": 2 * len(plan.latents) * s, "probes": len(plan.latents) * plan.probes * s,
            "refine": plan.n_refine * per_refine}
