"""Affines between array indices and millimetres, in this package's index order.

Our arrays are indexed ``(d, h, w)`` (slice, row, column); NIfTI indexes the same voxels ``(i, j, k) = (w, h, d)``.
DICOM and ISMRMRD give patient coordinates in LPS (x to the patient's left, y to posterior); NIfTI and
:class:`~mrdpm.io.containers.Volume` use RAS. All affines are ``(4, 4)`` float64.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from nibabel import orientations

from mrdpm.errors import MrdpmError
from mrdpm.io.containers import Volume

__all__ = ["canonical_volume", "centred_diagonal_affine", "flip_lps_ras", "swap_dhw_ijk"]


def swap_dhw_ijk(affine: np.ndarray) -> np.ndarray:
    """Reorder an affine's index columns between our ``(d, h, w)`` order and NIfTI's ``(i, j, k)``.

    The map is its own inverse: use it in both directions.

    Parameters
    ----------
    affine
        ``(4, 4)`` index -> mm.

    Returns
    -------
    numpy.ndarray
        ``(4, 4)`` float64 with columns 0 and 2 exchanged.
    """
    return np.asarray(affine, dtype=np.float64)[:, [2, 1, 0, 3]]


def flip_lps_ras(affine: np.ndarray) -> np.ndarray:
    """Convert an affine's world coordinates between LPS (DICOM, ISMRMRD) and RAS (NIfTI); its own inverse.

    Parameters
    ----------
    affine
        ``(4, 4)`` index -> mm in one convention.

    Returns
    -------
    numpy.ndarray
        ``(4, 4)`` float64 with the x and y rows negated.
    """
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, dtype=np.float64)


def centred_diagonal_affine(shape: Sequence[int], voxel_size_mm: Sequence[float]) -> np.ndarray:
    """Affine for data without patient orientation: ``d`` along z, ``h`` along y, ``w`` along x (mm).

    The voxel at index ``n // 2`` of each axis (the FFT centre) sits at the origin.

    Parameters
    ----------
    shape
        ``(D, H, W)`` array shape.
    voxel_size_mm
        ``(d, h, w)`` spacing in mm, positive.

    Returns
    -------
    numpy.ndarray
        ``(4, 4)`` float64 index ``(d, h, w, 1)`` -> ``(x, y, z, 1)``.
    """
    if len(shape) != 3 or len(voxel_size_mm) != 3:
        raise ValueError(f"{shape=} and {voxel_size_mm=} must both have 3 entries (d, h, w)")
    if not all(np.isfinite(v) and v > 0 for v in voxel_size_mm):
        raise ValueError(f"{voxel_size_mm=} must be positive and finite")
    sd, sh, sw = (float(v) for v in voxel_size_mm)
    affine = np.array([[0.0, 0.0, sw, 0.0], [0.0, sh, 0.0, 0.0], [sd, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    centre = np.array([n // 2 for n in shape] + [1], dtype=np.float64)
    affine[:3, 3] = -(affine @ centre)[:3]
    return affine


def canonical_volume(data_ijk: np.ndarray, affine_ijk: np.ndarray, path: Path | None) -> Volume:
    """Reorient a NIfTI-ordered image to the closest canonical (RAS+) orientation and build a Volume.

    Axes are only flipped and permuted (no resampling), as ``nibabel.as_closest_canonical`` does; then the
    axes are reversed to our ``(d, h, w)`` order.

    Parameters
    ----------
    data_ijk
        ``(I, J, K)`` image, real or complex.
    affine_ijk
        ``(4, 4)`` index ``(i, j, k)`` -> RAS mm.
    path
        Recorded in the Volume and named in errors.

    Returns
    -------
    Volume
        ``data`` ``(D, H, W) = (K, J, I)`` (after reorientation) float32 or complex64, affine in ``(d, h, w)``.

    Raises
    ------
    MrdpmError
        If the image holds NaN or Inf, or the affine is singular.
    """
    bad = ~np.isfinite(data_ijk)
    if bad.any():
        raise MrdpmError(f"image holds {int(bad.sum())} NaN or Inf values", path)
    if not np.isfinite(affine_ijk).all() or abs(np.linalg.det(affine_ijk[:3, :3])) < 1e-12:
        raise MrdpmError(f"the affine is singular or not finite:\n{affine_ijk}", path)
    ornt = orientations.io_orientation(affine_ijk)
    data = orientations.apply_orientation(data_ijk, ornt)
    affine = affine_ijk @ orientations.inv_ornt_aff(ornt, data_ijk.shape)
    dtype = np.complex64 if np.iscomplexobj(data) else np.float32
    data = np.ascontiguousarray(data.transpose(2, 1, 0), dtype=dtype)
    return Volume(torch.from_numpy(data), swap_dhw_ijk(affine), path)
