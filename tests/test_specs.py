"""Spec strings: one parser for dictionaries and direction sources, messages that list what is allowed."""

import pytest
import torch

from sensfind.dictionary import from_tensors
from sensfind.specs import (DICTIONARY_KINDS, DIRECTION_KINDS, Spec, dictionary_width, load_dictionary_spec,
                            parse_spec, spec_alternatives)


def test_parse_spec_splits_kind_and_value():
    assert parse_spec("pretrained:rel/blocks.1.hook_resid_pre", DICTIONARY_KINDS, "--dictionary") == \
        Spec("pretrained", "rel/blocks.1.hook_resid_pre")
    assert parse_spec("disk:/a:b", DICTIONARY_KINDS, "--dictionary") == Spec("disk", "/a:b")
    assert str(Spec("train")) == "train" and str(Spec("random", "3")) == "random:3"


def test_unknown_kind_lists_the_allowed_ones():
    with pytest.raises(ValueError, match=r"^--directions must be random:N, file:PATH or targets:PATH\|builtin, "
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
