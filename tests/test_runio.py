"""runio: the one convention for non-finite numbers in JSON files."""

import json
import math

import torch

from sensfind.runio import dumps_json, json_float, load_json, save_json, to_jsonable


def test_non_finite_numbers_are_null_in_every_json_file(tmp_path):
    obj = {"inf": math.inf, "ninf": -math.inf, "nan": math.nan, "t": torch.tensor([1.0, math.inf]), "ok": 2.5}
    save_json(tmp_path / "a.json", obj)
    assert load_json(tmp_path / "a.json") == {"inf": None, "ninf": None, "nan": None, "t": [1.0, None], "ok": 2.5}
    assert json.loads(dumps_json(obj)) == to_jsonable(obj)
    assert json_float(math.nan) is None and json_float(-1.5) == -1.5


def test_matches_json_holds_null_for_an_undefined_z(tmp_path):
    from sensfind.dictionaries.dictionary import from_tensors
    from sensfind.comparison.match import Matches, NullConfig, match_directions

    g = torch.Generator().manual_seed(0)
    dic = from_tensors(torch.randn(20, 8, generator=g))
    m = match_directions(torch.randn(2, 8, generator=g), dic, k=2, null=NullConfig(n_null=1))  # std of 1 value: nan
    m.save(tmp_path / "m")
    text = (tmp_path / "m" / "matches.json").read_text()
    assert "NaN" not in text and json.loads(text)["summary"]["null"]["std"] is None
    back = Matches.load(tmp_path / "m")
    assert torch.equal(back.cos, m.cos) and back.null == m.null
