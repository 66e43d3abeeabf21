"""benchmarks/mrf_denoiser.py: the x0 and noise errors it reports agree, for both VP parameterisations."""

import math

import pytest
import torch

from mrdpm.models.checkpoint import save_checkpoint
from mrdpm.models.precond import Denoiser, DenoiserConfig


@pytest.mark.parametrize("parameterisation", ["vp", "v"])
def test_errors_agree_and_samples_are_counted(load_benchmark, tmp_path, parameterisation):
    bench = load_benchmark("mrf_denoiser")
    torch.manual_seed(0)
    model = Denoiser(DenoiserConfig(preset="tiny", image_channels=2, complex_input=False, cond_channels=2,
                                    parameterisation=parameterisation, num_timesteps=50))
    card = save_checkpoint(model, tmp_path / "model")
    x0, cond = torch.randn(2, 2, 16, 16), torch.randn(2, 2, 16, 16)
    result = bench.measure_model(card, x0, cond, steps=[3], seed=0)
    assert result["parameterisation"] == parameterisation
    assert [level["sigma"] for level in result["levels"][:-1]] == list(bench.SIGMAS)
    assert result["levels"][-1]["sigma"] == pytest.approx(float(model.sigma_grid[-1]), abs=1e-3)
    # x0 - D = sigma (eps_hat - n): the two reported errors are one quantity in two scalings
    for level in result["levels"]:
        x0_mse = 10 ** (-level["x0_psnr_db"] / 10)
        assert math.sqrt(x0_mse) == pytest.approx(level["sigma"] * level["eps_rms_error"], rel=0.02)
    assert [(s["steps"], s["nfe"]) for s in result["samples"]] == [(3, 3)]
    text = bench.format_markdown({"command": "c", "n_patches": 2, "patch": "16x16", "subjects": ["a"],
                                  "config": "x.toml", "seed": 0, "unet_psnr_db": 1.0, "models": {"m": result}})
    assert f"| {bench.SIGMAS[0]:g} | " in text
    assert "| 3 (3) |" in text
