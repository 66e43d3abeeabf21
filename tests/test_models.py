"""Denoiser: U-Net presets, preconditioning identities, discrete VP schedule, shapes, classes and conditions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mrdpm.models import PRESETS, Denoiser, DenoiserConfig, build_unet, preconditioning, spatial_multiple
from mrdpm.models.precond import from_channels, sigma_to_timestep, timestep_to_sigma, to_channels, vp_sigma_grid
from mrdpm.models.unet import crop_to, pad_to_multiple

KINDS = ("edm", "ve", "vp", "v")


def tiny(**kwargs) -> Denoiser:
    return Denoiser(DenoiserConfig(preset="tiny", **kwargs))


def randomise(denoiser: Denoiser) -> Denoiser:
    """MONAI zero-initialises the last conv and each residual branch's output: perturb every weight."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in denoiser.net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return denoiser


def num_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_preset_sizes():
    assert num_params(build_unet("tiny", spatial_dims=2, in_channels=2, out_channels=2, num_classes=None)) < 100_000
    small = num_params(build_unet("small", spatial_dims=2, in_channels=2, out_channels=2, num_classes=None))
    assert 2_000_000 <= small <= 4_000_000
    compact = num_params(build_unet("compact", spatial_dims=3, in_channels=2, out_channels=1, num_classes=None))
    assert 1_000_000 <= compact <= 2_500_000
    assert spatial_multiple("tiny") == spatial_multiple("compact") == 4
    assert spatial_multiple("small") == spatial_multiple("base") == 8
    for preset in PRESETS.values():  # attention only at the lowest resolution level
        assert not any(preset.attention_levels[:-1])
    with pytest.raises(ValueError, match="preset"):
        build_unet("huge", spatial_dims=2, in_channels=1, out_channels=1, num_classes=None)


@pytest.mark.parametrize("size", [(37, 50), (16, 16), (5, 7)])
def test_pad_and_crop(size):
    x = torch.randn(2, 3, *size)
    padded, crop = pad_to_multiple(x, 8, 2)
    assert all(n % 8 == 0 and n >= m for n, m in zip(padded.shape[-2:], size, strict=True))
    torch.testing.assert_close(crop_to(padded, crop), x, rtol=0, atol=0)
    # reflection: the row before the image mirrors the image's second row
    if crop[0].start > 0:
        torch.testing.assert_close(padded[..., crop[0].start - 1, crop[1]], x[..., 1, :])
    with pytest.raises(ValueError, match="too small"):
        pad_to_multiple(torch.randn(1, 1, 2, 8), 8, 2)


def test_channel_converters_round_trip_and_order():
    x = torch.randn(2, 3, 4, 5, dtype=torch.complex64)
    h = to_channels(x)
    assert h.shape == (2, 6, 4, 5)
    assert h.dtype == torch.float32
    torch.testing.assert_close(h[:, 2], x[:, 1].real)
    torch.testing.assert_close(h[:, 3], x[:, 1].imag)
    torch.testing.assert_close(from_channels(h, True), x)
    real = torch.randn(2, 1, 4, 5)
    assert to_channels(real) is real
    assert from_channels(real, False) is real


def test_preconditioning_matches_table1():
    s, sd = torch.tensor([0.05, 1.3, 40.0], dtype=torch.float64), 0.7
    grid = vp_sigma_grid(1000)
    for i, sv in enumerate(s.tolist()):
        c = [v[i].item() for v in preconditioning("edm", s, sigma_data=sd)]
        expected = [sd**2 / (sv**2 + sd**2), sv * sd / math.sqrt(sv**2 + sd**2), 1 / math.sqrt(sv**2 + sd**2),
                    math.log(sv) / 4]
        np.testing.assert_allclose(c, expected, rtol=1e-12)
        c = [v[i].item() for v in preconditioning("ve", s)]
        np.testing.assert_allclose(c, [1, sv, 1, math.log(sv / 2)], rtol=1e-12)
        c = [v[i].item() for v in preconditioning("vp", s, sigma_grid=grid)]
        np.testing.assert_allclose(c[:3], [1, -sv, 1 / math.sqrt(sv**2 + 1)], rtol=1e-12)
        c = [v[i].item() for v in preconditioning("v", s, sigma_grid=grid)]
        np.testing.assert_allclose(c[:3], [1 / (sv**2 + 1), -sv / math.sqrt(sv**2 + 1), 1 / math.sqrt(sv**2 + 1)],
                                   rtol=1e-12)
    with pytest.raises(ValueError, match="sigma_grid"):
        preconditioning("vp", s)


@pytest.mark.parametrize(("schedule", "tol"), [("linear", 1e-10), ("cosine", 1e-8)])
def test_vp_grid_is_ddpm_sigma(schedule, tol):
    T = 1000
    if schedule == "linear":
        abar = np.cumprod(1 - np.linspace(1e-4, 0.02, T))
    else:  # Nichol & Dhariwal: abar_t = f(t+1)/f(0) where betas are not clipped (all but the last step)
        f = np.cos((np.arange(T + 1) / T + 0.008) / 1.008 * np.pi / 2) ** 2
        abar = f[1:] / f[0]
    grid = vp_sigma_grid(T, schedule)
    assert grid.dtype == torch.float64
    assert grid.shape == (T,)
    assert bool((grid[1:] > grid[:-1]).all())
    np.testing.assert_allclose(grid.numpy()[:-1], np.sqrt((1 - abar) / abar)[:-1], rtol=tol)


def test_timestep_mapping_round_trips():
    grid = vp_sigma_grid(1000, "cosine")
    t = torch.arange(1000, dtype=torch.float64)
    torch.testing.assert_close(sigma_to_timestep(grid, grid), t, rtol=0, atol=1e-9)
    frac = torch.tensor([0.0, 0.25, 10.5, 500.9, 998.99])
    torch.testing.assert_close(sigma_to_timestep(timestep_to_sigma(frac, grid), grid), frac.double())
    mid = (grid[10] * grid[11]).sqrt()  # geometric mean: halfway in log sigma
    assert sigma_to_timestep(mid, grid).item() == pytest.approx(10.5, abs=1e-9)
    ends = sigma_to_timestep(torch.tensor([1e-6, 1e9]), grid)
    assert ends.tolist() == [0.0, 999.0]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("complex_input", [True, False])
def test_shape_dtype_and_zero_network_identity(kind, complex_input):
    den = tiny(parameterisation=kind, complex_input=complex_input, image_channels=2)
    dtype = torch.complex64 if complex_input else torch.float32
    x = torch.randn(2, 2, 37, 50, dtype=dtype)
    sigma = torch.tensor([0.3, 4.0])
    with torch.no_grad():
        out = den(x, sigma)
        assert out.shape == x.shape
        assert out.dtype == x.dtype
        # a fresh network outputs zeros, so D(x) = c_skip x
        c_skip = preconditioning(kind, sigma, sigma_data=0.5, sigma_grid=den.sigma_grid)[0]
        torch.testing.assert_close(out, c_skip.view(2, 1, 1, 1) * x)
        randomise(den)
        out = den(x, sigma)
        assert out.shape == x.shape
        assert out.dtype == x.dtype
        assert not torch.allclose(out, c_skip.view(2, 1, 1, 1) * x)
        assert torch.isfinite(torch.view_as_real(out) if complex_input else out).all()
        torch.testing.assert_close(den(x[:1], 0.3), out[:1], rtol=1e-5, atol=1e-5)  # scalar sigma


def test_sigma_range_per_parameterisation():
    assert (tiny().sigma_min, tiny().sigma_max) == (0.002, 80.0)
    assert tiny(parameterisation="ve", sigma_max=100.0).sigma_max == 100.0
    vp = tiny(parameterisation="vp")
    assert vp.sigma_min == pytest.approx(math.sqrt(1e-4 / (1 - 1e-4)))
    assert vp.sigma_max == float(vp.sigma_grid[-1])
    assert tiny().sigma_grid is None


def test_vp_network_sees_ddpm_state_and_integer_timestep():
    den = tiny(parameterisation="vp", complex_input=False)
    seen = {}
    den.net.register_forward_hook(lambda _m, args, _o: seen.update(x=args[0], t=args[1]))
    x0, n, t = torch.randn(1, 1, 16, 16), torch.randn(1, 1, 16, 16), 321
    s = den.sigma_grid[t].float()
    with torch.no_grad():
        den(x0 + s * n, s.view(1))
    abar = 1 / (1 + s**2)
    torch.testing.assert_close(seen["x"], abar.sqrt() * x0 + (1 - abar).sqrt() * n)
    assert seen["t"].item() == pytest.approx(t, abs=1e-3)


def test_gradient_with_respect_to_complex_input():
    """Posterior samplers (DPS) differentiate through D: the gradient must reach x through pad and crop."""
    den = randomise(tiny())
    x = torch.randn(1, 1, 10, 13, dtype=torch.complex64, requires_grad=True)
    den(x, 0.7).abs().square().sum().backward()
    assert x.grad is not None
    assert x.grad.shape == x.shape
    assert x.grad.abs().min() > 0


def test_3d_tiny_net():
    den = randomise(tiny(spatial_dims=3, complex_input=False, parameterisation="v"))
    x = torch.randn(1, 1, 9, 12, 10)
    with torch.no_grad():
        out = den(x, 1.0)
    assert out.shape == x.shape
    assert out.dtype == torch.float32


def test_class_labels_and_null_class():
    den = randomise(tiny(class_names=("t1", "t2", "flair")))
    assert den.net.class_embedding.num_embeddings == 4
    x = torch.randn(3, 1, 12, 12, dtype=torch.complex64)
    with torch.no_grad():
        null = den(x, 1.0)
        torch.testing.assert_close(den(x, 1.0, class_labels=torch.tensor([-1, -1, -1])), null)
        labelled = den(x, 1.0, class_labels=torch.tensor([0, 2, -1]))
    assert not torch.allclose(labelled[:2], null[:2])
    torch.testing.assert_close(labelled[2], null[2])
    with pytest.raises(ValueError, match="class labels"):
        den(x, 1.0, class_labels=torch.tensor([0, 3, 1]))
    with pytest.raises(ValueError, match="class labels"):
        tiny()(x, 1.0, class_labels=torch.tensor([0, 0, 0]))


def test_label_dropout_replaces_labels_by_null_in_training_only():
    den = randomise(tiny(class_names=("a", "b"), label_dropout=0.5, complex_input=False))
    x = torch.randn(64, 1, 8, 8)
    labels = torch.zeros(64, dtype=torch.long)
    with torch.no_grad():
        cond_out, null_out = den.eval()(x, 1.0, labels), den(x, 1.0)
        train_out = den.train()(x, 1.0, labels)
    per = lambda a: (a - train_out).flatten(1).abs().amax(1) < 1e-6  # noqa: E731
    is_cond, is_null = per(cond_out), per(null_out)
    assert bool((is_cond ^ is_null).all())  # each sample is exactly one of the two
    assert 0.3 < is_null.float().mean().item() < 0.7


def test_conditioning_channels():
    den = randomise(tiny(cond_channels=4, cond_complex=True, cond_dropout=0.5))
    assert den.net.conv_in.conv.in_channels == 6
    x = torch.randn(2, 1, 20, 21, dtype=torch.complex64)
    cond = torch.randn(2, 2, 20, 21, dtype=torch.complex64)
    with torch.no_grad():
        with_cond, null = den(x, 0.5, cond=cond), den(x, 0.5)
        torch.testing.assert_close(den(x, 0.5, cond=torch.zeros_like(cond)), null)
    assert not torch.allclose(with_cond, null)
    with pytest.raises(ValueError, match="cond"):
        den(x, 0.5, cond=cond[:, :1])
    with pytest.raises(TypeError, match="condition"):
        den(x, 0.5, cond=cond.real)


def test_input_validation():
    den = tiny()
    with pytest.raises(TypeError, match="complex"):
        den(torch.randn(1, 1, 8, 8), 1.0)
    with pytest.raises(ValueError, match="x must be"):
        den(torch.randn(1, 2, 8, 8, dtype=torch.complex64), 1.0)
    with pytest.raises(ValueError, match="sigma"):
        den(torch.randn(2, 1, 8, 8, dtype=torch.complex64), torch.ones(3))


def test_config_validation_and_dict_round_trip():
    cfg = DenoiserConfig(preset="tiny", class_names=["a", "b"], parameterisation="v", beta_schedule="cosine")
    assert cfg.class_names == ("a", "b")
    assert DenoiserConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        DenoiserConfig.from_dict({**cfg.to_dict(), "colour": 1})
    for bad in ({"parameterisation": "ddim"}, {"spatial_dims": 4}, {"cond_channels": 3, "cond_complex": True},
                {"class_names": ("a", "a")}, {"label_dropout": 1.0}, {"sigma_min": 2.0, "sigma_max": 1.0},
                {"beta_schedule": "sqrt"}, {"preset": "huge"}):
        with pytest.raises(ValueError):  # noqa: PT011 (each message names its own field)
            DenoiserConfig(**bad)
