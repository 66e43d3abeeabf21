import math

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view

from mrdpm.eval.metrics import evaluate, nmse, nrmse, psnr, ssim


def _ssim_reference(target: np.ndarray, recon: np.ndarray, data_range: float) -> float:
    """SSIM straight from the definition: every 7x7 window inside the image, sample (co)variances."""
    win_t = sliding_window_view(target, (7, 7)).reshape(-1, 49)
    win_r = sliding_window_view(recon, (7, 7)).reshape(-1, 49)
    mu_t, mu_r = win_t.mean(axis=1), win_r.mean(axis=1)
    var_t, var_r = win_t.var(axis=1, ddof=1), win_r.var(axis=1, ddof=1)
    cov = ((win_t - mu_t[:, None]) * (win_r - mu_r[:, None])).sum(axis=1) / 48
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = (2 * mu_t * mu_r + c1) * (2 * cov + c2) / ((mu_t**2 + mu_r**2 + c1) * (var_t + var_r + c2))
    return float(s.mean())


@pytest.fixture(name="pair")
def _pair() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:40, :36]
    target = np.exp(-((yy - 20) ** 2 + (xx - 15) ** 2) / 150.0) + 0.2 * (xx > 25)
    recon = target + 0.05 * rng.standard_normal(target.shape)
    return target, recon


def test_psnr_nmse_nrmse_of_a_known_error():
    target = torch.zeros(10, 10, dtype=torch.float64)
    target[2, 3] = 2.0  # data range 2
    recon = target + 0.1  # mse 0.01 everywhere
    assert psnr(target, recon) == pytest.approx(10 * math.log10(4 / 0.01), abs=1e-10)
    assert nmse(target, recon) == pytest.approx(100 * 0.01 / 4.0, abs=1e-12)
    assert nrmse(target, recon) == pytest.approx(math.sqrt(0.25), abs=1e-12)
    assert psnr(target, target) == math.inf


def test_psnr_of_a_volume_uses_its_max_and_pooled_error():
    target = torch.ones(2, 8, 8, dtype=torch.float64)
    target[1] *= 3.0
    recon = target.clone()
    recon[0] += 0.3  # slice 0 error only: pooled mse = 0.09 / 2
    assert psnr(target, recon) == pytest.approx(10 * math.log10(9 / 0.045), abs=1e-10)


def test_ssim_of_identical_images_is_one(pair):
    target, _ = pair
    assert ssim(target, target) == pytest.approx(1.0, abs=1e-12)
    assert ssim(np.stack([target, 2 * target]), np.stack([target, 2 * target])) == pytest.approx(1.0, abs=1e-12)


def test_ssim_matches_numpy_reference(pair):
    target, recon = pair
    expected = _ssim_reference(target, recon, target.max())
    assert ssim(target, recon) == pytest.approx(expected, abs=1e-10)
    assert 0.3 < expected < 0.99  # a non-trivial case


def test_ssim_of_a_volume_is_the_slice_mean_with_the_volume_max(pair):
    target, recon = pair
    vol_t, vol_r = np.stack([target, 0.5 * target]), np.stack([recon, 0.5 * recon[::-1]])
    peak = vol_t.max()
    expected = np.mean([_ssim_reference(t, r, peak) for t, r in zip(vol_t, vol_r, strict=True)])
    assert ssim(vol_t, vol_r) == pytest.approx(expected, abs=1e-10)


def test_complex_inputs_are_compared_by_magnitude(pair):
    target, recon = pair
    phase = np.exp(1j * np.linspace(0, 3, target.size)).reshape(target.shape)
    tc, rc = torch.from_numpy(target * phase), torch.from_numpy(recon * np.conj(phase))
    assert evaluate(tc, rc) == pytest.approx(evaluate(np.abs(target), np.abs(recon)), abs=1e-12)


def test_mask_restricts_every_metric(pair):
    target, recon = pair
    mask = np.zeros(target.shape, dtype=bool)
    mask[5:30, 4:20] = True
    t, r = target[mask], recon[mask]
    assert psnr(target, recon, mask) == pytest.approx(10 * np.log10(t.max() ** 2 / np.mean((t - r) ** 2)))
    assert nmse(target, recon, mask) == pytest.approx(np.sum((t - r) ** 2) / np.sum(t**2))
    assert ssim(target, recon, np.ones_like(mask)) == pytest.approx(ssim(target, recon), abs=1e-12)
    assert ssim(target, recon, mask) != pytest.approx(ssim(target, recon), abs=1e-6)
    # a one-pixel mask: the SSIM of the window centred there, with that pixel's value as data range
    only_centre = np.zeros_like(mask)
    only_centre[20, 18] = True
    single = _ssim_reference(target[17:24, 15:22], recon[17:24, 15:22], target[20, 18])
    assert ssim(target, recon, only_centre) == pytest.approx(single, abs=1e-10)


def test_numpy_read_only_input_and_float_outputs(pair):
    target, recon = pair
    target.setflags(write=False)
    result = evaluate(target, recon)
    assert set(result) == {"psnr", "ssim", "nmse", "nrmse"}
    assert all(isinstance(v, float) for v in result.values())
    assert result["nrmse"] == pytest.approx(math.sqrt(result["nmse"]))


def test_invalid_inputs_are_rejected(pair):
    target, recon = pair
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(target, recon[:-1])
    with pytest.raises(TypeError, match="boolean"):
        psnr(target, recon, np.ones(target.shape))
    with pytest.raises(ValueError, match="no pixels"):
        nmse(target, recon, np.zeros(target.shape, dtype=bool))
    with pytest.raises(ValueError, match="at least 7x7"):
        ssim(target[:5], recon[:5])
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        psnr(target[None, None], recon[None, None])
