"""Dictionaries: normalisation and validation, SAELens round trips, offline loading, local training."""

from __future__ import annotations

import logging

import pytest
import torch

from sensfind import dictionary as dictionary_module
from sensfind.dictionary import (
    Dictionary,
    DictionaryUnavailableError,
    TrainSAEConfig,
    check_compatible,
    from_tensors,
    load_from_disk,
    load_pretrained,
    neuronpedia_url,
    train_sae,
)

HOOK = "blocks.1.hook_resid_pre"


def random_sae_tensors(n=12, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        W_dec=torch.randn(n, d, generator=g) * torch.linspace(0.5, 3, n)[:, None],
        W_enc=torch.randn(d, n, generator=g),
        b_enc=torch.randn(n, generator=g),
        b_dec=torch.randn(d, generator=g),
    )


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


# --- the Dictionary object -------------------------------------------------------------------------


def test_decoder_rows_are_unit_and_raw_norms_kept():
    t = random_sae_tensors()
    dic = Dictionary(decoder=t["W_dec"], hook_name=HOOK)
    torch.testing.assert_close(dic.decoder.norm(dim=1), torch.ones(12))
    torch.testing.assert_close(dic.decoder_norms, t["W_dec"].norm(dim=1))
    torch.testing.assert_close(dic.raw_decoder, t["W_dec"])
    assert (dic.n_latents, dic.d) == (12, 8)
    assert "n_latents=12" in repr(dic)


@pytest.mark.parametrize(
    "bad,message", [(0.0, "decoder row 5 is the zero vector"), (float("nan"), "decoder row 5 contains NaN")]
)
def test_zero_or_nan_decoder_rows_are_rejected_by_index(bad, message):
    w = random_sae_tensors()["W_dec"]
    w[5] = bad
    with pytest.raises(ValueError, match=message):
        Dictionary(decoder=w)


@pytest.mark.parametrize(
    "w", [torch.randn(5), torch.randn(0, 4), torch.randn(3, 0), torch.ones(3, 4, dtype=torch.long)]
)
def test_bad_decoder_shapes_are_rejected(w):
    with pytest.raises(ValueError, match="decoder"):
        Dictionary(decoder=w)


def test_from_tensors_encodes_like_a_standard_sae():
    t = random_sae_tensors()
    dic = from_tensors(**t, hook_name=HOOK)
    assert dic.can_encode and dic.hook_name == HOOK
    x = torch.randn(5, 8)
    expected = torch.relu((x - t["b_dec"]) @ t["W_enc"] + t["b_enc"])
    torch.testing.assert_close(dic.encode(x), expected)
    torch.testing.assert_close(dic.raw_decoder, t["W_dec"])
    with pytest.raises(ValueError, match=r"shape \[\.\.\., 8\]"):
        dic.encode(torch.randn(5, 7))


def test_from_tensors_without_encoder_holds_directions_only():
    dic = from_tensors(random_sae_tensors()["W_dec"])
    assert dic.encoder is None and not dic.can_encode
    with pytest.raises(ValueError, match="no SAE to encode with"):
        dic.encode(torch.randn(2, 8))


@pytest.mark.parametrize(
    "override,message",
    [
        (dict(W_enc=torch.randn(12, 8)), "encoder must have shape"),
        (dict(b_enc=torch.randn(8)), "b_enc must have shape"),
        (dict(b_dec=torch.randn(12)), "b_dec must have shape"),
    ],
)
def test_from_tensors_rejects_mismatched_shapes(override, message):
    t = random_sae_tensors() | override
    with pytest.raises(ValueError, match=message):
        from_tensors(**t)


def test_from_tensors_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    from_tensors(**random_sae_tensors())
    torch.testing.assert_close(torch.rand(3), expected)


@pytest.mark.parametrize("with_encoder", [True, False])
def test_save_load_round_trip(tmp_path, with_encoder):
    t = random_sae_tensors()
    if not with_encoder:
        t = dict(W_dec=t["W_dec"], b_dec=t["b_dec"])
    dic = from_tensors(**t, hook_name=HOOK, source="test")
    loaded = Dictionary.load(dic.save(tmp_path / "dic"))
    assert torch.equal(loaded.raw_decoder, dic.raw_decoder)
    assert torch.equal(loaded.decoder, dic.decoder)
    assert (loaded.hook_name, loaded.source, loaded.can_encode) == (HOOK, "test", with_encoder)
    if with_encoder:
        x = torch.randn(4, 8)
        torch.testing.assert_close(loaded.encode(x), dic.encode(x))


def test_load_from_disk_reads_sae_lens_format(tmp_path):
    dic = from_tensors(**random_sae_tensors(), hook_name=HOOK)
    dic.sae.save_model(tmp_path / "sae")  # SAELens' own writer
    loaded = load_from_disk(tmp_path / "sae")
    assert loaded.hook_name == HOOK and loaded.source.startswith("disk:")
    assert torch.equal(loaded.decoder, dic.decoder)
    assert loaded.neuronpedia_url(0) is None
    assert load_from_disk(tmp_path / "sae", release="gpt2-small-res-jb").neuronpedia_url(3).endswith("/1-res-jb/3")


def test_load_from_disk_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="cfg.json"):
        load_from_disk(tmp_path / "nothing")


# --- compatibility and Neuronpedia -----------------------------------------------------------------


def test_check_compatible(caplog):
    dic = from_tensors(random_sae_tensors()["W_dec"], hook_name=HOOK)
    assert check_compatible(dic, 8, HOOK) is dic
    with pytest.raises(ValueError, match="width 8, but the site has width 768"):
        check_compatible(dic, 768, HOOK)
    with pytest.raises(ValueError, match="trained at hook 'blocks.1.hook_resid_pre'.*'blocks.2.hook_resid_pre'"):
        check_compatible(dic, 8, "blocks.2.hook_resid_pre")
    unknown = from_tensors(random_sae_tensors()["W_dec"])
    with caplog.at_level(logging.WARNING, logger="sensfind.dictionary"):
        check_compatible(unknown, 8, HOOK)
    assert "no hook name" in caplog.text


def test_neuronpedia_urls_match_sae_lens_directory():
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    entry = get_pretrained_saes_directory()["gpt2-small-res-jb"]
    assert len(entry.neuronpedia_id) >= 12
    for sae_id, np_id in entry.neuronpedia_id.items():
        assert neuronpedia_url("gpt2-small-res-jb", sae_id, 7) == f"https://www.neuronpedia.org/{np_id}/7"
    assert neuronpedia_url("gpt2-small-res-jb", HOOK, 1234) == "https://www.neuronpedia.org/gpt2-small/1-res-jb/1234"
    assert neuronpedia_url("gpt2-small-resid-post-v5-32k", HOOK, 7) is None
    assert neuronpedia_url(None, HOOK, 7) is None
    assert neuronpedia_url("gpt2-small-res-jb", "blocks.1.hook_mlp_out", 7) is None


def test_neuronpedia_url_checks_latent():
    dic = Dictionary(decoder=torch.randn(4, 3), hook_name=HOOK, info={"release": "gpt2-small-res-jb"})
    assert dic.neuronpedia_url(3) == "https://www.neuronpedia.org/gpt2-small/1-res-jb/3"
    for bad in (4, -1, 1.0):
        with pytest.raises(ValueError, match=r"latent must be an integer in \[0, 4\)"):
            dic.neuronpedia_url(bad)


# --- pretrained loading (offline here) -------------------------------------------------------------


def test_load_pretrained_offline_raises_one_clear_error(monkeypatch, tmp_path):
    import huggingface_hub.constants as hf_constants

    # Offline mode and an empty cache, set where huggingface_hub reads them at call time, so this
    # fails at once (and the same way) whether or not the machine has network or a populated cache.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    import socket

    # offline means no connection is even attempted (a hub retry loop would hang here for minutes)
    attempts = []
    real_connect = socket.socket.connect

    def connect(self, address):
        attempts.append(address)
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    with pytest.raises(DictionaryUnavailableError) as info:
        load_pretrained("gpt2-small-res-jb", HOOK)
    assert attempts == []
    message = str(info.value)
    assert "gpt2-small-res-jb/blocks.1.hook_resid_pre" in message
    assert "HuggingFace hub" in message and "load_from_disk" in message and "train_sae" in message
    assert isinstance(info.value.__cause__, OSError)


def test_load_pretrained_rejects_unknown_names_without_network():
    with pytest.raises(ValueError, match="unknown SAE release 'no-such-release'"):
        load_pretrained("no-such-release", HOOK)
    with pytest.raises(ValueError, match="unknown sae_id 'blocks.99.hook_resid_pre'.*allowed"):
        load_pretrained("gpt2-small-res-jb", "blocks.99.hook_resid_pre")


# --- training --------------------------------------------------------------------------------------

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

    monkeypatch.setattr(dictionary_module, "_fit", no_training)
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
