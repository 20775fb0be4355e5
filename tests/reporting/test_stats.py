"""sensfind.reporting.stats: summaries, KS tests and tables on known inputs."""

import math

import numpy as np
import pytest

from sensfind.reporting.stats import describe, fmt, ks, ratio_of_means, table


def test_describe_known_values():
    d = describe([1.0, 2.0, 3.0, 4.0])
    assert d["n"] == 4 and d["n_censored"] == 0
    assert d["mean"] == 2.5 and d["median"] == 2.5
    assert d["sd"] == pytest.approx(np.std([1, 2, 3, 4], ddof=1))
    assert d["se"] == pytest.approx(d["sd"] / 2)


def test_describe_counts_never_reached_at_the_cap_or_drops_them():
    capped = describe([10.0, math.inf, 30.0], cap=90.0)
    assert capped["n"] == 3 and capped["n_censored"] == 1 and capped["mean"] == pytest.approx(130 / 3)
    dropped = describe([10.0, math.inf, 30.0])
    assert dropped["n"] == 3 and dropped["n_censored"] == 1 and dropped["mean"] == 20.0
    empty = describe([math.inf])
    assert empty["n"] == 1 and math.isnan(empty["mean"]) and math.isnan(empty["sd"])


def test_ks_identical_and_disjoint_samples():
    assert ks([1, 2, 3], [1, 2, 3])["statistic"] == 0.0
    r = ks(np.arange(20), np.arange(100, 120))
    assert r["statistic"] == 1.0 and r["pvalue"] < 1e-6
    assert ks([math.inf, math.inf], [5.0, 5.0], cap=5.0)["statistic"] == 0.0  # both all at the cap
    assert math.isnan(ks([], [1.0])["statistic"])


def test_fmt_and_ratio():
    assert fmt(describe([1.0, 3.0])) == "2.0 ± 1.4"
    assert fmt(describe([1.0, math.inf], cap=3.0)) == "≥2.0 ± 1.4 (1/2 not reached)"
    assert fmt(describe([math.inf])) == "not reached" and fmt({}) == "-"
    assert ratio_of_means([2.0, 4.0], [1.0, 2.0]) == 2.0 and math.isnan(ratio_of_means([1.0], [0.0]))


def test_table_aligns_columns():
    text = table([{"a": 1, "bb": "x"}, {"a": 22, "bb": "yyy"}])
    lines = text.splitlines()
    assert lines[0] == "a   bb" and lines[1] == "--  ---" and lines[3] == "22  yyy"
