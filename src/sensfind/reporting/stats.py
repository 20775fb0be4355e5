"""Summary statistics and plain-text tables for the experiments' results.

Threshold-like values that were never reached are ``inf``; ``describe`` and ``ks`` either drop them or,
given ``cap``, count them at ``cap`` (a lower bound, e.g. the end of the scan) and say how many there were.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["describe", "fmt", "ks", "ratio_of_means", "table"]


def describe(values, cap: float | None = None) -> dict:
    """``n``, ``n_censored`` (non-finite values), ``mean``, ``sd``, ``median`` and ``se`` of ``values``;
    non-finite values are counted at ``cap`` when it is given and dropped otherwise."""
    v = np.asarray(values, dtype=np.float64).ravel()
    censored = ~np.isfinite(v)
    v = np.where(censored, cap, v) if cap is not None else v[~censored]
    n = int(v.size)
    return dict(
        n=int(censored.size), n_censored=int(censored.sum()),
        mean=float(v.mean()) if n else math.nan, sd=float(v.std(ddof=1)) if n > 1 else math.nan,
        median=float(np.median(v)) if n else math.nan, se=float(v.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan,
    )


def ks(a, b, cap: float | None = None) -> dict:
    """Two-sample Kolmogorov–Smirnov ``statistic`` and ``pvalue`` (scipy); non-finite values are counted at
    ``cap`` when given. Both are NaN when either sample is empty."""
    from scipy.stats import ks_2samp  # lazy: scipy.stats is slow to import

    a, b = (np.asarray(x, dtype=np.float64).ravel() for x in (a, b))
    if cap is not None:
        a, b = np.where(np.isfinite(a), a, cap), np.where(np.isfinite(b), b, cap)
    if a.size == 0 or b.size == 0:
        return dict(statistic=math.nan, pvalue=math.nan)
    r = ks_2samp(a, b)
    return dict(statistic=float(r.statistic), pvalue=float(r.pvalue))


def ratio_of_means(a, b) -> float:
    """``mean(a) / mean(b)``; NaN when ``mean(b)`` is not positive."""
    return float(np.mean(a) / np.mean(b)) if np.mean(b) > 0 else math.nan


def fmt(stats: dict, digits: int = 1) -> str:
    """``mean ± sd`` of a ``describe`` dict; ``≥mean ± sd (k/n not reached)`` when values were counted at
    the cap, ``not reached`` when none was finite, ``-`` for an empty sample."""
    if not stats or not math.isfinite(stats.get("mean", math.nan)):
        return "not reached" if stats and stats.get("n") else "-"
    sd = stats["sd"] if math.isfinite(stats["sd"]) else 0.0
    s = f"{stats['mean']:.{digits}f} ± {sd:.{digits}f}"
    if stats.get("n_censored"):
        s = f"≥{s} ({stats['n_censored']}/{stats['n']} not reached)"
    return s


def table(rows: list[dict], columns: list[str] | None = None) -> str:
    """A plain-text table of ``rows`` (dicts keyed by ``columns``, default: the first row's keys), with a
    rule under the header."""
    columns = list(rows[0]) if columns is None else columns
    cells = [[str(c) for c in columns]] + [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
