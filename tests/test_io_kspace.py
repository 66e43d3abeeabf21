"""k-space readers and writers: fastMRI HDF5, ISMRMRD HDF5, BART cfl, NumPy, MATLAB v7.3, and the dispatcher."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from mrdpm.io import (
    KSpaceCase,
    read_cfl,
    read_cfl_kspace,
    read_fastmri,
    read_ismrmrd,
    read_kspace,
    read_mat,
    read_npy_kspace,
    read_npz_kspace,
    write_cfl,
    write_cfl_kspace,
    write_fastmri,
    write_npy,
    write_npz_kspace,
)
from mrdpm.io.geometry import centred_diagonal_affine
from mrdpm.io.ismrmrd_header import build_header, parse_header
from mrdpm.physics.fft import fftnc, ifftnc

S, C, H, W = 2, 3, 8, 6


def _complex(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


@pytest.fixture
def case() -> KSpaceCase:
    rng = np.random.default_rng(0)
    mask = np.broadcast_to((rng.random(W) < 0.6) | (np.arange(W) == W // 2), (H, W)).astype(np.float32)
    return KSpaceCase(
        kspace=torch.from_numpy(_complex(rng, S, C, H, W) * mask),
        mask=torch.from_numpy(mask),
        target=torch.from_numpy(rng.random((S, H, W)).astype(np.float32)),
        maps=torch.from_numpy(_complex(rng, S, C, H, W)),
        affine=centred_diagonal_affine((S, H, W), (3.0, 0.5, 0.75)),
        attrs={"acquisition": "AXT2", "noise_std": 0.01, "n": 3, "flag": True, "settings": {"kind": "gauss"}},
    )


def _assert_same(a: KSpaceCase, b: KSpaceCase, *, attrs: bool = True) -> None:
    assert torch.equal(a.kspace, b.kspace)
    assert torch.equal(a.mask, b.mask)
    for name in ("target", "maps"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None and y is None) or torch.equal(x, y)
    assert (a.affine is None and b.affine is None) or np.array_equal(a.affine, b.affine)
    if attrs:
        assert {k: v for k, v in a.attrs.items() if k != "header"} == {
            k: v for k, v in b.attrs.items() if k != "header"
        }


# fastMRI ---------------------------------------------------------------------------------------------------


def test_fastmri_round_trip(case, tmp_path):
    path = write_fastmri(tmp_path / "case.h5", case)
    back = read_fastmri(path)
    _assert_same(case, back)
    assert back.kspace.dtype == torch.complex64
    assert back.path == path
    with h5py.File(path) as f:  # fastMRI layout: 1D mask, header with the field of view
        assert f["mask"].shape == (W,)
        assert parse_header(f["ismrmrd_header"][()])["encoded_fov_mm"] == [H * 0.5, W * 0.75, 3.0]


def test_fastmri_single_coil_written_3d(case, tmp_path):
    single = KSpaceCase(kspace=case.kspace[:, :1], mask=case.mask, maps=case.maps[:, :1], attrs={"a": 1})
    path = write_fastmri(tmp_path / "single.h5", single)
    with h5py.File(path) as f:
        assert f["kspace"].shape == (S, H, W)
        assert f["maps"].shape == (S, H, W)
    back = read_kspace(path)
    _assert_same(single, back)
    assert back.affine is None
    assert "header" not in back.attrs


def _write_public_fastmri(path, kspace, mask):
    """A file in the public fastMRI multicoil layout, written without our writer."""
    header = """<?xml version="1.0" encoding="utf-8"?>
<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD" xmlns:xs="http://www.w3.org/2001/XMLSchema">
  <acquisitionSystemInformation><systemFieldStrength_T>2.89362</systemFieldStrength_T></acquisitionSystemInformation>
  <encoding>
    <encodedSpace><matrixSize><x>16</x><y>12</y><z>1</z></matrixSize>
      <fieldOfView_mm><x>320</x><y>240</y><z>4.5</z></fieldOfView_mm></encodedSpace>
    <reconSpace><matrixSize><x>8</x><y>8</y><z>1</z></matrixSize>
      <fieldOfView_mm><x>160</x><y>160</y><z>3</z></fieldOfView_mm></reconSpace>
    <encodingLimits><kspace_encoding_step_1><minimum>0</minimum><maximum>11</maximum><center>6</center>
      </kspace_encoding_step_1></encodingLimits>
    <trajectory>cartesian</trajectory>
  </encoding>
  <sequenceParameters><TR>2750</TR><TE>27</TE><TI>100</TI><flipAngle_deg>90</flipAngle_deg></sequenceParameters>
</ismrmrdHeader>"""
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=kspace)
        f.create_dataset("mask", data=mask)
        f.create_dataset("reconstruction_rss", data=np.ones((kspace.shape[0], 8, 8), np.float32))
        f.create_dataset("ismrmrd_header", data=header)
        f.attrs["acquisition"] = "CORPD_FBK"
        f.attrs["max"] = np.float64(0.0005)
        f.attrs["num_low_frequency"] = np.int64(4)


def test_fastmri_public_layout_1d_mask_and_header_fov(tmp_path):
    rng = np.random.default_rng(1)
    mask = np.zeros(12, dtype=bool)
    mask[[0, 4, 5, 6, 7, 10]] = True
    kspace = _complex(rng, 3, 4, 16, 12) * mask
    path = tmp_path / "file1000001.h5"
    _write_public_fastmri(path, kspace, mask)
    case = read_kspace(path)
    assert case.kspace.shape == (3, 4, 16, 12)
    assert torch.equal(case.mask, torch.from_numpy(np.broadcast_to(mask, (16, 12)).astype(np.float32)))
    assert case.acceleration == pytest.approx(2.0)
    assert case.target.shape == (3, 8, 8)
    assert case.attrs["target_name"] == "reconstruction_rss"
    assert case.attrs["acquisition"] == "CORPD_FBK"
    assert case.attrs["num_low_frequency"] == 4
    header = case.attrs["header"]
    assert header["field_strength_t"] == pytest.approx(2.89362)
    assert header["te_ms"] == [27.0]
    assert header["encoding_limits"]["kspace_encoding_step_1"] == {"minimum": 0, "maximum": 11, "center": 6}
    # spacing: readout 320/16 = 20 mm along H, phase 240/12 = 20 mm along W, slice = recon z 3 mm
    a = case.affine
    centre = a @ np.array([1, 8, 6, 1.0])  # index n // 2 of (3 slices, 16, 12) is the origin
    assert np.allclose(centre, [0, 0, 0, 1])
    assert np.allclose(a @ np.array([2, 8, 6, 1.0]) - centre, [0, 0, 3, 0])
    assert np.allclose(a @ np.array([1, 9, 6, 1.0]) - centre, [0, 20, 0, 0])
    assert np.allclose(a @ np.array([1, 8, 7, 1.0]) - centre, [20, 0, 0, 0])


def test_fastmri_mask_from_zero_pattern_single_coil(tmp_path):
    rng = np.random.default_rng(2)
    kspace = _complex(rng, 2, 8, 10)
    kspace[:, :, [1, 3, 8]] = 0
    path = tmp_path / "sc.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=kspace)
    case = read_fastmri(path)
    expected = np.ones((8, 10), np.float32)
    expected[:, [1, 3, 8]] = 0
    assert case.kspace.shape == (2, 1, 8, 10)
    assert torch.equal(case.mask, torch.from_numpy(expected))
    assert case.target is None
    assert case.affine is None


def test_header_round_trip():
    info = {
        "encoded_matrix": [640, 368, 1],
        "encoded_fov_mm": [280.0, 161.0, 5.5],
        "recon_matrix": [320, 320, 1],
        "recon_fov_mm": [140.0, 140.0, 3.0],
        "trajectory": "cartesian",
        "encoding_limits": {"kspace_encoding_step_1": {"minimum": 0, "maximum": 367, "center": 184}},
        "field_strength_t": 1.5,
        "tr_ms": [2000.0],
        "te_ms": [10.0, 20.0],
        "flip_angle_deg": [90.0],
    }
    assert parse_header(build_header(info)) == info


# ISMRMRD ---------------------------------------------------------------------------------------------------

_COUNTERS = np.dtype(
    [(name, "<u2") for name in ("kspace_encode_step_1", "kspace_encode_step_2", "average", "slice", "contrast",
                                "phase", "repetition", "set", "segment")] + [("user", "<u2", (8,))]
)  # fmt: skip
_HEAD = np.dtype(
    [("version", "<u2"), ("flags", "<u8"), ("measurement_uid", "<u4"), ("scan_counter", "<u4"),
     ("acquisition_time_stamp", "<u4"), ("physiology_time_stamp", "<u4", (3,)), ("number_of_samples", "<u2"),
     ("available_channels", "<u2"), ("active_channels", "<u2"), ("channel_mask", "<u8", (16,)),
     ("discard_pre", "<u2"), ("discard_post", "<u2"), ("center_sample", "<u2"), ("encoding_space_ref", "<u2"),
     ("trajectory_dimensions", "<u2"), ("sample_time_us", "<f4"), ("position", "<f4", (3,)),
     ("read_dir", "<f4", (3,)), ("phase_dir", "<f4", (3,)), ("slice_dir", "<f4", (3,)),
     ("patient_table_position", "<f4", (3,)), ("idx", _COUNTERS), ("user_int", "<i4", (8,)),
     ("user_float", "<f4", (8,))]
)  # fmt: skip
_ACQUISITION = np.dtype([("head", _HEAD), ("traj", h5py.vlen_dtype(np.float32)), ("data", h5py.vlen_dtype(np.float32))])


def _write_ismrmrd(path, lines, info):
    """Write the standard ISMRMRD layout: ``lines`` = list of (header-field dict, (coils, samples) complex)."""
    records = np.zeros(len(lines), dtype=_ACQUISITION)
    for n, (fields, data) in enumerate(lines):
        head = records[n]["head"]
        head["number_of_samples"], head["active_channels"] = data.shape[1], data.shape[0]
        head["available_channels"] = data.shape[0]
        head["read_dir"], head["phase_dir"], head["slice_dir"] = (1, 0, 0), (0, 1, 0), (0, 0, 1)
        for key, value in fields.items():
            if key in _COUNTERS.names:
                head["idx"][key] = value
            else:
                head[key] = value
        records[n] = (head, np.zeros(0, np.float32), np.ascontiguousarray(data, np.complex64).view(np.float32).ravel())
    with h5py.File(path, "w") as f:
        f.create_dataset("dataset/data", data=records)
        f.create_dataset("dataset/xml", data=[build_header(info).encode()], dtype=h5py.string_dtype())


def test_ismrmrd_layout_assembles_cartesian_kspace(tmp_path):
    rng = np.random.default_rng(3)
    n_slices, n_coils, h, w, oversampling = 2, 3, 8, 6, 2
    full = _complex(rng, n_slices, n_coils, h * oversampling, w)  # measured with 2x readout oversampling
    acquired = [0, 2, 3, 4]  # phase-encode lines, W centre (3) included
    lines = [({"flags": 1 << 18}, _complex(rng, n_coils, h * oversampling))]  # a noise scan, to be skipped
    for s in range(n_slices):
        for k1 in acquired:
            flags, data = 0, full[s, :, :, k1]
            if k1 == 2:  # EPI-style reversed readout: stored reversed, flagged ACQ_IS_REVERSE
                flags, data = 1 << 21, data[:, ::-1]
            position = (10.0, 20.0, 30.0 + 5.0 * s)
            lines.append(({"kspace_encode_step_1": k1, "slice": s, "flags": flags, "position": position}, data))
    extra = _complex(rng, n_coils, h * oversampling)  # a second average of slice 0, line 4
    lines.append(({"kspace_encode_step_1": 4, "slice": 0, "average": 1, "position": (10.0, 20.0, 30.0)}, extra))
    info = {"encoded_matrix": [h, w, 1], "encoded_fov_mm": [200.0, 150.0, 5.0], "trajectory": "cartesian",
            "encoding_limits": {"kspace_encoding_step_1": {"minimum": 0, "maximum": 5, "center": 3}}}  # fmt: skip
    path = tmp_path / "meas.h5"
    _write_ismrmrd(path, lines, info)

    case = read_kspace(path)
    expected = torch.from_numpy(full.copy())
    expected[0, :, :, 4] = (expected[0, :, :, 4] + torch.from_numpy(extra)) / 2
    image = ifftnc(expected.transpose(-1, -2), ndim=1)  # oversampling removed in the image domain
    start = h * oversampling // 2 - h // 2
    expected = fftnc(image[..., start : start + h], ndim=1).transpose(-1, -2)
    mask = torch.zeros(h, w)
    mask[:, acquired] = 1
    assert case.kspace.shape == (n_slices, n_coils, h, w)
    assert torch.equal(case.mask, mask)
    torch.testing.assert_close(case.kspace, expected * mask, atol=1e-5, rtol=1e-5)
    assert case.attrs["skipped_lines"] == {"noise": 1}
    # geometry: (slice s, H//2, W//2) is the slice centre (LPS (10, 20, 30 + 5 s) -> RAS (-10, -20, ...))
    for s in range(n_slices):
        assert np.allclose(case.affine @ [s, h // 2, w // 2, 1], [-10, -20, 30 + 5 * s, 1], atol=1e-5)
    assert np.allclose(case.affine[:3, 1], [-200 / h, 0, 0])
    assert np.allclose(case.affine[:3, 2], [0, -150 / w, 0])


def test_ismrmrd_partial_echo_is_placed_by_center_sample(tmp_path):
    rng = np.random.default_rng(4)
    lines, data = [], _complex(rng, 4, 1, 6)  # 6 of 8 readout samples, the echo at sample 2
    for k1 in range(4):
        lines.append(({"kspace_encode_step_1": k1, "center_sample": 2}, data[k1]))
    info = {"encoded_matrix": [8, 4, 1], "encoded_fov_mm": [8.0, 4.0, 1.0]}
    _write_ismrmrd(tmp_path / "pe.h5", lines, info)
    case = read_ismrmrd(tmp_path / "pe.h5")
    assert torch.equal(case.kspace[0, 0, 2:8], torch.from_numpy(data[:, 0].T))
    assert case.kspace[0, 0, :2].abs().sum() == 0
    assert case.mask[:2].sum() == 0
    assert case.mask[2:].all()
    assert case.affine is not None


# BART cfl --------------------------------------------------------------------------------------------------


def test_cfl_array_round_trip_is_column_major(tmp_path):
    array = _complex(np.random.default_rng(5), 4, 5, 1, 3)
    cfl = write_cfl(tmp_path / "arr", array)
    assert (tmp_path / "arr.hdr").read_text().splitlines()[1].split() == ["4", "5", "1", "3"]
    raw = np.fromfile(cfl, dtype=np.complex64)
    assert raw[1] == array[1, 0, 0, 0]
    assert raw[4] == array[0, 1, 0, 0]
    assert np.array_equal(read_cfl(tmp_path / "arr.hdr"), array)


def test_cfl_kspace_round_trip_with_slices(case, tmp_path):
    write_cfl_kspace(tmp_path / "ks.cfl", case)
    dims = [int(v) for v in (tmp_path / "ks.hdr").read_text().splitlines()[1].split()]
    assert dims[:4] == [H, W, 1, C]
    assert dims[13] == S
    back = read_kspace(tmp_path / "ks")  # base name without extension
    assert torch.equal(back.kspace, case.kspace)
    assert torch.equal(back.mask, case.mask)
    assert back.attrs["bart_dims"][13] == S
    # BART [x, y, z, coil]: element [h, w, 0, c] is coil c at (h, w)
    bart = read_cfl(tmp_path / "ks")
    assert bart[5, 2, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1] == case.kspace[1, 1, 5, 2].item()
    assert torch.equal(read_cfl_kspace(tmp_path / "ks.hdr").kspace, case.kspace)


# NumPy -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "layout", "expected"),
    [
        ((H, W), "HW", (1, 1, H, W)),
        ((C, H, W), "CHW", (1, C, H, W)),
        ((S, C, H, W), "SCHW", (S, C, H, W)),
        ((C, 1, H, W), "CSHW", (1, C, H, W)),
    ],
)
def test_npy_layouts(tmp_path, shape, layout, expected):
    array = _complex(np.random.default_rng(6), *shape)
    path = write_npy(tmp_path / "k.npy", array)
    case = read_kspace(path)
    assert case.kspace.shape == expected
    assert case.attrs["layout"] == layout
    assert torch.equal(case.kspace.flatten(), torch.from_numpy(array).flatten())


def test_npy_layout_override_reads_single_coil_slices(tmp_path):
    array = _complex(np.random.default_rng(7), 4, 1, H, W)
    write_npy(tmp_path / "k.npy", array)
    assert read_npy_kspace(tmp_path / "k.npy", layout="SCHW").kspace.shape == (4, 1, H, W)
    moved = read_npy_kspace(tmp_path / "k.npy", layout="WSCH")
    assert moved.kspace.shape == (1, H, W, 4)  # axes named W, S, C, H: W=4, S=1, C=H, H=W


def test_npz_round_trip(case, tmp_path):
    path = write_npz_kspace(tmp_path / "case.npz", case)
    _assert_same(case, read_npz_kspace(path))
    _assert_same(case, read_kspace(path))


def test_npz_minimal_and_maps_follow_layout(tmp_path):
    rng = np.random.default_rng(8)
    kspace, maps = _complex(rng, C, H, W), _complex(rng, C, H, W)
    mask = np.zeros((H, W), np.float32)
    mask[:, ::2] = 1
    np.savez(tmp_path / "m.npz", kspace=kspace, maps=maps, mask=mask)
    case = read_kspace(tmp_path / "m.npz")
    assert torch.equal(case.maps[0], torch.from_numpy(maps))
    assert torch.equal(case.mask, torch.from_numpy(mask))
    assert torch.equal(case.kspace[0], torch.from_numpy(kspace * mask))  # zeros where not sampled


# MATLAB v7.3 -----------------------------------------------------------------------------------------------


def _write_matlab(path, variables: dict):
    """Mimic MATLAB's v7.3 layout: 512-byte userblock, reversed dims, complex as a {real, imag} compound."""
    with h5py.File(path, "w", userblock_size=512) as f:
        for name, array in variables.items():
            stored = np.asarray(array).T  # MATLAB is column-major: HDF5 shape is the reversed MATLAB size
            if np.iscomplexobj(stored):
                compound = np.empty(stored.shape, dtype=[("real", "<f4"), ("imag", "<f4")])
                compound["real"], compound["imag"] = stored.real, stored.imag
                stored, matlab_class = compound, "single"
            else:
                matlab_class = "double"
            f.create_dataset(name, data=stored)
            f[name].attrs["MATLAB_class"] = np.bytes_(matlab_class)
    with open(path, "r+b") as stream:
        stream.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 .")


def test_matlab_v73_transposed_complex_compound(tmp_path):
    rng = np.random.default_rng(9)
    matlab = _complex(rng, H, W, S, C)  # MATLAB size [H W slices coils]
    mask = np.zeros((1, W))  # a MATLAB row vector over phase encodes
    mask[0, [0, 2, 3]] = 1
    path = tmp_path / "data.mat"
    _write_matlab(path, {"raw": matlab * mask[0, :, None, None], "mask": mask, "scale": np.array([[2.0]])})
    with h5py.File(path) as f:
        assert f["raw"].shape == (C, S, W, H)
        assert f["raw"].dtype.names == ("real", "imag")
    case = read_kspace(path)
    assert case.kspace.shape == (S, C, H, W)
    assert case.attrs["variable"] == "raw"
    assert case.kspace[1, 2, 5, 3] == torch.tensor(matlab[5, 3, 1, 2])
    assert torch.equal(case.mask, torch.from_numpy(np.broadcast_to(mask, (H, W)).astype(np.float32)))
    assert read_mat(path, variable="raw", layout="HWCS").kspace.shape == (C, S, H, W)


# shared real data ------------------------------------------------------------------------------------------


def test_shared_kspace_files(shared_data):
    full = read_kspace(shared_data / "kspace" / "brain_16coil_96x96_full.npy")
    assert full.kspace.shape == (1, 16, 96, 96)
    assert full.acceleration == 1.0
    poisson = read_kspace(shared_data / "kspace" / "brain_8coil_poisson8x.npy")
    assert poisson.kspace.shape == (1, 8, 230, 180)
    assert poisson.mask.shape == (230, 180)
    assert 7.0 < poisson.acceleration < 9.0
    raw = np.load(shared_data / "kspace" / "brain_8coil_poisson8x.npy")
    assert np.array_equal(poisson.kspace[0].numpy(), raw)
