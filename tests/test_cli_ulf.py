"""``mrdpm ulf simulate`` / ``fit-transfer``: geometry kept, physics applied, errors name the file."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from mrdpm.cli.main import main
from mrdpm.io import read_image


def _save(path, data, affine):
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine), path)
    return path


@pytest.fixture
def head(tmp_path):
    """A 24x28x20 ellipsoid 'head' with three label classes, oblique affine at 1 mm."""
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in (24, 28, 20)), indexing="ij")
    r = z**2 / 0.8 + y**2 / 0.7 + x**2 / 0.6
    labels = np.where(r < 0.3, 3, np.where(r < 0.6, 2, np.where(r < 0.9, 1, 0)))  # neonatal ids: CSF 1, GM 2, WM 3
    image = np.select([labels == 3, labels == 2, labels == 1], [1.0, 0.7, 0.3], 0.0)
    affine = np.array([[0.0, 0.0, 1.0, -10], [0.0, 1.0, 0.1, -14], [1.0, 0.0, 0.0, -12], [0, 0, 0, 1]])
    return _save(tmp_path / "hf.nii.gz", image, affine), _save(tmp_path / "labels.nii.gz", labels, affine)


def test_simulate_keeps_geometry_and_degrades(head, tmp_path, capsys):
    hf_path, _ = head
    out = tmp_path / "lf.nii.gz"
    assert main(["ulf", "simulate", str(hf_path), "-o", str(out), "--voxel-mm", "4,1,1", "--snr-db", "15"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["model"] == "physics"
    assert info["snr_db"] == 15
    hf, lf = read_image(hf_path), read_image(out)
    np.testing.assert_allclose(lf.affine, hf.affine, atol=1e-5)
    assert lf.data.shape == hf.data.shape
    # thick slices blur along the slice axis (D) far more than in-plane; noise makes it differ from the input
    err = (lf.data - hf.data).abs().mean()
    assert err > 0.01
    assert main(["ulf", "simulate", str(hf_path), "-o", str(out), "--voxel-mm", "4,1,1", "--no-noise"]) == 0
    clean = read_image(out).data
    # gradient energy (total variation would survive a box blur of a step edge)
    through = (clean.diff(dim=0).square().mean() / hf.data.diff(dim=0).square().mean()).item()
    in_plane = (clean.diff(dim=1).square().mean() / hf.data.diff(dim=1).square().mean()).item()
    assert through < 0.8 * in_plane


def test_contrast_from_labels_and_errors_name_files(head, tmp_path, capsys):
    hf_path, labels_path = head
    out = tmp_path / "lf.nii.gz"
    assert main(["ulf", "simulate", str(hf_path), "-o", str(out), "--contrast", "T2w", "--labels", str(labels_path),
                 "--no-noise"]) == 0
    capsys.readouterr()
    labels = read_image(labels_path).data.round().long()
    image = read_image(out).data
    # neonatal T2w: CSF brighter than white matter, white matter brighter than grey matter
    means = [float(image[labels == k].mean()) for k in (1, 2, 3)]
    assert means[0] > means[2] > means[1]
    assert main(["ulf", "simulate", str(hf_path), "-o", str(out), "--contrast", "T2w"]) == 2
    assert "--labels" in capsys.readouterr().err
    small = _save(tmp_path / "small.nii.gz", np.zeros((4, 4, 4)), np.eye(4))
    assert main(["ulf", "simulate", str(hf_path), "-o", str(out), "--labels", str(small)]) == 2
    err = capsys.readouterr().err
    assert "small.nii.gz" in err
    assert "grid" in err


def test_contrast_from_dlmuse_labels(head, tmp_path, capsys):
    """IXI's DLMUSE ROI maps drive the adult contrast directly (--tissue-kind dlmuse); other ids are refused."""
    hf_path, labels_path = head
    labels = read_image(labels_path)
    muse = np.select([labels.data == 3, labels.data == 2, labels.data == 1], [81, 100, 4], 0)  # WM, GM, CSF ROIs
    muse_path = _save(tmp_path / "seg_DLMUSE.nii.gz", muse, labels.affine)
    out = tmp_path / "lf.nii.gz"
    assert main(["ulf", "simulate", str(hf_path), "-o", str(out), "--contrast", "T1w", "--labels", str(muse_path),
                 "--tissue-kind", "dlmuse", "--no-noise", "--voxel-mm", "1,1,1"]) == 0
    capsys.readouterr()
    image = read_image(out).data
    means = [float(image[labels.data == k].mean()) for k in (1, 2, 3)]
    assert means[2] > means[1] > means[0]  # adult T1w: WM > GM > CSF
    assert main(["ulf", "simulate", str(hf_path), "-o", str(out), "--contrast", "T1w", "--labels", str(labels_path),
                 "--tissue-kind", "dlmuse"]) == 2  # ids 1-3 are not all MUSE ROIs
    err = capsys.readouterr().err
    assert "labels.nii.gz" in err
    assert "DLMUSE" in err


def test_fit_transfer_then_apply(head, tmp_path, capsys):
    hf_path, _ = head
    hf = read_image(hf_path)
    lf_path = tmp_path / "lf.nii.gz"
    assert main(["ulf", "simulate", str(hf_path), "-o", str(lf_path), "--voxel-mm", "4,2,2", "--no-noise"]) == 0
    transfer = tmp_path / "s.npy"
    assert main(["ulf", "fit-transfer", "--hf", str(hf_path), "--lf", str(lf_path), "-o", str(transfer)]) == 0
    capsys.readouterr()
    out = tmp_path / "tf.nii.gz"
    assert main(["ulf", "simulate", str(hf_path), "-o", str(out), "--transfer-function", str(transfer)]) == 0
    applied = read_image(out).data
    target = read_image(lf_path).data
    corr = torch.corrcoef(torch.stack([applied.flatten(), target.flatten()]))[0, 1]
    assert corr > 0.99
    np.testing.assert_allclose(read_image(out).affine, hf.affine, atol=1e-5)
    assert main(["ulf", "fit-transfer", "--hf", str(hf_path), "--lf", "", "-o", str(transfer)]) == 2
    assert "pairs" in capsys.readouterr().err
