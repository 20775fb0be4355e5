"""Training subjects and their scores (``Target``), and evaluating one configuration on them (``evaluate``)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import torch
from torch import Tensor

from sensfind.core.geometry import effective_directions, is_base, reject
from sensfind.discovery.optima import Discovery, cluster_directions, distinct_sensitive
from sensfind.discovery.config import DiscoverConfig
from sensfind.discovery.loop import discover
from sensfind.dictionaries.dictionary import load_dictionary_dir
from sensfind.core.subject import Subject
from sensfind.core.scan import real_other_thresholds
from sensfind.core.recovery import recovery
from sensfind.core.toy import ToyConfig, ToyModel
from sensfind.dictionaries.dictionary import check_compatible
from sensfind.comparison.match import match_directions
from sensfind.models.loading import load_model
from sensfind.models.prompts import load_prompts, prompt_activations
from sensfind.models.transformer_subject import TransformerSubject


REPORTS_PER_SUBJECT = 5
Metric = Literal["reached", "distinct", "sae", "sensitive"]
_METRICS = ("reached", "distinct", "sae", "sensitive")
_MAX_COS = 0.5  # optima closer than this count as one for the 'sensitive' metric
_REAL_OTHERS_TOY = 64


@dataclass
class Target:
    """A subject trials run discovery on, and how to score directions found on it.

    ``score(directions [R, d], config)`` gets effective unit directions (in sphere mode the base
    projected out, like ``Discovery.restart_directions``) and returns the quality (higher is better);
    it also scores the current directions during a run (for pruning). A target scored on the whole
    result instead has ``final(discovery, config)`` and no ``score``.
    """

    name: str
    subject: Subject
    score: Callable[[Tensor, DiscoverConfig], float] | None
    final: Callable[[Discovery, DiscoverConfig], float] | None = None

    def evaluate(self, found: Discovery, config: DiscoverConfig) -> float:
        if self.final is not None:
            return self.final(found, config)
        return self.score(found.restart_directions, config)


def sensitive_target(name: str, subject: Subject, others: Tensor) -> Target:
    """A target scored by metric ``sensitive``: distinct optima that blow up before the median of the
    real-other directions towards ``others`` ``[M, d]`` (activations of other inputs at the site), per
    100k scan points. The median is measured with each trial's final scan settings (cached)."""

    medians: dict[str, float] = {}

    def final(found: Discovery, config: DiscoverConfig) -> float:
        scan_cfg = config.final_scan_config
        key = json.dumps(scan_cfg.to_dict(), sort_keys=True)
        if key not in medians:
            medians[key] = float(real_other_thresholds(subject, others, scan_cfg).median())
        kept = distinct_sensitive(found.directions, found.blowup_deg, medians[key], _MAX_COS)
        return len(kept) * 1e5 / max(found.points_evaluated, 1)

    return Target(name, subject, None, final)


def toy_targets(seeds: Sequence[int], metric: Metric = "reached", input_index: int = 0) -> list[Target]:
    """One ``ToyModel(ToyConfig(seed=s)).subject(input_index)`` per seed, scored against its planted features."""

    if metric not in ("reached", "distinct", "sensitive"):
        raise ValueError(f"the toy is scored by metric 'reached', 'distinct' or 'sensitive', got {metric!r}")
    targets = []
    for s in seeds:
        subject = ToyModel(ToyConfig(seed=int(s))).subject(input_index)
        if metric == "sensitive":
            targets.append(sensitive_target(f"toy:{s}", subject, subject.real_others(_REAL_OTHERS_TOY, seed=int(s) + 1)))
            continue
        features = subject.signed_features()

        def score(dirs: Tensor, config: DiscoverConfig, subject=subject, features=features) -> float:
            rec = recovery(dirs, features, subject.base, mode=config.mode)
            return rec.fraction_reached if metric == "reached" else float(len(rec.distinct_features))

        targets.append(Target(f"toy:{s}", subject, score))
    return targets


def transformer_targets(
    model_name: str, sae: str | None, prompt_indices: Sequence[int], prompts: str = "builtin",
    hook: str = "blocks.1.hook_resid_pre", position: int = -1, p_value: float = 0.01, seed: int = 0,
    metric: Metric = "sae", device: str = "auto",
) -> list[Target]:
    """Transformer subjects (one per prompt index) scored by metric ``sae``: the fraction of distinct
    optima whose best match in the SAE dictionary at ``sae`` (a ``Dictionary.save`` or SAELens
    directory) has ``p < p_value``; or by metric ``sensitive`` against the other prompts' activations."""

    model = load_model(model_name, seed=seed, device=device)
    texts = load_prompts(prompts, model)  # corpus:N windows need the tokenizer
    for i in prompt_indices:
        if not 0 <= i < len(texts):
            raise ValueError(f"prompt index {i} is out of range; {prompts!r} holds {len(texts)} prompts")
    if metric == "sensitive":
        acts = prompt_activations(model, texts, hook, position)
        targets = []
        for i in prompt_indices:
            subject = TransformerSubject(model, texts[i], hook=hook, position=position)
            keep = ~is_base(acts, subject.base)
            keep[i] = False
            targets.append(sensitive_target(f"prompt:{i}", subject, acts[keep]))
        return targets
    dictionary = load_dictionary_dir(sae)
    check_compatible(dictionary, model.cfg.d_model, hook)
    targets = []
    for i in prompt_indices:
        subject = TransformerSubject(model, texts[i], hook=hook, position=position)

        def score(dirs: Tensor, config: DiscoverConfig) -> float:
            clusters = cluster_directions(dirs, torch.zeros(dirs.shape[0]), config.cluster_threshold)
            optima = dirs[[c[0] for c in clusters]]
            matches = match_directions(optima, dictionary, k=1)
            return float((matches.p_value[:, 0] < p_value).double().mean())

        targets.append(Target(f"prompt:{i}", subject, score))
    return targets


class _Probe:
    """A subject view that keeps the last batch it ran, to read the current directions off it.

    ``scan`` runs ``[R * K, d]`` perturbed activations, restart-major; the last point of each restart
    minus the base is along the direction being optimised (for sphere mode once the base is projected out).
    """

    def __init__(self, subject: Subject):
        self.inner = subject
        self.base = subject.base
        out = getattr(subject, "base_output", None)
        if out is None:
            with torch.no_grad():
                out = subject.run(subject.base[None])[0]
        self.base_output = out.detach()
        self.last: Tensor | None = None

    def __getattr__(self, name):
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def run(self, acts: Tensor) -> Tensor:
        self.last = acts.detach()
        return self.inner.run(acts)

    def directions(self, restarts: int, mode: str) -> Tensor | None:  # [R, d] effective unit directions
        if self.last is None or self.last.shape[0] % restarts:
            return None
        tips = self.last.reshape(restarts, -1, self.last.shape[-1]) - self.base  # [R, K, d]
        if mode == "sphere":  # only the part orthogonal to the base carries the direction (0 at 0 and 180 deg)
            tips = reject(tips, self.base)
        best = tips.norm(dim=-1).argmax(dim=1)  # [R] the scan point that shows the direction best
        tips = tips[torch.arange(restarts), best]
        if (tips.norm(dim=1) == 0).any():
            return None
        return effective_directions(tips, self.base, mode)


@dataclass
class Evaluation:
    """Scores of one ``DiscoverConfig`` on some targets: their mean ``quality`` and the ``points`` spent."""

    quality: float
    points: int
    scores: dict[str, float]
    n_optima: dict[str, int]
    seconds: float


class _Stop(Exception):
    """Raised from the discovery callback to prune a trial."""


def evaluate(
    config: DiscoverConfig,
    targets: Sequence[Target],
    report: Callable[[int, float, int], None] | None = None,
) -> Evaluation:
    """Run ``discover`` with ``config`` on every target and score it.

    ``report(step, running_quality, points_so_far)`` is called ``REPORTS_PER_SUBJECT`` times per target
    (it may raise to stop); the running quality averages the finished targets' scores and the current
    target's score of its current directions. Raises ``NonFiniteOutputError`` for a non-finite output.
    """
    if not targets:
        raise ValueError("no targets to evaluate on")
    t0 = time.perf_counter()
    scores: dict[str, float] = {}
    n_optima: dict[str, int] = {}
    points = 0
    for k, target in enumerate(targets):
        probe = _Probe(target.subject)
        last_step = 0

        def callback(it: int, record: dict, k=k, probe=probe, target=target, done=points) -> None:
            nonlocal last_step
            if config.max_points is not None:  # progress through the budget, else through the one round
                step = REPORTS_PER_SUBJECT * record["points"] // config.max_points
            else:
                step = REPORTS_PER_SUBJECT * (record["round_iteration"] + 1) // max(config.iterations, 1)
            if report is None or target.score is None or step <= last_step or step >= REPORTS_PER_SUBJECT:
                return  # the last step of each target is reported with its final score
            dirs = probe.directions(record["restarts_scanned"], config.mode)
            if dirs is None:
                return
            last_step = step
            running = (sum(scores.values()) + target.score(dirs, config)) / (k + 1)
            report(k * REPORTS_PER_SUBJECT + step, running, done + record["points"])

        found = discover(probe, config, callback=callback if report is not None else None, progress=False)
        points += found.points_evaluated
        scores[target.name] = float(target.evaluate(found, config))
        n_optima[target.name] = len(found)
        if report is not None:
            report((k + 1) * REPORTS_PER_SUBJECT, sum(scores.values()) / (k + 1), points)
    quality = sum(scores.values()) / len(scores)
    return Evaluation(quality, points, scores, n_optima, time.perf_counter() - t0)
