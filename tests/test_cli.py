"""The ``mrdpm`` command end to end: simulate -> recon, help texts, and errors that name the file."""

import argparse
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from mrdpm.cli.main import build_parser, main
from mrdpm.io import read_image, read_kspace


@pytest.fixture
def volume_path(tmp_path):
    yy, xx = np.meshgrid(np.linspace(-1, 1, 40), np.linspace(-1, 1, 36), indexing="ij")
    slab = ((yy**2 / 0.8 + xx**2 / 0.6) < 1) * (1 + 0.5 * yy)
    data = np.stack([slab * (1 + 0.1 * k) for k in range(4)], axis=-1).astype(np.float32)  # (i, j, k)
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    affine[:3, 3] = [-40, -36, 10]
    path = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def _subcommands(parser, prefix=()):
    """(words, parser) of every command and nested subcommand."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name), sub
                yield from _subcommands(sub, (*prefix, name))


def test_every_command_and_option_has_help(capsys):
    commands = dict(_subcommands(build_parser()))
    assert {("demo",), ("simulate",), ("recon",), ("train",), ("models",), ("ulf", "simulate")} <= set(commands)
    for words, p in commands.items():
        for action in p._actions:
            if action.dest != "help" and action.option_strings:
                assert action.help, f"mrdpm {' '.join(words)} {action.option_strings} has no help"
        with pytest.raises(SystemExit):
            main([*words, "--help"])
        assert "usage: mrdpm" in capsys.readouterr().out


def test_simulate_then_recon_round_trip(volume_path, tmp_path, capsys):
    case_path = tmp_path / "case.h5"
    assert main(["simulate", str(volume_path), "-o", str(case_path), "--coils", "4", "--mask", "gaussian1d",
                 "--accel", "2", "--center-fraction", "0.1", "--snr-db", "40", "--seed", "3",
                 "--slices", "1:3"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["slices"] == 2
    case = read_kspace(case_path)
    assert case.kspace.shape[:2] == (2, 4)
    assert case.attrs["snr_db"] == 40.0
    assert case.attrs["coils"] == 4
    assert abs(case.acceleration - 2.0) / 2.0 < 0.05
    source = read_image(volume_path)
    # slice 1 of the source volume is slice 0 of the case: same world position
    np.testing.assert_allclose(case.affine @ [0, 0, 0, 1], source.affine @ [1, 0, 0, 1], atol=1e-4)

    results = {}
    for method in ("zf", "cs-wavelet"):
        out = tmp_path / method
        assert main(["recon", str(case_path), "-o", str(out), "--method", method, "--quiet"]) == 0
        metrics = json.loads((out / "metrics.json").read_text())["metrics"]
        results[method] = metrics["psnr"]
        recon = read_image(out / "recon.nii.gz")
        assert recon.data.shape == (2, 36, 40)  # NIfTI (i, j, k) = (40, 36, 4) reversed
        np.testing.assert_allclose(recon.affine, case.affine, atol=1e-4)
        assert np.load(out / "recon.npy").dtype == np.complex64
        assert (out / "figure.png").stat().st_size > 0
    assert results["cs-wavelet"] > results["zf"]


def test_recon_uses_espirit_when_maps_are_absent(tmp_path):
    from mrdpm.data.simulate import SimulationSettings, simulate_case
    from mrdpm.io import write_npz_kspace

    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 48), torch.linspace(-1, 1, 48), indexing="ij")
    image = (((yy**2 + xx**2) < 0.8).float() * (1 + 0.5 * yy))[None]
    case = simulate_case(image, SimulationSettings(coils=4, acceleration=2, mask="poisson2d", snr_db=None))
    case.maps = None
    path = tmp_path / "k.npz"
    write_npz_kspace(path, case)
    assert main(["recon", str(path), "-o", str(tmp_path / "out"), "--method", "sense", "--quiet"]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())["metrics"]
    assert metrics["psnr"] > 30


@pytest.mark.parametrize("command", [["recon", "{missing}", "-o", "{out}", "--method", "zf"],
                                     ["simulate", "{missing}", "-o", "{out}/c.h5"]])
def test_missing_input_is_one_clear_error(command, tmp_path, capsys):
    missing = tmp_path / "nothing.h5"
    argv = [a.format(missing=missing, out=tmp_path) for a in command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert str(missing) in err
    assert "Traceback" not in err


def test_bad_slices_option_is_rejected(volume_path, tmp_path, capsys):
    assert main(["simulate", str(volume_path), "-o", str(tmp_path / "c.h5"), "--slices", "10:12"]) == 2
    assert "selects no slice" in capsys.readouterr().err
