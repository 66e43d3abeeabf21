import json
import math
import runpy
import sys
from pathlib import Path

import pytest
import torch

from mrdpm.errors import MrdpmError
from mrdpm.io.nifti import write_nifti
from mrdpm.models.checkpoint import save_checkpoint
from mrdpm.models.precond import Denoiser, DenoiserConfig

CLASSES = tuple(f"{c}-{o}" for c in ("T1w", "T2w") for o in ("axial", "coronal", "sagittal"))
# (D, H, W) per nominal voxel size: every slice's last axis (16, 24 or 32) allows 1.5x and 4x line masks.
GRIDS = {"1mm": ((24, 32, 24), 1.0), "1p5mm": ((16, 16, 16), 1.5)}


@pytest.fixture
def bench(load_benchmark):
    return load_benchmark("small_data")


def _blob(shape, contrast, seed):
    """A bright ellipsoid with a darker core (the contrast flips between T1w and T2w), zero outside."""
    grids = torch.meshgrid(*[torch.linspace(-1, 1, n) for n in shape], indexing="ij")
    radius = sum(g.square() / r**2 for g, r in zip(grids, (0.8, 0.7, 0.75), strict=True))
    core = 0.4 if contrast == "T1w" else 1.6
    image = (radius < 1).float() * (1.0 + 0.05 * seed) * torch.where(radius < 0.3, core, 1.0)
    return image


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A folder shaped like `mrdpm neonatal synthesise` output: neo30 held out, neo32 for training."""
    root = tmp_path_factory.mktemp("neonatal")
    files = []
    for age in (30, 32):
        for contrast in ("T1w", "T2w"):
            for res, (shape, mm) in GRIDS.items():
                clean = _blob(shape, contrast, age)
                noisy = (clean + 0.05 * torch.randn(shape, generator=torch.Generator().manual_seed(age))).abs()
                names = {kind: f"neo{age}_{contrast}_{res}_{kind}.nii.gz" for kind in ("clean", "noisy")}
                write_nifti(root / names["clean"], clean, voxel_size_mm=(mm,) * 3)
                write_nifti(root / names["noisy"], noisy, voxel_size_mm=(mm,) * 3)
                files.append({"subject": f"neo{age}", "age_weeks": age, "contrast": contrast,
                              "split": "held_out" if age == 30 else "train", **names, "shape": list(shape),
                              "voxel_mm": [mm] * 3, "noise_sigma": 0.05})
    (root / "neonatal.json").write_text(json.dumps({"snr_db": 18.0, "held_out": ["neo30"], "files": files}))
    return root


def _prior(path, seed, subjects=()):
    """A tiny class-conditional prior with perturbed weights (a fresh one outputs zeros)."""
    model = Denoiser(DenoiserConfig(preset="tiny", class_names=CLASSES))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=generator))
    training = {"data": {"sources": [{"name": "t", "subjects": list(subjects)}]}}
    return save_checkpoint(model, path, {"training": training})


def test_gap_closed_and_targets_on_a_hand_made_example(bench):
    assert bench.gap_closed(30.0, 31.0, 32.0) == pytest.approx(0.5)
    assert bench.gap_closed(30.0, 29.0, 34.0) == pytest.approx(-0.25)
    assert math.isnan(bench.gap_closed(30.0, 31.0, 30.0))  # no gap to close
    psnr = {"noisy": (20.0, 22.0), "denoised": (23.0, 24.0), "clean": (24.0, 26.0)}  # two slices at N = 8
    records = [{"prior": p, "acceleration": 2.0, "nfe": 20, "slice": f"s{i}",
                "by_n": {"1": {"psnr": v - 1.5 + i}, "8": {"psnr": v}}}
               for p, values in psnr.items() for i, v in enumerate(values)]
    t = bench.targets(records)
    (gap,) = t["gap_closed"]
    assert (gap["noisy"], gap["denoised"], gap["clean"]) == (21.0, 23.5, 25.0)
    assert gap["fraction"] == pytest.approx(2.5 / 4.0)
    assert gap["met"]
    gains = {g["prior"]: g["gain_db"] for g in t["averaging_gain"]}
    assert gains == pytest.approx({"noisy": 1.0, "denoised": 1.0, "clean": 1.0})  # (1.5 + 0.5) / 2
    assert all(g["met"] for g in t["averaging_gain"])


def test_benchmark_end_to_end_with_resume(bench, data_dir, tmp_path):
    priors = {name: _prior(tmp_path / name, seed) for seed, name in enumerate(("noisy", "denoised", "clean"))}
    out = tmp_path / "out"
    common = ["--data-dir", str(data_dir), "--out", str(out), "--accelerations", "1.5,4", "--nfe", "2",
              "--threads", "1"]
    argv = ["--priors", ",".join(f"{n}={p}" for n, p in priors.items()), *common]
    first = bench.main([*argv, "--max-items", "2"])
    assert len(first["records"]) == 3 * 2 * 2  # priors x accelerations x 2 slices
    saved = json.loads((out / "small_data.json").read_text())
    assert saved["slices"][0] == "neo30_T1w_1mm/axial-011"  # the middle of the blob's extent along axis 0
    assert len(saved["slices"]) == 2 * 2 * 3  # contrasts x matrix sizes x orientations
    assert saved["settings"]["priors"]["clean"]["sha256"]
    record = saved["records"][0]
    assert list(record["by_n"]) == ["1", "2", "4", "8", "16"]
    assert record["class"] == "T1w-axial"
    assert all(math.isfinite(v) for m in record["by_n"].values() for v in m.values())
    image = _blob(GRIDS["1mm"][0], "T1w", 30)[11]  # native SNR: the data set's noise (sigma 0.05 per component)
    expected = 20 * math.log10(float(image.square().mean().sqrt()) / (0.05 * math.sqrt(2)))
    assert record["snr_db"] == pytest.approx(expected, abs=1e-3)

    resumed = bench.main([*argv, "--resume"])
    assert resumed["records"][:12] == saved["records"]  # the first call's records are kept, not redone
    assert {r["run"] for r in resumed["records"][12:]} == {1}
    assert len(resumed["records"]) == 3 * 2 * 12
    assert {(r["acceleration"], r["nfe"], r["n"], r["slices"]) for r in resumed["summary"]} == {
        (a, 2, n, 12) for a in (1.5, 4.0) for n in (1, 2, 4, 8, 16)}
    assert {r["resolution"] for r in resumed["records"]} == {"1mm", "1p5mm"}
    assert {r["class"] for r in resumed["records"]} == set(CLASSES)
    assert len(resumed["targets"]["gap_closed"]) == 2
    assert len(resumed["targets"]["averaging_gain"]) == 3 * 2
    baseline = resumed["zero_filled"]  # the same acquisitions, zero-filled: fewer lines, lower PSNR
    assert len(baseline) == 2 * 12
    assert [r["slice"] for r in baseline[:12]] == saved["slices"]
    psnr = {a: sum(r["psnr"] for r in baseline if r["acceleration"] == a) / 12 for a in (1.5, 4.0)}
    assert psnr[1.5] > psnr[4.0]
    markdown = (out / "small_data.md").read_text()
    assert "fraction closed" in markdown
    assert "zero-filled SENSE combination" in markdown
    assert "| noisy | 1.5 | 2 |" in markdown
    assert (out / "small_data.png").stat().st_size > 1000
    fewer = bench.main([*argv, "--resume", "--accelerations", "4", "--max-items", "1"])
    assert fewer["zero_filled"][:12] == baseline[:12]  # the 1.5x baseline is kept when a call leaves 1.5x out
    with pytest.raises(MrdpmError, match="coils"):
        bench.main([*argv, "--resume", "--coils", "4"])
    with pytest.raises(MrdpmError, match=r"priors \['clean'\]"):
        bench.main(["--priors", f"clean={priors['noisy']}", *common, "--resume"])


def test_refuses_a_prior_trained_on_an_evaluated_subject_or_without_a_class(bench, data_dir, tmp_path):
    leaked = _prior(tmp_path / "leaked", 0, subjects=["neo30"])
    with pytest.raises(MrdpmError, match="trained on evaluated subjects"):
        bench.main(["--priors", f"noisy={leaked}", "--data-dir", str(data_dir), "--out", str(tmp_path)])
    model = Denoiser(DenoiserConfig(preset="tiny", class_names=("T1",)))
    other = save_checkpoint(model, tmp_path / "other")
    with pytest.raises(MrdpmError, match="lacks the classes"):
        bench.main(["--priors", f"noisy={other}", "--data-dir", str(data_dir), "--out", str(tmp_path)])


def test_script_reports_a_missing_model_in_one_line(data_dir, tmp_path, monkeypatch, capsys, load_benchmark):
    """Run as a script, a user error prints the file and the problem on one line (no traceback) and exits 2."""
    load_benchmark("common")  # puts benchmarks/ on the path, as running the script does
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "small_data.py"
    missing = tmp_path / "nope" / "model.json"
    monkeypatch.setattr(sys, "argv", [str(script), "--priors", f"noisy={missing}", "--data-dir", str(data_dir),
                                      "--out", str(tmp_path)])
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(script), run_name="__main__")
    assert exited.value.code == 2
    assert capsys.readouterr().err.startswith(f"small_data.py: error: {missing}: no checkpoint file")


def test_manifest_missing_or_not_json_is_one_error_naming_it(bench, tmp_path):
    with pytest.raises(MrdpmError, match="no manifest") as err:
        bench.read_manifest(tmp_path)
    assert str(tmp_path / "neonatal.json") in str(err.value)
    (tmp_path / "neonatal.json").write_text("{not json")
    with pytest.raises(MrdpmError, match="not valid JSON") as err:
        bench.read_manifest(tmp_path)
    assert str(tmp_path / "neonatal.json") in str(err.value)
