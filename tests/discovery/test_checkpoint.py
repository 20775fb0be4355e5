"""checkpoint.load_checkpoint: a damaged file or one from another config is named, with why."""

from dataclasses import replace

import pytest

import sensfind as sf
from sensfind.discovery.checkpoint import load_checkpoint
from sensfind.errors import CheckpointError


@pytest.mark.parametrize("damage", [b"", b"garbage" * 10])
def test_load_checkpoint_names_a_damaged_file(tmp_path, damage):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(damage)
    with pytest.raises(CheckpointError, match=str(path)):
        load_checkpoint(path)


def test_load_checkpoint_names_the_differing_config_keys(tmp_path, toy):
    config = sf.DiscoverConfig(restarts=2, iterations=2, final_steps=5)
    sf.discover(toy.subject(0), config, checkpoint=tmp_path / "c.pt", checkpoint_every=1)
    assert load_checkpoint(tmp_path / "c.pt", config)["iteration"] == 2
    with pytest.raises(CheckpointError, match=r"\(lr, restarts differ\)"):
        load_checkpoint(tmp_path / "c.pt", replace(config, restarts=3, lr=0.2))
