"""The posterior-sampling reconstruction pipeline, with a tiny untrained prior (shapes, scaling, plumbing)."""

import math
from dataclasses import replace

import pytest
import torch

from mrdpm.data.simulate import SimulationSettings, simulate_case
from mrdpm.errors import MrdpmError
from mrdpm.models.checkpoint import save_checkpoint
from mrdpm.models.precond import Denoiser, DenoiserConfig
from mrdpm.physics.noise import complex_gaussian
from mrdpm.tasks.accel import write_outputs
from mrdpm.tasks.dpm import DpmSettings, estimate_noise_std, reconstruct_dpm


@pytest.fixture(scope="module")
def tiny_prior(tmp_path_factory):
    torch.manual_seed(0)
    denoiser = Denoiser(DenoiserConfig(preset="tiny", class_names=("T1",)))
    return save_checkpoint(denoiser, tmp_path_factory.mktemp("prior") / "tiny")


@pytest.fixture(scope="module")
def case():
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 24), torch.linspace(-1, 1, 20), indexing="ij")
    image = ((yy**2 / 0.8 + xx**2 / 0.6) < 1).float() * (1 + 0.5 * yy)
    return simulate_case(image[None].repeat(2, 1, 1), SimulationSettings(coils=3, mask="uniform2d",
                                                                          acceleration=2.0, snr_db=40.0))


def test_noise_estimate_from_outer_kspace():
    k = complex_gaussian((4, 64, 64), 0.3, generator=torch.Generator().manual_seed(0))
    assert estimate_noise_std(k, torch.ones(64, 64)) == pytest.approx(0.3, rel=0.1)


def test_dpm_recon_shapes_scaling_and_outputs(tiny_prior, case, tmp_path):
    settings = DpmSettings(model=str(tiny_prior), sampler="dds", nfe=3, samples=3, seed=1)
    result = reconstruct_dpm(case, settings)
    assert result.image.shape == (2, 24, 20)
    assert result.image.dtype == torch.complex64
    assert result.std.shape == (2, 24, 20)
    assert bool((result.std > 0).any())
    assert result.samples.shape == (2, 3, 24, 20)
    assert result.nfe == 3
    torch.testing.assert_close(result.image, result.samples.mean(dim=1))
    # the intensity scale is undone: the result has the target's scale, not the prior's normalised one
    ratio = result.image.abs().amax() / case.target.abs().amax()
    assert 0.5 < float(ratio) < 2.0
    # same seed, same samples
    again = reconstruct_dpm(case, settings)
    torch.testing.assert_close(again.samples, result.samples)
    summary = write_outputs(tmp_path, case, result, keep_samples=True)
    assert {"recon.nii.gz", "std.nii.gz", "samples.npy", "metrics.json", "figure.png"} <= set(summary["written"])
    assert math.isfinite(summary["metrics"]["psnr"])


def test_dpm_rejects_unknown_class_and_sampler(tiny_prior, case):
    with pytest.raises(MrdpmError, match="classes"):
        reconstruct_dpm(case, DpmSettings(model=str(tiny_prior), class_name="FLAIR", nfe=2, samples=1))
    with pytest.raises(MrdpmError, match="sampler"):
        DpmSettings(sampler="nope")
    with pytest.raises(MrdpmError, match=r"no option \['zeta'\]"):
        DpmSettings(sampler="dds", sampler_options={"zeta": 1.0})
    with pytest.raises(MrdpmError, match="measurement"):
        DpmSettings(sampler="dds", sampler_options={"measurement": None})


def test_sampler_options_reach_the_sampler(tiny_prior, case):
    base = DpmSettings(model=str(tiny_prior), sampler="dds", nfe=3, samples=2, seed=1)
    strong = reconstruct_dpm(case, base)
    weak = reconstruct_dpm(case, replace(base, sampler_options={"lam": 1e4}))
    assert not torch.allclose(strong.image, weak.image)
    assert strong.info["noise_source"] == "file"
    assert strong.info["noise_std"] == [case.attrs["noise_std"]] * case.n_slices
