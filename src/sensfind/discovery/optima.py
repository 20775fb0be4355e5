"""Distinct optima: clustering converged directions, and the ``Discovery`` result."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from sensfind.runio import Result, dumps_json, load_json, load_tensors, save_json, save_tensors

__all__ = ["Discovery", "cluster_directions", "distinct_sensitive"]

def cluster_directions(directions: Tensor, scores: Tensor, threshold: float = 0.9) -> list[list[int]]:
    """Group unit directions ``[R, d]`` whose cosine with a cluster's best member is ``>= threshold``.

    Greedy, best score (lowest blowup) first; each cluster is represented by its best member. Signs
    are kept apart: ``u`` and ``-u`` (cosine -1) are different optima (exciting vs dampening).
    Returns clusters as lists of row indices, best cluster first.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"cluster threshold must be in (0, 1], got {threshold}")
    order = torch.argsort(scores.double(), stable=True).tolist()
    reps: list[int] = []
    clusters: list[list[int]] = []
    for i in order:
        if reps:
            cos = directions[reps] @ directions[i]
            j = int(torch.argmax(cos))
            if float(cos[j]) >= threshold:
                clusters[j].append(i)
                continue
        reps.append(i)
        clusters.append([i])
    return clusters


def distinct_sensitive(directions: Tensor, blowup: Tensor, reference: float, max_cos: float = 0.5) -> list[int]:
    """Optima that blow up before ``reference`` (e.g. the median real-other direction's threshold) and
    are far apart: most sensitive first, each kept when its |cos| with every kept one is below ``max_cos``.

    This is what discovery is worth on a subject without planted features. Returns row indices.
    """
    kept: list[int] = []
    for i in torch.argsort(blowup.double(), stable=True).tolist():
        if not float(blowup[i]) < reference:
            break
        if kept and float((directions[kept] @ directions[i]).abs().max()) >= max_cos:
            continue
        kept.append(i)
    return kept


@dataclass
class Discovery(Result):
    """Distinct sensitivity optima found by ``sensfind.discover``.

    Attributes:
        directions: ``[N, d]`` unit rows, one per distinct optimum (best member of its cluster; in
            sphere mode the part orthogonal to the base).
        blowup_deg: ``[N]`` hard threshold value on a fine final scan (degrees in sphere mode; step
            units in straight mode); ``inf`` if never reached.
        Optima are ordered by blowup, most sensitive (smallest) first.
        counts: ``[N]`` restarts that converged to each optimum (or were abandoned into it).
        members: restart indices of each optimum (rows of ``restart_directions``), the finder first.
        restart_directions: ``[R, d]`` every restart's final (effective) direction, all rounds.
        restart_blowup: ``[R]`` every restart's last threshold value on its own (adaptive) scan grid.
        init_directions: ``[R, d]`` where each restart started.
        history: per-iteration records (round, objective, temperature, movement, points, ...).
        config: the ``DiscoverConfig`` as a dict.
        points_evaluated: scan points run through the subject (compute spent).
        stopped_early: a round ended early because no restart was moving any more.
        found_round: ``[N]`` the round that found each optimum (0-based).
        found_restart: ``[N]`` the restart that found each optimum (row of ``restart_directions``).
        restart_round: ``[R]`` the round of each restart.
        rounds_run: rounds completed.
        stop_reason: why discovery stopped: ``budget``, ``rounds``, ``no new optima`` or
            ``space exhausted`` (the found optima span all directions).
        final_effects: ``[N, final_steps]`` each optimum's effect on the fine final scan that measured its
            blowup (grid: ``DiscoverConfig.final_scan_config``), so figures need not scan again; ``None``
            for results saved before it was kept.

    ``save(directory)`` writes ``discovery.json``, ``discovery.safetensors`` and ``config.json``;
    ``Discovery.load(directory)`` reads them back.
    """

    MARKER = "discovery.safetensors"
    WHAT = "discovery results"

    directions: Tensor
    blowup_deg: Tensor
    counts: Tensor
    members: list[list[int]]
    restart_directions: Tensor
    restart_blowup: Tensor
    init_directions: Tensor
    history: list[dict] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    points_evaluated: int = 0
    stopped_early: bool = False
    found_round: Tensor | None = None
    found_restart: Tensor | None = None
    restart_round: Tensor | None = None
    rounds_run: int = 1
    stop_reason: str | None = None
    final_effects: Tensor | None = None

    def __post_init__(self):
        n, r = self.directions.shape[0], self.restart_directions.shape[0]
        if self.found_round is None:
            self.found_round = torch.zeros(n, dtype=torch.long)
        if self.found_restart is None:
            self.found_restart = torch.tensor([m[0] for m in self.members], dtype=torch.long)
        if self.restart_round is None:
            self.restart_round = torch.zeros(r, dtype=torch.long)

    def __len__(self) -> int:
        return self.directions.shape[0]

    def to_json(self) -> str:
        return dumps_json(self._summary())

    def _summary(self) -> dict:
        return {
            "n_optima": len(self),
            "blowup": self.blowup_deg,
            "counts": self.counts,
            "members": self.members,
            "restart_blowup": self.restart_blowup,
            "points_evaluated": self.points_evaluated,
            "stopped_early": self.stopped_early,
            "iterations_run": len(self.history),
            "rounds_run": self.rounds_run,
            "stop_reason": self.stop_reason,
            "found_round": self.found_round,
            "found_restart": self.found_restart,
            "restart_round": self.restart_round,
            "config": self.config,
            "history": self.history,
        }

    def config_dict(self) -> dict | None:
        return self.config or None

    def _write(self, directory: Path) -> None:
        save_json(directory / "discovery.json", self._summary())
        save_tensors(
            directory / "discovery.safetensors",
            {
                "directions": self.directions,
                "blowup_deg": self.blowup_deg.double(),
                "counts": self.counts,
                "restart_directions": self.restart_directions,
                "restart_blowup": self.restart_blowup.double(),
                "init_directions": self.init_directions,
            } | ({} if self.final_effects is None else {"final_effects": self.final_effects}),
        )

    @classmethod
    def _read(cls, directory: Path) -> "Discovery":
        meta = load_json(directory / "discovery.json")
        t = load_tensors(directory / "discovery.safetensors")
        return cls(
            directions=t["directions"],
            blowup_deg=t["blowup_deg"],
            counts=t["counts"],
            members=meta["members"],
            restart_directions=t["restart_directions"],
            restart_blowup=t["restart_blowup"],
            init_directions=t["init_directions"],
            history=meta.get("history", []),
            config=meta.get("config", {}),
            points_evaluated=meta.get("points_evaluated", 0),
            stopped_early=meta.get("stopped_early", False),
            found_round=_long(meta.get("found_round")),
            found_restart=_long(meta.get("found_restart")),
            restart_round=_long(meta.get("restart_round")),
            rounds_run=meta.get("rounds_run", 1),
            stop_reason=meta.get("stop_reason"),
            final_effects=t.get("final_effects"),
        )


def _long(values) -> Tensor | None:
    return None if values is None else torch.tensor(values, dtype=torch.long)
