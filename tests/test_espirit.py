"""ESPIRiT sensitivity estimation against simulated truth, sigpy's EspiritCalib and real 16-coil data.

Agreement metric (``map_correlation``): per pixel ``|sum_c conj(S_ref) S_est| / (||S_ref|| ||S_est||)``, which
ignores ESPIRiT's per-pixel phase ambiguity, averaged (and its minimum taken) over object pixels.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mrdpm.physics.coils import map_correlation, rss, simulate_coil_maps
from mrdpm.physics.espirit import espirit_maps, find_calibration_region
from mrdpm.physics.fft import fftnc, ifftnc

IXI_T1 = "ixi-t1/t1/IXI132-HH-1415_T1.nii.gz"
REAL_KSPACE = "kspace/brain_16coil_96x96_full.npy"


def _noise(shape: tuple[int, ...], sigma: float, seed: int = 0) -> torch.Tensor:
    return sigma * torch.randn(shape, dtype=torch.complex64, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def simulated(shared_data):
    """An axial IXI T1 slice (120 x 90 at 2 mm, resized to 96 x 72, zero-padded to 96 x 96) times 8 simulated
    coils, with noise."""
    volume = np.asarray(nib.load(shared_data / IXI_T1).dataobj, dtype=np.float32)
    image = torch.from_numpy(volume[:, 70, :].copy())[None, None]
    image = F.pad(F.interpolate(image, size=(96, 72), mode="area")[0, 0], (12, 12))
    image = image / image.max()
    maps = simulate_coil_maps(8, (96, 96))
    kspace = fftnc(maps * image) + _noise((8, 96, 96), 1e-3)
    return {"kspace": kspace, "maps": maps, "object": image > 0.05, "background": image < 0.005}


@pytest.fixture(scope="module")
def simulated_maps(simulated):
    return espirit_maps(simulated["kspace"])


@pytest.fixture(scope="module")
def real(shared_data):
    kspace = torch.from_numpy(np.load(shared_data / REAL_KSPACE))[:, 0]
    kspace = kspace / kspace.abs().max()
    image = rss(ifftnc(kspace))
    return {"kspace": kspace, "object": image > 0.1 * image.max()}


@pytest.fixture(scope="module")
def real_maps(real):
    return espirit_maps(real["kspace"])


def test_recovers_simulated_maps(simulated, simulated_maps):
    est, obj = simulated_maps, simulated["object"]
    assert est.shape == simulated["kspace"].shape
    assert est.dtype == torch.complex64
    correlation = map_correlation(simulated["maps"], est)[obj]
    assert (correlation > 0).float().mean() > 0.99  # the crop keeps the object
    kept = correlation[correlation > 0]
    assert kept.mean() > 0.999
    assert kept.min() > 0.99
    # unit root-sum-of-squares where kept, zero in most of the (noise-only) background
    norms = rss(est)
    torch.testing.assert_close(norms[norms > 0], torch.ones_like(norms[norms > 0]), atol=1e-5, rtol=0)
    assert (norms[simulated["background"]] == 0).float().mean() > 0.8


def test_phase_reference(simulated, simulated_maps):
    coil0 = espirit_maps(simulated["kspace"], phase_reference=0)
    kept = rss(coil0) > 0
    assert (coil0[0][kept].imag.abs() < 1e-6).all()
    assert (coil0[0][kept].real >= 0).all()
    # only the per-pixel phase differs from the default (principal-component) reference
    assert map_correlation(coil0, simulated_maps)[kept].min() > 0.9999
    # the default reference gives a smoother phase than coil 0, which has little signal far from its side
    def phase_jumps(maps):
        step = (maps[:, :, 1:] * maps[:, :, :-1].conj()).sum(dim=0).angle().abs()
        return step[kept[:, 1:] & kept[:, :-1]].max()
    assert phase_jumps(simulated_maps) < phase_jumps(coil0)


def test_batched_equals_single(simulated, simulated_maps):
    kspace = simulated["kspace"]
    batch = espirit_maps(torch.stack([kspace, 2 * kspace]).unsqueeze(0))
    assert batch.shape == (1, 2, *kspace.shape)
    torch.testing.assert_close(batch[0, 0], simulated_maps)
    # ESPIRiT is invariant to the data scale (up to rounding at the crop edge)
    kept = (rss(batch[0, 1]) > 0) & (rss(simulated_maps) > 0)
    assert ((rss(batch[0, 1]) > 0) != (rss(simulated_maps) > 0)).float().mean() < 1e-3
    assert map_correlation(batch[0, 1], simulated_maps)[kept].min() > 0.9999


def test_undersampled_kspace_with_detected_calibration(simulated):
    mask = torch.zeros(96)
    mask[::4] = 1
    mask[36:60] = 1  # 24 ACS lines; line 60 is also sampled by the x4 pattern
    box = find_calibration_region(mask.bool().expand(96, 96))
    assert box == (slice(0, 96), slice(36, 61))
    kspace = simulated["kspace"] * mask
    from_data = espirit_maps(kspace, calib_size=None)
    torch.testing.assert_close(espirit_maps(kspace, calib_size=None, mask=mask), from_data)
    correlation = map_correlation(simulated["maps"], from_data)[simulated["object"]]
    assert correlation.mean() > 0.999
    with pytest.raises(ValueError, match="unsampled"):
        espirit_maps(kspace, calib_size=32)  # wider than the 24 ACS lines


def test_find_calibration_region_2d():
    sampled = torch.zeros(40, 30, dtype=torch.bool)
    sampled[12:30, 10:21] = True
    sampled[5, :] = True  # an isolated line does not join the box
    assert find_calibration_region(sampled) == (slice(12, 30), slice(10, 21))
    with pytest.raises(ValueError, match="centre is not sampled"):
        find_calibration_region(torch.zeros(8, 8, dtype=torch.bool))


def test_3d_volume():
    grid = torch.linspace(-1, 1, 24)
    z, y, x = torch.meshgrid(grid, grid, grid, indexing="ij")
    inside = (z / 0.7).square() + (y / 0.85).square() + (x / 0.75).square() < 1
    phantom = inside * (1 + 0.3 * torch.cos(3 * x) * torch.sin(2 * y))
    maps = simulate_coil_maps(6, (24, 24, 24))
    kspace = fftnc(maps * phantom, ndim=3) + _noise((6, 24, 24, 24), 1e-3)
    est = espirit_maps(kspace, ndim=3, calib_size=12, kernel_size=4, coarse_size=12)
    assert est.shape == (6, 24, 24, 24)
    correlation = map_correlation(maps, est, coil_dim=-4)[inside]
    assert correlation.mean() > 0.999


def test_agrees_with_sigpy_on_simulated(simulated, simulated_maps):
    mri_app = pytest.importorskip("sigpy.mri.app")
    reference = torch.from_numpy(mri_app.EspiritCalib(simulated["kspace"].numpy(), show_pbar=False).run())
    correlation = map_correlation(reference, simulated_maps)[simulated["object"]]
    assert correlation.mean() > 0.999
    assert ((rss(reference) > 0) != (rss(simulated_maps) > 0)).float().mean() < 0.005


def test_real_16_coil_data_agrees_with_sigpy(real, real_maps):
    mri_app = pytest.importorskip("sigpy.mri.app")
    est = real_maps
    reference = torch.from_numpy(mri_app.EspiritCalib(real["kspace"].numpy(), show_pbar=False).run())
    correlation = map_correlation(reference, est)[real["object"]]
    assert correlation.mean() > 0.999
    assert correlation.min() > 0.99
    assert ((rss(reference) > 0) != (rss(est) > 0)).float().mean() < 0.005


def test_real_data_maps_cover_the_head_and_explain_the_data(real, real_maps):
    kspace, obj, est = real["kspace"], real["object"], real_maps
    assert (rss(est)[obj] > 0).float().mean() > 0.99
    # the coil images are (nearly) the SENSE image times the maps: residual energy inside the object is small
    coil_images = ifftnc(kspace)
    combined = (est.conj() * coil_images).sum(dim=0)
    residual = (coil_images - est * combined)[:, obj].abs().square().sum()
    assert residual / coil_images[:, obj].abs().square().sum() < 0.005


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"calib_size": 6}, "too small"),
     ({"calib_size": (24, 200)}, "within the k-space"),
     ({"threshold": 0.0}, "threshold"),
     ({"power_iter": 0}, "power_iter"),
     ({"phase_reference": 8}, "phase_reference"),
     ({"ndim": 4}, "ndim"),
     ({"mask": torch.ones(32, 32)}, "calib_size=None")],
)
def test_invalid_arguments(kwargs, match):
    kspace = _noise((8, 32, 32), 1.0)
    with pytest.raises(ValueError, match=match):
        espirit_maps(kspace, **kwargs)


def test_real_input_is_rejected():
    with pytest.raises(TypeError, match="complex"):
        espirit_maps(torch.ones(4, 32, 32))
