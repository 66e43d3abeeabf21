"""The neonatal 1 T scenario: synthesis from the real atlas, geometry, contrast, SNR, split, config, errors."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mrdpm.cli.main import main
from mrdpm.data.neonatal import neonatal_file_name, synthesise_neonatal
from mrdpm.data.volumes import subject_id
from mrdpm.errors import MrdpmError
from mrdpm.io.read import read_image
from mrdpm.physics.relaxation import default_sequence, signal_equation, tissue_parameters
from mrdpm.train.config import load_config

AGE = 36
VOXEL_MM = 3.0
SNR_DB = 18.0
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "neonatal-small.toml"
# Atlas label ids (regions.txt): CSF 1 and ventricles 5, cortical GM 2, WM 3, deep GM 7.
CSF, GM, WM, DEEP_GM = (1, 5), (2,), (3,), (7,)


@pytest.fixture(scope="module")
def synthesised(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("neonatal")
    start = time.perf_counter()
    manifest = synthesise_neonatal(shared_data / "neonatal-atlas", out, ages=[AGE], voxel_mm=(VOXEL_MM,),
                                   snr_db=SNR_DB, held_out=(AGE,), seed=3)
    seconds = time.perf_counter() - start
    return out, json.loads(manifest.read_text(encoding="utf-8")), seconds


def _read(out: Path, contrast: str, kind: str):
    return read_image(out / neonatal_file_name(AGE, contrast, VOXEL_MM, kind))


def _labels_on_grid(atlas_labels, volume) -> np.ndarray:
    """Nearest atlas label at every voxel centre of ``volume`` (through both affines)."""
    shape = volume.data.shape
    index = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), -1).reshape(-1, 3)
    world = volume.affine @ np.c_[index, np.ones(len(index))].T
    atlas_index = np.rint(np.linalg.inv(atlas_labels.affine) @ world)[:3].T.astype(int)
    atlas_index = np.clip(atlas_index, 0, np.array(atlas_labels.data.shape) - 1)
    labels = atlas_labels.data.round().long().numpy()
    return labels[tuple(atlas_index.T)].reshape(shape)


def _median(image: torch.Tensor, labels: np.ndarray, ids: tuple[int, ...]) -> float:
    return float(np.median(image.numpy()[np.isin(labels, ids)]))


def test_synthesis_is_fast_and_writes_both_volumes(synthesised):
    out, manifest, seconds = synthesised
    assert seconds < 20, f"one age, two contrasts at {VOXEL_MM} mm took {seconds:.1f} s"
    assert len(manifest["files"]) == 2
    for record in manifest["files"]:
        clean, noisy = read_image(out / record["clean"]), read_image(out / record["noisy"])
        assert clean.data.shape == noisy.data.shape == tuple(record["shape"])
        assert clean.data.dtype == noisy.data.dtype == torch.float32
        assert np.allclose(clean.affine, noisy.affine)
        assert not torch.equal(clean.data, noisy.data)
    assert manifest["files"][0]["noise_seed"] != manifest["files"][1]["noise_seed"]


def test_geometry_matches_the_atlas(synthesised, shared_data):
    out, _, _ = synthesised
    atlas = read_image(shared_data / "neonatal-atlas" / "t2" / f"template-{AGE}.nii.gz")
    clean = _read(out, "T2w", "clean")
    assert np.allclose(clean.voxel_size_mm, VOXEL_MM, rtol=0.02)
    fov_mm = np.array(atlas.data.shape) * atlas.voxel_size_mm
    assert np.allclose(np.array(clean.data.shape) * clean.voxel_size_mm, fov_mm, atol=VOXEL_MM / 2)

    def centre(volume):  # world coordinates of the centre of the field of view
        return (volume.affine @ np.r_[(np.array(volume.data.shape) - 1) / 2, 1])[:3]

    assert np.linalg.norm(centre(clean) - centre(atlas)) < VOXEL_MM
    # the voxel at n // 2 is kept in place by the resampling
    mid = lambda v: (v.affine @ np.r_[np.array(v.data.shape) // 2, 1])[:3]  # noqa: E731
    assert np.allclose(mid(clean), mid(atlas), atol=1e-3)


def test_contrast_follows_the_1t_relaxation_table(synthesised, shared_data):
    out, _, _ = synthesised
    atlas_labels = read_image(shared_data / "neonatal-atlas" / "tissues" / f"tissues-{AGE}.nii.gz")
    params = tissue_parameters("neonatal", 1.0)
    for contrast in ("T1w", "T2w"):
        clean = _read(out, contrast, "clean")
        labels = _labels_on_grid(atlas_labels, clean)
        measured = {name: _median(clean.data, labels, ids)
                    for name, ids in (("csf", CSF), ("gm", GM), ("wm", WM), ("deep_gm", DEEP_GM))}
        seq = default_sequence(contrast, 1.0, "neonatal")
        table = signal_equation(params.pd, params.t1_ms, params.t2_ms, seq.tr_ms, seq.te_ms, seq.ti_ms).abs()
        implied = {"csf": table[1], "gm": table[2], "wm": table[3], "deep_gm": table[7]}
        assert sorted(measured, key=measured.get) == sorted(implied, key=implied.get), (contrast, measured)
        if contrast == "T2w":  # neonates at 1 T: fluid brightest, unmyelinated WM brighter than cortex
            assert measured["csf"] > measured["wm"] > measured["gm"]
        else:  # inversion recovery: grey matter brighter than the long-T1 WM, CSF near its null
            assert measured["deep_gm"] > measured["gm"] > measured["wm"] > measured["csf"]


def test_measured_snr_matches_the_request(synthesised):
    out, manifest, _ = synthesised
    for contrast in ("T1w", "T2w"):
        clean, noisy = _read(out, contrast, "clean").data, _read(out, contrast, "noisy").data
        air = clean == 0  # outside the head: the magnitude is Rayleigh, E m^2 = 2 sigma^2
        assert air.float().mean() > 0.2
        sigma = math.sqrt(noisy[air].square().mean().item() / 2)
        foreground = clean > 0.1 * torch.quantile(clean.reshape(-1), 0.99)
        snr = noisy[foreground].mean().item() / sigma
        assert snr == pytest.approx(10 ** (SNR_DB / 20), rel=0.1)
        record = next(r for r in manifest["files"] if r["contrast"] == contrast)
        assert sigma == pytest.approx(record["noise_sigma"], rel=0.05)


def test_manifest_records_values_and_held_out_ages(synthesised):
    out, manifest, _ = synthesised
    assert manifest["held_out"] == [f"neo{AGE}"]
    assert manifest["held_out_ages"] == [AGE]
    assert {r["split"] for r in manifest["files"]} == {"held_out"}
    assert all(subject_id(out / r["noisy"]) == f"neo{AGE}" for r in manifest["files"])
    wm = next(t for t in manifest["tissues"] if t["name"] == "wm")
    assert wm["t1_ms"] == pytest.approx(float(tissue_parameters("neonatal", 1.0).t1_ms[3]), abs=0.1)
    assert manifest["sequences_ms"]["T1w"]["ti_ms"] == default_sequence("T1w", 1.0, "neonatal").ti_ms
    assert manifest["snr_db"] == SNR_DB
    assert manifest["field_t"] == 1.0
    assert "Williams" in manifest["sources"]


def test_config_parses_with_contrast_by_orientation_classes():
    config = load_config(CONFIG)
    data = config.data
    assert data.class_names == ("T1w-axial", "T1w-coronal", "T1w-sagittal", "T2w-axial", "T2w-coronal",
                                "T2w-sagittal")
    assert {s.orientation for s in data.sources} == {"axial", "coronal", "sagittal"}
    for source in data.sources:
        contrast, orientation = source.class_name.split("-")
        assert source.orientation == orientation
        assert all(f"_{contrast}_" in p and p.endswith("_noisy.nii.gz") for p in source.paths)
    assert data.held_out == ("neo30", "neo36", "neo42")
    assert subject_id(neonatal_file_name(36, "T2w", 1.5, "noisy"), data.subject_pattern) == "neo36"
    assert (data.spatial_dims, data.patch_size, data.image_type) == (2, (64, 64), "synthetic_phase")
    assert (config.model.parameterisation, config.model.preset) == ("edm", "compact")


def test_missing_atlas_file_is_named(shared_data, tmp_path):
    atlas = tmp_path / "atlas"
    (atlas / "t2").mkdir(parents=True)
    (atlas / "t2" / f"template-{AGE}.nii.gz").symlink_to(
        shared_data / "neonatal-atlas" / "t2" / f"template-{AGE}.nii.gz")
    with pytest.raises(MrdpmError, match=re.escape(f"tissues-{AGE}.nii.gz")):
        synthesise_neonatal(atlas, tmp_path / "out", held_out=())
    with pytest.raises(MrdpmError, match=re.escape("template-27.nii.gz")):
        synthesise_neonatal(shared_data / "neonatal-atlas", tmp_path / "out", ages=[27], held_out=())
    with pytest.raises(MrdpmError, match="held-out ages"):
        synthesise_neonatal(shared_data / "neonatal-atlas", tmp_path / "out", ages=[AGE], held_out=(30,))


def test_cli_writes_and_reports_errors(shared_data, tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["neonatal", "synthesise", str(shared_data / "neonatal-atlas"), "-o", str(out), "--ages", "40",
                 "--contrasts", "T2w", "--voxel-mm", "4,5", "--held-out", "40", "--snr-db", "15"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["held_out"] == ["neo40"]
    assert (summary["volumes"], len(summary["shapes"])) == (4, 2)
    assert (out / neonatal_file_name(40, "T2w", 4.0, "noisy")).is_file()
    assert (out / "neo40_T2w_5mm_clean.nii.gz").is_file()
    code = main(["neonatal", "synthesise", str(tmp_path / "nowhere"), "-o", str(out)])
    assert code == 2
    assert "nowhere" in capsys.readouterr().err
