"""sensfind.lab.pool_sae: which SAE a pool site gets, trained and cached once per site."""

import pytest

from sensfind.lab.pool import PoolConfig, load_pool_site
from sensfind.lab.pool_sae import PoolSAEConfig, dictionary_info, load_pool_sae, synthetic_activations


def test_bad_values_are_one_line():
    with pytest.raises(ValueError, match=r"^sae must be auto, pretrained:RELEASE/SAE_ID, .* got 'bogus'$"):
        PoolSAEConfig(sae="bogus")
    with pytest.raises(ValueError, match="^sae_epochs must be an integer >= 1, got 0$"):
        PoolSAEConfig(sae_epochs=0)
    with pytest.raises(ValueError, match=r"unknown PoolSAEConfig field\(s\) \['sae_l2'\]"):
        PoolSAEConfig.from_dict({"sae_l2": 1.0})


@pytest.fixture(scope="module")
def toy_site():
    return load_pool_site(PoolConfig(model="toy", n_pool=16))


def test_none_gives_no_sae_and_no_synthetic(toy_site):
    assert load_pool_sae(toy_site, PoolSAEConfig(sae="none")) is None
    assert synthetic_activations(None, toy_site, 4, seed=0) == ({}, {})
    assert dictionary_info(None) is None


def test_trained_sae_fits_the_site_and_is_loaded_once(toy_site, tmp_path):
    config = PoolSAEConfig(sae="auto", sae_train=256, sae_epochs=1, sae_expansion=2)
    dic = load_pool_sae(toy_site, config, cache_dir=str(tmp_path))
    assert dic.d == toy_site.d and dic.n_latents == 2 * toy_site.d
    assert load_pool_sae(toy_site, config, cache_dir=str(tmp_path)) is dic
    acts, stats = synthetic_activations(dic, toy_site, 5, seed=1)
    assert set(acts) == {"synthetic-baseline", "synthetic-structured"} and acts["synthetic-baseline"].shape == (5, toy_site.d)
    assert stats and dictionary_info(dic)["n_latents"] == dic.n_latents


def test_pretrained_offline_fails_with_the_loaders_one_line_message(toy_site, monkeypatch):
    from sensfind.errors import DictionaryUnavailableError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DictionaryUnavailableError) as err:
        load_pool_sae(toy_site, PoolSAEConfig(sae="pretrained:gpt2-small-res-jb/blocks.1.hook_resid_pre"))
    assert "gpt2-small-res-jb" in str(err.value) and len(str(err.value).strip().splitlines()) == 1
