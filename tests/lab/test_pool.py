"""sensfind.lab.pool: the experiments' site config, the pool of real activations and its splits."""

import pytest
import torch

from sensfind.lab.pool import PoolConfig, PoolSite, exclusion_line, load_pool_site, pick, split_pool


@pytest.mark.parametrize("field, value", [("n_pool", 4), ("seq_len", 1), ("seed", -1), ("position", 1.5), ("model", "")])
def test_bad_value_is_one_line_naming_the_field(field, value):
    with pytest.raises(ValueError) as err:
        PoolConfig(**{field: value})
    msg = str(err.value)
    assert msg.startswith(field) and repr(value) in msg and "\n" not in msg


def test_unknown_key_is_named_with_the_allowed_ones():
    with pytest.raises(ValueError, match=r"unknown PoolConfig field\(s\) \['n_pol'\]; allowed: .*'n_pool'"):
        PoolConfig.from_dict({"n_pol": 10})
    assert PoolConfig.from_dict(PoolConfig(n_pool=9).to_dict()) == PoolConfig(n_pool=9)


def test_toy_pool_has_the_asked_size():
    site = load_pool_site(PoolConfig(model="toy", n_pool=12, seed=3))
    assert site.is_toy and site.pool.shape == (12, site.d) and site.late_hook is None
    assert site.exclusion is None and exclusion_line(site) == ""
    assert torch.equal(site.subject(2).base.float(), site.pool[2])
    assert site.training_activations(20).shape == (20, site.d)


def test_random_tiny_pool_has_the_asked_size_and_matches_its_prompts():
    site = load_pool_site(PoolConfig(model="random:tiny", n_pool=10, seq_len=5))
    assert site.pool.shape == (10, site.d) and len(site.prompts) == 10 and len(site.prompts[0]) == 5
    assert site.next_tokens.shape == (10,) and site.late_hook == f"blocks.{site.model.cfg.n_layers - 1}.hook_resid_post"
    torch.testing.assert_close(site.subject(4).base.float(), site.pool[4], rtol=1e-4, atol=1e-4)
    other = PoolSite.with_base(site.subject(4), torch.ones(site.d))
    assert torch.equal(other.base, torch.ones(site.d, dtype=other.base.dtype))
    acts = site.training_activations(30)
    assert acts.shape == (30, site.d)


def test_split_pool_and_pick():
    site = PoolSite(name="x", hook="h", position=0, pool=torch.randn(10, 3))
    bases, others = split_pool(site, 4)
    assert bases.tolist() == [0, 1, 2, 3] and others.tolist() == list(range(4, 10))
    with pytest.raises(ValueError, match="n_bases 10 leaves no real-other"):
        split_pool(site, 10)
    rows = torch.arange(6)
    drawn = pick(rows, 4, seed=1)
    assert len(set(drawn.tolist())) == 4 and torch.equal(drawn, pick(rows, 4, seed=1))
    assert sorted(pick(rows, 10, seed=0).tolist()) == rows.tolist()


def test_exclusion_line_reports_the_counts():
    site = PoolSite(name="m", hook="h", position=-1, pool=torch.zeros(2, 2),
                    exclusion=dict(rule="r", examined=5, excluded=1, excluded_tokens=[" the"],
                                   sae_train=dict(excluded_massive=3, positions=90, windows=10)))
    line = exclusion_line(site)
    assert "1 of 5 candidate prompts" in line and "' the'" in line and "3 of 90 positions" in line


@pytest.mark.parametrize("model", ["random:nope", "gguf:", "bogus:x"])
def test_bad_model_spec_is_refused_before_loading(model):
    with pytest.raises(ValueError, match=r"random:|model must be") as err:
        PoolConfig(model=model)
    msg = str(err.value)
    assert "\n" not in msg
    assert repr(model) in msg or repr(model.split(":")[1]) in msg  # the bad value (or its bad part) is named
