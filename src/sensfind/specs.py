"""Spec strings, parsed in one place: ``KIND`` or ``KIND:VALUE`` naming a dictionary or a direction source.

The command line, the tuner and the experiments all name their inputs this way:

* dictionaries: ``pretrained:RELEASE[/SAE_ID]`` (the HuggingFace hub), ``disk:PATH`` (a ``Dictionary.save``
  directory or one in SAELens format), ``train:D_SAE`` (trained on local activations); the experiments
  also take ``corpus``, ``auto`` and ``none``;
* direction sources: ``random:N``, ``file:PATH``, ``targets:PATH|builtin``.

* models: ``random:ARCH`` (a local architecture with random weights), ``gguf:PATH``, ``smollm2-135m``,
  ``gemma-3-270m``, a
  TransformerLens model name (the hub), and ``toy`` (the ground-truth toy) where a caller accepts it;
  ``parse_model_spec`` classifies them and ``sensfind.load_model`` loads the transformers.

``parse_spec`` checks the kind against a table of allowed kinds (kind -> what its value is) and says
what is allowed when it is not; the loaders for the kinds that mean the same everywhere live here too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Mapping

__all__ = ["DICTIONARY_KINDS", "DIRECTION_KINDS", "DEFAULT_SAE_RELEASE", "MAX_D_SAE", "MODEL_ALTERNATIVES", "ModelSpec", "Spec",
           "check_hook_layer", "dictionary_width", "parse_model_spec",
           "parse_spec", "spec_alternatives"]

# kind -> what follows the colon ("" for a bare kind)
DICTIONARY_KINDS: Mapping[str, str] = {"auto": "", "corpus": "", "pretrained": "RELEASE[/SAE_ID]", "disk": "PATH",
                                        "train": "D_SAE"}
DIRECTION_KINDS: Mapping[str, str] = {"random": "N", "linear": "N", "file": "PATH", "targets": "PATH|builtin"}
DEFAULT_SAE_RELEASE = "gpt2-small-res-jb"
TOY = "toy"

# Architectures we can build without downloading anything. Keys are the part after "random:".
LOCAL_ARCHITECTURES: dict[str, dict] = {
    "gpt2": dict(n_layers=12, d_model=768, n_ctx=1024, d_head=64, n_heads=12, d_mlp=3072, d_vocab=50257),
    "tiny": dict(n_layers=3, d_model=64, n_ctx=256, d_head=16, n_heads=4, d_mlp=256, d_vocab=512),
}
SMOLLM2 = "smollm2-135m"
GEMMA3 = "gemma-3-270m"
TRANSFORMER_ALTERNATIVES = (f"random:ARCH (a local architecture with random weights), gguf:PATH, {SMOLLM2}, {GEMMA3} "
                            "or a TransformerLens model name such as gpt2")
MODEL_ALTERNATIVES = f"{TOY}, {TRANSFORMER_ALTERNATIVES}"


@dataclass(frozen=True)
class Spec:
    """A parsed spec string: ``kind`` and the ``value`` after the colon (``""`` if none)."""

    kind: str
    value: str = ""

    def __str__(self) -> str:
        return f"{self.kind}:{self.value}" if self.value else self.kind


def spec_alternatives(kinds: Mapping[str, str]) -> str:
    """``a:X, b:Y or c``: the allowed spellings, for messages and help texts."""
    names = [f"{k}:{v}" if v else k for k, v in kinds.items()]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def parse_spec(text: str, kinds: Mapping[str, str], what: str) -> Spec:
    """``text`` as a ``Spec`` whose kind is one of ``kinds``; ``ValueError`` saying what ``what`` (e.g. a
    flag name) must be otherwise."""
    kind, _, value = str(text).partition(":")
    if kind not in kinds:
        raise ValueError(f"{what} must be {spec_alternatives(kinds)}, got {text!r}")
    return Spec(kind, value)


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model name. ``kind``: ``toy``, ``random`` (``value`` is the architecture), ``gguf``
    (``value`` is the file), ``smollm2``, ``gemma3`` or ``hub`` (``value`` is the TransformerLens name)."""

    kind: Literal["toy", "random", "gguf", "smollm2", "gemma3", "hub"]
    value: str = ""

    @property
    def is_toy(self) -> bool:
        return self.kind == "toy"

    def __str__(self) -> str:
        return {"toy": TOY, "smollm2": SMOLLM2, "gemma3": GEMMA3, "hub": self.value}.get(self.kind, f"{self.kind}:{self.value}")


def parse_model_spec(text, what: str = "model", allow_toy: bool = True) -> ModelSpec:
    """Classify a model name; ``ValueError`` naming the bad value and what is allowed. ``allow_toy=False``
    refuses ``toy`` (callers that need a transformer)."""

    allowed = MODEL_ALTERNATIVES if allow_toy else TRANSFORMER_ALTERNATIVES
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{what} must be {allowed}, got {text!r}")
    if text == TOY:
        if not allow_toy:
            raise ValueError(f"{what} {TOY!r} is the ground-truth toy, for discover and compare only; this needs a "
                             f"transformer: random:gpt2, random:tiny, {SMOLLM2} or a pretrained name such as gpt2")
        return ModelSpec("toy")
    if text.lower() == SMOLLM2:
        return ModelSpec("smollm2")
    if text.lower() == GEMMA3:
        return ModelSpec("gemma3")
    kind, colon, value = text.partition(":")
    if not colon:
        return ModelSpec("hub", text)
    if kind == "random":
        if value not in LOCAL_ARCHITECTURES:
            raise ValueError(f"unknown local architecture {value!r}; allowed: {sorted(LOCAL_ARCHITECTURES)} "
                             f"({what} random:ARCH)")
        return ModelSpec("random", value)
    if kind == "gguf" and value:
        return ModelSpec("gguf", value)
    raise ValueError(f"{what} must be {allowed}, got {text!r}")


KNOWN_LAYERS = {"smollm2": 30}  # layers of the named models whose architecture is known without loading them
_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def check_hook_layer(what: str, hook: str, model: ModelSpec) -> None:
    """Refuse ``blocks.L.*`` hooks past the last layer of a model whose depth is known without loading it
    (the local architectures, SmolLM2); other hooks are checked once the model is loaded."""
    layers = LOCAL_ARCHITECTURES[model.value]["n_layers"] if model.kind == "random" else KNOWN_LAYERS.get(model.kind)
    m = _BLOCK.match(hook)
    if layers is not None and m and int(m.group(1)) >= layers:
        raise ValueError(f"{what} {hook!r} is past the last layer of {model} (blocks 0..{layers - 1}), e.g. "
                         f"blocks.{min(1, layers - 1)}.hook_resid_pre")
MAX_D_SAE = 65536  # latents of an SAE trained by train:D_SAE


def dictionary_width(spec: Spec, what: str = "--dictionary") -> int | None:
    """The width of a ``train:D_SAE`` spec (``None`` when not given); ``ValueError`` if it is no integer >= 1
    (or above ``MAX_D_SAE``)."""
    if not spec.value:
        return None
    if not spec.value.isdigit() or int(spec.value) < 1:
        raise ValueError(f"{what} train:D_SAE needs an integer width >= 1, got {spec.value!r}")
    if int(spec.value) > MAX_D_SAE:
        raise ValueError(f"{what} train:D_SAE needs a width <= {MAX_D_SAE} (its limit), got {spec.value}")
    return int(spec.value)
