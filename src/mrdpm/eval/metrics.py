"""Image quality metrics on magnitude images, following the fastMRI evaluation conventions.

Every metric takes a target and a reconstruction of shape ``(H, W)`` or a volume ``(S, H, W)`` of slices
(torch tensors or NumPy arrays, real or complex; complex inputs are compared by magnitude) and returns one
Python float for the whole volume, as fastMRI's ``evaluate.py`` does:

- ``nmse = ||t - r||^2 / ||t||^2`` and ``psnr = 10 log10(max(t)^2 / mean((t - r)^2))`` over all voxels;
- ``ssim``: the mean over slices of the 2D SSIM (Wang et al., IEEE TIP 2004) with a 7x7 uniform window,
  ``K1 = 0.01``, ``K2 = 0.03``, sample covariances (``N / (N - 1)``), averaged over the window centres whose
  window lies inside the image, i.e. scikit-image's ``structural_similarity`` defaults; with
  ``spatial_dims=3`` the same on a ``(D, H, W)`` volume with a 7x7x7 window (scikit-image's 3D SSIM);
- the data range of ``psnr`` and ``ssim`` is the maximum of the target over the whole volume;
- ``mae = mean(|t - r|)`` (in the images' units) and ``pearson``, the correlation coefficient of target and
  reconstruction voxel values, over all voxels; ``mean_bias = 100 (mean(r) - mean(t)) / mean(t)``, the error of
  the mean intensity in % (a global scale error, which ``pearson`` does not see).

An optional boolean ``mask`` (broadcastable to the images, e.g. ``(H, W)``) restricts every sum and mean, and the
target maximum, to the pixels where it is True (for ``ssim``: to the window centres inside it).
Computation is in float64.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["evaluate", "mae", "mean_bias", "nmse", "nrmse", "pearson", "psnr", "ssim"]

SSIM_WINDOW = 7
SSIM_K1, SSIM_K2 = 0.01, 0.03

ArrayLike = torch.Tensor | np.ndarray


def _as_tensor(x: ArrayLike) -> torch.Tensor:
    # copy NumPy input: read-only arrays (np.load with mmap, shared data) cannot be shared with torch
    return torch.tensor(x) if isinstance(x, np.ndarray) else torch.as_tensor(x)


def _magnitude(x: ArrayLike, name: str) -> torch.Tensor:
    t = _as_tensor(x)
    if t.dim() not in (2, 3):
        raise ValueError(f"{name} must be (H, W) or (S, H, W), got shape {tuple(t.shape)}")
    return (t.abs() if t.is_complex() else t).to(torch.float64)


def _prepare(target: ArrayLike, recon: ArrayLike, mask: ArrayLike | None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    t, r = _magnitude(target, "target"), _magnitude(recon, "recon")
    if t.shape != r.shape:
        raise ValueError(f"target {tuple(t.shape)} and recon {tuple(r.shape)} differ in shape")
    if mask is None:
        return t, r, None
    m = _as_tensor(mask)
    if m.dtype != torch.bool:
        raise TypeError(f"mask must be boolean, got {m.dtype}")
    try:
        m = torch.broadcast_to(m, t.shape)
    except RuntimeError as err:
        raise ValueError(f"mask {tuple(m.shape)} does not broadcast to images {tuple(t.shape)}") from err
    if not bool(m.any()):
        raise ValueError("mask selects no pixels")
    return t, r, m


def _select(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return x if mask is None else x[mask]


def nmse(target: ArrayLike, recon: ArrayLike, mask: ArrayLike | None = None) -> float:
    """Normalised mean squared error ``||t - r||^2 / ||t||^2`` of magnitudes over the volume (or the mask)."""
    t, r, m = _prepare(target, recon, mask)
    t, r = _select(t, m), _select(r, m)
    return float((t - r).square().sum() / t.square().sum())


def nrmse(target: ArrayLike, recon: ArrayLike, mask: ArrayLike | None = None) -> float:
    """Normalised root mean squared error, ``sqrt(nmse)``."""
    return math.sqrt(nmse(target, recon, mask))


def psnr(target: ArrayLike, recon: ArrayLike, mask: ArrayLike | None = None) -> float:
    """Peak signal-to-noise ratio in dB with peak = the target's maximum magnitude (fastMRI convention).

    Returns ``inf`` for identical images.
    """
    t, r, m = _prepare(target, recon, mask)
    t, r = _select(t, m), _select(r, m)
    mse = float((t - r).square().mean())
    peak = float(t.max())
    return math.inf if mse == 0.0 else 10.0 * math.log10(peak**2 / mse)


def mae(target: ArrayLike, recon: ArrayLike, mask: ArrayLike | None = None) -> float:
    """Mean absolute error ``mean(|t - r|)`` of magnitudes over the volume (or the mask), in the images' units."""
    t, r, m = _prepare(target, recon, mask)
    return float((_select(t, m) - _select(r, m)).abs().mean())


def mean_bias(target: ArrayLike, recon: ArrayLike, mask: ArrayLike | None = None) -> float:
    """Error of the mean magnitude in % of the target's mean, over the volume (or the mask).

    ``100 (mean(r) - mean(t)) / mean(t)``; NaN when the target's mean is 0.
    """
    t, r, m = _prepare(target, recon, mask)
    t, r = _select(t, m), _select(r, m)
    return 100 * float(r.mean() - t.mean()) / float(t.mean()) if float(t.mean()) != 0 else math.nan


def pearson(target: ArrayLike, recon: ArrayLike, mask: ArrayLike | None = None) -> float:
    """Pearson correlation coefficient of the magnitudes' voxel values over the volume (or the mask).

    ``sum((t - mean t)(r - mean r)) / sqrt(sum (t - mean t)^2 sum (r - mean r)^2)``; NaN when either is constant.
    """
    t, r, m = _prepare(target, recon, mask)
    t, r = _select(t, m), _select(r, m)
    t, r = t - t.mean(), r - r.mean()
    denominator = float((t.square().sum() * r.square().sum()).sqrt())
    return float((t * r).sum()) / denominator if denominator > 0 else math.nan


_AVG_POOL = {2: F.avg_pool2d, 3: F.avg_pool3d}


def _ssim_map(t: torch.Tensor, r: torch.Tensor, data_range: float, spatial_dims: int) -> torch.Tensor:
    """SSIM at every window centre whose 7^n window fits: ``(N, *spatial)`` -> ``(N, *(spatial - 6))``."""
    n = SSIM_WINDOW**spatial_dims
    cov_norm = n / (n - 1)
    stack = torch.stack([t, r, t * t, r * r, t * r], dim=1)  # (N, 5, *spatial)
    mu_t, mu_r, m_tt, m_rr, m_tr = _AVG_POOL[spatial_dims](stack, SSIM_WINDOW, stride=1).unbind(dim=1)
    var_t = cov_norm * (m_tt - mu_t * mu_t)
    var_r = cov_norm * (m_rr - mu_r * mu_r)
    cov = cov_norm * (m_tr - mu_t * mu_r)
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    num = (2 * mu_t * mu_r + c1) * (2 * cov + c2)
    den = (mu_t * mu_t + mu_r * mu_r + c1) * (var_t + var_r + c2)
    return num / den


def ssim(target: ArrayLike, recon: ArrayLike, mask: ArrayLike | None = None, *, spatial_dims: int = 2) -> float:
    """Structural similarity of magnitudes (fastMRI / scikit-image defaults; module docstring).

    Parameters
    ----------
    target, recon
        ``(H, W)`` or ``(S, H, W)`` images for ``spatial_dims=2``; a ``(D, H, W)`` volume for ``spatial_dims=3``.
    mask
        Optional boolean mask broadcastable to the images: each slice's (or the volume's) SSIM is then the mean
        over the window centres inside it, and slices with no such centre are left out of the average.
    spatial_dims
        2: the SSIM of every 2D slice with a 7x7 window, averaged over slices; 3: the 3D SSIM of the volume
        with a 7x7x7 window.

    Returns
    -------
    float
        In ``[-1, 1]``, 1 for identical images.

    Raises
    ------
    ValueError
        For images smaller than the window along a spatial axis, or a mask with no voxel at least 3 voxels
        from the border.
    """
    if spatial_dims not in _AVG_POOL:
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims=}")
    t, r, m = _prepare(target, recon, mask)
    if spatial_dims == 3 and t.dim() != 3:
        raise ValueError(f"3D ssim needs a (D, H, W) volume, got shape {tuple(t.shape)}")
    spatial = tuple(t.shape[-spatial_dims:])
    if min(spatial) < SSIM_WINDOW:
        raise ValueError(f"ssim needs images of at least {'x'.join([str(SSIM_WINDOW)] * spatial_dims)}, got "
                         f"{tuple(t.shape)}")
    data_range = float(_select(t, m).max())
    smap = _ssim_map(t.reshape(-1, *spatial), r.reshape(-1, *spatial), data_range, spatial_dims)
    axes = tuple(range(-spatial_dims, 0))
    if m is None:
        return float(smap.mean(dim=axes).mean())
    pad = SSIM_WINDOW // 2
    inside = m.reshape(-1, *spatial)[(slice(None), *(slice(pad, -pad),) * spatial_dims)]
    counts = inside.sum(dim=axes)
    if not bool((counts > 0).any()):
        raise ValueError("mask holds no pixel at least 3 pixels from the image border")
    per_item = (smap * inside).sum(dim=axes)[counts > 0] / counts[counts > 0]
    return float(per_item.mean())


def evaluate(target: ArrayLike, recon: ArrayLike, mask: ArrayLike | None = None) -> dict[str, float]:
    """All four metrics as ``{"psnr": dB, "ssim": ..., "nmse": ..., "nrmse": ...}`` (Python floats)."""
    return {
        "psnr": psnr(target, recon, mask),
        "ssim": ssim(target, recon, mask),
        "nmse": nmse(target, recon, mask),
        "nrmse": nrmse(target, recon, mask),
    }
