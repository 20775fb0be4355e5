"""Dictionaries: normalisation and validation, SAELens round trips, offline loading."""

from __future__ import annotations

import logging

import pytest
import torch

from sensfind.dictionaries.dictionary import (
    Dictionary,
    check_compatible,
    from_tensors,
    load_from_disk,
    load_pretrained,
    neuronpedia_url,
)
from sensfind.errors import DictionaryUnavailableError

HOOK = "blocks.1.hook_resid_pre"


def random_sae_tensors(n=12, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        W_dec=torch.randn(n, d, generator=g) * torch.linspace(0.5, 3, n)[:, None],
        W_enc=torch.randn(d, n, generator=g),
        b_enc=torch.randn(n, generator=g),
        b_dec=torch.randn(d, generator=g),
    )


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
    with caplog.at_level(logging.WARNING, logger="sensfind.dictionaries.dictionary"):
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
