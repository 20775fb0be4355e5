"""Spec strings: one parser for dictionaries and direction sources, messages that list what is allowed."""

import pytest
import torch

from sensfind.dictionaries.dictionary import from_tensors
from sensfind.specs import DICTIONARY_KINDS, DIRECTION_KINDS, Spec, dictionary_width, parse_spec, spec_alternatives
from sensfind.dictionaries.dictionary import load_dictionary_spec


def test_parse_spec_splits_kind_and_value():
    assert parse_spec("pretrained:rel/blocks.1.hook_resid_pre", DICTIONARY_KINDS, "--dictionary") == \
        Spec("pretrained", "rel/blocks.1.hook_resid_pre")
    assert parse_spec("disk:/a:b", DICTIONARY_KINDS, "--dictionary") == Spec("disk", "/a:b")
    assert str(Spec("train")) == "train" and str(Spec("random", "3")) == "random:3"


def test_unknown_kind_lists_the_allowed_ones():
    with pytest.raises(ValueError, match=r"^--directions must be random:N, linear:N, file:PATH or targets:PATH\|builtin, "
                                         r"got 'gaussian:3'$"):
        parse_spec("gaussian:3", DIRECTION_KINDS, "--directions")
    assert spec_alternatives({"auto": "", "disk": "PATH", "none": ""}) == "auto, disk:PATH or none"


def test_dictionary_width():
    assert dictionary_width(Spec("train", "64")) == 64 and dictionary_width(Spec("train")) is None
    for bad in ("x", "0", "-3"):
        with pytest.raises(ValueError, match="needs an integer width >= 1"):
            dictionary_width(Spec("train", bad))


def test_disk_spec_loads_a_saved_dictionary(tmp_path):
    dic = from_tensors(torch.randn(6, 4))
    dic.save(tmp_path / "d")
    back = load_dictionary_spec(Spec("disk", str(tmp_path / "d")))
    assert torch.equal(back.decoder, dic.decoder)
    with pytest.raises(ValueError, match="SAE directory .* does not exist"):
        load_dictionary_spec(Spec("disk", str(tmp_path / "missing")))
    with pytest.raises(ValueError, match="built by the caller"):
        load_dictionary_spec(Spec("train", "8"))


def test_model_specs_are_classified_in_one_place():
    from sensfind.specs import ModelSpec, parse_model_spec

    assert parse_model_spec("toy") == ModelSpec("toy") and parse_model_spec("toy").is_toy
    assert parse_model_spec("random:tiny") == ModelSpec("random", "tiny")
    assert parse_model_spec("gguf:/m/a.gguf") == ModelSpec("gguf", "/m/a.gguf")
    assert parse_model_spec("SmolLM2-135M") == ModelSpec("smollm2")
    assert parse_model_spec("gpt2") == ModelSpec("hub", "gpt2")
    assert [str(parse_model_spec(t)) for t in ("toy", "random:gpt2", "gguf:x", "smollm2-135m", "gpt2")] == \
        ["toy", "random:gpt2", "gguf:x", "smollm2-135m", "gpt2"]


@pytest.mark.parametrize("text, allow_toy, message", [
    ("random:huge", True, "unknown local architecture 'huge'; allowed: ['gpt2', 'tiny']"),
    ("gguf:", True, "--model must be toy, random:ARCH"),
    ("hf:gpt2", True, "--model must be toy, random:ARCH"),
    ("", True, "got ''"),
    ("toy", False, "--model 'toy' is the ground-truth toy, for discover and compare only"),
    ("x:y", False, "--model must be random:ARCH"),
])
def test_bad_model_spec_is_one_line(text, allow_toy, message):
    from sensfind.specs import parse_model_spec

    with pytest.raises(ValueError) as info:
        parse_model_spec(text, "--model", allow_toy=allow_toy)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_load_model_refuses_the_toy_and_bad_specs():
    from sensfind.models.loading import load_model

    with pytest.raises(ValueError, match="ground-truth toy"):
        load_model("toy")
    with pytest.raises(ValueError, match="model name must be random:ARCH"):
        load_model("hf:gpt2")
