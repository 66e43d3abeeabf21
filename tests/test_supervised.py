"""The supervised U-Net baseline and the accelerated-reconstruction benchmark harness, on tiny synthetic data."""

import json
import math
from functools import partial
from pathlib import Path

import pytest
import torch

from mrdpm.data.simulate import SimulationSettings, simulate_case
from mrdpm.errors import MrdpmError
from mrdpm.eval.classical import zero_filled
from mrdpm.eval.supervised import SupervisedUNet, load_supervised, train_supervised, unet_reconstruct
from mrdpm.io import write_nifti
from mrdpm.models.checkpoint import save_checkpoint
from mrdpm.models.precond import Denoiser, DenoiserConfig
from mrdpm.tasks.accel import reconstruct

SHAPE = (10, 32, 24)  # (D, H, W): axial slices of 32x24
EVAL_SUBJECT, TRAIN_SUBJECT = "IXI527-HH-2376", "IXI002-XX-0001"


def phantom_volume(seed: int) -> torch.Tensor:
    """A head-like ellipsoid with a brighter core and a few random blobs, (D, H, W) float32."""
    gen = torch.Generator().manual_seed(seed)
    z, y, x = torch.meshgrid(*(torch.linspace(-1, 1, n) for n in SHAPE), indexing="ij")
    r2 = (z / 0.9) ** 2 + (y / 0.85) ** 2 + (x / 0.8) ** 2
    volume = 0.6 * (r2 < 1).float() + 0.4 * (r2 < 0.4).float()
    for _ in range(3):
        centre = torch.rand(3, generator=gen) - 0.5
        volume += 0.3 * torch.exp(-((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2) / 0.02)
    return volume * (r2 < 1)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    folder = root / "ixi-t1" / "t1"
    folder.mkdir(parents=True)
    for seed, subject in enumerate((EVAL_SUBJECT, TRAIN_SUBJECT)):
        write_nifti(folder / f"{subject}_T1.nii.gz", phantom_volume(seed), voxel_size_mm=(2.0, 2.0, 2.0))
    return root


@pytest.fixture(scope="module")
def unet_card(data_root, tmp_path_factory) -> Path:
    files = sorted((data_root / "ixi-t1" / "t1").glob("*.nii.gz"))
    return train_supervised(tmp_path_factory.mktemp("unet") / "unet", subjects=files, steps=3, batch_size=2,
                            lr=1e-2, seed=0, preset="tiny")


@pytest.fixture(scope="module")
def case():
    return simulate_case(phantom_volume(5)[4:6], SimulationSettings(coils=4, snr_db=30.0, seed=3))


def test_training_is_recorded_deterministic_and_reloads(unet_card, data_root, tmp_path):
    card = json.loads(unet_card.read_text())
    assert card["training"]["subjects"] == sorted([EVAL_SUBJECT, TRAIN_SUBJECT])
    assert card["training"]["steps"] == 3
    assert card["training"]["slice_shape"] == [32, 24]
    assert card["architecture"]["features"] == [4, 4, 8, 8, 16, 4]
    assert math.isfinite(card["training"]["loss_last"])
    files = sorted((data_root / "ixi-t1" / "t1").glob("*.nii.gz"))
    again = train_supervised(tmp_path / "again", subjects=files, steps=3, batch_size=2, lr=1e-2, seed=0,
                             preset="tiny")
    assert json.loads(again.read_text())["weights_sha256"] == card["weights_sha256"]
    model, loaded_card = load_supervised(unet_card)
    initial = SupervisedUNet(card["architecture"]["features"])
    assert loaded_card == card
    assert not torch.equal(model.net.final_conv.weight, initial.net.final_conv.weight)


def test_recon_function_shape_dtype_and_round_trip(unet_card, case):
    model, _ = load_supervised(unet_card)
    first = reconstruct(case, "unet", method_fn=partial(unet_reconstruct, model=model))
    assert first.image.shape == (2, 32, 24)
    assert first.image.dtype == torch.complex64
    second_model, _ = load_supervised(unet_card.with_suffix(".safetensors"))
    second = unet_reconstruct(case.kspace[1], case.mask, case.maps[1], model=second_model)
    assert second.shape == (32, 24)
    assert second.dtype == torch.complex64
    torch.testing.assert_close(second, first.image[1], rtol=0, atol=0)
    assert not torch.equal(second, zero_filled(case.kspace[1], case.maps[1]))


def test_zero_correction_returns_the_zero_filled_image(case):
    """With the last layer zeroed the residual net is the identity: normalisation and padding are undone."""
    model = SupervisedUNet((4, 4, 8, 8, 16, 4)).eval()
    torch.nn.init.zeros_(model.net.final_conv.weight)
    torch.nn.init.zeros_(model.net.final_conv.bias)
    out = unet_reconstruct(case.kspace[0], case.mask, case.maps[0], model=model)
    torch.testing.assert_close(out, zero_filled(case.kspace[0] * case.mask, case.maps[0]))


def test_load_refuses_pickles_and_tampered_weights(unet_card, tmp_path):
    with pytest.raises(MrdpmError, match="pickle"):
        load_supervised(tmp_path / "unet.pt")
    weights = unet_card.with_suffix(".safetensors")
    for name in ("bad.json", "bad.safetensors"):
        (tmp_path / name).write_bytes((unet_card.parent / f"unet{Path(name).suffix}").read_bytes())
    tampered = bytearray((tmp_path / "bad.safetensors").read_bytes())
    tampered[-1] ^= 1
    (tmp_path / "bad.safetensors").write_bytes(bytes(tampered))
    with pytest.raises(MrdpmError, match="sha256"):
        load_supervised(tmp_path / "bad")
    assert weights.is_file()


@pytest.fixture
def bench(load_benchmark):
    return load_benchmark("accel")


def test_benchmark_end_to_end_with_resume(bench, data_root, tmp_path):
    prior = save_checkpoint(Denoiser(DenoiserConfig(preset="tiny", class_names=("T1",))), tmp_path / "prior")
    out = tmp_path / "out"
    argv = ["--data-root", str(data_root), "--cases", "ixi", "--subjects", EVAL_SUBJECT, "--slices-per-subject",
            "1", "--masks", "gaussian1d:4", "--methods", "zf,unet,dpm", "--samplers", "dds", "--nfe", "2",
            "--reference", "", "--samples", "2", "--model", str(prior), "--unet-weights", str(tmp_path / "unet"),
            "--train-unet-steps", "2", "--unet-preset", "tiny", "--unet-batch-size", "2", "--out", str(out),
            "--work-dir", str(tmp_path / "work"), "--threads", "1"]
    report = bench.main(argv)
    # the U-Net was trained on the other subject only
    assert json.loads((tmp_path / "unet.json").read_text())["training"]["subjects"] == [TRAIN_SUBJECT]
    saved = json.loads((out / "accel.json").read_text())
    assert saved["records"] == report["records"]
    assert [r["method"] for r in saved["records"]] == ["zf", "unet", "dpm-dds-nfe2"]
    (index,) = saved["slices"][EVAL_SUBJECT]
    assert abs(index - SHAPE[0] / 2) <= 1
    assert saved["records"][0]["slice"] == f"{EVAL_SUBJECT}/axial-{index:03d}"
    dpm = saved["records"][-1]
    assert dpm["nfe"] == 2
    assert dpm["samples"] == 2
    assert math.isfinite(dpm["psnr"])
    assert {row["method"] for row in saved["summary"]} == {"zf", "unet", "dpm-dds-nfe2"}
    assert saved["runs"][0]["command"].startswith("python benchmarks/accel.py --data-root")
    assert "torch_threads" in saved["runs"][0]["machine"]
    markdown = (out / "accel.md").read_text()
    assert "### ixi: gaussian1d-x4" in markdown
    assert "| dpm-dds-nfe2 | 2 x 2 |" in markdown
    assert (out / "accel_ixi_gaussian1d-x4.png").is_file()

    # resume: finished rows are kept as they are, only the new method runs
    resumed = bench.main([*argv, "--resume", "--methods", "zf,unet,dpm,sense"])
    assert resumed["records"][:3] == saved["records"]
    assert [r["method"] for r in resumed["records"][3:]] == ["sense"]
    assert resumed["records"][3]["run"] == 1
    markdown = (out / "accel.md").read_text()
    assert markdown.index("| zf |") < markdown.index("| sense |") < markdown.index("| unet |")
    # results of other settings are not mixed in
    with pytest.raises(MrdpmError, match="samples"):
        bench.main([*argv, "--resume", "--samples", "3"])


def test_benchmark_refuses_a_prior_trained_on_an_evaluated_subject(bench, data_root, tmp_path):
    prior = save_checkpoint(Denoiser(DenoiserConfig(preset="tiny", class_names=("T1",))), tmp_path / "prior",
                            {"training": {"subjects": [EVAL_SUBJECT]}})
    argv = ["--data-root", str(data_root), "--cases", "ixi", "--subjects", EVAL_SUBJECT, "--methods", "dpm",
            "--model", str(prior), "--out", str(tmp_path / "out"), "--work-dir", str(tmp_path / "work")]
    with pytest.raises(MrdpmError, match="trained on evaluated subjects"):
        bench.main(argv)
