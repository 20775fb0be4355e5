"""sensfind.app.central: the central run's config (the run itself is tested in test_demo.py)."""

import pytest

from sensfind.app.central import CENTRAL, SMOKE, CentralConfig, settings


def test_unknown_fields_are_named():
    with pytest.raises(ValueError, match=r"unknown CentralConfig field\(s\) \['prompt'\]"):
        CentralConfig.from_dict({"prompt": 3})


def test_smoke_settings_are_smaller_and_seeded():
    demo, analysis = settings(CentralConfig(smoke=True, seed=4))
    assert analysis.restarts == SMOKE.restarts < CENTRAL.restarts and analysis.seed == 4 and demo.seed == 4
    assert settings(CentralConfig())[1].restarts == CENTRAL.restarts
