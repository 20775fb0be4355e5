"""blocks: the block family read from a model, validated, and the reasons a model cannot take the compact path."""

import pytest

from families import FAMILIES, tiny_model
from sensfind.models.blocks import BlockFamily, block_family, has_hooks, unsupported


@pytest.fixture(scope="module", params=list(FAMILIES))
def family_model(request):
    return request.param, tiny_model(**FAMILIES[request.param])


def test_block_family_is_read_from_the_model(family_model):
    name, model = family_model
    fam = block_family(model)
    spec = FAMILIES[name]
    assert fam.norm == spec["normalization_type"]
    assert fam.positions == spec["positional_embedding_type"]
    assert fam.n_kv_heads == spec.get("n_key_value_heads", 4) and fam.n_heads == 4
    assert fam.gated == spec.get("gated_mlp", False)
    assert unsupported(model, 0) is None


def test_family_is_validated():
    with pytest.raises(ValueError, match="norm must be one of"):
        BlockFamily(norm="BN", positions="standard", n_heads=4, n_kv_heads=4, gated=False)
    with pytest.raises(ValueError, match="multiple of n_kv_heads"):
        BlockFamily(norm="RMS", positions="rotary", n_heads=9, n_kv_heads=2, gated=True)


def test_unsupported_names_every_reason():
    model = tiny_model(**dict(FAMILIES["gpt2"], parallel_attn_mlp=True, attn_scores_soft_cap=50.0))
    why = unsupported(model, 0)
    assert "parallel attention and MLP" in why and "attention score soft cap" in why


def test_has_hooks_sees_a_hook_on_any_module():
    model = tiny_model(**FAMILIES["gpt2"])
    assert not has_hooks(model)
    handle = model.blocks[1].mlp.register_forward_hook(lambda module, inputs, output: None)
    assert has_hooks(model)
    handle.remove()
    assert not has_hooks(model)
