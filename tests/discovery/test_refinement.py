"""refinement.refine: discovery started from given directions moves them back to the features."""

import math
from dataclasses import replace

import torch

import sensfind as sf
from sensfind.core.geometry import effective_directions
from sensfind.core.recovery import recovery

SMALL = sf.DiscoverConfig(restarts=12, iterations=40)


def _noisy_feature(feature, base, cos, seed):
    g = torch.Generator().manual_seed(seed)
    f = effective_directions(feature[None], base, "sphere")[0]
    noise = torch.randn(f.shape, generator=g, dtype=f.dtype)
    noise = effective_directions(noise[None], base, "sphere")[0]
    noise = noise - (noise @ f) * f
    noise = noise / noise.norm()
    return cos * f + math.sqrt(1 - cos**2) * noise


def test_refinement_returns_to_the_feature(toy):
    subject = toy.subject(2)
    signed = subject.signed_features()
    flips = subject.flip_kl()
    ids = torch.nonzero(flips > 1.0)[:3, 0]  # features whose flip matters for this input
    starts = torch.stack([_noisy_feature(signed[i], subject.base, 0.7, int(i)) for i in ids])
    rec0 = recovery(starts, signed[ids], subject.base)
    assert torch.allclose(rec0.best_cos, torch.full_like(rec0.best_cos, 0.7), atol=1e-4)
    out = sf.refine(subject, starts, replace(SMALL, iterations=40))
    cos = recovery(out.end, signed[ids], subject.base, threshold=0.95)
    assert (cos.best_feature == torch.arange(len(ids))).all(), cos.best_cos
    assert (out.blowup_end <= out.blowup_start).all()
