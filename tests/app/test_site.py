"""SiteConfig: the site as a config; saved runs' site dicts load back; the subject is built from it."""

import dataclasses

import pytest
import torch

from sensfind.app.site import DiscoverySiteConfig, SiteConfig, site_from_dict

TINY = dict(model="random:tiny", tokens="5,6,7,8,9,10")
# what runs wrote under "site" before SiteConfig existed (an argparse namespace's values)
SCAN_SITE = {"model": "random:tiny", "prompt": "The old lighthouse keeper climbed the stairs every evening",
             "tokens": "5,6,7,8,9,10", "hook": "blocks.1.hook_resid_pre", "position": -1, "output_hook": None,
             "dtype": "float32", "device": "auto", "seed": 0}
DISCOVER_SITE = SCAN_SITE | {"input": 0, "prompts": "builtin"}


def test_defaults_are_the_command_lines():
    s = SiteConfig()
    assert (s.model, s.hook, s.position, s.dtype, s.device, s.seed, s.tokens) == \
        ("smollm2-135m", "blocks.1.hook_resid_pre", -1, "float32", "auto", 0, None)
    assert [f.name for f in dataclasses.fields(DiscoverySiteConfig)] == list(DISCOVER_SITE)


def test_saved_site_dicts_load_back_and_round_trip():
    assert SiteConfig.from_dict(SCAN_SITE).to_dict() == SCAN_SITE
    assert DiscoverySiteConfig.from_dict(DISCOVER_SITE).to_dict() == DISCOVER_SITE
    assert type(site_from_dict(SCAN_SITE)) is SiteConfig
    assert type(site_from_dict(DISCOVER_SITE)) is DiscoverySiteConfig
    old = {k: v for k, v in DISCOVER_SITE.items() if k != "device"}  # runs from before --device
    assert DiscoverySiteConfig.from_dict(old).device == "auto"
    with pytest.raises(ValueError, match=r"unknown SiteConfig field\(s\) \['prompts'\]; allowed: \["):
        SiteConfig.from_dict(SCAN_SITE | {"prompts": "builtin"})


@pytest.mark.parametrize("kwargs, message", [
    (dict(model="toy"), "model 'toy' is the ground-truth toy, for discover and compare only"),
    (dict(model="random:huge"), "unknown local architecture 'huge'"),
    (dict(model="hub:gpt2"), "model must be random:ARCH"),
    (dict(tokens="1,x"), "tokens must be comma-separated integers, got '1,x'"),
    (dict(tokens=" , "), "tokens is empty"),
    (dict(dtype="float16"), "dtype must be one of ['float32', 'bfloat16', 'float64'], got 'float16'"),
    (dict(device="tpu"), "unknown device 'tpu'"),
    (dict(position=1.5), "position must be an integer"),
    (dict(hook=""), "hook must be a hook name"),
    (dict(seed=-1), "seed must be an integer >= 0"),
])
def test_bad_values_say_what_is_allowed(kwargs, message):
    with pytest.raises(ValueError) as info:
        SiteConfig(**kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_token_list_is_kept_in_the_flat_form():
    assert SiteConfig(tokens=[5, 6, 7]).tokens == "5,6,7" and SiteConfig(tokens="5, 6,7").token_ids == [5, 6, 7]


def test_subject_is_the_transformer_subject_of_the_site():
    from sensfind.models.loading import load_model
    from sensfind.models.transformer_subject import TransformerSubject

    subject = SiteConfig(**TINY, position=2).subject()
    by_hand = TransformerSubject(load_model("random:tiny", seed=0), [5, 6, 7, 8, 9, 10], hook="blocks.1.hook_resid_pre",
                                 position=2)
    assert torch.equal(subject.base, by_hand.base)
    assert SiteConfig(**TINY, dtype="float64").subject().base.dtype == torch.float64


def test_discovery_site_builds_the_toy_and_its_other_inputs():
    site = DiscoverySiteConfig(model="toy", input=3, seed=1).build()
    assert site.model is None and site.others.shape[1] == site.subject.base.shape[0]
    assert ((site.others - site.subject.base).norm(dim=1) > 0).all()


def test_discovery_site_of_a_transformer_leaves_out_its_own_prompt(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("first prompt\nthe site's own prompt\n")
    site = DiscoverySiteConfig(model="random:tiny", prompt="the site's own prompt", prompts=str(prompts)).build()
    assert site.model is not None and site.others.shape[0] == 1
