"""Feature cards: token changes at an angle, top corpus contexts, the card's SVG curve and the report page."""

import math

import pytest
import torch

import sensfind as sf
from sensfind.comparison.cards import (FeatureCard, comparison_cards, decode_token, direct_logits, load_cards,
                                      projections, ranked_contexts, save_cards, token_changes)
from sensfind.dictionaries.corpus_sae import SiteActivations
from sensfind.reporting.report import render_report, svg_curve
from sensfind.core.scan import perturb


class _Tok:
    """A tokenizer stand-in: token i decodes to 't{i} '."""

    def decode(self, ids):
        return "".join(f"t{i} " for i in ids)


def _linear_subject(d=8, vocab=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(vocab, d, generator=g, dtype=torch.float64)
    base = torch.randn(d, generator=g, dtype=torch.float64)
    return sf.FunctionSubject(base, lambda acts: acts @ w.T), w


def test_token_changes_zero_angle_changes_nothing():
    subject, _ = _linear_subject()
    u = torch.randn(8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    gains, losses = token_changes(subject, u, 0.0, _Tok(), k=3)
    for t in gains + losses:
        assert t.p_after == pytest.approx(t.p_before, abs=1e-12)


def test_token_changes_are_the_largest_rises_and_falls():
    subject, w = _linear_subject()
    u = torch.randn(8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    gains, losses = token_changes(subject, u, 60.0, _Tok(), k=4)
    acts = perturb(subject.base, u[None], torch.tensor([60.0], dtype=torch.float64), "sphere")[0]
    p0 = torch.softmax(subject.base @ w.T, -1)
    p1 = torch.softmax(acts[0] @ w.T, -1)
    delta, factor = p1 - p0, p1.log() - p0.log()
    shown = torch.maximum(p0, p1) >= 1e-3
    up = [i for i in factor.argsort(descending=True).tolist() if delta[i] >= 5e-4 and shown[i]][:4]
    down = [i for i in factor.argsort().tolist() if -delta[i] >= 5e-4 and shown[i]][:4]
    assert [t.token for t in gains] == [f"t{i} " for i in up] and [t.token for t in losses] == [f"t{i} " for i in down]
    assert gains and losses  # a 60 degree rotation moves some probability
    assert all(t.p_after - t.p_before >= 5e-4 for t in gains) and all(t.p_before - t.p_after >= 5e-4 for t in losses)
    # each reported change is the token's own change of probability
    for t in gains + losses:
        i = int(t.token[1:])
        assert t.p_after - t.p_before == pytest.approx(float(delta[i]), abs=1e-12)
    assert gains[0].p_after > gains[0].p_before and losses[0].p_after < losses[0].p_before


def test_ranked_contexts_find_a_planted_position():
    g = torch.Generator().manual_seed(0)
    W, L, d = 20, 16, 8
    acts = torch.randn(W, L, d, generator=g)
    tokens = torch.randint(0, 50, (W, L), generator=g)
    u = torch.zeros(d)
    u[3] = 1.0
    acts[7, 9] += 40 * u  # the strongest projection by far
    acts[2, 0] += 100 * u  # position 0 is left out (attention sink)
    keep = torch.ones(W, L, dtype=torch.bool)
    keep[:, 0] = False  # position 0 left out (attention sink), as corpus_sae.clean_activations does
    ctx = ranked_contexts(projections(u, acts[keep], acts[keep].mean(0)), keep.nonzero(), tokens, _Tok(), k=3)
    assert (ctx[0].window, ctx[0].position) == (7, 9)
    assert ctx[0].token == f"t{int(tokens[7, 9])} "
    assert ctx[0].before.endswith(f"t{int(tokens[7, 8])} ") and ctx[0].after.startswith(f"t{int(tokens[7, 10])} ")
    assert all(c.position > 0 for c in ctx)
    top = [c for c in ctx if c.band == "top"]
    assert len(top) == 3 and top[0].value > top[1].value >= top[2].value
    assert len({c.window for c in ctx}) == len(ctx)  # one context per window
    # the lower bands lie below the top ones, near their percentiles of the positive values
    assert {c.band for c in ctx} == {"top", "p75", "p50"} and all(c.value < top[-1].value for c in ctx[3:])


def test_decode_token_without_a_tokenizer():
    assert decode_token(None, 65) == "A" and decode_token(None, 7) == "<0x07>"


def test_svg_curve_and_page(tmp_path):
    steps = torch.linspace(0, 90, 31)
    curve = (steps / 30).exp() - 1
    bands = {"isotropic random": (torch.rand(5, 31) * 3, "#888"), "real-other": (torch.rand(5, 31), "#2e9d4f")}
    svg = svg_curve(steps, curve, bands, 0.5, threshold=12.0)
    assert svg.startswith("<svg") and svg.endswith("</svg>") and svg.count("<polyline") == 3
    card = dict(key="optimum-0", title="Optimum 0", css="optimum", threshold="12.0°", facts=[("restarts", "3")],
                angle="12°", svg=svg, gains=[dict(token="' the'", p="0.1 → 0.5")], losses=[], has_cov=True,
                bands=[dict(title="top", contexts=[dict(value="3.2", pieces=[
                    dict(text="a <b> c", style="", title="–", center=False),
                    dict(text="X", style="background:rgba(240,140,0,0.80)", title="3.2", center=True)])])],
                measure="projection", histogram=None, logits_up=[], logits_down=[], notes=["a note"],
                matches=[dict(latent=5, cos="+0.900", p_iso="0.001", p_cov="0.002", url=None)])
    latent = dict(card, key="latent-5", title="Latent 5", css="active", matches=[
        dict(latent=7, cos="+0.500", p_iso="0.2", p_cov=None, url=None),  # no card: no link
        dict(latent=8, cos="+0.400", p_iso="0.3", p_cov=None, url="https://example.org/8")])  # no card: its page
    page = render_report(tmp_path / "r.html", "T", "sub", "lead <b>x</b>", [("S", "<table></table>")], [],
                         [card, latent], [("D", "<pre>z</pre>")])
    text = page.read_text()
    assert text.index("Summary") < text.index("Feature cards") < text.index("Details")
    # corpus text is escaped, the ranked token outlined and shaded
    assert 'title="–">a &lt;b&gt; c</span><span class="c" style="background:rgba(240,140,0,0.80)"' in text
    assert text.count("a note") == 2
    assert "lead <b>x</b>" in text and "<details><summary>D</summary>" in text
    assert 'href="#latent-5"' in text and math.isfinite(float(card["matches"][0]["cos"]))
    assert 'href="#latent-7"' not in text and 'href="https://example.org/8"' in text


# -- dashboard pieces (issue 23): histogram, contexts by activation with shading, direct logits ------------


def _corpus(d: int, W: int = 30, L: int = 12, seed: int = 3):
    """Fabricated corpus activations: position 0 and a few random positions left out (as massive ones are)."""
    g = torch.Generator().manual_seed(seed)
    acts = torch.randn(W, L, d, generator=g)
    keep = torch.rand(W, L, generator=g) > 0.1
    keep[:, 0] = False
    index = keep.nonzero()
    tokens = torch.randint(0, 50, (W, L), generator=g)
    return SiteActivations(acts[keep], index, acts.norm(dim=-1), ~keep), tokens


@pytest.fixture(scope="module")
def encoding_cards(toy, toy_comparison):
    """Cards of the toy comparison with a dictionary whose encoder reads each latent off another direction
    than its decoder row, so that ranking by activation and by projection differ."""
    from sensfind.dictionaries.dictionary import from_tensors

    dec = toy_comparison.dictionary.raw_decoder.float()
    enc = torch.randn(dec.shape[1], dec.shape[0], generator=torch.Generator().manual_seed(5))
    dic = from_tensors(dec, W_enc=enc)
    contexts, tokens = _corpus(toy.d)
    subject = toy.subject(0)
    cards = comparison_cards(toy_comparison, subject, toy.features[:3].double(), dic, contexts, tokens, _Tok())
    return cards, dic, contexts, tokens, subject


def test_card_histogram_counts_every_context_and_marks_the_base(encoding_cards, toy):
    cards, _, contexts, _, subject = encoding_cards
    mean = contexts.acts.mean(0)
    card = cards[0]
    assert card.key == "optimum-0" and card.histogram is not None
    assert sum(card.histogram.counts) == contexts.acts.shape[0]
    u = toy.features[0].double() / toy.features[0].double().norm()
    assert card.histogram.base == pytest.approx(float((subject.base - mean.double()) @ u), abs=1e-5)
    edges = card.histogram.edges
    assert len(edges) == len(card.histogram.counts) + 1 and edges[0] <= card.histogram.base <= edges[-1]


def test_latent_contexts_follow_the_activation_and_tokens_carry_their_own(encoding_cards):
    cards, dic, contexts, tokens, _ = encoding_cards
    latent_cards = [c for c in cards if c.key.startswith("latent-")]
    assert latent_cards and all(c.context_measure == "latent activation" for c in latent_cards)
    n_differ = 0
    for card in latent_cards:
        lat = int(card.key.split("-")[1])
        act = dic.encode(contexts.acts)[:, lat].detach().double()
        grid = {(int(w), int(p)): float(a) for (w, p), a in zip(contexts.index, act)}
        top = [c for c in card.contexts if c.band == "top"]
        if not top:
            assert not (act > 0).any()
            continue
        # ranked by the activation: the best context holds the largest activation, in descending order
        assert top[0].value == pytest.approx(float(act.max()), rel=1e-5)
        assert [c.value for c in top] == sorted((c.value for c in top), reverse=True)
        assert all(c.value == pytest.approx(grid[(c.window, c.position)], rel=1e-5) for c in card.contexts)
        row = dic.decoder[lat].float()
        n_differ += int(projections(row, contexts.acts, contexts.acts.mean(0)).argmax()) != int(act.argmax())
        # each shown token is shaded by its own activation, unshaded where the position was left out
        for c in card.contexts:
            start = c.position - c.center
            for j, (text, value) in enumerate(c.pieces):
                assert text == f"t{int(tokens[c.window, start + j])} "
                expected = grid.get((c.window, start + j))
                assert value is None if expected is None else value == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert n_differ > 0  # the case separates ranking by activation from ranking by projection


def test_direct_logits_through_the_final_norm_and_unembedding(tiny_model):
    subject = sf.TransformerSubject(tiny_model, [5, 6, 7, 8], hook="blocks.1.hook_resid_pre")
    u = torch.randn(tiny_model.cfg.d_model, generator=torch.Generator().manual_seed(2))
    up, down = direct_logits(subject, 3.0 * u, None, k=4)  # the scale of the direction does not matter
    v = u / u.norm()
    v = v - v.mean()  # random:tiny has a LayerNorm, which removes the mean
    by_hand = (v * tiny_model.ln_final.w) @ tiny_model.W_U
    assert [t.logit for t in up] == pytest.approx(by_hand.topk(4).values.tolist(), rel=1e-5)
    assert [t.logit for t in down] == pytest.approx((-by_hand).topk(4).values.neg().tolist(), rel=1e-5)
    assert [t.token for t in up] == [decode_token(None, int(i)) for i in by_hand.topk(4).indices]


def test_cards_without_an_unembedding_or_a_corpus_say_so(toy, toy_comparison, encoding_cards):
    cards = comparison_cards(toy_comparison, toy.subject(0), toy.features[:3].double(), toy_comparison.dictionary,
                             no_contexts="no corpus contexts: the toy has no text")
    assert cards and all(c.histogram is None and not c.contexts and not c.logits_up for c in cards)
    assert all("no corpus contexts: the toy has no text" in c.notes for c in cards)
    assert all(any("no direct logit effect" in n for n in c.notes) for c in encoding_cards[0])


def test_saved_cards_load_and_old_card_files_still_do(encoding_cards, tmp_path):
    cards = encoding_cards[0]
    save_cards(tmp_path / "cards.json", cards)
    back = load_cards(tmp_path / "cards.json")
    assert [c.to_dict() for c in back] == [c.to_dict() for c in cards]
    old = {"key": "optimum-0", "title": "Optimum 0", "kind": "optimum", "threshold_deg": None, "curve": [0.0, 1.0],
           "angle": 90.0, "gains": [{"token": "a", "p_before": 0.1, "p_after": 0.2}], "losses": [],
           "contexts": [{"before": "x", "token": "y", "after": "z", "projection": 1.5, "window": 0, "position": 3}],
           "matches": [{"latent": 2, "cos": 0.5, "p_isotropic": 0.1, "p_covariance": None, "url": None}],
           "facts": [["restarts", 2]]}
    card = FeatureCard.from_dict(old)
    assert card.contexts[0].value == 1.5 and card.contexts[0].pieces is None and card.histogram is None
    assert math.isinf(card.threshold_deg) and card.logits_up == [] and card.notes == []


def test_cards_state_their_threshold_over_the_linear_responses_onset(encoding_cards, toy, toy_comparison):
    from sensfind.core.linear_response import linear_predictions

    cards, _, _, _, subject = encoding_cards
    assert toy_comparison.config.effect == "kl"
    c = cards[0]  # the first compared direction: toy.features[0]
    pred = linear_predictions(subject, toy.features[:1].to(subject.base), tau=toy_comparison.config.tau,
                              thresholds=torch.tensor([c.threshold_deg]))
    facts = dict(c.facts)
    assert facts["threshold / quadratic onset θ_quad (linear response)"] == \
        f"{float(pred.ratio[0]):.3g} (θ_quad {float(pred.onset_deg[0]):.3g}°)"
    # the toy's KL at 2° is ~1e-5 nats: the KL keeps its relative precision there (core.effects), so the batch
    # the card's scan ran in changes it by far less than the 3 digits shown
    shown = [float(x) for x in facts["KL / quadratic form at 2° / 4°"].split(" / ")]
    assert torch.allclose(torch.tensor(shown, dtype=torch.float64), pred.early_growth[0], rtol=6e-3)
    assert all("KL / quadratic form at 2° / 4°" in dict(c.facts) for c in cards)  # latents' cards too
