"""Image readers and writers: NIfTI (orientation and affine), DICOM series, NumPy images, the dispatcher."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from mrdpm.errors import MrdpmError
from mrdpm.io import Volume, read_dicom, read_image, read_nifti, write_dicom, write_nifti, write_npy
from mrdpm.io.geometry import swap_dhw_ijk


def _rotation(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


@pytest.fixture
def volume() -> Volume:
    """A canonical (RAS+) volume, slightly oblique, anisotropic voxels, off-centre origin."""
    rng = np.random.default_rng(0)
    affine = np.eye(4)
    affine[:3, :3] = _rotation(0.1) @ np.diag([1.2, 0.9, 3.0])  # i, j, k columns
    affine[:3, 3] = [-40.0, 12.5, 7.25]
    return Volume(torch.from_numpy(rng.random((5, 7, 6)).astype(np.float32) * 100), swap_dhw_ijk(affine))


def _assert_world_consistent(volume: Volume, data_ijk: np.ndarray, affine_ijk: np.ndarray) -> None:
    """Every voxel of ``volume`` holds the original value found at the same RAS position."""
    d, h, w = np.meshgrid(*(np.arange(n) for n in volume.data.shape), indexing="ij")
    index = np.stack([d.ravel(), h.ravel(), w.ravel(), np.ones(d.size)])
    ijk = np.rint(np.linalg.solve(affine_ijk, volume.affine @ index)[:3]).astype(int)
    assert np.array_equal(volume.data.numpy().ravel(), data_ijk[ijk[0], ijk[1], ijk[2]])


# NIfTI -----------------------------------------------------------------------------------------------------


def test_nifti_round_trip_keeps_data_and_affine(volume, tmp_path):
    path = write_nifti(tmp_path / "v.nii.gz", volume)
    back = read_image(path)
    assert torch.equal(back.data, volume.data)
    assert back.data.dtype == torch.float32
    np.testing.assert_allclose(back.affine, volume.affine, atol=1e-5)
    header = nib.load(path).header
    assert header["sform_code"] == 1
    assert header["qform_code"] == 1
    assert header.get_xyzt_units()[0] == "mm"


def test_nifti_complex_and_2d_tensor_with_voxel_size(tmp_path):
    image = torch.randn(7, 6, dtype=torch.complex64)
    back = read_nifti(write_nifti(tmp_path / "c.nii", image, voxel_size_mm=(2.0, 0.5, 0.25)))
    assert back.data.shape == (1, 7, 6)
    assert torch.equal(back.data[0], image)
    assert back.voxel_size_mm == pytest.approx((2.0, 0.5, 0.25))
    with pytest.raises(ValueError, match="voxel_size_mm"):
        write_nifti(tmp_path / "x.nii", image)


@pytest.mark.parametrize("codes", [("L", "A", "S"), ("P", "S", "R"), ("I", "L", "P")])
def test_nifti_reoriented_to_canonical(tmp_path, codes):
    rng = np.random.default_rng(1)
    data = rng.random((4, 5, 6)).astype(np.float32)
    directions = {"R": (1, 0, 0), "L": (-1, 0, 0), "A": (0, 1, 0), "P": (0, -1, 0), "S": (0, 0, 1), "I": (0, 0, -1)}
    affine = np.eye(4)
    affine[:3, :3] = np.array([directions[code] for code in codes]).T * [2.0, 3.0, 4.0]  # voxel (i, j, k) -> RAS
    affine[:3, 3] = [10.0, -5.0, 3.0]
    assert nib.aff2axcodes(affine) == codes
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "o.nii.gz")
    volume = read_nifti(tmp_path / "o.nii.gz")
    assert nib.aff2axcodes(swap_dhw_ijk(volume.affine)) == ("R", "A", "S")
    _assert_world_consistent(volume, data, affine)


def test_nifti_4d_needs_a_frame(tmp_path):
    data = np.stack([np.full((3, 4, 5), t, np.float32) for t in range(3)], axis=-1)
    path = tmp_path / "series.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    with pytest.raises(MrdpmError, match="frame") as info:
        read_nifti(path)
    assert str(path) in str(info.value)
    assert torch.all(read_nifti(path, frame=2).data == 2)


def test_ixi_nifti_matches_nibabel(shared_data):
    path = sorted((shared_data / "ixi-t1" / "t1").glob("*.nii.gz"))[0]
    volume = read_image(path)
    original = nib.load(path)
    assert volume.data.dtype == torch.float32
    assert volume.data.numel() == np.prod(original.shape)
    assert volume.voxel_size_mm == pytest.approx(tuple(original.header.get_zooms()[::-1]), rel=1e-3)
    _assert_world_consistent(volume, original.get_fdata(dtype=np.float32), original.affine)


def test_npy_image(tmp_path):
    image = np.random.default_rng(2).random((3, 4, 5)).astype(np.float64)
    volume = read_image(write_npy(tmp_path / "im.npy", image))
    assert volume.data.dtype == torch.float32
    assert volume.data.shape == (3, 4, 5)
    assert volume.voxel_size_mm == (1.0, 1.0, 1.0)


# DICOM -----------------------------------------------------------------------------------------------------

pydicom = pytest.importorskip("pydicom")


def test_dicom_round_trip(volume, tmp_path):
    files = write_dicom(tmp_path / "series", volume, series_description="test")
    assert len(files) == volume.data.shape[0]
    back = read_image(tmp_path / "series")
    step = float(volume.data.max() - volume.data.min()) / 65535
    torch.testing.assert_close(back.data, volume.data, atol=step, rtol=0)
    np.testing.assert_allclose(back.affine, volume.affine, atol=1e-4)
    single = read_dicom(files[2])  # one file: one slice at its own position
    torch.testing.assert_close(single.data[0], volume.data[2], atol=step, rtol=0)
    np.testing.assert_allclose(single.affine[:3, 1:3], volume.affine[:3, 1:3], atol=1e-4)
    np.testing.assert_allclose(single.affine @ [0, 0, 0, 1], volume.affine @ [2, 0, 0, 1], atol=1e-4)


def test_dicom_tags_follow_the_standard(volume, tmp_path):
    """Check the written tags against DICOM's definitions, independently of the reader."""
    files = write_dicom(tmp_path / "series", volume)
    back = read_dicom(tmp_path / "series")
    for file in files[::2]:
        ds = pydicom.dcmread(file)
        row_dir, col_dir = np.array(ds.ImageOrientationPatient[:3]), np.array(ds.ImageOrientationPatient[3:])
        r, c = 5, 2
        lps = np.array(ds.ImagePositionPatient) + c * ds.PixelSpacing[1] * row_dir + r * ds.PixelSpacing[0] * col_dir
        ras = np.array([-lps[0], -lps[1], lps[2], 1.0])
        dhw = np.rint(np.linalg.solve(back.affine, ras)[:3]).astype(int)
        value = float(ds.pixel_array[r, c]) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        assert float(back.data[tuple(dhw)]) == pytest.approx(value, abs=1e-3)
        assert ds.Modality == "MR"
        assert ds.pixel_array.dtype == np.uint16
    uids = {pydicom.dcmread(f).SOPInstanceUID for f in files}
    assert len(uids) == len(files)


def test_dicom_folder_skips_other_files_and_refuses_two_series(volume, tmp_path):
    write_dicom(tmp_path / "a", volume)
    (tmp_path / "a" / "README.txt").write_text("not dicom")
    assert read_image(tmp_path / "a").data.shape == volume.data.shape
    for file in write_dicom(tmp_path / "b", volume):
        file.rename(tmp_path / "a" / f"b_{file.name}")
    with pytest.raises(MrdpmError, match="several series") as info:
        read_dicom(tmp_path / "a")
    assert str(tmp_path / "a") in str(info.value)
