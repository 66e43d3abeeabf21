"""ULF quality transfer: paired data (make_ulf_pairs), the training config, enhance() and `mrdpm ulf` commands."""

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from mrdpm.cli.main import main
from mrdpm.data.images import pair_files
from mrdpm.data.ulf_pairs import fourier_resample, make_ulf_pairs, resampled_affine
from mrdpm.diffusion.patches import PatchDenoiser
from mrdpm.diffusion.samplers import sample_ddim
from mrdpm.errors import MrdpmError
from mrdpm.io import read_image
from mrdpm.io.containers import Volume
from mrdpm.models.checkpoint import save_checkpoint
from mrdpm.models.precond import Denoiser, DenoiserConfig
from mrdpm.physics.lowfield import LowFieldSettings
from mrdpm.tasks.ulf import enhance, noised_start, orthogonal_mosaic, start_timestep, strength_sigmas
from mrdpm.train.config import load_config

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "ulf.toml"
OBLIQUE = np.array([[0.0, 0.0, 1.0, -10], [0.0, 1.0, 0.1, -14], [1.0, 0.0, 0.0, -12], [0, 0, 0, 1]])
SETTINGS = LowFieldSettings(voxel_mm=(4.0, 2.0, 2.0), snr_db=15.0, contrast="T2w")


@pytest.fixture(autouse=True)
def _one_thread(_deterministic):
    torch.set_num_threads(1)


def _save(path, data, affine=OBLIQUE):
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine), path)
    return path


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    """Two 24x28x20 ellipsoid 'heads' (subjects subjA, subjB) with neonatal tissue labels, oblique 1 mm affine."""
    folder = tmp_path_factory.mktemp("heads")
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in (24, 28, 20)), indexing="ij")
    paths = []
    for name, stretch in (("subjA", 1.0), ("subjB", 0.9)):
        r = (z**2 / 0.8 + y**2 / 0.7 + x**2 / 0.6) / stretch
        labels = np.where(r < 0.3, 3, np.where(r < 0.6, 2, np.where(r < 0.9, 1, 0)))  # WM 3, GM 2, CSF 1
        image = np.select([labels == 3, labels == 2, labels == 1], [100.0, 70.0, 30.0], 0.0)
        paths.append((_save(folder / f"{name}.nii.gz", image), _save(folder / f"{name}-labels.nii.gz", labels)))
    return paths


def _model(cond_dropout=0.1, parameterisation="v", seed=0):
    torch.manual_seed(seed)
    config = DenoiserConfig(preset="tiny", spatial_dims=3, complex_input=False, cond_channels=1,
                            cond_dropout=cond_dropout, parameterisation=parameterisation, beta_schedule="cosine")
    return Denoiser(config).eval()


@pytest.fixture(scope="module")
def model():
    return _model()


def _lf_volume(scale=1.0):
    g = torch.Generator().manual_seed(3)
    data = scale * (1 + torch.rand((12, 20, 16), generator=g))
    return Volume(data, OBLIQUE.copy())


def test_fourier_resample_is_band_limited_and_keeps_geometry():
    # A smooth Gaussian blob (sigma 3 mm) at 1 mm, resampled to 2 mm, equals the blob sampled on the new grid.
    angle = math.radians(20)  # a rotated 1 mm grid
    affine = np.array([[0.0, math.cos(angle), -math.sin(angle), -14], [0.0, math.sin(angle), math.cos(angle), -13],
                       [1.0, 0, 0, -16], [0, 0, 0, 1]])
    shape = (32, 30, 28)
    centre = affine @ np.array([17.2, 14.6, 13.9, 1.0])

    def blob(aff, grid_shape):
        idx = np.stack(np.meshgrid(*(np.arange(n) for n in grid_shape), indexing="ij"), -1).reshape(-1, 3)
        pos = idx @ aff[:3, :3].T + aff[:3, 3]
        return np.exp(-((pos - centre[:3]) ** 2).sum(-1) / (2 * 3.0**2)).reshape(grid_shape)

    out, voxel = fourier_resample(torch.from_numpy(blob(affine, shape)).float(), (1.0, 1.0, 1.0), (2.0, 2.0, 2.0))
    assert tuple(out.shape) == (16, 15, 14)
    assert voxel == (2.0, 2.0, 2.0)
    new_affine = resampled_affine(affine, shape, tuple(out.shape))
    np.testing.assert_allclose(np.linalg.norm(new_affine[:3, :3], axis=0), [2.0, 2.0, 2.0])
    np.testing.assert_allclose(out.numpy(), blob(new_affine, tuple(out.shape)), atol=2e-3)
    constant, _ = fourier_resample(torch.full((9, 10, 11), 5.0), (1.0, 1.0, 1.0), (1.6, 0.5, 1.0))
    assert tuple(constant.shape) == (6, 20, 11)  # down, up, unchanged
    torch.testing.assert_close(constant, torch.full_like(constant, 5.0))


def test_make_pairs_writes_matched_pairs_and_manifest(heads, tmp_path):
    (a, a_labels), (b, b_labels) = heads
    manifest_path = make_ulf_pairs([a, b], tmp_path / "pairs", SETTINGS, labels_paths=[a_labels, b_labels],
                                   voxel_mm=2.0, held_out=["subjB"], seed=5)
    manifest = json.loads(manifest_path.read_text())
    assert manifest["held_out"] == ["subjB"]
    assert [(r["subject"], r["split"]) for r in manifest["subjects"]] == [("subjA", "train"), ("subjB", "held_out")]
    assert manifest["simulator"]["settings"]["contrast"] == "T2w"
    assert manifest["resampling"]["target_voxel_mm"] == [2.0, 2.0, 2.0]
    hf, lf = read_image(tmp_path / "pairs" / "subjA_hf.nii.gz"), read_image(tmp_path / "pairs" / "subjA_lf.nii.gz")
    assert tuple(hf.data.shape) == tuple(lf.data.shape) == (12, 14, 10) == tuple(manifest["subjects"][0]["shape"])
    np.testing.assert_allclose(hf.affine, lf.affine, atol=1e-5)
    source = read_image(a)  # 1 x 1 x 1.005 mm (the oblique affine shears W)
    np.testing.assert_allclose(hf.voxel_size_mm, 2 * np.array(source.voxel_size_mm), atol=1e-5)
    centre = source.affine @ np.array([12, 14, 10, 1.0])  # voxel n // 2 stays in place
    np.testing.assert_allclose(hf.affine @ np.array([6, 7, 5, 1.0]), centre, atol=1e-4)
    assert not torch.allclose(hf.data, lf.data, atol=5.0)  # noise, thick slices and 64 mT contrast changed it
    # The training loader pairs the files by subject.
    files = sorted((tmp_path / "pairs").glob("*.nii.gz"))
    pairs = pair_files([f for f in files if "_hf" in f.name], [f for f in files if "_lf" in f.name], r"^[^_.]+")
    assert [(t.name, c.name) for t, c in pairs] == [("subjA_hf.nii.gz", "subjA_lf.nii.gz"),
                                                    ("subjB_hf.nii.gz", "subjB_lf.nii.gz")]
    # Each subject's noise depends on the seed and its ID only: subjB alone, as .npy, gives the same volume.
    make_ulf_pairs([b], tmp_path / "alone", SETTINGS, labels_paths=[b_labels], voxel_mm=2.0, seed=5, fmt="npy")
    alone = np.load(tmp_path / "alone" / "subjB_lf.npy")
    assert alone.dtype == np.float32
    np.testing.assert_array_equal(alone, read_image(tmp_path / "pairs" / "subjB_lf.nii.gz").data.numpy())
    # Masked to the labels: a 'scalp' outside them is removed from the target (the input times labels > 0).
    inside = read_image(b_labels).data.numpy() > 0
    assert 0 < inside.mean() < 1
    (tmp_path / "scalp").mkdir()
    with_scalp = _save(tmp_path / "scalp" / "subjB.nii.gz", read_image(b).data.numpy() + 20.0 * ~inside)
    manifest = json.loads(make_ulf_pairs([with_scalp], tmp_path / "masked", SETTINGS, labels_paths=[b_labels],
                                         seed=5, fmt="npy", mask_to_labels=True).read_text())
    assert manifest["high_field_masked_to_labels"] is True
    np.testing.assert_allclose(np.load(tmp_path / "masked" / "subjB_hf.npy"), read_image(b).data.numpy(),
                               rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="mask_to_labels needs labels_paths"):
        make_ulf_pairs([b], tmp_path / "x", LowFieldSettings(), mask_to_labels=True)


def test_make_pairs_errors_name_the_file(heads, tmp_path):
    (a, a_labels), (b, _) = heads
    with pytest.raises(MrdpmError, match="held-out subjects \\['subjZ'\\]"):
        make_ulf_pairs([a], tmp_path, SETTINGS, labels_paths=[a_labels], held_out=["subjZ"])
    off_grid = _save(tmp_path / "small-labels.nii.gz", np.zeros((5, 5, 5)))
    with pytest.raises(MrdpmError, match="not on the high-field grid") as err:
        make_ulf_pairs([a], tmp_path, SETTINGS, labels_paths=[off_grid])
    assert "small-labels" in str(err.value)
    with pytest.raises(MrdpmError, match="1 label volumes for 2"):
        make_ulf_pairs([a, b], tmp_path, SETTINGS, labels_paths=[a_labels])
    with pytest.raises(ValueError, match="labels_paths are needed"):
        make_ulf_pairs([a], tmp_path, SETTINGS)


def test_training_config_parses():
    config = load_config(CONFIG)
    data, model = config.data, config.model
    assert data.spatial_dims == 3
    assert data.patch_size == (32, 32, 32)
    assert data.pair_scale == "condition"
    assert data.is_paired
    assert data.sources[0].condition_paths[0].endswith("*_lf.nii.gz")
    assert data.held_out == ("template-30", "template-36", "template-42")
    assert (model.parameterisation, model.beta_schedule, model.num_timesteps, model.cond_dropout) == (
        "v", "cosine", 1000, 0.1)


def test_ixi_config_fine_tunes_the_neonatal_model_on_ixi_pairs():
    neonatal, ixi = load_config(CONFIG), load_config(CONFIG.with_name("ulf-ixi.toml"))
    assert ixi.model == neonatal.model
    # resolved against configs/ when that card exists, else kept as written
    assert ixi.finetune.checkpoint.endswith("runs/ulf-compact/model.json")
    assert ixi.data.held_out == ("IXI575-HH-2658", "IXI577-HH-2661", "IXI603-HH-2701", "IXI606-HH-2601")
    assert ixi.data.sources[0].condition_paths == (str(CONFIG.parents[1] / "runs" / "ulf-ixi-pairs" / "*_lf.nii.gz"),)
    assert ixi.optim.lr < neonatal.optim.lr
    same = ("spatial_dims", "patch_size", "patch_mode", "image_type", "normalisation", "pair_scale", "percentile")
    assert [getattr(ixi.data, k) for k in same] == [getattr(neonatal.data, k) for k in same]
    assert (ixi.perceptual.weight, ixi.perceptual.min_snr) == (neonatal.perceptual.weight, neonatal.perceptual.min_snr)


def test_strength_schedule_and_start_noise_match_the_closed_form():
    grid = _model().sigma_grid
    assert start_timestep(0.65, 1000) == 649
    assert start_timestep(0.0, 1000) == -1
    # Cosine schedule (Nichol & Dhariwal 2021): abar_t = f(t + 1) / f(0), f(u) = cos((u/T + s)/(1 + s) pi/2)^2.
    f = [math.cos((u / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2 for u in (0, 650)]
    abar = f[1] / f[0]
    sigmas = strength_sigmas(grid, 0.65, 10)
    assert sigmas.shape == (11,)
    assert sigmas[-1] == 0
    assert bool((sigmas[1:] < sigmas[:-1]).all())
    assert sigmas[0].item() == pytest.approx(math.sqrt((1 - abar) / abar), rel=1e-9)
    assert set(sigmas[:-1].tolist()) <= set(grid.tolist())
    x = torch.rand((16, 16, 16))
    start = noised_start(x, sigmas[0].item(), 4, torch.Generator().manual_seed(0))
    assert start.shape == (4, 1, 16, 16, 16)
    x_t = math.sqrt(abar) * start  # the DDPM state: mean sqrt(abar) x, variance 1 - abar
    residual = x_t - math.sqrt(abar) * x
    assert residual.mean().item() == pytest.approx(0.0, abs=0.01)
    assert residual.var().item() == pytest.approx(1 - abar, rel=0.03)
    with pytest.raises(ValueError, match="steps must be in \\[1, 650\\]"):
        strength_sigmas(grid, 0.65, 651)
    with pytest.raises(ValueError, match="nothing to denoise"):
        strength_sigmas(grid, 0.0, 1)


def test_enhance_keeps_geometry_units_and_is_seeded(model):
    lf = _lf_volume()
    options = {"strength": 0.3, "steps": 3, "samples": 2, "guidance": 2.0, "patch": 16, "stride": 8}
    result = enhance(lf, model, seed=1, **options)
    assert tuple(result.mean.data.shape) == tuple(result.std.data.shape) == (12, 20, 16)
    assert result.samples.shape == (2, 12, 20, 16)
    np.testing.assert_array_equal(result.mean.affine, OBLIQUE)
    np.testing.assert_array_equal(result.std.affine, OBLIQUE)
    assert result.nfe == 6
    assert result.info["start_timestep"] == 299
    assert bool((result.std.data > 0).all())
    torch.testing.assert_close(result.std.data, result.samples.std(0))
    again = enhance(lf, model, seed=1, **options)
    torch.testing.assert_close(again.mean.data, result.mean.data, rtol=0, atol=0)
    assert not torch.allclose(enhance(lf, model, seed=2, **options).mean.data, result.mean.data)
    # Intensities are normalised by the input's percentile and restored: scaling the input scales the output.
    scaled = enhance(_lf_volume(scale=10.0), model, seed=1, **options)
    torch.testing.assert_close(scaled.mean.data, 10 * result.mean.data, rtol=1e-4, atol=1e-4)
    assert model.training is False


def test_strength_zero_returns_the_start_volume(model):
    lf = _lf_volume()
    result = enhance(lf, model, strength=0.0, samples=3)
    torch.testing.assert_close(result.mean.data, lf.data)
    start = Volume(2 * lf.data, OBLIQUE)
    torch.testing.assert_close(enhance(lf, model, strength=0.0, samples=1, init=start).mean.data, start.data)
    assert result.nfe == 0
    assert float(result.std.data.abs().max()) == 0.0


def _plain_samples(model, lf: Volume, start: Volume, factor: float, strength: float, seed: int) -> torch.Tensor:
    """Two samples of DDIM in 2 steps from ``start`` noised to ``strength``, conditioned on ``lf``, by hand."""
    x_lf = lf.data / factor
    sigmas = strength_sigmas(model.sigma_grid, strength, 2)
    windows = PatchDenoiser(model, 16, 8)
    cond = x_lf.expand(2, 1, *x_lf.shape)
    plain = sample_ddim(lambda x, sigma: windows(x, sigma, cond=cond),
                        noised_start(start.data / factor, sigmas[0].item(), 2, torch.Generator().manual_seed(seed)),
                        sigmas)
    return plain.x[:, 0] * factor


def test_guidance_one_is_the_plain_conditional_sampler(model):
    lf = _lf_volume()
    result = enhance(lf, model, strength=0.2, steps=2, samples=2, guidance=1.0, patch=16, stride=8, seed=4)
    assert result.nfe == 2
    expected = _plain_samples(model, lf, lf, result.info["intensity_factor"], 0.2, seed=4)
    torch.testing.assert_close(result.samples, expected, rtol=1e-5, atol=1e-4)


def test_init_replaces_the_start_but_not_the_condition(model):
    lf = _lf_volume()
    options = {"strength": 0.3, "steps": 2, "samples": 2, "guidance": 1.0, "patch": 16, "stride": 8, "seed": 3}
    plain = enhance(lf, model, **options)
    torch.testing.assert_close(enhance(lf, model, init=lf, **options).samples, plain.samples, rtol=0, atol=0)
    start = Volume(2 * lf.data + 1, OBLIQUE)
    result = enhance(lf, model, init=start, **options)
    assert result.info["init"] == "given"
    assert plain.info["init"] == "lf"
    expected = _plain_samples(model, lf, start, result.info["intensity_factor"], 0.3, seed=3)
    torch.testing.assert_close(result.samples, expected, rtol=1e-5, atol=1e-4)
    assert not torch.allclose(result.samples, plain.samples)
    with pytest.raises(ValueError, match="low-field volume's shape"):
        enhance(lf, model, init=Volume(lf.data[1:], OBLIQUE), **options)
    shifted = OBLIQUE.copy()
    shifted[0, 3] += 1.0
    with pytest.raises(ValueError, match="affines differ"):
        enhance(lf, model, init=Volume(lf.data, shifted), **options)


def test_enhance_rejects_unsuited_models_and_options(model):
    lf = _lf_volume()
    with pytest.raises(ValueError, match="condition dropout"):
        enhance(lf, _model(cond_dropout=0.0), steps=1, samples=1)
    with pytest.raises(ValueError, match="discrete-time model"):
        enhance(lf, _model(parameterisation="edm"), steps=1, samples=1)
    with pytest.raises(ValueError, match="steps must be in"):
        enhance(lf, model, strength=0.002, steps=5)
    with pytest.raises(ValueError, match="real \\(D, H, W\\)"):
        enhance(Volume(lf.data[0], OBLIQUE), model)


def test_orthogonal_mosaic_places_the_three_views():
    volume = torch.arange(4 * 5 * 6, dtype=torch.float32).reshape(4, 5, 6)
    mosaic = orthogonal_mosaic(volume, gap=1)
    assert mosaic.shape == (5, 6 + 6 + 5 + 2)
    torch.testing.assert_close(mosaic[:5, :6], volume[2])
    torch.testing.assert_close(mosaic[:4, 7:13], volume[:, 2])
    torch.testing.assert_close(mosaic[:4, 14:], volume[:, :, 3])


def _train_config(pairs: Path, folder: Path) -> Path:
    """configs/ulf.toml pointed at ``pairs`` and a perceptual encoder in ``folder``, sized for a test."""
    text = CONFIG.read_text().replace("../runs/ulf-pairs", pairs.as_posix())
    text = text.replace("../runs/ulf-encoder/encoder.json", (folder / "encoder" / "encoder.json").as_posix())
    text = text.replace("[32, 32, 32]", "[8, 8, 8]").replace('["template-30", "template-36", "template-42"]',
                                                                '["subjB"]')
    path = folder / "ulf-test.toml"
    path.write_text(text.replace('device = "auto"', 'device = "cpu"'))
    return path


def test_cli_make_pairs_train_and_enhance(heads, tmp_path, capsys):
    (a, a_labels), (b, b_labels) = heads
    pairs = tmp_path / "pairs"
    assert main(["ulf", "make-pairs", str(a), str(b), "--labels", str(a_labels), str(b_labels), "-o", str(pairs),
                 "--contrast", "T2w", "--voxel-mm", "4,2,2", "--out-voxel-mm", "2", "--held-out", "subjB"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["pairs"] == 2
    assert summary["held_out"] == ["subjB"]
    assert summary["shapes"] == [[12, 14, 10]]
    config = _train_config(pairs, tmp_path)
    run = tmp_path / "run"
    assert main(["train", str(config), "--train-encoder", "--steps", "2", "--no-progress"]) == 0
    assert (tmp_path / "encoder" / "encoder.json").is_file()
    assert main(["train", str(config), "--run-dir", str(run), "--max-steps", "2", "--no-progress"]) == 0
    card = json.loads((run / "model.json").read_text())
    assert card["training"]["perceptual"]["encoder"]
    assert card["intensity_normalisation"]["pair_scale"] == "condition"
    assert card["training"]["data"]["held_out_subjects"] == ["subjB"]
    capsys.readouterr()
    lf_path = pairs / "subjB_lf.nii.gz"
    out = tmp_path / "out" / "subjB_enhanced.nii.gz"
    assert main(["ulf", "enhance", str(lf_path), "-o", str(out), "--model", str(run / "model.json"),
                 "--strength", "0.1", "--steps", "2", "--samples", "2", "--guidance", "2", "--seed", "1"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["nfe"] == 4
    assert info["patch"] == [8, 8, 8]
    assert info["stride"] == [4, 4, 4]
    mean, std, lf = read_image(out), read_image(tmp_path / "out" / "subjB_enhanced_std.nii.gz"), read_image(lf_path)
    np.testing.assert_allclose(mean.affine, lf.affine, atol=1e-5)
    np.testing.assert_allclose(std.affine, lf.affine, atol=1e-5)
    assert mean.data.shape == lf.data.shape
    assert float(std.data.max()) > 0
    assert (tmp_path / "out" / "subjB_enhanced.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # SDEdit from another start volume (here the truth, as a regression estimate would be): a different mean
    refined = tmp_path / "out" / "subjB_refined.nii.gz"
    assert main(["ulf", "enhance", str(lf_path), "-o", str(refined), "--model", str(run / "model.json"),
                 "--strength", "0.1", "--steps", "2", "--samples", "2", "--guidance", "2", "--seed", "1",
                 "--init", str(pairs / "subjB_hf.nii.gz")]) == 0
    assert json.loads(capsys.readouterr().out)["init"] == "given"
    assert not torch.allclose(read_image(refined).data, mean.data)


def test_cli_errors_name_the_file(heads, tmp_path, capsys, model):
    (a, _), _ = heads
    assert main(["ulf", "make-pairs", str(a), "-o", str(tmp_path / "p"), "--contrast", "T2w"]) == 2
    assert "--contrast needs --labels" in capsys.readouterr().err
    assert main(["ulf", "make-pairs", str(a), "-o", str(tmp_path / "p"), "--held-out", "nobody"]) == 2
    assert "nobody" in capsys.readouterr().err
    assert main(["ulf", "make-pairs", str(a), "-o", str(tmp_path / "p"), "--mask-to-labels"]) == 2
    err = capsys.readouterr().err
    assert "--mask-to-labels needs --labels" in err
    assert str(a) in err
    card = save_checkpoint(model, tmp_path / "unpaired", {"intensity_normalisation": {"percentile": 99.0}})
    lf = _save(tmp_path / "lf.nii.gz", 1 + np.random.default_rng(0).random((12, 12, 12)))
    assert main(["ulf", "enhance", str(lf), "-o", str(tmp_path / "x.nii.gz"), "--model", str(card)]) == 2
    err = capsys.readouterr().err
    assert "pair_scale" in err
    assert "unpaired.json" in err
    assert main(["ulf", "enhance", str(lf), "-o", str(tmp_path / "x.png"), "--model", str(card)]) == 2
    assert "x.png" in capsys.readouterr().err
    assert main(["ulf", "enhance", str(tmp_path / "missing.nii.gz"), "-o", str(tmp_path / "x.nii.gz"),
                 "--model", str(card)]) == 2
    assert "missing.nii.gz" in capsys.readouterr().err
    paired = save_checkpoint(model, tmp_path / "paired", {"intensity_normalisation": {"pair_scale": "condition"}})
    assert main(["ulf", "enhance", str(lf), "-o", str(tmp_path / "x.nii.gz"), "--model", str(paired),
                 "--strength", "0.002", "--steps", "5"]) == 2
    err = capsys.readouterr().err
    assert "steps must be in [1, 2]" in err
    assert "paired.json" in err
    small = _save(tmp_path / "small.nii.gz", np.ones((12, 12, 10)))
    assert main(["ulf", "enhance", str(lf), "-o", str(tmp_path / "x.nii.gz"), "--model", str(paired),
                 "--init", str(small)]) == 2
    err = capsys.readouterr().err
    assert "small.nii.gz" in err
    assert "low-field volume's shape" in err
    assert main(["ulf", "enhance", str(lf), "-o", str(tmp_path / "x.nii.gz"), "--model", str(paired),
                 "--method", "unet", "--init", str(lf)]) == 2
    assert "--init is an option of the diffusion method" in capsys.readouterr().err
