"""report: pages rendered from templates, escaped, and drawn from what the results hold (no scans)."""

import re

import pytest
import torch

from sensfind.comparison.compare import Comparison
from sensfind.reporting.report import Link, html_page, table, write_compare_report, write_demo_report


@pytest.fixture(scope="module")
def compared(toy_comparison, toy):
    """The toy comparison (conftest) and a discovery holding its directions."""
    return toy_comparison, discovery_stub(toy.features[:3].double())


def discovery_stub(directions):
    from sensfind.discovery.optima import Discovery

    n = directions.shape[0]
    return Discovery(directions, torch.full((n,), 20.0, dtype=torch.float64), torch.ones(n, dtype=torch.long),
                     [[i] for i in range(n)], directions, torch.full((n,), 20.0, dtype=torch.float64), directions,
                     history=[{"iteration": i, "objective_mean": 2.0 / (i + 1), "objective_min": 1.0 / (i + 1),
                               "blowup_median": 30.0 - i} for i in range(3)])


@pytest.fixture
def no_scans(monkeypatch):
    """``scan`` raises, wherever a sensfind module holds it."""
    import sys

    original = sys.modules["sensfind.core.scan"].scan

    def refuse(*args, **kwargs):
        raise AssertionError("the report ran a scan")

    for name, module in list(sys.modules.items()):
        if name.startswith("sensfind") and getattr(module, "scan", None) is original:
            monkeypatch.setattr(module, "scan", refuse)


def test_compare_report_has_tables_figures_and_escapes_the_title(compared, tmp_path, no_scans):
    comp, _ = compared
    page = write_compare_report(tmp_path, comp, "cmp <script>alert(1)</script> & co").read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in page
    assert page.count("<table>") == 3  # summary, best matches, refinement
    assert "fraction matching a latent" in page and "Refinement from decoder rows" in page
    assert page.count('src="data:image/png;base64,') == 3
    for name in ("effect_curves", "cos_vs_null", "threshold_angles"):
        assert (tmp_path / "figures" / f"{name}.png").stat().st_size > 1000


def test_a_loaded_comparison_gives_the_same_report(compared, tmp_path, no_scans):
    comp, _ = compared
    back = Comparison.load(comp.save(tmp_path / "saved"))
    a = write_compare_report(tmp_path / "a", comp, "T").read_text()
    b = write_compare_report(tmp_path / "b", back, "T").read_text()
    strip = lambda s: re.sub(r"base64,[^\"]+", "", s)  # noqa: E731  (PNG bytes may differ in metadata)
    assert strip(a) == strip(b)


def test_demo_report_adds_its_rows_and_figures(compared, tmp_path, no_scans):
    comp, found = compared
    summary = {"sae_mean_best_cos_to_planted": 0.95, "sae_fraction_planted_learned": 0.9, "restarts_reaching_planted": 1.0,
               "distinct_optima": 3, "distinct_planted_found": 3, "optima_whose_feature_the_sae_learned": 3,
               "optima_matching_sae": 2, "refinement_cos_to_planted": {"before": [0.5, 0.6], "after": [0.9, 0.95]}}
    page = write_demo_report(tmp_path, found, comp, summary).read_text()
    assert re.search(r"<td>3 / 3</td>", page) and "<h2>Discovery and refinement</h2>" in page
    assert page.count('src="data:image/png;base64,') == 5 and page.count("</html>") == 1


def test_table_escapes_cells_and_renders_links():
    html = table([["<b>x</b>", Link("7", "https://example.org/?a=1&b=2"), float("inf"), 0.123456]], ["h<1>", "v"])
    assert "&lt;b&gt;x&lt;/b&gt;" in html and '<a href="https://example.org/?a=1&amp;b=2">7</a>' in html
    assert "<td>not reached</td><td>0.123</td>" in html and "<th>h&lt;1&gt;</th>" in html
    page = html_page("t", [("s", ["<i>plain text</i>", html])])
    assert "&lt;i&gt;plain text&lt;/i&gt;" in page and html in page


def unresolved_links(page: str) -> list[str]:
    """The ``href="#..."`` of a page that name no ``id`` on it."""
    ids = set(re.findall(r'id="([^"]+)"', page))
    return [h for h in re.findall(r'href="#([^"]*)"', page) if h not in ids]


def test_every_link_of_the_compare_report_resolves(compared, tmp_path, no_scans):
    comp, _ = compared
    page = write_compare_report(tmp_path, comp, "cmp").read_text()
    assert unresolved_links(page) == []


@pytest.fixture(scope="module")
def toy_cards(compared, toy):
    """The toy comparison's cards, built before any report (building them scans: token changes, early growth)."""
    from sensfind.comparison.cards import comparison_cards

    comp, _ = compared
    return comparison_cards(comp, toy.subject(0), toy.features[:3].double(), comp.dictionary,
                            no_contexts="no corpus contexts: the toy has no text")


def test_the_compare_report_shows_the_prompt_and_every_card(compared, toy_cards, tmp_path, no_scans):
    from sensfind.reporting.report import prompt_markup

    comp, _ = compared
    cards = toy_cards
    prompt = prompt_markup([72, 105, 60, 33], 2)  # byte tokens "Hi<!", the perturbed one a markup character
    page = write_compare_report(tmp_path, comp, "cmp", cards=cards, prompt=prompt).read_text()
    assert "Hi<mark>&lt;</mark>!" in page
    keys = [c.key for c in cards]
    assert "optimum-0" in keys and any(k.startswith("latent-") for k in keys)
    assert all(f'id="{k}"' in page for k in keys)
    assert 'href="#latent-' in page and unresolved_links(page) == []
    assert page.count("no corpus contexts: the toy has no text") == len(cards)
