"""Discovery on the ground-truth toy: convergence to planted features, refinement, resume, bad input."""

import math
from dataclasses import replace

import pytest
import torch

import sensfind as sf
from sensfind.core import baselines
from sensfind.core.recovery import recovery
from sensfind.discovery.objective import sensitivity_objective
from sensfind.discovery.objective import adaptive_grid
from sensfind.discovery.optima import cluster_directions
from sensfind.core.toy import ToyConfig, ToyModel

SMALL = sf.DiscoverConfig(restarts=12, iterations=40)


def _random_median(subject, n=64, seed=123):
    dirs = baselines.isotropic(n, subject.d, seed=seed)
    return sf.scan(subject, dirs, sf.ScanConfig(steps=361)).threshold.median().item()


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_restarts_converge_to_planted_features(seed):
    model = ToyModel(ToyConfig(seed=seed))
    subject = model.subject(0)
    found = sf.discover(subject, replace(SMALL, seed=seed))
    rec = recovery(found.restart_directions, subject.signed_features(), subject.base)
    assert rec.fraction_reached >= 0.9, rec.best_cos
    # the optima blow up about half as late as isotropic random directions or earlier (metric starts:
    # on seed 1 one optimum, a planted feature, blows up at 20.5 deg against a random median of 39)
    assert torch.isfinite(found.blowup_deg).all()
    median = _random_median(subject)
    assert found.blowup_deg.median().item() <= 0.5 * median and found.blowup_deg.max().item() <= 0.6 * median
    # every distinct optimum is a distinct planted feature (clustering neither merges nor splits)
    assert len(found) == len(rec.distinct_features)
    assert found.directions.shape == (len(found), subject.d)
    assert torch.allclose(found.directions.norm(dim=1), torch.ones(len(found), dtype=found.directions.dtype))


@pytest.mark.slow
def test_distinct_features_grow_with_restarts(toy):
    subject = toy.subject(1)
    counts = []
    for restarts in (2, 8, 24):
        found = sf.discover(subject, replace(SMALL, restarts=restarts, iterations=30))
        counts.append(len(recovery(found.restart_directions, subject.signed_features(), subject.base).distinct_features))
    assert counts[0] < counts[1] < counts[2], counts


def test_no_feature_is_claimed_where_none_was_reached(toy):
    subject = toy.subject(2)
    starts = baselines.isotropic(6, subject.d, seed=7)
    out = sf.refine(subject, starts, replace(SMALL, iterations=1))
    rec = recovery(out.end, subject.signed_features(), subject.base)
    assert rec.best_cos.max() < 0.9
    assert rec.distinct_features == [] and rec.fraction_reached == 0.0
    assert (rec.best_feature == -1).all()


def test_objective_gradcheck_on_toy():
    model = ToyModel(ToyConfig(seed=0, d=8, n_features=12, k_active=2, n_out=32, sharpness=0.2), dtype=torch.float64)
    subject = model.subject(0)
    cfg = sf.ScanConfig(steps=8, stop=90.0)
    u = torch.randn(3, subject.d, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: sensitivity_objective(subject, x, cfg, 0.3).soft, (u,))


def test_adaptive_grid_rule():
    cfg = sf.ScanConfig(steps=5)
    grids = adaptive_grid(cfg, torch.tensor([math.inf, 20.0, 0.5]))
    assert torch.allclose(grids[0], torch.linspace(0, 180, 5, dtype=torch.float64))  # unknown: full range
    assert torch.allclose(grids[1], torch.linspace(10, 30, 5, dtype=torch.float64))  # zoom ±50%
    assert grids[2, 0] == 0 and abs((grids[2, -1] - grids[2, 0]).item() - 6.0) < 1e-9  # min width 180/30
    # crossed at the window's first point: reopen down to the range start
    again = adaptive_grid(cfg, torch.tensor([10.0, 20.0, 0.5]), grids, torch.tensor([False, True, False]))
    assert again[1, 0] == 0 and again[1, -1] == 30.0


def test_adaptive_grid_refines_the_blowup_estimate():
    # a subject that blows up exactly at 7.3 degrees along e1 (output jumps when x rotates far enough)
    base = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    limit = math.sin(math.radians(7.3))
    subject = sf.FunctionSubject(base, lambda x: torch.stack([torch.zeros_like(x[:, 0]), 20 * torch.sigmoid((x[:, 1] - limit) / 1e-4)], 1))
    cfg = sf.ScanConfig(steps=9)
    steps = None
    current = torch.tensor([math.inf])
    for _ in range(6):
        steps = adaptive_grid(cfg, current, steps)
        res = sf.scan(subject, torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64), cfg, steps=steps)
        current = res.threshold
    width = (steps[0, 1] - steps[0, 0]).item()
    assert 7.3 <= current.item() <= 7.3 + width and width < 1.0  # vs 22.5 degrees on the fixed grid


def test_cluster_keeps_signs_apart_and_merges_close_ones():
    e = torch.eye(3, dtype=torch.float64)
    close = torch.nn.functional.normalize(e[0] + 0.05 * e[1], dim=0)
    dirs = torch.stack([e[0], -e[0], close, e[2]])
    clusters = cluster_directions(dirs, torch.tensor([3.0, 1.0, 2.0, 4.0]), threshold=0.9)
    assert clusters == [[1], [2, 0], [3]]


def test_discovery_save_load_roundtrip(toy, tmp_path):
    found = sf.discover(toy.subject(0), replace(SMALL, restarts=4, iterations=3))
    found.save(tmp_path / "run")
    back = sf.Discovery.load(tmp_path / "run")
    assert torch.equal(back.directions, found.directions) and back.members == found.members
    assert back.config == found.config and '"n_optima"' in found.to_json()


def test_resume_across_rounds_matches_an_uninterrupted_run(toy, tmp_path):
    subject = toy.subject(0)
    cfg = replace(SMALL, restarts=4, iterations=8, polish_iterations=3, tol=0.0, max_points=4 * 4 * (8 * 24 + 361))
    full = sf.discover(subject, cfg)
    assert full.rounds_run >= 3

    class Killed(Exception):
        pass

    def kill_in_round_2(it, record):
        if record["round"] == 2 and record["round_iteration"] == 5:
            raise Killed

    ckpt = tmp_path / "ckpt.pt"
    with pytest.raises(Killed):
        sf.discover(subject, cfg, checkpoint=ckpt, checkpoint_every=4, callback=kill_in_round_2)
    assert torch.load(ckpt, weights_only=False)["round"]["index"] == 2  # lost at most the steps since
    resumed = sf.discover(subject, cfg, checkpoint=ckpt, checkpoint_every=4, resume=True)
    assert len(resumed.history) == len(full.history) and resumed.points_evaluated == full.points_evaluated
    assert torch.allclose(resumed.directions, full.directions, atol=1e-6)
    assert torch.equal(resumed.found_round, full.found_round) and resumed.members == full.members


def test_budget_rounds_and_order(toy):
    subject = toy.subject(0)
    cost = SMALL.iterations * SMALL.scan_steps + SMALL.final_steps
    cfg = replace(SMALL, restarts=6, max_points=int(2.5 * 6 * cost))
    found = sf.discover(subject, cfg)
    assert found.points_evaluated <= cfg.max_points
    assert found.rounds_run >= 2 and found.stop_reason in ("budget", "no new optima")
    rounds = found.restart_round.tolist()
    assert rounds.count(0) == 6 and max(rounds.count(r) for r in set(rounds)) <= 6
    # most sensitive first; each optimum knows its round and its finder, which lies in that round
    assert (found.blowup_deg.diff() >= 0).all()
    assert torch.equal(found.restart_round[found.found_restart], found.found_round)
    assert all(m[0] == int(r) for m, r in zip(found.members, found.found_restart))
    assert sum(found.counts.tolist()) <= len(found.restart_directions)
    # distinct: no two optima within the cluster threshold
    cos = found.directions @ found.directions.T
    assert (cos - torch.eye(len(found), dtype=cos.dtype)).max() < cfg.cluster_threshold
    # history: rounds are numbered in order, points grow to at most what was spent
    assert [h["round"] for h in found.history] == sorted(h["round"] for h in found.history)
    assert found.history[-1]["points"] <= found.points_evaluated
    with pytest.raises(ValueError, match="cannot pay for one restart"):
        sf.discover(subject, replace(cfg, max_points=cost - 1))


def test_without_budget_one_round_and_rounds_cap(toy):
    subject = toy.subject(0)
    one = sf.discover(subject, replace(SMALL, restarts=4, iterations=5))
    assert one.rounds_run == 1 and one.stop_reason == "rounds"
    two = sf.discover(subject, replace(SMALL, restarts=4, iterations=5, rounds=2))
    assert two.rounds_run == 2 and set(two.restart_round.tolist()) == {0, 1}


def test_resume_after_a_kill_matches_an_uninterrupted_run(toy, tmp_path):
    subject = toy.subject(0)
    cfg = replace(SMALL, restarts=4, iterations=12, tol=0.0)
    full = sf.discover(subject, cfg)

    class Killed(Exception):
        pass

    def kill_at_8(it, record):
        if it == 8:
            raise Killed

    ckpt = tmp_path / "ckpt.pt"
    with pytest.raises(Killed):
        sf.discover(subject, cfg, checkpoint=ckpt, checkpoint_every=5, callback=kill_at_8)
    assert torch.load(ckpt, weights_only=False)["iteration"] == 5  # lost at most the steps since
    resumed = sf.discover(subject, cfg, checkpoint=ckpt, checkpoint_every=5, resume=True)
    assert len(resumed.history) == 12
    assert torch.allclose(resumed.restart_directions, full.restart_directions, atol=1e-6)
    with pytest.raises(ValueError, match="different config"):
        sf.discover(subject, replace(cfg, lr=0.2), checkpoint=ckpt, resume=True)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(restarts=0), "restarts must be an integer >= 1, got 0"),
        (dict(lr=math.nan), "lr must be a finite number, got nan"),
        (dict(lr=math.inf), "lr must be a finite number"),
        (dict(tau=math.inf), "tau must be a finite number > 0"),
        (dict(temperature=0.0), "temperature must be a finite number > 0, got 0.0"),
        (dict(temperature=-1.0), "temperature must be"),
        (dict(temperature_final=0.0), "temperature must be"),
        (dict(scan_steps=1), "scan_steps must be an integer >= 2"),
        (dict(optimizer="lbfgs"), "optimizer must be 'adam' or 'sgd'"),
        (dict(polish_lr=math.nan), "polish_lr must be a finite number"),
        (dict(max_points=0), "max_points must be an integer >= 1, got 0"),
        (dict(rounds=1.5), "rounds must be an integer >= 1"),
        (dict(abandon="yes"), "abandon must be True or False"),
        (dict(cluster_threshold=1.5), "cluster_threshold must be <= 1"),
        (dict(init="sae"), "init must be 'metric', 'isotropic', 'covariance' or 'given'"),
    ],
)
def test_bad_config_is_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sf.DiscoverConfig(**kwargs)


# -- issue 10 ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", ["x", 1.5, True, None, 2**64])
def test_discover_config_refuses_a_seed_that_is_not_an_integer(seed):
    with pytest.raises(ValueError, match=r"seed must be an integer in \["):
        sf.DiscoverConfig(seed=seed)


def test_from_dict_needs_a_dict():
    with pytest.raises(TypeError, match="DiscoverConfig.from_dict needs a dict of field -> value, got list"):
        sf.DiscoverConfig.from_dict([1, 2])


def _top20_recall(subject, found):
    rec = recovery(found.directions, subject.signed_features(), subject.base)
    top = torch.argsort(subject.signed_thresholds(), stable=True)[:20].tolist()
    return len(set(top) & set(rec.distinct_features)) / 20, rec


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 2])
def test_a_budget_finds_the_most_sensitive_planted_features(seed):
    # issue 12: the 20 most sensitive signed features (threshold angles within 0.7 deg of each other).
    # Isotropic starts reached 9 / 3 of them at this budget (seed 0 / 2; 16 / 7 at 120k points), metric
    # starts 20 / 19 (20 / 20 at 120k; seeds 1, 3, 4 at 30k: 19, 16, 19)
    model = ToyModel(ToyConfig(d=256, n_features=768, seed=seed))
    subject = model.subject(0)
    found = sf.discover(subject, sf.DiscoverConfig(max_points=30_000, seed=seed))
    recall, rec = _top20_recall(subject, found)
    assert recall >= 0.7, recall
    assert rec.fraction_reached >= 0.9


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0])  # seed 1 passes as well (checked by hand; the toy takes a while to build)
def test_a_budget_is_spent_on_new_planted_features(seed):
    # the toy of issue 12: 768 features in 256 dimensions. Before rounds, the default discovery spent
    # ~29k points on 16 restarts that all fell into 2-4 basins (3 of them the active features' switch-offs)
    model = ToyModel(ToyConfig(d=256, n_features=768, seed=seed))
    subject = model.subject(0)
    found = sf.discover(subject, sf.DiscoverConfig(max_points=30_000, seed=seed))
    assert found.points_evaluated <= 30_000 and found.rounds_run >= 2
    rec = recovery(found.directions, subject.signed_features(), subject.base)
    assert len(rec.distinct_features) >= 10, rec.distinct_features
    assert rec.fraction_reached >= 0.9  # precision: optima are planted features, not junk
    # the later rounds found features the first round did not
    later = recovery(found.directions[found.found_round > 0], subject.signed_features(), subject.base)
    assert len(later.distinct_features) >= 5
