"""The compact fast path (sensfind.models.fused_blocks) == TransformerLens's forward (the reference path).

Tiny random models of each block family run in seconds; SmolLM2 (a real Llama-architecture model,
RMSNorm, rotary base 1e5, 9 query / 3 key-value heads, gated SiLU MLP) checks the same at full size.
"""

import logging

import pytest
import torch

import sensfind as sf
from sensfind.core.effects import get_effect
from sensfind.core.geometry import perturb
from sensfind.core.scan import step_grid
from families import FAMILIES, tiny_model
from sensfind.models import fused_blocks as kernel
from sensfind.models import transformer_subject
from sensfind.models.fused_blocks import CompactStack

PROMPT_IDS = [464, 168, 157, 423, 11, 290, 257, 131, 373, 95]


@pytest.fixture(scope="module", params=list(FAMILIES))
def family_model(request):
    return request.param, tiny_model(**FAMILIES[request.param])


def _scan_acts(subject, mode, n_dirs=3, steps=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(n_dirs, subject.d, generator=g, dtype=torch.float64).to(subject.base.dtype)
    cfg = sf.ScanConfig(mode=mode, steps=steps, stop=180.0 if mode == "sphere" else 2.0)
    return perturb(subject.base, dirs, step_grid(cfg), mode).reshape(-1, subject.d)


def _max_err(subject, acts):
    fast, ref = subject.run(acts), subject.run_reference(acts)
    # the perturbations really change the output (the comparison is not vacuous)
    assert (ref - subject.base_output).abs().max() > 1e-3
    return float((fast - ref).abs().max()), float(ref.abs().max())


# -- tiny models of every family ------------------------------------------------------------------
@pytest.fixture(params=["auto", "fold", "general"])
def fold(request, monkeypatch):
    """The one-position path with the prefix folded into the projections, forced on or off (tiny models
    with 10 tokens are past the automatic budget)."""
    budget = {"auto": kernel.FOLD_PREFIX_BUDGET, "fold": float("inf"), "general": 0.0}[request.param]
    monkeypatch.setattr(kernel, "FOLD_PREFIX_BUDGET", budget)
    return request.param


def _takes_path(subject, fold):
    """Each layer took the path the ``fold`` setting asks for (one new position, a non-empty prefix)."""
    single = {layer.single for layer in subject._compact.layers}
    if subject.position == len(PROMPT_IDS) - 1 and fold != "auto":
        assert single == {fold == "fold"}
    elif subject.position != len(PROMPT_IDS) - 1:
        assert single == {False}


@pytest.mark.parametrize("layer", [0, 1, 2])
@pytest.mark.parametrize("position", [-1, 0, 4])
@pytest.mark.parametrize("mode", ["sphere", "straight"])
def test_compact_matches_reference_float64(family_model, fold, layer, position, mode):
    name, model = family_model
    subject = sf.TransformerSubject(model, PROMPT_IDS, hook=f"blocks.{layer}.hook_resid_pre", position=position)
    assert subject._compact is not None, name
    _takes_path(subject, fold)
    err, _ = _max_err(subject, _scan_acts(subject, mode))
    assert err <= 1e-10, f"{name} layer {layer} position {position} {mode}: max abs diff {err}"


@pytest.mark.parametrize("output_hook", ["blocks.1.hook_resid_post", "ln_final.hook_normalized"])
@pytest.mark.parametrize("read_position", [-1, 6])
def test_compact_matches_reference_output_hooks(family_model, output_hook, read_position):
    name, model = family_model
    subject = sf.TransformerSubject(model, PROMPT_IDS, position=3, output_hook=output_hook, read_position=read_position)
    assert subject._compact is not None
    err, _ = _max_err(subject, _scan_acts(subject, "sphere"))
    assert err <= 1e-10, f"{name} {output_hook} read at {read_position}: {err}"


@pytest.mark.parametrize("position", [5, -1])
def test_gradients_match_reference(family_model, fold, position):
    name, model = family_model
    subject = sf.TransformerSubject(model, PROMPT_IDS, position=position)
    _takes_path(subject, fold)
    acts = _scan_acts(subject, "sphere", n_dirs=2, steps=4)
    grads = []
    for run in (subject.run, subject.run_reference):
        a = acts.clone().requires_grad_(True)
        get_effect("kl")(subject.base_output, run(a)).sum().backward()
        grads.append(a.grad)
    assert grads[0].abs().max() > 0
    assert (grads[0] - grads[1]).abs().max() <= 1e-10, name


def test_float32_and_bf16_agree_with_reference():
    model = tiny_model(dtype=torch.float32, **FAMILIES["llama"])
    subject = sf.TransformerSubject(model, PROMPT_IDS, position=-1)
    acts = _scan_acts(subject, "sphere")
    err, scale = _max_err(subject, acts)
    assert err <= 1e-5 * scale
    low = subject.to_dtype(torch.bfloat16)
    assert low._compact is not None and low._compact.work_dtype == torch.float32
    assert (low.run(acts) - subject.run(acts)).abs().max() <= 0.05 * scale


def test_stack_runs_with_the_models_dtype_and_device():
    model = tiny_model(**FAMILIES["llama"])
    subject = sf.TransformerSubject(model, PROMPT_IDS, position=-1)
    stack = subject._compact
    layer = stack.layers[0]
    for t in (layer.w_qkv, layer.k_pre_t, layer.v_pre, *layer.rotary[:2]):
        assert t.device == subject.base.device
    for t in (layer.w_qkv, layer.k_pre_t, layer.v_pre, *layer.rotary[:2]):
        assert t.dtype == torch.float64
    # GQA: the prefix keys/values are stored once per key/value head, not repeated per query head
    assert layer.k_pre_t.shape == (2, 16, len(PROMPT_IDS) - 1)
    assert layer.w_qkv.shape == (64, (4 + 2 * 2) * 16)


def test_folded_prefix_is_stored_per_head_with_the_models_dtype(monkeypatch):
    monkeypatch.setattr(kernel, "FOLD_PREFIX_BUDGET", float("inf"))
    model = tiny_model(**FAMILIES["llama"])
    subject = sf.TransformerSubject(model, PROMPT_IDS, position=-1)
    layer = subject._compact.layers[0]
    assert layer.single
    m, c, vo = layer.prefix
    p0 = len(PROMPT_IDS) - 1
    # scores [d, H·P0] and values-times-W_O [H·P0, d]: per query head, keys/values never repeated in memory
    assert m.shape == (64, 4 * p0) and vo.shape == (4 * p0, 64) and c.shape == (4 * p0,)
    for t in (layer.w_qkv, m, c, vo):
        assert t.dtype == torch.float64 and t.device == subject.base.device
    # the query/key columns are rotated for the new position: they differ from the general path's
    monkeypatch.setattr(kernel, "FOLD_PREFIX_BUDGET", 0.0)
    general = sf.TransformerSubject(model, PROMPT_IDS, position=-1)._compact.layers[0]
    assert not general.single
    assert not torch.allclose(layer.w_qkv[:, 64:96], general.w_qkv[:, 64:96])
    assert torch.equal(layer.w_qkv[:, 96:], general.w_qkv[:, 96:])  # values are not rotated


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compact_matches_reference_on_cuda():
    model = tiny_model(**FAMILIES["llama"]).to("cuda")
    subject = sf.TransformerSubject(model, PROMPT_IDS, position=-1)
    assert subject._compact is not None and subject.base.device.type == "cuda"
    err, _ = _max_err(subject, _scan_acts(subject, "sphere").cuda())
    assert err <= 1e-10


# -- the check and the fallback ---------------------------------------------------------------------
def test_a_wrong_kernel_is_caught_by_the_probe_and_the_subject_falls_back(monkeypatch, caplog):
    model = tiny_model(**FAMILIES["llama"])
    real_call = CompactStack.__call__
    monkeypatch.setattr(CompactStack, "__call__", lambda self, resid, read: real_call(self, resid, read) * 1.01)
    with caplog.at_level(logging.WARNING, logger="sensfind"):
        subject = sf.TransformerSubject(model, PROMPT_IDS)
    assert subject._compact is None
    assert sum("disagrees" in r.message for r in caplog.records) == 1
    err, _ = _max_err(subject, _scan_acts(subject, "sphere"))
    assert err <= 1e-10


def test_unsupported_model_falls_back_announced_once_at_warning(monkeypatch, caplog):
    monkeypatch.setattr(transformer_subject, "_FALLBACKS_ANNOUNCED", set())
    model = tiny_model(**dict(FAMILIES["gpt2"], parallel_attn_mlp=True))
    assert "parallel attention and MLP" in kernel.unsupported(model, 0)
    with caplog.at_level(logging.INFO, logger="sensfind"):
        first = sf.TransformerSubject(model, PROMPT_IDS)
        second = sf.TransformerSubject(model, PROMPT_IDS, position=4)
    notes = [r for r in caplog.records if "compact fast path unavailable" in r.message]
    assert [r.levelno for r in notes] == [logging.WARNING, logging.INFO]
    for subject in (first, second):
        assert subject._compact is None
        err, _ = _max_err(subject, _scan_acts(subject, "sphere"))
        assert err <= 1e-10


# -- SmolLM2-135M ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smollm2_64():
    return sf.load_model("smollm2-135m", dtype=torch.float64)


SMOL_PROMPT = "The quick brown fox jumps over the lazy dog because it"


@pytest.mark.slow
@pytest.mark.parametrize("layer", [0, 1, 6, 29])
@pytest.mark.parametrize("fixture", ["smollm2_64", "smollm2"])
def test_smollm2_compact_matches_reference(request, fixture, layer):
    """float64: max abs difference <= 1e-8; float32: <= 1e-4 x max |logit| (errors grow through 29 layers)."""
    model = request.getfixturevalue(fixture)
    for position in [-1, 0, 5]:
        subject = sf.TransformerSubject(model, SMOL_PROMPT, hook=f"blocks.{layer}.hook_resid_pre", position=position)
        assert subject._compact is not None
        for mode in ["sphere", "straight"]:
            err, scale = _max_err(subject, _scan_acts(subject, mode, n_dirs=2, steps=5, seed=layer))
            tol = 1e-8 if fixture == "smollm2_64" else 1e-4 * scale
            assert err <= tol, f"{fixture} layer {layer} position {position} {mode}: max abs diff {err} (tolerance {tol})"


def test_fused_weights_are_shared_by_subjects_and_refreshed_when_weights_change():
    model = tiny_model(**FAMILIES["llama"])
    first = sf.TransformerSubject(model, PROMPT_IDS)
    second = sf.TransformerSubject(model, PROMPT_IDS, position=3)
    assert first._compact.layers[0].w_qkv is second._compact.layers[0].w_qkv
    assert first._compact.layers[0].mlp[0] is second._compact.layers[0].mlp[0]
    with torch.no_grad():
        model.blocks[1].attn.W_Q.mul_(1.5)
        model.blocks[1].mlp.W_gate.mul_(1.5)
    third = sf.TransformerSubject(model, PROMPT_IDS)
    assert third._compact.layers[0].w_qkv is not first._compact.layers[0].w_qkv
    assert third._compact.layers[0].mlp[0] is not first._compact.layers[0].mlp[0]
    err, _ = _max_err(third, _scan_acts(third, "sphere"))
    assert err <= 1e-10


@pytest.mark.parametrize("mode", ["sphere", "straight"])
def test_one_token_prompt_takes_the_folded_path_without_a_prefix(family_model, mode):
    name, model = family_model
    subject = sf.TransformerSubject(model, PROMPT_IDS[:1], hook="blocks.1.hook_resid_pre", position=0)
    assert all(layer.single and layer.prefix is None for layer in subject._compact.layers)
    err, _ = _max_err(subject, _scan_acts(subject, mode))
    assert err <= 1e-10, f"{name} {mode}: max abs diff {err}"
