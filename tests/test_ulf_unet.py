"""The ULF U-Net baseline (`mrdpm ulf train-unet`, `ulf enhance --method unet`) and benchmarks/ulf.py end to end."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mrdpm.cli.main import main
from mrdpm.errors import MrdpmError
from mrdpm.eval.regression import PRESETS, RegressionUNet, load_regression_unet
from mrdpm.io import read_image
from mrdpm.io.containers import Volume
from mrdpm.models.checkpoint import save_checkpoint, save_module
from mrdpm.models.precond import Denoiser, DenoiserConfig
from mrdpm.tasks.ulf import enhance_unet

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "ulf.toml"


@pytest.fixture(autouse=True)
def _one_thread(_deterministic):
    torch.set_num_threads(1)


def _config(ulf_pairs: Path, folder: Path, spatial_dims: int = 3) -> Path:
    """configs/ulf.toml pointed at ``ulf_pairs``, 18^3 patches, subjC held out."""
    text = CONFIG.read_text().replace("../runs/ulf-pairs", ulf_pairs.as_posix())
    text = text.replace("[32, 32, 32]", "[18, 18, 18]" if spatial_dims == 3 else "[18, 18]")
    text = text.replace('["template-30", "template-36", "template-42"]', '["subjC"]')
    text = text.replace("spatial_dims = 3", f"spatial_dims = {spatial_dims}").replace('"auto"', '"cpu"')
    path = folder / f"ulf-test-{spatial_dims}d.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def unet_card(ulf_pairs, tmp_path_factory):
    folder = tmp_path_factory.mktemp("unet")
    with torch.random.fork_rng():
        torch.set_num_threads(1)
        assert main(["ulf", "train-unet", str(_config(ulf_pairs, folder)), "--run-dir", str(folder / "run"), "--steps",
                     "2", "--unet-preset", "tiny", "--batch-size", "2", "--device", "cpu", "--no-progress"]) == 0
    return folder / "run" / "unet.json"


def test_train_unet_writes_a_3d_card_of_the_config_data(unet_card):
    card = json.loads(unet_card.read_text())
    assert card["schema"] == "mrdpm-regression-unet"
    assert (card["architecture"]["spatial_dims"], card["architecture"]["channels"]) == (3, 1)
    assert card["training"]["data"]["held_out_subjects"] == ["subjC"]
    assert card["training"]["data"]["image_shape"] == [18, 18, 18]
    assert card["intensity_normalisation"]["pair_scale"] == "condition"
    assert card["training"]["steps"] == 2
    assert card["training"]["init"] is None  # a random start
    assert unet_card.with_suffix(".safetensors").is_file()


def test_train_unet_fine_tunes_from_a_trained_unet(unet_card, ulf_pairs, tmp_path, capsys):
    config = _config(ulf_pairs, tmp_path)
    common = ["--steps", "1", "--batch-size", "2", "--device", "cpu", "--no-progress", "--init", str(unet_card)]
    assert main(["ulf", "train-unet", str(config), "--run-dir", str(tmp_path / "ft"), "--unet-preset", "tiny",
                 "--lr", "1e-12", *common]) == 0
    capsys.readouterr()
    tuned, card = load_regression_unet(tmp_path / "ft" / "unet.json")
    start, start_card = load_regression_unet(unet_card)
    for name, weight in tuned.state_dict().items():  # a negligible step: still the start's weights
        torch.testing.assert_close(weight, start.state_dict()[name], rtol=0, atol=1e-8)
    assert card["training"]["init"] == {"card": str(unet_card), "weights_sha256": start_card["weights_sha256"],
                                        "summary": start_card["summary"]}
    assert card["summary"].endswith("1 steps from unet.json")
    # another architecture than the start's: a clear error naming its card
    assert main(["ulf", "train-unet", str(config), "--run-dir", str(tmp_path / "bad"), "--unet-preset", "small",
                 *common]) == 2
    err = capsys.readouterr().err
    assert "pass its preset ('tiny')" in err
    assert str(unet_card) in err


def test_enhance_with_the_unet_keeps_shape_affine_and_units(unet_card, ulf_pairs, tmp_path, capsys):
    lf_path = ulf_pairs / "subjC_lf.nii.gz"
    out = tmp_path / "out" / "subjC_unet.nii.gz"
    assert main(["ulf", "enhance", str(lf_path), "-o", str(out), "--method", "unet", "--model", str(unet_card)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["method"], info["nfe"], info["patch"], info["stride"]) == ("unet", 1, [18, 18, 18], [9, 9, 9])
    assert "std" not in info
    lf, enhanced = read_image(lf_path), read_image(out)
    np.testing.assert_allclose(enhanced.affine, lf.affine, atol=1e-5)
    assert enhanced.data.shape == lf.data.shape
    assert not (tmp_path / "out" / "subjC_unet_std.nii.gz").exists()
    assert (tmp_path / "out" / "subjC_unet.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the file holds the library's result; normalised by the input's own factor, so scaling the input scales it
    model, _ = load_regression_unet(unet_card)
    result = enhance_unet(lf, model, patch=18)
    torch.testing.assert_close(enhanced.data, result.mean.data, rtol=1e-5, atol=1e-4)
    scaled = enhance_unet(Volume(3 * lf.data, lf.affine), model, patch=18)
    torch.testing.assert_close(scaled.mean.data, 3 * result.mean.data, rtol=1e-4, atol=1e-3)
    assert result.info["intensity_factor"] > 0


def test_unet_errors_name_the_file(unet_card, ulf_pairs, tmp_path, capsys):
    lf_path = ulf_pairs / "subjC_lf.nii.gz"
    out = str(tmp_path / "x.nii.gz")
    config_2d = _config(ulf_pairs, tmp_path, spatial_dims=2)
    assert main(["ulf", "train-unet", str(config_2d), "--run-dir", str(tmp_path / "r"), "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "3D magnitude volumes" in err
    assert str(config_2d) in err
    prior = save_checkpoint(Denoiser(DenoiserConfig(preset="tiny", spatial_dims=3, complex_input=False,
                                                    cond_channels=1)), tmp_path / "prior")
    assert main(["ulf", "enhance", str(lf_path), "-o", out, "--method", "unet", "--model", str(prior)]) == 2
    err = capsys.readouterr().err
    assert "not a mrdpm-regression-unet card" in err
    assert "prior.json" in err
    flat = save_module(RegressionUNet(1, PRESETS["tiny"], 2), tmp_path / "flat",
                       {"architecture": {"spatial_dims": 2, "channels": 1, "features": list(PRESETS["tiny"])},
                        "intensity_normalisation": {"pair_scale": "condition"}},
                       schema="mrdpm-regression-unet", schema_version=1)
    assert main(["ulf", "enhance", str(lf_path), "-o", out, "--method", "unet", "--model", str(flat)]) == 2
    err = capsys.readouterr().err
    assert "spatial_dims=2" in err
    assert "flat.json" in err
    target_scaled = tmp_path / "target.json"
    target_scaled.write_text(unet_card.read_text().replace('"pair_scale": "condition"', '"pair_scale": "target"'))
    (tmp_path / "target.safetensors").write_bytes(unet_card.with_suffix(".safetensors").read_bytes())
    assert main(["ulf", "enhance", str(lf_path), "-o", out, "--method", "unet", "--model", str(target_scaled)]) == 2
    err = capsys.readouterr().err
    assert "pair_scale" in err
    assert "target.json" in err
    assert main(["ulf", "enhance", str(tmp_path / "nope.nii.gz"), "-o", out, "--method", "unet", "--model",
                 str(unet_card)]) == 2
    assert "nope.nii.gz" in capsys.readouterr().err


@pytest.fixture
def bench(load_benchmark):
    return load_benchmark("ulf")


@pytest.fixture
def prior(tmp_path) -> Path:
    """An untrained tiny conditional 3D v model card, trained (so its card says) on subjA and subjB."""
    config = DenoiserConfig(preset="tiny", spatial_dims=3, complex_input=False, cond_channels=1, cond_dropout=0.1,
                            parameterisation="v", beta_schedule="cosine")
    torch.manual_seed(0)
    data = {"held_out_subjects": ["subjC"], "image_shape": [16, 16, 16],
            "sources": [{"subjects": ["subjA", "subjB"]}]}
    return save_checkpoint(Denoiser(config), tmp_path / "prior", {
        "intensity_normalisation": {"pair_scale": "condition", "percentile": 99.0}, "training": {"data": data}})


def test_benchmark_end_to_end_with_resume(bench, ulf_pairs, unet_card, prior, tmp_path):
    out = tmp_path / "results"
    argv = ["--pairs", str(ulf_pairs), "--model", str(prior), "--unet", str(unet_card), "--strength", "0.1", "--steps",
            "2", "--samples", "2", "--refine-strength", "0.2", "--threads", "1", "--out", str(out), "--work-dir",
            str(tmp_path / "work"), "--time-128", "--time-size", "24"]
    report = bench.main(argv)
    saved = json.loads((out / "ulf.json").read_text())
    assert saved["records"] == report["records"]
    assert [(r["subject"], r["method"]) for r in saved["records"]] == [("subjC", m) for m in ("lf", "unet",
                                                                                               "diffusion", "refine")]
    for record in saved["records"]:
        for metric in ("psnr", "ssim", "mae", "pearson", "bias", "psnr_all", "ssim_all", "mae_all", "pearson_all",
                       "bias_all"):
            assert math.isfinite(record[metric]), (record["method"], metric)
        assert -1 <= record["ssim"] <= 1
    assert [r["nfe"] for r in saved["records"]] == [0, 1, 4, 5]  # 2 steps x 2 (guided); refine: + the U-Net
    # refine starts from the U-Net's estimate, at its own strength: a result of its own, not the diffusion's
    assert saved["records"][3]["psnr"] != saved["records"][2]["psnr"]
    assert {m: (t["size"], t["nfe"]) for m, t in saved["timings_128"].items()} == {"diffusion": (24, 4),
                                                                                  "refine": (24, 5)}
    assert saved["runs"][0]["command"].startswith("python benchmarks/ulf.py --pairs")
    assert saved["settings"]["lf_grid"].startswith("on the high-field grid already")
    for method in ("diffusion", "refine"):
        assert set(saved["targets"][f"{method}_vs_unet"]) >= {"psnr_gain_percent", "ssim_difference", "met"}
        assert set(saved["targets"][f"timing_128_{method}"]) == {"minutes", "target_minutes", "met"}
    markdown = (out / "ulf.md").read_text()
    assert "| 3D U-Net regression | 1 |" in markdown
    assert f"{saved['settings']['models']['diffusion']['parameters']:,} parameters)" in markdown
    assert "| U-Net, then diffusion from its estimate | 5 |" in markdown
    assert "refine: the U-Net's estimate noised to strength 0.2" in markdown
    assert "## Targets" in markdown
    assert "![orthogonal slices](ulf.png)" in markdown
    assert "not evaluated" not in markdown
    saved["settings"]["models"]["diffusion"]["held_out"] += ["subjD"]  # a validation subject
    bench.write_markdown(saved, tmp_path / "other.md")
    assert "held out by the models but not evaluated here: subjD" in (tmp_path / "other.md").read_text()
    assert (out / "ulf.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "work" / "subjC_diffusion_std.nii.gz").is_file()

    # resume: matching records are kept; changed diffusion settings replace only the diffusion record
    resumed = bench.main([*argv, "--resume"])
    assert resumed["records"] == saved["records"]
    assert len(resumed["runs"]) == 2
    changed = bench.main([*argv, "--resume", "--steps", "1"])
    assert changed["records"][:2] == saved["records"][:2]
    assert [(r["method"], r["nfe"], r["run"]) for r in changed["records"][2:]] == [("diffusion", 2, 2),
                                                                                  ("refine", 3, 2)]
    assert changed["timings_128"]["refine"]["nfe"] == 3
    only_refine = bench.main([*argv, "--resume", "--steps", "1", "--refine-strength", "0.3"])
    assert only_refine["records"][:3] == changed["records"][:3]
    assert only_refine["records"][3]["run"] == 3
    with pytest.raises(MrdpmError, match="diffusion \\(and refine\\) needs --model"):
        bench.main(["--pairs", str(ulf_pairs), "--unet", str(unet_card), "--methods", "refine", "--out", str(out)])


def test_sweep_runs_every_setting_and_the_unet_once(load_benchmark, ulf_pairs, unet_card, prior, tmp_path):
    sweep = load_benchmark("ulf_sweep")
    out = tmp_path / "results"
    argv = ["--pairs", str(ulf_pairs), "--model", str(prior), "--unet", str(unet_card), "--strengths", "0.1,0.3",
            "--refine-strengths", "0.2", "--budgets", "1x2,2x1", "--guidance", "1", "--threads", "1", "--out",
            str(out)]
    report = sweep.main(argv)
    assert [(r["method"], r["strength"], r["steps"], r["samples"], r["nfe"]) for r in report["records"]] == [
        ("unet", None, None, None, 1), ("diffusion", 0.1, 1, 2, 1), ("diffusion", 0.1, 2, 1, 2),
        ("diffusion", 0.3, 1, 2, 1), ("diffusion", 0.3, 2, 1, 2), ("refine", 0.2, 1, 2, 2), ("refine", 0.2, 2, 1, 3)]
    assert all(r["subject"] == "subjC" for r in report["records"])
    assert report["records"][1]["psnr"] != report["records"][3]["psnr"]
    assert json.loads((out / "ulf_sweep.json").read_text())["records"] == report["records"]
    markdown = (out / "ulf_sweep.md").read_text()
    assert "| 3D U-Net regression | - | - |" in markdown
    assert "| conditional diffusion | 0.3 | 2 x 1 |" in markdown
    assert "| U-Net, then diffusion from its estimate | 0.2 | 2 x 1 |" in markdown
    for wrong in (["--strength", "0.5"], ["--refine-strength", "0.5"], ["--steps", "3"], ["--strengths", "0,1"],
                  ["--refine-strengths", "2"], ["--budgets", "3x0"]):
        with pytest.raises(SystemExit):
            sweep.parse_args([*argv[:-2], *wrong])
    with pytest.raises(SystemExit):  # refine needs the U-Net
        sweep.parse_args([a for a in argv[:-2] if a not in ("--unet", str(unet_card))])


def test_pairs_are_found_by_subject_id(bench, tmp_path):
    folder = tmp_path / "pairs"
    folder.mkdir()
    for name in ("IXI1-HH-1_T1_hf.nii.gz", "IXI1-HH-1_T1_lf.nii.gz", "subjD_hf.npy", "subjD_lf.npy"):
        (folder / name).touch()
    with pytest.raises(MrdpmError, match="no pair"):
        bench.pair_paths(folder, "subjE")
    # the input's stem is kept; the subject is found by its ID, as in training
    assert bench.pair_paths(folder, "IXI1-HH-1") == (folder / "IXI1-HH-1_T1_hf.nii.gz",
                                                      folder / "IXI1-HH-1_T1_lf.nii.gz")
    records = [{"subject": "IXI1-HH-1", "hf": "IXI1-HH-1_T1_hf.nii.gz", "lf": "IXI1-HH-1_T1_lf.nii.gz"}]
    (folder / "ulf_pairs.json").write_text(json.dumps({"subjects": records}))
    assert bench.pair_paths(folder, "IXI1-HH-1") == (folder / "IXI1-HH-1_T1_hf.nii.gz",
                                                      folder / "IXI1-HH-1_T1_lf.nii.gz")
    assert bench.pair_paths(folder, "subjD") == (folder / "subjD_hf.npy", folder / "subjD_lf.npy")
    # the manifest's subject_pattern, as make-pairs recorded it, names the subjects
    (folder / "ulf_pairs.json").write_text(json.dumps({"subject_pattern": "^[^-_.]+", "subjects": records}))
    assert bench.pair_paths(folder, "IXI1") == (folder / "IXI1-HH-1_T1_hf.nii.gz", folder / "IXI1-HH-1_T1_lf.nii.gz")
