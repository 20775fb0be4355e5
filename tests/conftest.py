import logging

import pytest
import torch

import sensfind as sf


@pytest.fixture(scope="session")
def tiny_model():
    return sf.load_model("random:tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_model64():
    return sf.load_model("random:tiny", seed=1, dtype=torch.float64)


@pytest.fixture(scope="session")
def gpt2_arch():
    """GPT-2 small's architecture (12 layers, d=768, vocab 50257) with random weights."""
    return sf.load_model("random:gpt2", seed=0)


@pytest.fixture(autouse=True)
def _quiet_logs(caplog):
    caplog.set_level(logging.INFO, logger="sensfind")
