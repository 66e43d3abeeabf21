"""Readers and writers for MRI data: fastMRI/ISMRMRD HDF5, BART .cfl, NumPy, MATLAB v7.3, NIfTI, DICOM.

Readers return :class:`KSpaceCase` (k-space) or :class:`Volume` (images); :func:`read_kspace` and
:func:`read_image` choose the reader from the file. Every problem with a file raises
:class:`mrdpm.errors.MrdpmError` naming it.
"""

from mrdpm.io.cfl import read_cfl, read_cfl_kspace, write_cfl, write_cfl_kspace
from mrdpm.io.containers import KSpaceCase, Volume
from mrdpm.io.dicom import read_dicom, write_dicom
from mrdpm.io.fastmri import read_fastmri, write_fastmri
from mrdpm.io.ismrmrd_h5 import read_ismrmrd
from mrdpm.io.matlab import read_mat
from mrdpm.io.nifti import read_nifti, write_nifti
from mrdpm.io.numpy_io import read_npy_image, read_npy_kspace, read_npz_kspace, write_npy, write_npz_kspace
from mrdpm.io.read import read_image, read_kspace

__all__ = [
    "KSpaceCase",
    "Volume",
    "read_cfl",
    "read_cfl_kspace",
    "read_dicom",
    "read_fastmri",
    "read_image",
    "read_ismrmrd",
    "read_kspace",
    "read_mat",
    "read_nifti",
    "read_npy_image",
    "read_npy_kspace",
    "read_npz_kspace",
    "write_cfl",
    "write_cfl_kspace",
    "write_dicom",
    "write_fastmri",
    "write_nifti",
    "write_npy",
    "write_npz_kspace",
]
