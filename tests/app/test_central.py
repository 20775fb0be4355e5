"""sensfind.app.central: the central run's config (the run itself is tested in test_demo.py)."""

import pytest

from sensfind.app.central import CENTRAL, SMOKE, CentralConfig, pooled_privileged, settings


def test_unknown_fields_are_named():
    with pytest.raises(ValueError, match=r"unknown CentralConfig field\(s\) \['prompt'\]"):
        CentralConfig.from_dict({"prompt": 3})


def test_smoke_settings_are_smaller_and_seeded():
    demo, analysis = settings(CentralConfig(smoke=True, seed=4))
    assert analysis.restarts == SMOKE.restarts < CENTRAL.restarts and analysis.seed == 4 and demo.seed == 4
    assert settings(CentralConfig())[1].restarts == CENTRAL.restarts


def row(p, lo, hi, pairs=3):
    return {"p": p, "p_low": lo, "p_high": hi, "n_pairs": pairs, "scan_points": 10, "ratio_median": 0.5,
            "early_growth_2deg_median": 1.0, "early_growth_4deg_median": None}


def test_pooled_privileged_counts_intervals_and_leaves_out_prompts_with_no_usable_pair():
    per_prompt = [{"optima": row(3.0, 2.5, None), "isotropic": row(1.9, 1.5, 2.4)},
                  {"optima": row(None, 4.0, None), "isotropic": row(2.1, 1.7, 2.9)},
                  {"optima": row(2.2, 1.8, 3.0), "isotropic": row(None, None, None, pairs=0)}]
    out = pooled_privileged(per_prompt)
    o, i = out["optima"], out["isotropic"]
    assert (o["prompts"], o["prompts_p_above_2"], o["prompts_containing_2"], o["prompts_p_below_2"]) == (3, 2, 1, 0)
    assert (i["prompts"], i["prompts_without_a_usable_pair"], i["prompts_containing_2"]) == (2, 1, 2)
    assert o["p_median"] == 3.0 and o["p_median_low"] <= 3.0 <= (o["p_median_high"] or float("inf"))
    assert o["early_growth_4deg_median"] is None and o["ratio_to_quadratic_onset_median"] == 0.5
    assert o["scan_points"] == 30
    assert "p_cross_median" not in o  # rows from before the cross-term refit: no such column
    crossed = pooled_privileged([{"optima": row(3.0, 2.5, None) | {"p_cross": c, "p_cross_low": lo, "p_cross_high": hi}}
                                 for c, lo, hi in ((2.1, 1.9, 2.4), (2.4, 2.2, 3.0), (None, 2.6, None))])["optima"]
    assert crossed["p_cross_median"] == 2.4 and (crossed["prompts_p_cross_above_2"], crossed["prompts_p_cross_below_2"]) == (2, 0)
    assert crossed["p_cross_median_low"] <= 2.4 <= (crossed["p_cross_median_high"] or float("inf"))
    assert pooled_privileged([{"PCA": row(None, None, None, pairs=0)}]) == {
        "PCA": {"prompts": 0, "prompts_without_a_usable_pair": 1}}  # kept, so that a kind never silently vanishes


def test_mixture_pairs_overrides_the_runs_default_and_is_bounded():
    assert settings(CentralConfig(mixture_pairs=0))[1].mixture_pairs == 0
    assert settings(CentralConfig())[1].mixture_pairs == CENTRAL.mixture_pairs > 0
    with pytest.raises(ValueError, match="mixture_pairs must be"):
        CentralConfig(mixture_pairs=-1)
