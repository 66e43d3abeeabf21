"""Self-supervised (R2R) denoising of training volumes: noise estimates, R2R unbiasedness, gain, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from mrdpm.cli.main import main
from mrdpm.data.config import DataConfig, SourceConfig
from mrdpm.data.denoise import (
    denoise_volume,
    estimate_noise_sigma,
    invert_rician_mean,
    load_denoiser,
    recorrupt,
    rician_mean,
    save_denoiser,
    train_denoiser,
)
from mrdpm.data.images import TrainingImages
from mrdpm.errors import MrdpmError
from mrdpm.io.containers import Volume
from mrdpm.io.nifti import read_nifti, write_nifti


def phantom(seed: int, shape: tuple[int, int, int] = (24, 48, 48)) -> torch.Tensor:
    """Piecewise-smooth head: a shaded ellipsoid holding random brighter/darker ellipsoids, air in the corners."""
    g = torch.Generator().manual_seed(seed)
    z, y, x = torch.meshgrid(*[(torch.arange(n) + 0.5) / n * 2 - 1 for n in shape], indexing="ij")

    def uniform(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=g))

    head = ((x / 0.8) ** 2 + (y / 0.85) ** 2 + (z / 0.9) ** 2 <= 1).float()
    image = head * (0.6 + 0.2 * x + 0.1 * y)
    for _ in range(6):
        c, r = [uniform(-0.4, 0.4) for _ in range(3)], [uniform(0.12, 0.35) for _ in range(3)]
        blob = ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2 <= 1
        image = image + head * blob.float() * uniform(-0.3, 0.4)
    return image.clamp_min(0)


def complex_noise(shape: tuple[int, ...], sigma: float, seed: int) -> torch.Tensor:
    """Complex Gaussian noise with std ``sigma`` in each of the real and imaginary parts."""
    g = torch.Generator().manual_seed(seed)
    return torch.complex(torch.randn(shape, generator=g), torch.randn(shape, generator=g)) * sigma


def rician(clean: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
    return (clean + complex_noise(tuple(clean.shape), sigma, seed)).abs()


def psnr(x: torch.Tensor, ref: torch.Tensor) -> float:
    return 10 * math.log10(float(ref.abs().max()) ** 2 / float((x - ref).abs().square().mean()))


SIGMA = 0.08  # foreground SNR ~ 10 (tissue 0.4 - 1.2)


# --- noise level -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["rician", "complex", "gaussian"])
def test_background_noise_estimate_within_10_percent(kind):
    clean = phantom(0)
    if kind == "rician":
        noisy, model = rician(clean, SIGMA, 1), "rician"
    elif kind == "complex":
        rotated = clean * complex(math.cos(0.3), math.sin(0.3))
        noisy, model = rotated + complex_noise(tuple(clean.shape), SIGMA, 1), "gaussian"
    else:  # signed real Gaussian noise on an offset background
        noisy, model = clean + 5.0 + complex_noise(tuple(clean.shape), SIGMA, 1).real, "gaussian"
    estimate = estimate_noise_sigma(Volume(noisy, np.eye(4)), noise_model=model)
    assert abs(estimate / SIGMA - 1) < 0.1
    if kind == "rician":  # the Gaussian formula on Rayleigh data is badly off: the test can tell them apart
        assert abs(estimate_noise_sigma(noisy, noise_model="gaussian") / SIGMA - 1) > 0.3


def test_noise_scan_and_robust_median():
    scan = rician(torch.zeros(8, 32, 32), 2.5, 3)
    assert abs(estimate_noise_sigma(scan, "noise-scan") / 2.5 - 1) < 0.05
    noisy = rician(phantom(1), SIGMA, 4)
    noisy[:3, :5, :5] += 1.0  # one corner holds "anatomy": the median over the 8 corners ignores it
    assert abs(estimate_noise_sigma(noisy) / SIGMA - 1) < 0.1


def test_noise_free_background_is_refused():
    with pytest.raises(ValueError, match="no noise found"):
        estimate_noise_sigma(phantom(0))  # exact zeros in air: masked data


# --- Rician mean and R2R --------------------------------------------------------------------------------------

def test_rician_mean_matches_monte_carlo_and_inverts():
    sigma = 0.7
    x = torch.tensor([0.0, 0.5, 1.0, 2.0, 5.0], dtype=torch.float64)
    samples = (x[:, None] + complex_noise((5, 200_000), sigma, 0).to(torch.complex128)).abs().mean(1)
    torch.testing.assert_close(rician_mean(x, sigma), samples, rtol=5e-3, atol=0)
    signal = torch.linspace(0.02, 60, 500, dtype=torch.float64) * sigma
    torch.testing.assert_close(invert_rician_mean(rician_mean(signal, sigma), sigma), signal, rtol=2e-3, atol=2e-3)
    assert float(invert_rician_mean(torch.tensor([0.5 * sigma]), sigma)) == 0  # below the noise floor


@pytest.mark.parametrize("is_complex", [False, True])
def test_r2r_loss_is_clean_loss_plus_a_constant(is_complex):
    """E||W y1 - y2||^2 = E||W y1 - x||^2 + N sigma^2 (1 + 1/alpha^2) for any W; a noisy target y is biased."""
    n, draws, sigma, alpha = 16, 20_000, 0.3, 0.7
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, generator=g, dtype=torch.float64)
    noise = complex_noise((draws, n), sigma, 1).to(torch.complex128) if is_complex else \
        torch.randn(draws, n, generator=g, dtype=torch.float64) * sigma
    y = (x.to(noise.dtype) + noise)
    y1, y2 = recorrupt(y, sigma, alpha, generator=g)
    channels = 2 if is_complex else 1
    smooth = torch.eye(n, dtype=torch.float64) * 0.5 + torch.diag(torch.full((n - 1,), 0.25), 1).double() \
        + torch.diag(torch.full((n - 1,), 0.25), -1).double()
    constant = channels * sigma**2 * (1 + alpha**-2)  # per element
    gaps, naive_gaps = [], []
    for w in (torch.eye(n, dtype=torch.float64), smooth, 0.3 * torch.eye(n, dtype=torch.float64)):
        out = y1 @ w.T.to(y1.dtype)
        clean = (out - x).abs().square().mean()
        gaps.append(float((out - y2).abs().square().mean() - clean))
        naive_gaps.append(float((out - y).abs().square().mean() - clean))
    np.testing.assert_allclose(gaps, constant, rtol=0.02)
    # Target y (noise correlated with y1's): the gap depends on W (by -2 sigma^2 tr(W) / N per channel).
    assert max(naive_gaps) - min(naive_gaps) > 0.5 * channels * sigma**2
    assert float((y1 - y).abs().square().mean()) == pytest.approx(channels * (alpha * sigma) ** 2, rel=0.02)


# --- a trained denoiser ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained():
    train = [Volume(rician(phantom(s), SIGMA, 10 + s), np.eye(4)) for s in (1, 2)]
    return train_denoiser(train, SIGMA, 150, preset="tiny", patch=48, batch_size=8, seed=0)


def test_denoiser_gains_over_2_db_on_a_held_out_volume(trained):
    model, report = trained
    clean = phantom(7)
    noisy = Volume(rician(clean, SIGMA, 17), np.diag([2.0, 1.0, 1.0, 1.0]))
    out = denoise_volume(model, noisy, estimate_noise_sigma(noisy))
    gain = psnr(out.data, clean) - psnr(noisy.data, clean)
    assert gain > 2.0, f"PSNR gain {gain:.2f} dB"  # 3.9-5.1 dB over training seeds 0-2
    assert out.data.dtype == torch.float32
    assert np.array_equal(out.affine, noisy.affine)
    assert report["loss_last"] < report["loss_first"]
    assert report["clean_mse_estimate_last"] is None
    # The Rician floor is removed: air goes from sigma sqrt(pi/2) towards 0.
    assert float(out.data[clean == 0].mean()) < 0.6 * float(noisy.data[clean == 0].mean())


def test_complex_volumes_train_and_denoise():
    def volume(seed: int) -> Volume:
        clean = phantom(seed, (16, 32, 32)) * torch.exp(0.5j * torch.linspace(-1, 1, 32))
        return Volume(clean.to(torch.complex64) + complex_noise(tuple(clean.shape), SIGMA, seed + 5), np.eye(4))

    model, report = train_denoiser([volume(1), volume(2)], SIGMA, 300, preset="tiny", patch=32, batch_size=8)
    assert model.spec.noise_model == "gaussian"
    assert report["clean_mse_estimate_last"] is not None
    held_out = volume(3)
    out = denoise_volume(model, held_out, SIGMA)
    clean = phantom(3, (16, 32, 32)) * torch.exp(0.5j * torch.linspace(-1, 1, 32))
    assert out.data.dtype == torch.complex64
    assert psnr(out.data, clean) > psnr(held_out.data, clean) + 1.0  # 2.3-6.1 dB over seeds 0-2
    with pytest.raises(ValueError, match="complex"):
        denoise_volume(model, Volume(held_out.data.abs(), np.eye(4)), SIGMA)


def test_save_load_round_trip_and_tamper(trained, tmp_path):
    model, report = trained
    card = save_denoiser(model, tmp_path / "den", report)
    loaded, card_dict = load_denoiser(card)
    noisy = Volume(rician(phantom(3), SIGMA, 5), np.eye(4))
    torch.testing.assert_close(denoise_volume(loaded, noisy, SIGMA).data, denoise_volume(model, noisy, SIGMA).data)
    assert card_dict["spec"]["alpha"] == 1.0
    assert card_dict["training"]["steps"] == 150
    weights = tmp_path / "den.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"xxxx")
    with pytest.raises(MrdpmError, match="sha256"):
        load_denoiser(tmp_path / "den")
    with pytest.raises(MrdpmError, match="pickled"):
        load_denoiser(tmp_path / "den.pt")


# --- command line ---------------------------------------------------------------------------------------------

def _write_inputs(folder, n=2):
    folder.mkdir()
    affine = np.array([[0, 0, 1.2, -10], [0, 0.9, 0, 5], [2.0, 0, 0, 3], [0, 0, 0, 1]])  # (d, h, w) -> RAS mm
    names = [f"sub-{i:02d}_T2w.nii.gz" for i in range(n)]
    for i, name in enumerate(names):
        write_nifti(folder / name, Volume(rician(phantom(i, (16, 32, 32)), SIGMA, i) * 300, affine))
    (folder / "notes.txt").write_text("not an image")
    return names


def test_cli_end_to_end_keeps_names_and_geometry(tmp_path, capsys):
    names = _write_inputs(tmp_path / "in")
    out = tmp_path / "out"
    options = ["--steps", "20", "--preset", "tiny", "--patch", "32", "--batch-size", "4", "--device", "cpu"]
    assert main(["denoise-data", str(tmp_path / "in"), "-o", str(out), *options]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert sorted(p.name for p in out.glob("*.nii.gz")) == names
    for name in names:
        before, after = read_nifti(tmp_path / "in" / name), read_nifti(out / name)
        np.testing.assert_allclose(after.affine, before.affine, atol=1e-5)
        assert after.data.shape == before.data.shape
        assert not torch.equal(after.data, before.data)
    report = json.loads((out / "denoise-data.json").read_text())
    assert report["trained"]
    assert report["noise_model"] == "rician"
    assert report["training"]["steps"] == 20
    assert [v["sigma"] for v in report["volumes"]] == pytest.approx([SIGMA * 300] * 2, rel=0.2)  # small corners
    assert summary["volumes"] == 2
    assert (out / "r2r-denoiser.safetensors").is_file()
    # A training config can read the output folder directly.
    images = TrainingImages(DataConfig(sources=(SourceConfig("denoised", (str(out / "*.nii.gz"),)),)))
    assert len(images) == 2 * 16
    # Reuse the saved denoiser on a new folder, with a given sigma: no training, same names.
    again = tmp_path / "again"
    assert main(["denoise-data", str(tmp_path / "in"), "-o", str(again), "--model", str(out / "r2r-denoiser.json"),
                 "--sigma", str(SIGMA * 300)]) == 0
    report = json.loads((again / "denoise-data.json").read_text())
    assert not report["trained"]
    assert report["sigma_source"] == "given"
    assert sorted(p.name for p in again.glob("*.nii.gz")) == names


def test_cli_errors_name_the_file(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["denoise-data", str(empty), "-o", str(tmp_path / "o")]) == 2
    assert f"{empty}: no NIfTI files" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    (other / "scan.dcm").write_bytes(b"\0" * 200)
    assert main(["denoise-data", str(other), "-o", str(tmp_path / "o")]) == 2
    assert "scan.dcm" in capsys.readouterr().err
    (other / "broken.nii.gz").write_bytes(b"not gzip")
    assert main(["denoise-data", str(other), "-o", str(tmp_path / "o")]) == 2
    assert "broken.nii.gz" in capsys.readouterr().err
    masked = tmp_path / "masked"
    masked.mkdir()
    write_nifti(masked / "clean.nii", phantom(0, (16, 32, 32)), voxel_size_mm=(1, 1, 1))
    assert main(["denoise-data", str(masked), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "clean.nii" in err
    assert "--sigma" in err
    assert main(["denoise-data", str(masked), "-o", str(masked), "--sigma", "1"]) == 2
    assert "must differ" in capsys.readouterr().err
    for bad in ("0", "-1", "abc"):
        with pytest.raises(SystemExit) as exc:
            main(["denoise-data", str(masked), "-o", str(tmp_path / "o"), "--sigma", bad])
        assert exc.value.code == 2
        assert "--sigma" in capsys.readouterr().err
