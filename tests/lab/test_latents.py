"""sensfind.lab.latents: operations on SAE codes and decoder rows."""

import torch

from sensfind.lab.latents import K_GRID, decoder_rows, latent_noise, same_norm, topk_codes, topk_grid


def test_topk_codes_keeps_the_largest():
    a = torch.tensor([0.0, 3.0, 1.0, 2.0, -1.0])
    assert topk_codes(a, 2).tolist() == [0.0, 3.0, 0.0, 2.0, 0.0]
    assert topk_codes(a, 0).tolist() == [0.0] * 5
    assert topk_codes(a, 99).tolist() == [0.0, 3.0, 1.0, 2.0, 0.0]  # negatives clamped


def test_topk_grid_ends_at_the_l0():
    assert topk_grid(5) == [0, 1, 2, 3, 4, 5]
    assert topk_grid(1000)[-2:] == [512, 1000] and topk_grid(1000)[:-1] == list(K_GRID)


def test_latent_noise_keeps_the_support_and_floor():
    a = torch.tensor([0.0, 2.0, 0.0, 1.0])
    noisy = latent_noise(a, 5.0, 50, torch.Generator().manual_seed(0))
    assert noisy.shape == (50, 4)
    assert (noisy[:, [0, 2]] == 0).all() and (noisy[:, [1, 3]] >= 0.01 * a[[1, 3]]).all()
    assert not torch.equal(noisy[0], noisy[1])


def test_same_norm():
    d = torch.randn(4, 3)
    assert torch.allclose(same_norm(d, 2.0).norm(dim=1), torch.full((4,), 2.0))
    norms = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert torch.allclose(same_norm(d, norms).norm(dim=1), norms)


class _Dic:
    """Encodes a base to itself (latent i active when coordinate i is positive), decoder = identity."""

    decoder = torch.eye(4)

    def encode(self, x):
        return x.clamp(min=0)


def test_decoder_rows_of_active_and_inactive_latents():
    base = torch.tensor([1.0, 0.0, 2.0, 0.0])
    active = decoder_rows(_Dic(), base, active=True, n=5, seed=0)
    assert sorted(active.argmax(1).tolist()) == [0, 2]
    inactive = decoder_rows(_Dic(), base, active=False, n=1, seed=0)
    assert inactive.shape == (1, 4) and inactive.argmax(1).item() in (1, 3)
    assert decoder_rows(_Dic(), torch.ones(4), active=False, n=2, seed=0) is None


def test_log10_density_floors_dead_latents_at_a_tenth_of_one_firing():
    from sensfind.lab.latents import log10_density

    out = log10_density(torch.tensor([0.1, 0.0, 1.0]), n_pool=100)
    torch.testing.assert_close(out, torch.tensor([-1.0, -3.0, 0.0]))


def test_describe_latent_groups_against_a_reference():
    from sensfind.lab.latents import describe_latent_groups

    de = torch.tensor([0.9, 0.8, 0.1, 0.2])
    log_density = torch.tensor([-1.0, -2.0, -3.0, -4.0])
    groups = {"all": torch.arange(4), "high": torch.tensor([0, 1])}
    out = describe_latent_groups(de, log_density, groups, reference=torch.arange(4))
    assert list(out) == ["all", "high"] and out["high"]["n"] == 2
    assert abs(out["high"]["de_cos"]["mean"] - 0.85) < 1e-6 and out["high"]["log10_density"]["mean"] == -1.5
    assert out["all"]["ks_de_vs_all"]["statistic"] == 0.0 and out["high"]["ks_de_vs_all"]["statistic"] == 0.5
