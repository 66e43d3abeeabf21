"""Bad files: every reader raises one MrdpmError that names the file and the problem."""

from __future__ import annotations

import gzip

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch

from mrdpm.errors import MrdpmError
from mrdpm.io import (
    KSpaceCase,
    read_cfl,
    read_dicom,
    read_fastmri,
    read_image,
    read_ismrmrd,
    read_kspace,
    read_mat,
    read_nifti,
    write_cfl,
    write_fastmri,
    write_nifti,
)


def _complex(*shape: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


def _raises(reader, path, match: str, named=None) -> MrdpmError:
    with pytest.raises(MrdpmError, match=match) as info:
        reader(path)
    assert str(named or path) in str(info.value)
    return info.value


def _h5(path, **datasets):
    with h5py.File(path, "w") as f:
        for name, data in datasets.items():
            f.create_dataset(name, data=data)
    return path


@pytest.mark.parametrize("name", ["a.h5", "a.npy", "a.npz", "a.mat", "a.cfl", "a.txt"])
def test_missing_kspace_file(tmp_path, name):
    named = tmp_path / "a.hdr" if name == "a.cfl" else None  # BART: the header is read first
    _raises(read_kspace, tmp_path / name, "not found", named=named)


@pytest.mark.parametrize("name", ["a.nii.gz", "a.npy", "a.dcm", "a.png"])
def test_missing_image_file(tmp_path, name):
    _raises(read_image, tmp_path / name, "not found")


@pytest.mark.parametrize(("name", "reader"), [("a.h5", read_kspace), ("a.npy", read_kspace), ("a.npz", read_kspace),
                                              ("a.mat", read_kspace), ("a.nii.gz", read_image)])  # fmt: skip
def test_empty_file(tmp_path, name, reader):
    (tmp_path / name).touch()
    _raises(reader, tmp_path / name, "empty")


def test_not_hdf5(tmp_path):
    (tmp_path / "a.h5").write_text("hello, not HDF5")
    _raises(read_kspace, tmp_path / "a.h5", "not an HDF5 file")


def test_truncated_hdf5_is_wrapped(tmp_path):
    path = _h5(tmp_path / "t.h5", kspace=_complex(4, 2, 32, 32))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    err = _raises(read_fastmri, path, "corrupt, truncated")
    assert err.__cause__ is not None
    assert any("underlying error" in note for note in err.__notes__)


def test_hdf5_without_kspace(tmp_path):
    path = _h5(tmp_path / "n.h5", image=np.zeros((2, 2)))
    _raises(read_fastmri, path, "no 'kspace' dataset")
    _raises(read_kspace, path, "neither a fastMRI")
    _raises(read_ismrmrd, path, "dataset/data")


@pytest.mark.parametrize("shape", [(16,), (8, 8), (1, 2, 2, 4, 4)])
def test_fastmri_wrong_ndim(tmp_path, shape):
    path = _h5(tmp_path / "d.h5", kspace=_complex(*shape))
    _raises(read_kspace, path, r"expected \(slices, H, W\)")


@pytest.mark.parametrize("shape", [(16,), (1, 2, 2, 4, 4)])
def test_npy_wrong_ndim(tmp_path, shape):
    np.save(tmp_path / "k.npy", _complex(*shape))
    _raises(read_kspace, tmp_path / "k.npy", "expected")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_kspace(tmp_path, bad):
    kspace = _complex(2, 8, 8)
    kspace[1, 3, 4] = bad
    np.save(tmp_path / "k.npy", kspace)
    _raises(read_kspace, tmp_path / "k.npy", "NaN or Inf")
    _raises(read_kspace, _h5(tmp_path / "k.h5", kspace=kspace), "NaN or Inf")


@pytest.mark.parametrize("mask", [np.ones(9), np.ones((8, 9)), np.ones((3, 8, 8))])
def test_mask_shape_mismatch(tmp_path, mask):
    path = _h5(tmp_path / "m.h5", kspace=_complex(2, 8, 8), mask=mask)
    _raises(read_kspace, path, "mask shape")
    np.savez(tmp_path / "m.npz", kspace=_complex(2, 8, 8), mask=mask)
    _raises(read_kspace, tmp_path / "m.npz", "mask shape")


def test_mask_not_binary(tmp_path):
    _raises(read_kspace, _h5(tmp_path / "m.h5", kspace=_complex(2, 8, 8), mask=np.full(8, 0.5)), "only 0 and 1")


def test_all_zero_kspace(tmp_path):
    np.save(tmp_path / "z.npy", np.zeros((2, 4, 4), np.complex64))
    _raises(read_kspace, tmp_path / "z.npy", "all zeros")


@pytest.mark.parametrize("suffix", [".npy", ".h5", ".mat"])
def test_real_kspace_rejected(tmp_path, suffix):
    real = np.ones((2, 8, 8), np.float32)
    path = tmp_path / f"r{suffix}"
    if suffix == ".npy":
        np.save(path, real)
    else:
        _h5(path, kspace=real)
    _raises(read_kspace, path, "real-valued")


def test_cfl_size_does_not_match_header(tmp_path):
    write_cfl(tmp_path / "k", _complex(4, 4))
    (tmp_path / "k.hdr").write_text("# Dimensions\n4 5 1 1\n")
    _raises(read_kspace, tmp_path / "k.cfl", "declares dims", named=tmp_path / "k.cfl")
    (tmp_path / "k.hdr").write_text("# Dims\n4 4\n")
    _raises(read_cfl, tmp_path / "k", "not a BART header", named=tmp_path / "k.hdr")
    (tmp_path / "k.hdr").unlink()
    _raises(read_cfl, tmp_path / "k.cfl", "not found", named=tmp_path / "k.hdr")


def test_cfl_unsupported_dims(tmp_path):
    write_cfl(tmp_path / "k", _complex(4, 4, 3))  # 3D: z = 3
    _raises(read_kspace, tmp_path / "k.cfl", "'z': 3")


def test_unknown_extension(tmp_path):
    (tmp_path / "k.txt").write_text("x")
    err = _raises(read_kspace, tmp_path / "k.txt", "unknown k-space file type")
    assert ".h5" in str(err)
    assert ".cfl" in str(err)
    assert ".mat" in str(err)
    err = _raises(read_image, tmp_path / "k.txt", "unknown image file type")
    assert ".nii.gz" in str(err)


def test_corrupt_npy_and_pickles(tmp_path):
    (tmp_path / "g.npy").write_bytes(b"\x93NUMPY garbage garbage")
    _raises(read_kspace, tmp_path / "g.npy", "corrupt, truncated")
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    _raises(read_kspace, tmp_path / "o.npy", "corrupt, truncated")
    np.savez(tmp_path / "nok.npz", data=_complex(4, 4))
    _raises(read_kspace, tmp_path / "nok.npz", "no 'kspace' array")


def test_truncated_and_wrong_nifti(tmp_path):
    path = write_nifti(tmp_path / "v.nii.gz", torch.rand(8, 8, 8), voxel_size_mm=(1, 1, 1))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _raises(read_nifti, path, "corrupt, truncated")
    (tmp_path / "x.nii.gz").write_bytes(gzip.compress(b"not a nifti header at all" * 20))
    _raises(read_image, tmp_path / "x.nii.gz", "corrupt, truncated")


def test_nifti_nan_and_5d(tmp_path):
    data = np.ones((4, 4, 4), np.float32)
    data[1, 1, 1] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "nan.nii")
    _raises(read_nifti, tmp_path / "nan.nii", "NaN or Inf")
    nib.save(nib.Nifti1Image(np.ones((2, 2, 2, 2, 2), np.float32), np.eye(4)), tmp_path / "5d.nii")
    _raises(read_nifti, tmp_path / "5d.nii", "5 dimensions")


def test_matlab_v5_and_ambiguous_variables(tmp_path):
    (tmp_path / "old.mat").write_bytes(b"MATLAB 5.0 MAT-file, Platform: GLNXA64".ljust(256, b" "))
    _raises(read_mat, tmp_path / "old.mat", "-v7.3")
    path = _h5(tmp_path / "two.mat", a=_complex(4, 4), b=_complex(4, 4))
    _raises(read_kspace, path, "several complex variables")
    _raises(lambda p: read_mat(p, variable="c"), path, "no variable 'c'")


def test_ismrmrd_non_cartesian(tmp_path):
    from mrdpm.io.ismrmrd_header import build_header

    counters = [("kspace_encode_step_2", "<u2"), ("contrast", "<u2"), ("repetition", "<u2")]
    head = np.dtype([("flags", "<u8"), ("trajectory_dimensions", "<u2"), ("idx", counters)])
    records = np.zeros(2, dtype=[("head", head), ("data", h5py.vlen_dtype(np.float32))])
    for n in range(2):
        records[n] = ((0, 2, (0, 0, 0)), np.zeros(4, np.float32))
    path = tmp_path / "spiral.h5"
    info = {"encoded_matrix": [4, 4, 1], "encoded_fov_mm": [4.0, 4.0, 1.0], "trajectory": "spiral"}
    _h5(path, **{"dataset/data": records, "dataset/xml": build_header(info)})
    _raises(read_kspace, path, "not Cartesian")


def test_writer_into_missing_folder(tmp_path):
    case = KSpaceCase(kspace=torch.ones(1, 1, 2, 2, dtype=torch.complex64), mask=torch.ones(2, 2))
    with pytest.raises(MrdpmError, match="does not exist"):
        write_fastmri(tmp_path / "missing" / "c.h5", case)


def test_dicom_folder_without_images(tmp_path):
    pytest.importorskip("pydicom")
    (tmp_path / "notes.txt").write_text("nothing here")
    _raises(read_dicom, tmp_path, "no DICOM images")
    (tmp_path / "bad.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00" * 5)
    _raises(read_image, tmp_path / "bad.dcm", "DICOM", named=tmp_path / "bad.dcm")
