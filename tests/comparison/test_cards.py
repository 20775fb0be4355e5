"""Feature cards: token changes at an angle, top corpus contexts, the card's SVG curve and the report page."""

import math

import pytest
import torch

import sensfind as sf
from sensfind.comparison.cards import decode_token, token_changes, top_contexts
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


def test_top_contexts_find_a_planted_position():
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
    ctx = top_contexts(u, acts[keep], keep.nonzero(), tokens, _Tok(), k=3)
    assert (ctx[0].window, ctx[0].position) == (7, 9)
    assert ctx[0].token == f"t{int(tokens[7, 9])} "
    assert ctx[0].before.endswith(f"t{int(tokens[7, 8])} ") and ctx[0].after.startswith(f"t{int(tokens[7, 10])} ")
    assert all(c.position > 0 for c in ctx)
    assert ctx[0].projection > ctx[1].projection >= ctx[2].projection


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
                contexts=[dict(before="a <b> c", token="X", after="y", projection="3.2")],
                matches=[dict(latent=5, cos="+0.900", p_iso="0.001", p_cov="0.002", url=None)])
    latent = dict(card, key="latent-5", title="Latent 5", css="active", matches=[
        dict(latent=7, cos="+0.500", p_iso="0.2", p_cov=None, url=None),  # no card: no link
        dict(latent=8, cos="+0.400", p_iso="0.3", p_cov=None, url="https://example.org/8")])  # no card: its page
    page = render_report(tmp_path / "r.html", "T", "sub", "lead <b>x</b>", [("S", "<table></table>")], [],
                         [card, latent], [("D", "<pre>z</pre>")])
    text = page.read_text()
    assert text.index("Summary") < text.index("Feature cards") < text.index("Details")
    assert "a &lt;b&gt; c<mark>X</mark>" in text  # corpus text is escaped, the highlight is markup
    assert "lead <b>x</b>" in text and "<details><summary>D</summary>" in text
    assert 'href="#latent-5"' in text and math.isfinite(float(card["matches"][0]["cos"]))
    assert 'href="#latent-7"' not in text and 'href="https://example.org/8"' in text
