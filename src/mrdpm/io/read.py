"""Read any supported file: k-space into a KSpaceCase, images into a Volume, chosen by extension and content.

k-space: ``.h5``/``.hdf5`` (fastMRI when it has a ``kspace`` dataset, ISMRMRD when it has
``dataset/data``), ``.cfl``/``.hdr`` (BART), ``.npy``, ``.npz``, ``.mat`` (MATLAB v7.3).
Images: ``.nii``/``.nii.gz`` (NIfTI), ``.npy``, ``.dcm`` or a folder (DICOM), or a file with DICOM's
``DICM`` preamble.
"""

from __future__ import annotations

from pathlib import Path

import h5py

from mrdpm.errors import MrdpmError
from mrdpm.io.cfl import read_cfl_kspace
from mrdpm.io.checks import open_hdf5
from mrdpm.io.containers import KSpaceCase, Volume
from mrdpm.io.dicom import read_dicom
from mrdpm.io.fastmri import read_fastmri
from mrdpm.io.ismrmrd_h5 import read_ismrmrd
from mrdpm.io.matlab import read_mat
from mrdpm.io.nifti import read_nifti
from mrdpm.io.numpy_io import read_npy_image, read_npy_kspace, read_npz_kspace

__all__ = ["IMAGE_SUFFIXES", "KSPACE_SUFFIXES", "read_image", "read_kspace"]

KSPACE_SUFFIXES = (".h5", ".hdf5", ".cfl", ".hdr", ".npy", ".npz", ".mat")
IMAGE_SUFFIXES = (".nii", ".nii.gz", ".npy", ".dcm", "a DICOM folder")


def _suffix(path: Path) -> str:
    return ".nii.gz" if path.name.lower().endswith(".nii.gz") else path.suffix.lower()


def _read_hdf5_kspace(path: Path) -> KSpaceCase:
    with open_hdf5(path, "HDF5 k-space") as file:
        is_fastmri = "kspace" in file
        is_ismrmrd = isinstance(file.get("dataset"), h5py.Group) and "data" in file["dataset"]
        contents = sorted(file)
    if is_fastmri:
        return read_fastmri(path)
    if is_ismrmrd:
        return read_ismrmrd(path)
    raise MrdpmError(
        f"an HDF5 file with neither a fastMRI 'kspace' dataset nor ISMRMRD 'dataset/data'; it holds {contents}",
        path,
    )


def read_kspace(path: str | Path) -> KSpaceCase:
    """Read k-space from any supported file (module docstring), with each reader's defaults.

    Parameters
    ----------
    path
        The file; for BART, ``name``, ``name.cfl`` or ``name.hdr``.

    Returns
    -------
    KSpaceCase
        ``kspace`` ``(slices, coils, H, W)`` complex64 and what else the file holds.

    Raises
    ------
    MrdpmError
        Unknown extension (the supported ones are listed), or any reader's error.
    """
    path = Path(path)
    suffix = _suffix(path)
    if suffix in (".h5", ".hdf5"):
        return _read_hdf5_kspace(path)
    if suffix in (".cfl", ".hdr") or (not path.exists() and path.with_name(path.name + ".cfl").exists()):
        return read_cfl_kspace(path)
    readers = {".npy": read_npy_kspace, ".npz": read_npz_kspace, ".mat": read_mat}
    if suffix not in readers:
        if not path.exists():
            raise MrdpmError("file not found", path)
        raise MrdpmError(f"unknown k-space file type {suffix!r}; supported: {', '.join(KSPACE_SUFFIXES)}", path)
    return readers[suffix](path)


def _is_dicom_file(path: Path) -> bool:
    with path.open("rb") as stream:
        return stream.read(132)[128:] == b"DICM"


def read_image(path: str | Path) -> Volume:
    """Read an image volume from any supported file or DICOM folder (module docstring).

    Parameters
    ----------
    path
        The file or folder.

    Returns
    -------
    Volume
        ``(D, H, W)`` float32 or complex64 with its affine.

    Raises
    ------
    MrdpmError
        Unknown file type (the supported ones are listed), or any reader's error.
    """
    path = Path(path)
    suffix = _suffix(path)
    if suffix in (".nii", ".nii.gz"):
        return read_nifti(path)
    if suffix == ".npy":
        return read_npy_image(path)
    if suffix == ".dcm" or path.is_dir() or (path.is_file() and _is_dicom_file(path)):
        return read_dicom(path)
    if not path.exists():
        raise MrdpmError("file not found", path)
    raise MrdpmError(f"unknown image file type {suffix!r}; supported: {', '.join(IMAGE_SUFFIXES)}", path)
