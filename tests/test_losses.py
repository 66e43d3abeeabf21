"""Training loss: sigma distributions, and equality with each parameterisation's native loss."""

from __future__ import annotations

import math

import pytest
import torch

from mrdpm.diffusion.losses import (
    denoising_loss,
    loss_weight,
    sample_sigma_discrete,
    sample_sigma_log_uniform,
    sample_sigma_lognormal,
    sample_training_sigma,
    standard_noise,
)
from mrdpm.models import Denoiser, DenoiserConfig, preconditioning
from mrdpm.models.precond import from_channels, vp_sigma_grid

KINDS = ("edm", "ve", "vp", "v")


def randomised(**kwargs) -> Denoiser:
    den = Denoiser(DenoiserConfig(preset="tiny", **kwargs))
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in den.net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return den


def native_loss(kind: str, F: torch.Tensor, x0: torch.Tensor, n: torch.Tensor, sigma: torch.Tensor,
                sigma_data: float) -> torch.Tensor:
    """Each parameterisation's own objective on its raw network output F, written from the papers."""
    s = sigma.view(-1, *([1] * (x0.dim() - 1)))
    if kind == "edm":
        x = x0 + s * n
        c_skip, c_out = (c.view_as(s) for c in preconditioning("edm", sigma, sigma_data=sigma_data)[:2])
        target = (x0 - c_skip * x) / c_out
    elif kind == "ve":  # sigma^2 |s_theta - grad log p|^2 with s_theta = F / sigma, grad log p = -n / sigma
        target = -n
    elif kind == "vp":  # DDPM epsilon prediction
        target = n
    else:  # v = sqrt(abar) eps - sqrt(1 - abar) x0, abar = 1/(1 + sigma^2)
        target = (n - s * x0) / (1 + s**2).sqrt()
    err = torch.view_as_real(F - target) if F.is_complex() else F - target
    return err.square().flatten(1).mean(1)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("complex_input", [True, False])
def test_weighted_loss_equals_native_loss(kind, complex_input):
    den = randomised(parameterisation=kind, complex_input=complex_input, sigma_data=0.6)
    captured = {}
    den.net.register_forward_hook(lambda _m, _a, out: captured.update(F=out))
    dtype = torch.complex64 if complex_input else torch.float32
    x0 = torch.randn(3, 1, 16, 16, dtype=dtype)
    n = standard_noise(x0, generator=torch.Generator().manual_seed(5))
    sigma = torch.tensor([0.05, 0.9, 12.0]) if kind in ("edm", "ve") else den.sigma_grid[[3, 400, 990]].float()
    loss = denoising_loss(den, x0, sigma=sigma, noise=n)
    F = from_channels(captured["F"], complex_input)
    expected = native_loss(kind, F, x0, n, sigma, 0.6)
    assert loss.shape == (3,)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected, rtol=2e-4, atol=1e-6)


def test_loss_is_deterministic_with_generator_and_differentiable():
    den = randomised(parameterisation="edm", class_names=("a", "b"))
    x0 = torch.randn(2, 1, 12, 12, dtype=torch.complex64)
    labels = torch.tensor([0, 1])
    a = denoising_loss(den, x0, class_labels=labels, generator=torch.Generator().manual_seed(3))
    b = denoising_loss(den, x0, class_labels=labels, generator=torch.Generator().manual_seed(3))
    c = denoising_loss(den, x0, class_labels=labels, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)
    a.mean().backward()
    assert all(p.grad is not None for p in den.net.parameters() if p.requires_grad)


def test_standard_noise_has_unit_variance_per_real_channel():
    gen = torch.Generator().manual_seed(0)
    z = standard_noise(torch.zeros(4, 1, 64, 64, dtype=torch.complex64), generator=gen)
    assert z.dtype == torch.complex64
    assert z.real.var().item() == pytest.approx(1.0, abs=0.03)
    assert z.imag.var().item() == pytest.approx(1.0, abs=0.03)
    assert standard_noise(torch.zeros(2, 3), generator=gen).dtype == torch.float32


def test_sigma_distributions():
    gen = torch.Generator().manual_seed(0)
    log_s = sample_sigma_lognormal(20000, generator=gen).log()
    assert log_s.mean().item() == pytest.approx(-1.2, abs=0.03)
    assert log_s.std().item() == pytest.approx(1.2, abs=0.03)
    s = sample_sigma_log_uniform(20000, 0.01, 100.0, generator=gen)
    assert s.dtype == torch.float32
    assert s.min() >= 0.01
    assert s.max() <= 100.0
    assert s.log().mean().item() == pytest.approx(0.5 * (math.log(0.01) + math.log(100.0)), abs=0.05)
    assert (s < 1.0).float().mean().item() == pytest.approx(0.5, abs=0.02)  # half the decades below 1
    grid = vp_sigma_grid(50)
    d = sample_sigma_discrete(5000, grid, generator=gen)
    idx = torch.searchsorted(grid.float(), d)
    torch.testing.assert_close(grid.float()[idx], d)  # every draw is a grid value
    assert idx.unique().numel() == 50
    with pytest.raises(ValueError, match="sigma_min"):
        sample_sigma_log_uniform(3, 1.0, 0.5)


def test_training_sigma_follows_the_parameterisation():
    gen = torch.Generator().manual_seed(1)
    ve = Denoiser(DenoiserConfig(preset="tiny", parameterisation="ve", sigma_min=0.1, sigma_max=5.0))
    s = sample_training_sigma(ve, 1000, generator=gen)
    assert s.min() >= 0.1
    assert s.max() <= 5.0
    vp = Denoiser(DenoiserConfig(preset="tiny", parameterisation="vp", num_timesteps=100))
    s = sample_training_sigma(vp, 1000, generator=gen)
    assert torch.isin(s, vp.sigma_grid.float()).all()
    a = sample_training_sigma(ve, 4, generator=torch.Generator().manual_seed(9))
    b = sample_training_sigma(ve, 4, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_loss_weights():
    s = torch.tensor([0.5, 2.0])
    torch.testing.assert_close(loss_weight("edm", s, 0.5), (s**2 + 0.25) / (s * 0.5) ** 2)
    torch.testing.assert_close(loss_weight("ve", s), 1 / s**2)
    torch.testing.assert_close(loss_weight("vp", s), 1 / s**2)
    torch.testing.assert_close(loss_weight("v", s), (s**2 + 1) / s**2)
    with pytest.raises(ValueError, match="parameterisation"):
        loss_weight("ddim", s)
