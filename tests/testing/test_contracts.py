"""Contract suites: every result type saves and loads back; every Subject implementation behaves alike."""

import dataclasses
import json
import math

import pytest
import torch

import sensfind as sf
from sensfind.testing.contracts import (
    assert_same,
    check_result_refuses_non_empty,
    check_result_round_trip,
    check_subject,
)

INF, NAN = math.inf, math.nan


# -- results -----------------------------------------------------------------------------------------


def _discovery():
    g = torch.Generator().manual_seed(0)
    return sf.Discovery(
        directions=torch.nn.functional.normalize(torch.randn(3, 8, generator=g), dim=1),
        blowup_deg=torch.tensor([12.5, 40.0, INF], dtype=torch.float64), counts=torch.tensor([3, 2, 1]),
        members=[[0, 3, 4], [1, 5], [2]], restart_directions=torch.randn(6, 8, generator=g),
        restart_blowup=torch.tensor([12.5, 40.0, INF, 13.0, 14.0, 41.0], dtype=torch.float64),
        init_directions=torch.randn(6, 8, generator=g),
        history=[{"iteration": 0, "objective": 1.5, "hard_median": 30.0}], config={"restarts": 6, "tau": 0.5},
        points_evaluated=600, rounds_run=2, stop_reason="budget",
        final_effects=torch.tensor([[0.0, 0.7, INF], [0.0, 0.1, 0.6], [0.0, 0.1, 0.2]]))


def _scan():
    from sensfind.core.scan import Scan, ScanConfig

    effects = torch.tensor([[0.0, 0.2, 0.9, INF], [0.0, 0.1, 0.2, 0.3], [0.0, NAN, 0.6, 0.7]], dtype=torch.float64)
    return Scan(ScanConfig(steps=4, tau=0.5), torch.tensor([0.0, 60.0, 120.0, 180.0], dtype=torch.float64), effects)


def _real_scan():
    from sensfind.core.scan import ScanConfig, scan

    g = torch.Generator().manual_seed(1)
    w = torch.randn(8, 5, generator=g, dtype=torch.float64)
    subject = sf.FunctionSubject(torch.randn(8, generator=g, dtype=torch.float64), lambda x: torch.tanh(x @ w))
    return scan(subject, torch.randn(4, 8, generator=g, dtype=torch.float64), ScanConfig(steps=7, effect="l2", tau=3.0))


def _matches():
    from sensfind.dictionaries.dictionary import from_tensors
    from sensfind.comparison.match import NullConfig, match_directions

    g = torch.Generator().manual_seed(0)
    dic = from_tensors(torch.randn(20, 8, generator=g))
    return match_directions(torch.randn(2, 8, generator=g), dic, k=2, null=NullConfig(n_null=1))  # z: nan


def _real_other():
    from sensfind.comparison.match import NullConfig, match_real_other

    g = torch.Generator().manual_seed(0)
    return match_real_other(torch.randn(3, 8, generator=g), torch.randn(8, generator=g), torch.randn(5, 8, generator=g),
                            NullConfig(n_null=20))


def _tune_result():
    from sensfind.tuning import TuneResult

    rows = [dict(number=0, state="COMPLETE", quality=0.75, points=1200, seconds=1.5, worker="w0", fail_reason=None,
                 params={"lr": 0.05, "restarts": 8}),
            dict(number=1, state="FAIL", quality=None, points=None, seconds=None, worker="w1", fail_reason="boom",
                 params={"lr": 0.2})]
    return TuneResult("study", "sqlite:///x.db", ["maximize"], "recovery", rows, [rows[0] | {"config": {"lr": 0.05}}],
                      {"lr": 0.05}, ran=2, config={"metric": "recovery"}, settings={"space": {}})


@pytest.fixture(scope="module")
def prompt_analysis():
    from analysis_cases import toy_analysis

    return toy_analysis()


def _non_finite_analysis(a):
    """``a`` with a nan in an optimum's curve, isotropic curves (and zoomed thresholds) that never reach τ, an
    inf refined threshold."""
    effects = {k: v.clone() for k, v in a.effects.items()}
    effects["optima"][0, 1] = NAN
    effects["isotropic"].zero_()
    thresholds = {k: v.clone() for k, v in a.thresholds.items()}  # the zoomed thresholds: never reached either
    if "isotropic" in thresholds:
        thresholds["isotropic"].fill_(INF)
    end = a.refinement.blowup_end.clone()
    end[0] = INF
    return dataclasses.replace(a, effects=effects, thresholds=thresholds,
                               refinement=dataclasses.replace(a.refinement, blowup_end=end))


# a maker, or the name of a fixture that gives the result
RESULTS = {"discovery": _discovery, "scan": _scan, "real-scan": _real_scan, "matches": _matches,
           "real-other": _real_other, "comparison": "toy_comparison", "tune": _tune_result,
           "prompt-analysis": "prompt_analysis"}


@pytest.fixture(params=list(RESULTS))
def result(request):
    make = RESULTS[request.param]
    return request.getfixturevalue(make) if isinstance(make, str) else make()


def test_result_round_trip(result, tmp_path):
    check_result_round_trip(result, tmp_path / "r")


def test_non_finite_values_survive_the_round_trip(tmp_path):
    d = sf.Discovery.load(_discovery().save(tmp_path / "d"))
    assert math.isinf(float(d.blowup_deg[2])) and math.isinf(float(d.restart_blowup[2]))
    s = type(_scan()).load(_scan().save(tmp_path / "s"))
    assert math.isinf(float(s.effects[0, 3])) and math.isnan(float(s.effects[2, 1]))
    m = type(_matches()).load(_matches().save(tmp_path / "m"))
    assert m.z.isnan().all()


def test_non_finite_values_of_a_prompt_analysis_survive_the_round_trip(prompt_analysis, tmp_path):
    from sensfind.comparison.analysis import PromptAnalysis

    a = _non_finite_analysis(prompt_analysis)
    out = a.save(tmp_path / "a")
    b = PromptAnalysis.load(out)
    assert_same(a, b)
    assert math.isnan(float(b.effects["optima"][0, 1])) and math.isinf(float(b.refinement.blowup_end[0]))
    assert b.threshold("isotropic").isinf().all()
    saved = json.loads((out / "analysis.json").read_text())  # strict JSON: null where not reached
    assert saved["kinds"]["isotropic"]["threshold_deg"] == [None] * len(a.effects["isotropic"])
    assert saved["refinement"]["blowup_end"][0] is None


def _cards():
    from sensfind.comparison.cards import Context, FeatureCard, LatentMatch, TokenChange

    return [FeatureCard("optimum-0", "Optimum 0", "optimum", 12.5, [0.0, 0.3, 0.9], 12.5,
                        [TokenChange(" the", 0.1, 0.4)], [TokenChange(" a", 0.3, 0.05)],
                        [Context("once upon", " a", " time", 3.25, 4, 7)],
                        [LatentMatch(17, -0.62, 0.001, None, "https://example.org/17")],
                        [("restarts converged here", 3), ("sign", "−")]),
            FeatureCard("latent-5", "Latent 5 (inactive)", "SAE inactive", INF, [0.0, 0.01, 0.02], 30.0, [], [], [],
                        [LatentMatch(5, 1.0, 0.5, 0.25, None)])]


def test_feature_cards_round_trip_through_their_json_file(tmp_path):
    from sensfind.comparison.cards import load_cards, save_cards
    from sensfind.errors import InputFileError

    cards = _cards()
    save_cards(tmp_path / "cards.json", cards)
    assert json.loads((tmp_path / "cards.json").read_text())[1]["threshold_deg"] is None  # strict JSON
    back = load_cards(tmp_path / "cards.json")
    assert_same(cards, back)
    assert math.isinf(back[1].threshold_deg) and back[0].facts[1] == ("sign", "−")
    (tmp_path / "bad.json").write_text('{"key": "optimum-0"}')
    with pytest.raises(InputFileError, match="bad.json.*does not hold saved cards"):
        load_cards(tmp_path / "bad.json")


def test_saving_into_a_non_empty_directory_is_refused(result, tmp_path):
    check_result_refuses_non_empty(result, tmp_path / "r")


def test_a_failed_save_leaves_nothing(tmp_path, monkeypatch):
    d = _discovery()

    def broken(self, directory):
        (directory / "discovery.json").write_text("{}")
        raise RuntimeError("disk trouble")

    monkeypatch.setattr(sf.Discovery, "_write", broken)
    with pytest.raises(RuntimeError, match="disk trouble"):
        d.save(tmp_path / "r")
    assert list(tmp_path.iterdir()) == []


def test_loading_a_directory_without_the_result_names_what_is_missing(tmp_path):
    from sensfind.comparison.compare import Comparison
    from sensfind.errors import InputFileError

    with pytest.raises(InputFileError, match="holds no comparison results .comparison.safetensors missing"):
        Comparison.load(tmp_path)


# -- subjects ----------------------------------------------------------------------------------------


def _function_subject():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(8, 5, generator=g, dtype=torch.float64)
    return sf.FunctionSubject(torch.randn(8, generator=g, dtype=torch.float64), lambda x: torch.tanh(x @ w))


def _transformer(request, fixture="tiny_model64", **kw):
    return sf.TransformerSubject(request.getfixturevalue(fixture), [3, 14, 15, 92, 65], **kw)


def _reference_path(request):
    from sensfind.app.jobs import _Runner

    subject = _transformer(request)
    return _Runner(subject, subject.run_reference)


def _llama(request):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=2, d_model=32, d_head=8, n_heads=4, d_mlp=48, d_vocab=128, n_ctx=32,
                                  normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=8,
                                  n_key_value_heads=2, gated_mlp=True, act_fn="silu", final_rms=True, seed=0,
                                  dtype=torch.float32, device="cpu")
    return sf.TransformerSubject(HookedTransformer(cfg).eval(), [3, 14, 15, 92], hook="blocks.1.hook_resid_pre")


def _gemma3(request):
    from families import GEMMA3_TINY, tiny_model

    model = tiny_model(dtype=torch.float32, **GEMMA3_TINY)
    return sf.TransformerSubject(model, [2, 464, 168, 157, 423, 11, 290, 257, 131, 373], hook="blocks.1.hook_resid_pre")


def _toy(request):
    from sensfind.core.toy import ToyConfig, ToyModel

    return ToyModel(ToyConfig(seed=0)).subject(0)


def _probe(request):
    from sensfind.tuning._targets import _Probe

    return _Probe(_function_subject())


SUBJECTS = {
    "function": lambda request: _function_subject(),
    "transformer-gpt2-float64": _transformer,
    "transformer-gpt2-float32": lambda request: _transformer(request, "tiny_model", position=2),
    "transformer-reference-path": _reference_path,
    "transformer-llama-float32": _llama,
    "transformer-gemma3-float32": _gemma3,
    "toy": _toy,
    "tuning-probe": _probe,
}


@pytest.fixture(params=list(SUBJECTS))
def subject(request):
    return SUBJECTS[request.param](request)


def test_subject_contract(subject):
    check_subject(subject)
