"""Every config dataclass: shared validators, a strict from_dict, and the CLI's one-line errors."""

import dataclasses
import json

import pytest

from sensfind.comparison.analysis import AnalysisConfig
from sensfind.app.cli import main
from sensfind.comparison.compare import CompareConfig
from sensfind.configs import check_int, check_number, config_from_dict
from sensfind.dictionaries.corpus_sae import CorpusSAEConfig
from sensfind.app.demo import DemoConfig, ModelDemoConfig
from sensfind.dictionaries.training import TrainSAEConfig
from sensfind.comparison.match import NullConfig
from sensfind.discovery.config import DiscoverConfig
from sensfind.core.scan import ScanConfig
from sensfind.core.toy import ToyConfig
from sensfind.tuning import TuneConfig

CONFIGS = [AnalysisConfig, CompareConfig, CorpusSAEConfig, DemoConfig, DiscoverConfig, ModelDemoConfig, NullConfig,
           ScanConfig, ToyConfig, TrainSAEConfig, TuneConfig]


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_from_dict_round_trips_through_json(cls):
    config = cls()
    assert cls.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_from_dict_names_an_unknown_key_and_the_allowed_ones(cls):
    allowed = sorted(f.name for f in dataclasses.fields(cls))
    with pytest.raises(ValueError) as err:
        cls.from_dict({"bogus": 1})
    assert str(err.value) == f"unknown {cls.__name__} field(s) ['bogus']; allowed: {allowed}"
    with pytest.raises(TypeError, match=rf"{cls.__name__}.from_dict needs a dict"):
        cls.from_dict([("seed", 1)])


def test_nested_configs_are_built_from_dicts_and_checked_strictly():
    demo = DemoConfig.from_dict({"seed": 2, "compare": {"n_null": 50}})
    assert demo.compare == CompareConfig(n_null=50)
    with pytest.raises(ValueError, match=r"unknown CompareConfig field\(s\) \['nul'\]"):
        DemoConfig.from_dict({"compare": {"nul": 50}})
    model_demo = ModelDemoConfig.from_dict({"analysis": {"restarts": 3}, "sae": {"expansion": 2}})
    assert model_demo.analysis.restarts == 3 and model_demo.sae.expansion == 2


@pytest.mark.parametrize("bad, message", [
    (dict(restarts=0), "restarts must be an integer >= 1, got 0"),
    (dict(n_train=1.5), "n_train must be an integer >= 1"),
    (dict(seed=-1), "seed must be an integer >= 0"),
    (dict(compare={"n_null": 5}), "compare must be a CompareConfig, got dict"),
])
def test_demo_config_is_validated(bad, message):
    with pytest.raises(ValueError, match=message):
        DemoConfig(**bad)


def test_compare_config_effect_is_a_checked_choice():
    assert CompareConfig(effect="l2").scan_config.effect == "l2"
    with pytest.raises(ValueError, match="unknown effect 'js'"):
        CompareConfig(effect="js")


def test_shared_checks_say_what_is_allowed():
    with pytest.raises(ValueError, match="k must be an integer >= 1 or None, got 0"):
        check_int("k", 0, 1, optional=True)
    check_int("k", None, 1, optional=True)
    with pytest.raises(ValueError, match=r"alpha must be < 1, got 1"):
        check_number("alpha", 1, 0, 1, lo_open=True, hi_open=True)
    with pytest.raises(ValueError, match="lr must be a finite number, got nan"):
        check_number("lr", float("nan"))
    with pytest.raises(ValueError, match="unknown ScanConfig field"):
        config_from_dict(ScanConfig, {"step": 3})


def test_discover_config_file_with_an_unknown_key_is_one_line(tmp_path, capsys):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"restarts": 2, "restart": 3}))
    assert main(["discover", "--model", "toy", "--config", str(cfg), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sensfind: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert "unknown DiscoverConfig field(s) ['restart']; allowed: [" in err and "'restarts'" in err and str(cfg) in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("command, cls", [("scan", ScanConfig), ("discover", DiscoverConfig), ("compare", CompareConfig)])
def test_help_lists_every_field_with_its_doc_and_choices(command, cls, capsys):
    from sensfind.configs import field_choices, field_docs

    assert main([command, "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    docs, choices = field_docs(cls), field_choices(cls)
    for f in dataclasses.fields(cls):
        if f.name == "seed":  # --seed is the site's (it seeds the restarts too)
            continue
        assert f"--{f.name.replace('_', '-')}" in text
        assert " ".join(docs[f.name].split()[:4]).replace("``", "") in text, f.name  # help drops the markup
        if f.name in choices:
            assert f"one of {', '.join(choices[f.name])};" in text
