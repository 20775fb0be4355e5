"""sae_training: training an SAE with SAELens, deterministic in the seed, cached by data and config."""

from __future__ import annotations

import pytest
import torch

from sensfind.dictionaries import training as sae_training
from sensfind.dictionaries.training import TrainSAEConfig, train_sae

HOOK = "blocks.1.hook_resid_pre"


def planted_activations(n=10_000, d=64, n_features=128, active=3, seed=0):
    """Sparse nonnegative combinations of planted unit directions: ``active`` of ``n_features``
    per sample, magnitudes uniform in [1, 2]. Returns activations [n, d] and directions [n_features, d]."""
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(n_features, d, generator=g)
    features /= features.norm(dim=1, keepdim=True)
    idx = torch.rand(n, n_features, generator=g).argsort(dim=1)[:, :active]
    mags = 1 + torch.rand(n, active, generator=g)
    return (mags[..., None] * features[idx]).sum(1), features


def recovery(decoder_unit: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Best |cos| of each planted direction over the decoder rows."""
    return (features @ decoder_unit.T).abs().amax(dim=1)


TINY = TrainSAEConfig(batch_size=64, epochs=2)


def tiny_acts(seed=0):
    return planted_activations(n=512, d=16, n_features=24, seed=seed)[0]


def test_train_sae_is_deterministic_in_seed():
    acts = tiny_acts()
    a = train_sae(acts, HOOK, 32, config=TINY, seed=1)
    b = train_sae(acts, HOOK, 32, config=TINY, seed=1)
    c = train_sae(acts, HOOK, 32, config=TINY, seed=2)
    assert torch.equal(a.raw_decoder, b.raw_decoder) and torch.equal(a.encoder, b.encoder)
    assert not torch.allclose(a.raw_decoder, c.raw_decoder)
    assert a.hook_name == HOOK and a.can_encode and a.source.startswith("trained:")
    assert a.info["trained"]["steps"] == 2 * (512 // 64)


def test_train_sae_leaves_global_rng_alone():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    train_sae(tiny_acts(), HOOK, 32, config=TINY)
    torch.testing.assert_close(torch.rand(3), expected)


def test_train_sae_caches_by_data_and_config(tmp_path, monkeypatch):
    acts = tiny_acts()
    first = train_sae(acts, HOOK, 32, config=TINY, cache_dir=tmp_path)
    (cached,) = tmp_path.iterdir()
    assert (cached / "train.json").is_file() and (cached / "cfg.json").is_file()

    def no_training(*args, **kwargs):
        raise AssertionError("train_sae trained again instead of loading its cache")

    monkeypatch.setattr(sae_training, "_fit", no_training)
    again = train_sae(acts.clone(), HOOK, 32, config=TINY, cache_dir=tmp_path)
    assert torch.equal(again.raw_decoder, first.raw_decoder)
    assert again.info["path"] == str(cached)
    # a different seed, config or data set is a different key, so it would train
    changes = (dict(seed=1), dict(config=TrainSAEConfig(batch_size=64, epochs=3)), dict(activations=tiny_acts(seed=9)))
    for kwargs in changes:
        call = dict(activations=acts, hook_name=HOOK, d_sae=32, config=TINY, cache_dir=tmp_path) | kwargs
        with pytest.raises(AssertionError, match="trained again"):
            train_sae(**call)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(activations=torch.randn(10, 16)), "need at least batch_size=64 activations, got 10"),
        (dict(activations=torch.full((512, 16), float("nan"))), "activation row 0 contains NaN"),
        (dict(activations=torch.randn(512)), r"shape \[N, d\]"),
        (dict(d_sae=0), "d_sae must be an integer >= 1"),
        (dict(hook_name=""), "hook_name must be a non-empty string"),
    ],
)
def test_train_sae_validates_inputs(kwargs, message):
    call = dict(activations=tiny_acts(), hook_name=HOOK, d_sae=32, config=TINY) | kwargs
    with pytest.raises(ValueError, match=message):
        train_sae(**call)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(lr=0), "lr must be > 0"),
        (dict(l1_coefficient=-1.0), "l1_coefficient must be a finite number >= 0"),
        (dict(batch_size=0), "batch_size must be an integer >= 1"),
        (dict(epochs=1.5), "epochs must be an integer >= 1"),
        (dict(normalize_activations="yes"), "normalize_activations must be True or False"),
    ],
)
def test_train_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainSAEConfig(**kwargs)


@pytest.mark.slow
def test_trained_sae_recovers_planted_directions():
    """128 planted unit directions in d=64, 3 active per sample with magnitudes in [1, 2].

    Measured with the default config on 10k samples (4 data/init seeds): mean best |cos| 0.988-0.991,
    >= 99% of the directions above 0.9 (20k samples: 0.995). A decoder of 256 random unit rows
    reaches about 0.45, so the thresholds below separate learning from chance by a wide margin.
    """
    acts, features = planted_activations(n=10_000, seed=0)
    dic = train_sae(acts, HOOK, 256, seed=0)
    best = recovery(dic.decoder, features)
    chance = recovery(torch.nn.functional.normalize(torch.randn(256, 64), dim=1), features)
    assert chance.mean() < 0.6
    assert best.mean() >= 0.95, f"mean best |cos| {best.mean():.3f}"
    assert (best > 0.9).float().mean() >= 0.95
    assert dic.info["trained"]["explained_variance"] > 0.8


def test_after_training_statistics_run_in_chunks_and_equal_the_whole_batch(monkeypatch):
    # the latents of every training activation at once are [n, d_sae]: 19 GB for 1M activations and 4608
    # latents (an OOM kill here); the statistics are summed over chunks instead
    acts = tiny_acts()
    monkeypatch.setattr(sae_training, "_STATS_CHUNK", 100)  # 512 activations: 6 chunks, the last one short
    dic = train_sae(acts, HOOK, 32, config=TINY, seed=3)
    with torch.no_grad():
        latents = dic.encode(acts)
        x_hat = dic.sae.decode(latents)
    fvu = float((x_hat - acts).double().pow(2).sum() / (acts.double() - acts.double().mean(0)).pow(2).sum())
    trained = dic.info["trained"]
    assert trained["explained_variance"] == pytest.approx(1 - fvu, rel=1e-5)
    assert trained["l0"] == pytest.approx(float((latents > 0).float().sum(1).mean()), rel=1e-6)
