"""Ultra-low-field simulation: MRIQT transfer function, k-space resolution model, Rician noise, histogram matching."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mrdpm.errors import MrdpmError
from mrdpm.physics.fft import fftnc, ifftnc
from mrdpm.physics.lowfield import (
    LowFieldSettings,
    apply_transfer_function,
    degrade_resolution,
    estimate_transfer_function,
    field_scaled_snr_db,
    histogram_match,
    load_transfer_function,
    resolution_filter,
    save_transfer_function,
    simulate_low_field,
)
from mrdpm.physics.synthetic import smooth_field

SHAPE = (16, 16, 16)
ISO = (1.0, 1.0, 1.0)


def _known_transfer(shape):
    grids = torch.meshgrid(*[torch.linspace(-1, 1, n) for n in shape], indexing="ij")
    radius2 = sum(g**2 for g in grids)
    return (torch.exp(-2 * radius2) * torch.exp(1j * 0.5 * grids[0])).to(torch.complex64)


def test_transfer_function_recovers_known_filter():
    g = torch.Generator().manual_seed(1)
    truth = _known_transfer(SHAPE)
    hf = [10 * torch.randn(SHAPE, generator=g) for _ in range(3)]
    lf = [ifftnc(truth * fftnc(x.to(torch.complex64), 3), 3) for x in hf]
    estimate = estimate_transfer_function(hf, lf)
    power = sum(fftnc(x.to(torch.complex64), 3).abs().square() for x in hf)
    strong = power > 1.0
    assert strong.float().mean() > 0.95
    error = (estimate - truth).abs()[strong].max().item()
    assert error < 1e-3 * truth.abs().max().item()
    # stacked (N, D, H, W) input gives the same estimate
    torch.testing.assert_close(estimate_transfer_function(torch.stack(hf), torch.stack(lf)), estimate)


def test_all_ones_transfer_is_identity_on_raw_filter_path():
    x = torch.rand(SHAPE, generator=torch.Generator().manual_seed(2))
    ones = torch.ones(SHAPE, dtype=torch.complex64)
    out = apply_transfer_function(x, ones, zero_dc=False, clip_percentile=None, rescale=False)
    torch.testing.assert_close(out, x, atol=1e-6, rtol=1e-5)


def test_mriqt_post_processing():
    x = torch.rand(SHAPE, generator=torch.Generator().manual_seed(3))
    ones = torch.ones(SHAPE, dtype=torch.complex64)
    raw = apply_transfer_function(x, ones, clip_percentile=None, rescale=False)
    assert abs(raw.mean().item()) < 1e-6  # DC removed
    out = apply_transfer_function(x, ones)
    assert out.min().item() == 0.0
    assert out.max().item() == 1.0
    assert 0.005 < (out == 1.0).float().mean().item() < 0.02  # top 1% clipped onto one value


@pytest.mark.parametrize("suffix", [".npy", ".safetensors"])
def test_transfer_function_file_round_trip_and_grid_check(tmp_path, suffix):
    transfer = _known_transfer(SHAPE)
    path = save_transfer_function(tmp_path / f"s{suffix}", transfer)
    torch.testing.assert_close(load_transfer_function(path, SHAPE), transfer)
    with pytest.raises(MrdpmError, match=rf"s{suffix}.*\(16, 16, 16\).*\(16, 16, 8\)"):
        load_transfer_function(path, (16, 16, 8))


def test_transfer_function_file_errors(tmp_path):
    np.save(tmp_path / "real.npy", np.zeros(SHAPE, dtype=np.float32))
    with pytest.raises(MrdpmError, match=r"real\.npy.*complex"):
        load_transfer_function(tmp_path / "real.npy")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(MrdpmError, match=r"junk\.safetensors"):
        load_transfer_function(tmp_path / "junk.safetensors")
    with pytest.raises(MrdpmError, match=r"missing\.npy.*not found"):
        load_transfer_function(tmp_path / "missing.npy")
    with pytest.raises(MrdpmError, match=r"\.mat"):
        save_transfer_function(tmp_path / "s.mat", _known_transfer(SHAPE))


def test_kspace_truncation_keeps_low_and_removes_high_frequencies():
    x = torch.rand((32, 32, 32), generator=torch.Generator().manual_seed(4))
    out = degrade_resolution(x, ISO, (1.0, 2.0, 4.0), slice_axis=None)
    k_in, k_out = fftnc(x.to(torch.complex64), 3), fftnc(out, 3)
    keep = torch.zeros(32, 32, 32, dtype=torch.bool)
    keep[:, 8:24, 12:20] = True  # 32 / 2 = 16 and 32 / 4 = 8 central samples, DC at index 16
    torch.testing.assert_close(k_out[keep], k_in[keep], atol=1e-5, rtol=1e-5)
    assert k_out[~keep].abs().max().item() < 1e-5


def test_through_plane_box_average():
    g = torch.Generator().manual_seed(5)
    constant_along_d = torch.rand((1, 24, 24), generator=g).expand(20, 24, 24).contiguous()
    out = degrade_resolution(constant_along_d, (0.86, 1.0, 1.0), (5.0, 1.0, 1.0), slice_axis=0)
    torch.testing.assert_close(out.real, constant_along_d, atol=1e-5, rtol=1e-5)
    # a delta along the slice axis becomes the box profile: width 2.5 voxels -> weights 0.3, 0.4, 0.3
    delta = torch.zeros(12, 4, 4)
    delta[6] = 1.0
    profile = degrade_resolution(delta, ISO, (2.5, 1.0, 1.0), slice_axis=0).real[:, 0, 0]
    expected = torch.zeros(12)
    expected[5:8] = torch.tensor([0.3, 0.4, 0.3])
    torch.testing.assert_close(profile, expected, atol=1e-6, rtol=0)
    assert resolution_filter((12, 4, 4), ISO, (2.5, 1.0, 1.0))[6, 2, 2].item() == pytest.approx(1.0)


def _measured_snr_db(out, signal):
    return 20 * math.log10(signal / (out - signal).std().item())


@pytest.mark.parametrize(("rician", "snr_db"), [(False, 12.0), (True, 30.0)])
def test_simulated_snr_on_flat_phantom(rician, snr_db):
    flat = torch.full((24, 32, 32), 3.0)
    settings = LowFieldSettings(voxel_mm=(5.0, 1.6, 1.6), snr_db=snr_db, rician=rician)
    out = simulate_low_field(flat, ISO, settings, generator=torch.Generator().manual_seed(6))
    assert out.shape == flat.shape
    assert out.dtype == torch.float32
    assert _measured_snr_db(out, 3.0) == pytest.approx(snr_db, rel=0.1)


def test_rician_bias_in_background():
    phantom = torch.zeros(16, 32, 32)
    phantom[:, :, :16] = 1.0
    settings = LowFieldSettings(voxel_mm=ISO, slice_axis=None, snr_db=6.0)
    out = simulate_low_field(phantom, ISO, settings, generator=torch.Generator().manual_seed(7))
    sigma = 10 ** (-6.0 / 20)
    assert out[:, :, 16:].mean().item() == pytest.approx(sigma * math.sqrt(math.pi / 2), rel=0.05)
    assert bool((out >= 0).all())


def test_field_scaled_snr():
    common = {"reference_field_t": 3.0, "reference_voxel_mm": ISO, "reference_snr_db": 40.0}
    assert field_scaled_snr_db(3.0, ISO, **common) == pytest.approx(40.0)
    assert field_scaled_snr_db(1.5, ISO, exponent=1.0, **common) == pytest.approx(40.0 - 20 * math.log10(2))
    assert field_scaled_snr_db(3.0, (2.0, 1.0, 1.0), **common) == pytest.approx(40.0 + 20 * math.log10(2))
    flat = torch.full((24, 32, 32), 1.0)
    settings = LowFieldSettings(field_t=1.5, voxel_mm=(2.0, 1.0, 1.0), snr_db=None, reference_snr_db=30.0,
                                snr_field_exponent=1.0, rician=False)
    out = simulate_low_field(flat, ISO, settings, generator=torch.Generator().manual_seed(8))
    assert _measured_snr_db(out, 1.0) == pytest.approx(30.0, rel=0.1)  # -6 dB field, +6 dB voxel volume


def test_simulation_is_deterministic_and_noise_free_option():
    x = smooth_field((16, 24, 24), spatial_dims=3, generator=torch.Generator().manual_seed(9)).abs()
    settings = LowFieldSettings(voxel_mm=(3.0, 2.0, 2.0))
    first = simulate_low_field(x, ISO, settings, generator=torch.Generator().manual_seed(10))
    second = simulate_low_field(x, ISO, settings, generator=torch.Generator().manual_seed(10))
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    clean = simulate_low_field(x, ISO, LowFieldSettings(voxel_mm=(3.0, 2.0, 2.0), noise=False))
    torch.testing.assert_close(clean, degrade_resolution(x, ISO, (3.0, 2.0, 2.0)).abs())


def test_contrast_from_neonatal_labels():
    labels = torch.zeros(8, 16, 16, dtype=torch.int64)
    labels[:, 2:14, 2:14] = 2  # cortical GM
    labels[:, 4:12, 4:12] = 3  # WM
    labels[:, 6:10, 6:10] = 5  # ventricles
    hf = torch.rand(labels.shape, generator=torch.Generator().manual_seed(11))
    settings = LowFieldSettings(voxel_mm=ISO, slice_axis=None, noise=False, contrast="T2w")
    out = simulate_low_field(hf, ISO, settings, labels)
    assert out[labels == 5].mean() > out[labels == 3].mean() > out[labels == 2].mean() > out[labels == 0].mean()
    with pytest.raises(ValueError, match="labels"):
        simulate_low_field(hf, ISO, settings)


def test_histogram_match():
    g = torch.Generator().manual_seed(12)
    x = torch.rand(1000, generator=g)
    reference = torch.randn(1000, generator=g).exp()
    matched = histogram_match(x, reference)
    torch.testing.assert_close(matched.sort().values, reference.sort().values)
    assert bool((matched[x.argsort()].diff() >= 0).all())
    ties = histogram_match(torch.tensor([0.0, 1.0, 1.0, 2.0]), torch.tensor([0.0, 1.0, 2.0, 3.0]))
    assert ties[1] == ties[2] == 1.5
    out = simulate_low_field(x.reshape(10, 10, 10), ISO, LowFieldSettings(voxel_mm=ISO), histogram_reference=reference,
                             generator=g)
    torch.testing.assert_close(out.reshape(-1).sort().values, reference.sort().values)


def test_errors_name_the_value():
    with pytest.raises(ValueError, match="hf"):
        simulate_low_field(torch.zeros(4, 4), (1.0, 1.0), LowFieldSettings())
    with pytest.raises(ValueError, match="slice_axis"):
        LowFieldSettings(slice_axis=3)
    with pytest.raises(ValueError, match="voxel_mm"):
        LowFieldSettings(voxel_mm=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="kind"):
        LowFieldSettings(tissue_kind="feline")
    with pytest.raises(ValueError, match="pair 1"):
        estimate_transfer_function([torch.zeros(SHAPE)] * 2, [torch.zeros(SHAPE), torch.zeros(4, 4, 4)])
    with pytest.raises(ValueError, match="transfer"):
        apply_transfer_function(torch.zeros(SHAPE), torch.ones(4, 4, 4, dtype=torch.complex64))
