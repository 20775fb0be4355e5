"""Subjects: the contract every Subject meets (FunctionSubject and TransformerSubject), bad input."""

import pytest
import torch

import sensfind as sf
from sensfind.core.scan import base_output

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
    # float32 differences between the fast and the reference path grow with depth and logit size
    # (SmolLM2: 29 layers, logits near 30), so the tolerance is relative to the output's scale
    err = (out - ref).abs().max()
    assert err <= 1e-5 * max(1.0, float(ref.abs().max())), f"max abs diff {float(err):.3g}"


def test_contract_autograd_flows_to_acts(subject):
    acts = (subject.base + 0.1 * torch.randn_like(subject.base)).expand(2, -1).clone().requires_grad_(True)
    subject.run(acts).pow(2).sum().backward()
    assert acts.grad is not None and acts.grad.abs().sum() > 0


def test_contract_rejects_wrong_width(subject):
    with pytest.raises(ValueError, match=r"shape \[B, \d+\]"):
        subject.run(torch.zeros(2, subject.base.shape[0] + 1))


# -- bad input ---------------------------------------------------------------------------------------
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
    with pytest.raises(sf.ModelUnavailableError, match="could not load pretrained model 'gpt2'.*smollm2-135m or --model gemma-3-270m.*random:gpt2"):
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
