"""3D SSIM, MAE and Pearson correlation (mrdpm.eval.metrics) against direct NumPy computations."""

import math

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view

from mrdpm.eval.metrics import mae, mean_bias, pearson, ssim


def _ssim3d_reference(target: np.ndarray, recon: np.ndarray, data_range: float) -> np.ndarray:
    """The SSIM of every 7x7x7 window inside the volume, from the definition (sample (co)variances)."""
    shape = tuple(n - 6 for n in target.shape)
    win_t = sliding_window_view(target, (7, 7, 7)).reshape(-1, 343)
    win_r = sliding_window_view(recon, (7, 7, 7)).reshape(-1, 343)
    mu_t, mu_r = win_t.mean(axis=1), win_r.mean(axis=1)
    var_t, var_r = win_t.var(axis=1, ddof=1), win_r.var(axis=1, ddof=1)
    cov = ((win_t - mu_t[:, None]) * (win_r - mu_r[:, None])).sum(axis=1) / 342
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = (2 * mu_t * mu_r + c1) * (2 * cov + c2) / ((mu_t**2 + mu_r**2 + c1) * (var_t + var_r + c2))
    return s.reshape(shape)


@pytest.fixture(name="volumes")
def _volumes() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    zz, yy, xx = np.mgrid[:10, :11, :9]
    target = np.exp(-((zz - 5) ** 2 + (yy - 5) ** 2 + (xx - 4) ** 2) / 12.0) + 0.3 * (xx > 5)
    recon = target + 0.05 * rng.standard_normal(target.shape)
    return target, recon


def test_3d_ssim_of_identical_volumes_is_one(volumes):
    target, _ = volumes
    assert ssim(target, target, spatial_dims=3) == pytest.approx(1.0, abs=1e-12)
    assert ssim(torch.from_numpy(target), torch.from_numpy(target) * (1 + 0j), spatial_dims=3) == pytest.approx(1.0)


def test_3d_ssim_matches_numpy_reference(volumes):
    target, recon = volumes
    smap = _ssim3d_reference(target, recon, target.max())
    value = ssim(target, recon, spatial_dims=3)
    assert value == pytest.approx(float(smap.mean()), abs=1e-10)
    assert 0.3 < value < 0.99  # a non-trivial case
    assert value != pytest.approx(ssim(target, recon), abs=1e-3)  # not the slice-wise 2D SSIM
    # a mask keeps the window centres inside it; the data range is the target's maximum inside the mask
    mask = np.zeros(target.shape, dtype=bool)
    mask[3:6, 4:7, 3:5] = True
    masked = _ssim3d_reference(target, recon, target[mask].max())[0:3, 1:4, 0:2]
    assert ssim(target, recon, mask, spatial_dims=3) == pytest.approx(float(masked.mean()), abs=1e-10)


def test_3d_ssim_rejects_bad_shapes(volumes):
    target, recon = volumes
    with pytest.raises(ValueError, match="at least 7x7x7"):
        ssim(target[:6], recon[:6], spatial_dims=3)
    with pytest.raises(ValueError, match=r"\(D, H, W\)"):
        ssim(target[0], recon[0], spatial_dims=3)
    with pytest.raises(ValueError, match="spatial_dims"):
        ssim(target, recon, spatial_dims=4)
    border = np.zeros(target.shape, dtype=bool)
    border[0] = True
    with pytest.raises(ValueError, match="border"):
        ssim(target, recon, border, spatial_dims=3)


def test_mae_by_hand():
    target = np.array([[1.0, 2.0], [3.0, 4.0]])
    recon = np.array([[1.5, 2.0], [2.0, 4.0]])
    assert mae(target, recon) == pytest.approx((0.5 + 0 + 1 + 0) / 4)
    mask = np.array([[True, False], [True, False]])
    assert mae(target, recon, mask) == pytest.approx((0.5 + 1) / 2)
    assert mae(target * 1j, recon) == pytest.approx(mae(target, recon))  # magnitudes


def test_mean_bias_by_hand():
    target = torch.tensor([[1.0, 3.0], [5.0, 7.0]])
    assert mean_bias(target, 1.1 * target) == pytest.approx(10.0)
    assert mean_bias(target, target - 1, target > 2) == pytest.approx(-20.0)  # mean 5 -> 4 over 3, 5, 7
    assert mean_bias(target * 1j, 1.1 * target) == pytest.approx(10.0)  # magnitudes
    assert math.isnan(mean_bias(torch.zeros(2, 2), target))


def test_pearson_matches_numpy_corrcoef(volumes):
    target, recon = volumes
    assert pearson(target, recon) == pytest.approx(np.corrcoef(target.ravel(), recon.ravel())[0, 1], abs=1e-12)
    mask = target > 0.2
    expected = np.corrcoef(target[mask], recon[mask])[0, 1]
    assert pearson(target, recon, mask) == pytest.approx(expected, abs=1e-12)
    assert expected != pytest.approx(pearson(target, recon), abs=1e-4)
    assert pearson(target, 3 * target + 1) == pytest.approx(1.0, abs=1e-12)
    assert pearson(target, -target) == pytest.approx(-1.0, abs=1e-12)
    assert math.isnan(pearson(target, np.ones_like(target)))
