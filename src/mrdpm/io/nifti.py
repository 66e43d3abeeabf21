"""NIfTI images (``.nii``, ``.nii.gz``) via nibabel, reoriented to our ``(D, H, W)`` RAS+ convention.

Reading reorients to the closest canonical (RAS+) orientation by flips and axis permutations only, then
reverses the axes, so ``Volume.data[d, h, w]`` is NIfTI voxel ``(i, j, k) = (w, h, d)`` of the canonical
image and ``Volume.affine`` maps ``(d, h, w, 1)`` to RAS mm (:class:`~mrdpm.io.containers.Volume`).
Writing undoes the axis reversal; a Volume already in canonical orientation (any Volume this package
reads) is read back identical, the affine to NIfTI-1's float32 precision.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from mrdpm.errors import MrdpmError
from mrdpm.io.checks import output_path, reading, require_file, writing
from mrdpm.io.containers import Volume
from mrdpm.io.geometry import canonical_volume, centred_diagonal_affine, swap_dhw_ijk

__all__ = ["read_nifti", "write_nifti"]


def _frame(data: np.ndarray, frame: int | None, path: Path) -> np.ndarray:
    """Reduce a NIfTI array to 3D: a 2D image gets a singleton k axis, a 4D series gives up one frame."""
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        return data[:, :, None]
    if data.ndim == 3:
        return data
    if data.ndim == 4 and frame is not None:
        if not -data.shape[3] <= frame < data.shape[3]:
            raise MrdpmError(f"{frame=} is out of range for {data.shape[3]} frames", path)
        return data[..., frame]
    if data.ndim == 4:
        raise MrdpmError(f"a 4D image with {data.shape[3]} frames {data.shape}; choose one with frame=", path)
    raise MrdpmError(f"image has {data.ndim} dimensions {data.shape}; expected 2D, 3D or 4D", path)


def read_nifti(path: str | Path, *, frame: int | None = None) -> Volume:
    """Read a NIfTI image.

    Parameters
    ----------
    path
        ``.nii`` or ``.nii.gz``.
    frame
        For 4D images, the index along the 4th axis (time, echo ...) to read; required for 4D data.

    Returns
    -------
    Volume
        ``(D, H, W)`` float32 (scaled by the file's slope/intercept) or complex64; ``D == 1`` for 2D images.

    Raises
    ------
    MrdpmError
        Missing, empty, corrupt or truncated file; 4D without ``frame``; non-numeric voxels; NaN/Inf.
    """
    path = require_file(path)
    with reading(path, "NIfTI"):
        image = nib.load(path)
        if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
            raise MrdpmError(f"a {type(image).__name__}, not a NIfTI image", path)
        data = np.asarray(image.dataobj)
        affine = image.affine
    if data.dtype.names or not np.issubdtype(data.dtype, np.number):
        raise MrdpmError(f"voxels of type {data.dtype} (e.g. RGB) are not supported; expected numbers", path)
    return canonical_volume(_frame(data, frame, path), affine, path)


def write_nifti(
    path: str | Path,
    image: Volume | torch.Tensor,
    *,
    voxel_size_mm: Sequence[float] | None = None,
) -> Path:
    """Write an image to NIfTI-1 (float32 or complex64), sform and qform set (code 1, scanner), units mm.

    Parameters
    ----------
    path
        Output ``.nii`` or ``.nii.gz``.
    image
        A Volume (its affine is written), or a ``(D, H, W)`` / ``(H, W)`` tensor, which needs
        ``voxel_size_mm`` and gets a centred diagonal affine.
    voxel_size_mm
        ``(d, h, w)`` spacing for a tensor; not allowed with a Volume.

    Returns
    -------
    Path
        The file written.
    """
    if isinstance(image, Volume):
        if voxel_size_mm is not None:
            raise ValueError("voxel_size_mm is only for tensors; a Volume carries its own affine")
        data, affine = image.data, image.affine
    else:
        if voxel_size_mm is None:
            raise ValueError("writing a bare tensor needs voxel_size_mm=(d, h, w)")
        data = image if image.dim() == 3 else image[None]
        affine = centred_diagonal_affine(data.shape, voxel_size_mm)
    if data.dim() == 2:
        data = data[None]
    if data.dim() != 3:
        raise ValueError(f"image must be (D, H, W) or (H, W), got shape {tuple(data.shape)}")
    array = data.detach().cpu().numpy()
    array = array.astype(np.complex64 if np.iscomplexobj(array) else np.float32).transpose(2, 1, 0)
    affine_ijk = swap_dhw_ijk(affine)
    nifti = nib.Nifti1Image(array, affine_ijk)
    nifti.set_sform(affine_ijk, code=1)
    nifti.set_qform(affine_ijk, code=1)
    nifti.header.set_xyzt_units("mm")
    path = output_path(path)
    with writing(path, "NIfTI"):
        nib.save(nifti, path)
    return path
