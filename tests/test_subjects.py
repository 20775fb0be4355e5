"""Subjects: the contract every Subject meets, the fast path against the reference path, bad input."""

import logging

import pytest
import torch

import sensfind as sf
from sensfind.effects import kl
from sensfind.scan import base_output

PROMPT_IDS = [464, 168, 157, 423, 11, 290, 257, 131, 373, 95]  # 10 token ids (< 512: valid for random:tiny too)


def _function_subject():
    torch.manual_seed(0)
    w = torch.randn(16, 8)
    return sf.FunctionSubject(torch.randn(8), lambda x: torch.tanh(x) @ w.T)


def _tiny_subject(model):
    return sf.TransformerSubject(model, PROMPT_IDS[:6], hook="blocks.1.hook_resid_pre")


@pytest.fixture(params=["function", "transformer", "transformer-late-hook", "smollm2"])
def subject(request, tiny_model):
    if request.param == "function":
        return _function_subject()
    if request.param == "transformer":
        return _tiny_subject(tiny_model)
    if request.param == "smollm2":
        return sf.TransformerSubject(request.getfixturevalue("smollm2"), "The cat sat on the mat and")
    return sf.TransformerSubject(tiny_model, PROMPT_IDS[:6], output_hook="ln_final.hook_normalized")


# -- the contract every Subject meets ------------------------------------------------------------
def test_contract_shapes_and_protocol(subject):
    assert isinstance(subject, sf.Subject)
    assert subject.base.ndim == 1
    out = subject.run(subject.base.expand(3, -1))
    assert out.ndim == 2 and out.shape[0] == 3


def test_contract_base_run_reproduces_base_output(subject):
    out = subject.run(subject.base[None])[0]
    ref = base_output(subject)
    assert torch.allclose(out, ref, atol=1e-5)


def test_contract_autograd_flows_to_acts(subject):
    acts = (subject.base + 0.1 * torch.randn_like(subject.base)).expand(2, -1).clone().requires_grad_(True)
    subject.run(acts).pow(2).sum().backward()
    assert acts.grad is not None and acts.grad.abs().sum() > 0


def test_contract_rejects_wrong_width(subject):
    with pytest.raises(ValueError, match=r"shape \[B, \d+\]"):
        subject.run(torch.zeros(2, subject.base.shape[0] + 1))


# -- fast path == reference path --------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("layer", [0, 1, 6, 11])
def test_fast_path_matches_reference_gpt2_arch(gpt2_arch, layer):
    g = torch.Generator().manual_seed(layer)
    for position in [-1, 0, 4, 8]:
        subject = sf.TransformerSubject(gpt2_arch, PROMPT_IDS, hook=f"blocks.{layer}.hook_resid_pre", position=position)
        assert subject.layer == layer
        dirs = torch.randn(3, subject.d, generator=g)
        for mode in ["sphere", "straight"]:
            cfg = sf.ScanConfig(mode=mode, steps=4, stop=150.0 if mode == "sphere" else 2.0)
            acts = sf.perturb(subject.base, dirs, sf.step_grid(cfg), mode).reshape(-1, subject.d)
            fast, ref = subject.run(acts), subject.run_reference(acts)
            assert fast.shape == (12, 50257)
            err = (fast - ref).abs().max().item()
            assert err <= 1e-4, f"layer {layer} position {position} {mode}: max abs diff {err}"
            # and the perturbation really changed the output (the comparison is not vacuous)
            assert (ref - subject.base_output).abs().max() > 1e-3


@pytest.mark.parametrize("output_hook", [None, "blocks.2.hook_resid_post", "ln_final.hook_normalized"])
@pytest.mark.parametrize("position", [-1, 2])
def test_fast_path_matches_reference_output_hooks(tiny_model, output_hook, position):
    subject = sf.TransformerSubject(tiny_model, PROMPT_IDS, position=position, output_hook=output_hook)
    acts = subject.base + torch.randn(5, subject.d) * subject.base.norm()
    assert (subject.run(acts) - subject.run_reference(acts)).abs().max() <= 1e-4


def test_fast_path_chunks_large_batches(tiny_model):
    subject = sf.TransformerSubject(tiny_model, PROMPT_IDS, chunk_size=3)
    acts = subject.base + torch.randn(10, subject.d)
    assert (subject.run(acts) - subject.run_reference(acts)).abs().max() <= 1e-4


def test_other_hooks_fall_back_to_reference_and_say_so(tiny_model, caplog):
    with caplog.at_level(logging.WARNING, logger="sensfind"):
        subject = sf.TransformerSubject(tiny_model, PROMPT_IDS, hook="blocks.1.hook_resid_mid")
    assert subject.layer is None
    assert sum("reference path" in r.message for r in caplog.records) == 1
    acts = subject.base + torch.randn(2, subject.d)
    assert torch.equal(subject.run(acts), subject.run_reference(acts))


def test_zero_perturbation_gives_zero_kl(tiny_model):
    subject = _tiny_subject(tiny_model)
    effect = kl(subject.base_output, subject.run(subject.base[None]))
    assert effect.abs().item() < 1e-6


def test_text_prompt_without_tokenizer_is_byte_encoded(tiny_model):
    subject = sf.TransformerSubject(tiny_model, "héllo")
    assert subject.tokens[0].tolist() == list("héllo".encode())


def test_bf16_copy_agrees_roughly(tiny_model):
    subject = _tiny_subject(tiny_model)
    low = subject.to_dtype(torch.bfloat16)
    assert low.base.dtype == torch.float32 and next(low.model.parameters()).dtype == torch.bfloat16
    assert next(tiny_model.parameters()).dtype == torch.float32  # the original is untouched
    acts = subject.base + 0.3 * torch.randn(4, subject.d)
    assert (low.run(acts) - subject.run(acts)).abs().max() < 0.1 * subject.run(acts).abs().max()


# -- bad input ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(hook="blocks.9.hook_resid_pre"), "unknown hook 'blocks.9.hook_resid_pre'"),
        (dict(hook="not_a_hook"), "unknown hook"),
        (dict(position=6), r"position 6 is out of range .*allowed: -6\.\.5"),
        (dict(position=-7), "position -7 is out of range"),
        (dict(prompt=""), "prompt is empty"),
        (dict(prompt="   "), "prompt is empty"),
        (dict(prompt=[]), "prompt is empty"),
        (dict(prompt=[1, 600]), r"token id 600 is outside the vocabulary \[0, 512\)"),
        (dict(position=3, read_position=1), "read_position 1 precedes the perturbed position 3"),
        (dict(output_hook="blocks.0.hook_resid_post"), "runs before the site"),
        (dict(output_hook="nope"), "unknown output_hook 'nope'"),
    ],
)
def test_bad_input_is_named(tiny_model, kwargs, match):
    kwargs = dict(kwargs)
    prompt = kwargs.pop("prompt", PROMPT_IDS[:6])
    with pytest.raises(ValueError, match=match):
        sf.TransformerSubject(tiny_model, prompt, **kwargs)


def test_function_subject_bad_input():
    with pytest.raises(ValueError, match="zero vector"):
        sf.FunctionSubject(torch.zeros(4), lambda x: x)
    with pytest.raises(ValueError, match="NaN or inf"):
        sf.FunctionSubject(torch.tensor([1.0, float("nan")]), lambda x: x)
    with pytest.raises(ValueError, match=r"shape \[d\]"):
        sf.FunctionSubject(torch.ones(2, 2), lambda x: x)
    s = sf.FunctionSubject(torch.ones(4), lambda x: x.sum(1))
    with pytest.raises(ValueError, match=r"must return a tensor of shape \[B, n_out\]"):
        s.run(torch.ones(2, 4))


def test_pretrained_loader_fails_offline_with_one_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(sf.ModelUnavailableError, match="could not load pretrained model 'gpt2'.*random:gpt2"):
        sf.load_model("gpt2")


# -- issue 10, defect 14 --------------------------------------------------------------------------------


@pytest.mark.parametrize("base", [torch.arange(1, 9), torch.ones(8, dtype=torch.bool), torch.ones(8, dtype=torch.complex64)])
def test_function_subject_refuses_a_non_real_float_base(base):
    with pytest.raises(TypeError, match=f"base must be a real floating-point tensor, got dtype {base.dtype}"):
        sf.FunctionSubject(base, lambda x: x)


def test_a_non_differentiable_fn_is_named_before_autograd_fails():
    subject = sf.FunctionSubject(torch.randn(8), lambda x: torch.from_numpy(x.detach().numpy() ** 2))
    with pytest.raises(TypeError, match="is not differentiable"):
        sf.discover(subject, sf.DiscoverConfig(restarts=2, iterations=1, final_steps=5))
    with torch.no_grad():  # without gradients it is a fine subject
        assert subject.run(torch.randn(3, 8)).shape == (3, 8)
