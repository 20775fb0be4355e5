"""The README's Python snippets run as pasted (with smaller sizes where a snippet would take minutes)."""

import re
from pathlib import Path

import pytest

import sensfind as sf

README = Path(__file__).resolve().parents[1] / "README.md"

# What each snippet runs with here instead: (text in the README, text run). Every one must be found, so a
# snippet that changes is checked again rather than silently run at full size.
SMALLER = {
    "corpus": [("corpus.windows(1000,", "corpus.windows(20,"), ("text_windows(model, 1000, 10)", "text_windows(model, 20, 10)")],
    "TransformerSubject": [('sf.load_model("smollm2-135m")', 'sf.load_model("random:tiny")'),
                           ("sf.DiscoverConfig(restarts=16, iterations=60)", "sf.DiscoverConfig(restarts=2, iterations=3)"),
                           ("sf.DiscoverConfig(restarts=8, iterations=30)", "sf.DiscoverConfig(restarts=2, iterations=3)")],
    "run_discover": [('model="smollm2-135m"', 'model="random:tiny"'), ("max_points=20_000", "max_points=3000")],
}


def snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_python_snippets_and_each_is_sized_here():
    found = snippets()
    assert len(found) >= 3
    for key in SMALLER:
        assert sum(key in s for s in found) == 1, f"no single README snippet mentions {key!r}"


@pytest.mark.parametrize("index", range(len(snippets())))
def test_readme_snippet_runs(index, tmp_path, monkeypatch, smollm2):
    code = snippets()[index]
    for key, swaps in SMALLER.items():
        if key in code:
            for old, new in swaps:
                assert old in code, f"README snippet with {key!r} no longer holds {old!r}"
                code = code.replace(old, new)
    real = sf.load_model
    monkeypatch.setattr(sf, "load_model", lambda name, **kw: smollm2 if name == "smollm2-135m" else real(name, **kw))
    monkeypatch.chdir(tmp_path)  # the snippets write runs/...
    exec(compile(code, f"README.md snippet {index + 1}", "exec"), {"__name__": "readme"})
