"""transformer_subject: the fast path against the reference path, fallbacks, dtype copies, bad sites."""

import logging

import pytest
import torch

import sensfind as sf
from sensfind.core.geometry import perturb
from sensfind.core.scan import step_grid
from sensfind.core.effects import kl

PROMPT_IDS = [464, 168, 157, 423, 11, 290, 257, 131, 373, 95]  # 10 token ids (< 512: valid for random:tiny too)


def _tiny_subject(model):
    return sf.TransformerSubject(model, PROMPT_IDS[:6], hook="blocks.1.hook_resid_pre")


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
            acts = perturb(subject.base, dirs, step_grid(cfg), mode).reshape(-1, subject.d)
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
