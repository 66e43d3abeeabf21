"""Prior samplers against a Gaussian prior, whose exact denoiser makes every sampler an affine map.

Deterministic samplers (Euler, Heun, DDIM with eta = 0) are checked without Monte-Carlo error: feeding the zero
image and the scaled basis images gives the exact mean and covariance of their output, which is compared with the
exact probability-flow map of the Gaussian (so the only error left is the discretisation). Stochastic samplers
are checked by Monte Carlo with tolerances derived from the Monte-Carlo error of the statistic.
"""

from __future__ import annotations

import math

import pytest
import torch

from mrdpm.diffusion.gaussian import exponential_prior
from mrdpm.diffusion.guidance import bind
from mrdpm.diffusion.samplers import (
    randn_like,
    sample_ddim,
    sample_ddpm,
    sample_edm,
    sample_euler,
    sample_heun,
)
from mrdpm.diffusion.schedules import geometric_sigmas, karras_sigmas, respace

SHAPE = (1, 8, 8)
N = math.prod(SHAPE)
N_MC = 2000


@pytest.fixture(scope="module")
def prior():
    return exponential_prior(SHAPE, mean_scale=0.5, generator=torch.Generator().manual_seed(0))


def vp_linear_grid(steps: int = 1000) -> torch.Tensor:
    """The DDPM linear-beta schedule (1e-4 .. 0.02) as VE noise levels sqrt((1 - abar) / abar)."""
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, steps, dtype=torch.float64), 0)
    return ((1 - abar) / abar).sqrt()


def affine_moments(prior, sampler, sigmas, **options):
    """Exact output mean and covariance of a deterministic sampler started from sigmas[0] * n."""
    s0 = float(sigmas[0])
    inputs = torch.cat([torch.zeros(1, N), s0 * torch.eye(N)]).to(torch.complex128).reshape(N + 1, *SHAPE)
    out = sampler(prior.denoiser, inputs, sigmas, **options).x.reshape(N + 1, N)
    columns = out[1:] - out[0]
    # the complex input noise has covariance 2 s0^2 I (unit variance per real channel)
    return out[0], 2 * columns.T @ columns.conj()


def flow_moments(prior, sigma_max):
    """The exact probability-flow map from N(0, 2 sigma_max^2 I) at sigma_max to sigma = 0.

    The ODE maps x to mu + Sigma^(1/2) (Sigma + 2 sigma^2 I)^(-1/2) (x - mu): the prior, except that the
    start ignores the prior's mean and covariance against sigma_max (a truncation the samplers share).
    """
    lam, vecs = prior._eigvals, prior._eigvecs
    shrink = (vecs * (lam / (lam + 2 * sigma_max**2)).sqrt()) @ vecs.mH
    cov = (vecs * (lam * 2 * sigma_max**2 / (lam + 2 * sigma_max**2))) @ vecs.mH
    return prior.mean - shrink @ prior.mean, cov


def rel(a, b):
    return float((a - b).norm() / b.norm())


def test_schedules():
    k = karras_sigmas(10, 0.002, 80.0)
    assert k.dtype == torch.float64
    assert k.shape == (11,)
    assert k[-1] == 0
    assert float(k[0]) == pytest.approx(80)
    assert float(k[-2]) == pytest.approx(0.002)
    ramp = (k[:-1] ** (1 / 7)).diff()
    assert torch.allclose(ramp, ramp[0].expand_as(ramp))
    g = geometric_sigmas(5, 0.01, 100.0)
    assert torch.allclose(g[1:-1] / g[:-2], torch.full((4,), 0.1, dtype=torch.float64))
    assert g[-1] == 0
    grid = vp_linear_grid()
    r = respace(grid, 50)
    assert r.shape == (51,)
    assert float(r[0]) == float(grid[-1])
    assert float(r[-2]) == float(grid[0])
    assert bool(torch.isin(r[:-1], grid).all())
    with pytest.raises(ValueError, match="sigma_min"):
        karras_sigmas(10, 1.0, 0.5)
    with pytest.raises(ValueError, match="n must be"):
        respace(grid, 1001)


@pytest.mark.parametrize(("sampler", "n", "tol"), [(sample_heun, 64, 0.01), (sample_euler, 256, 0.03)])
def test_deterministic_samplers_exact_moments(prior, sampler, n, tol):
    sigmas = karras_sigmas(n, 0.002, 80.0)
    mean, cov = affine_moments(prior, sampler, sigmas)
    ref_mean, ref_cov = flow_moments(prior, 80.0)
    assert rel(mean, ref_mean) < tol / 10
    assert rel(cov, ref_cov) < tol
    # and the flow's target is the prior, up to the sigma_max truncation (2.4% of the mean here)
    assert rel(ref_cov, prior.cov) < 1e-3
    assert rel(ref_mean, prior.mean) < 0.03


def test_convergence_orders(prior):
    """Heun is second order (2x steps -> ~4x smaller error), Euler first order (4x steps -> ~4x)."""
    _, ref_cov = flow_moments(prior, 80.0)

    def err(sampler, n):
        return rel(affine_moments(prior, sampler, karras_sigmas(n, 0.002, 80.0))[1], ref_cov)

    assert err(sample_heun, 32) / err(sample_heun, 64) > 3.5
    assert 3.0 < err(sample_euler, 64) / err(sample_euler, 256) < 5.0


def test_ddim_eta0_is_euler(prior):
    sigmas = respace(vp_linear_grid(), 40)
    x = float(sigmas[0]) * randn_like(torch.zeros(8, *SHAPE, dtype=torch.complex128),
                                      torch.Generator().manual_seed(1))
    ddim = sample_ddim(prior.denoiser, x, sigmas)
    euler = sample_euler(prior.denoiser, x, sigmas)
    torch.testing.assert_close(ddim.x, euler.x, rtol=1e-10, atol=1e-10)


def mc_check(prior, samples):
    """Mean, covariance and marginal-variance errors with their Monte-Carlo scales (complex circular samples)."""
    flat = samples.reshape(N_MC, N).to(torch.complex128)
    mean = flat.mean(0)
    centred = flat - mean
    cov = centred.T @ centred.conj() / (N_MC - 1)
    trace = float(prior.cov.diagonal().real.sum())
    # E||mean - mu||^2 = tr(Sigma) / n; E||C_hat - Sigma||_F^2 = tr(Sigma)^2 / n for circular samples;
    # the sample variance of |x|^2 (2 real dof) has relative std 1 / sqrt(n) per pixel
    scales = {"mean": math.sqrt(trace / N_MC), "cov": trace / float(prior.cov.norm()) / math.sqrt(N_MC),
              "var": 1 / math.sqrt(N_MC)}
    errors = {"mean": float((mean - prior.mean).norm()), "cov": rel(cov, prior.cov),
              "var": rel(cov.diagonal().real, prior.cov.diagonal().real)}
    return errors, scales


@pytest.mark.parametrize(("name", "sampler", "sigmas", "options"), [
    ("edm", sample_edm, karras_sigmas(128, 0.002, 500.0), {"s_churn": 40.0, "s_tmin": 0.01, "s_tmax": 50.0}),
    ("ddpm", sample_ddpm, respace(vp_linear_grid(), 250), {}),
    ("ddim_eta0.5", sample_ddim, respace(vp_linear_grid(), 100), {"eta": 0.5}),
])
def test_stochastic_samplers_reproduce_prior(prior, name, sampler, sigmas, options):
    generator = torch.Generator().manual_seed(2)
    x = float(sigmas[0]) * randn_like(torch.zeros(N_MC, *SHAPE, dtype=torch.complex64), generator)
    out = sampler(prior.denoiser, x, sigmas, generator=generator, **options)
    errors, scales = mc_check(prior, out.x)
    # the squared errors concentrate around scale^2 (relative std ~ 0.25 for this spectrum), so 1.6x the scale
    # is > 4 standard deviations; 0.02 absolute allows the stated discretisation error of these step counts
    assert errors["mean"] < 1.6 * scales["mean"], name
    assert errors["cov"] < 1.6 * scales["cov"] + 0.02, name
    assert errors["var"] < 2.0 * scales["var"] + 0.02, name


def test_real_prior_heun():
    real = exponential_prior(SHAPE, complex_valued=False, generator=torch.Generator().manual_seed(3))
    sigmas = karras_sigmas(40, 0.002, 500.0)
    generator = torch.Generator().manual_seed(4)
    x = float(sigmas[0]) * randn_like(torch.zeros(N_MC, *SHAPE), generator)
    out = sample_heun(real.denoiser, x, sigmas).x
    assert out.dtype == torch.float32
    flat = out.reshape(N_MC, N).double()
    cov = torch.cov(flat.T)
    trace = float(real.cov.diagonal().sum())
    # real samples: E||C_hat - Sigma||_F^2 = (tr(Sigma)^2 + tr(Sigma^2)) / n
    scale = math.sqrt(trace**2 + float((real.cov @ real.cov).trace())) / float(real.cov.norm()) / math.sqrt(N_MC)
    assert float((flat.mean(0) - real.mean).norm()) < 1.6 * math.sqrt(trace / N_MC)
    assert rel(cov, real.cov) < 1.6 * scale


def test_nfe_counts_and_reproducibility(prior):
    x = 80.0 * randn_like(torch.zeros(4, *SHAPE, dtype=torch.complex64), torch.Generator().manual_seed(0))
    sigmas = karras_sigmas(10, 0.002, 80.0)
    assert sample_euler(prior.denoiser, x, sigmas).nfe == 10
    assert sample_heun(prior.denoiser, x, sigmas).nfe == 19
    assert sample_edm(prior.denoiser, x, sigmas, s_churn=5.0).nfe == 19
    assert sample_ddim(prior.denoiser, x, sigmas).nfe == 10
    runs = [sample_edm(prior.denoiser, x, sigmas, s_churn=5.0, generator=torch.Generator().manual_seed(7)).x
            for _ in range(2)]
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)
    assert not torch.equal(runs[0], sample_ddpm(prior.denoiser, x, sigmas,
                                                generator=torch.Generator().manual_seed(8)).x)
    steps = []
    sample_heun(prior.denoiser, x, sigmas, callback=lambda info: steps.append(info["i"]), progress=True)
    assert steps == list(range(10))


def test_invalid_inputs(prior):
    x = torch.zeros(2, *SHAPE, dtype=torch.complex64)
    with pytest.raises(ValueError, match="non-increasing"):
        sample_euler(prior.denoiser, x, torch.tensor([1.0, 2.0, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="eta"):
        sample_ddim(prior.denoiser, x, karras_sigmas(3, 0.1, 1.0), eta=1.5)
    with pytest.raises(TypeError, match="real prior"):
        exponential_prior(SHAPE, complex_valued=False).denoiser(x, torch.ones(2))


class ToyConditional:
    """D(x, sigma, class_labels, cond) with distinct outputs per label and condition; counts calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, x, sigma, class_labels=None, cond=None):
        self.calls += 1
        out = x / (1 + sigma.view(-1, 1, 1, 1) ** 2)
        if class_labels is not None:
            out = out + class_labels.view(-1, 1, 1, 1).to(x.real.dtype)
        return out if cond is None else out + 2 * cond


def test_classifier_free_guidance():
    toy = ToyConditional()
    x = torch.randn(3, *SHAPE)
    sigma = torch.full((3,), 0.5)
    labels = torch.tensor([0, 1, 2])
    cond = torch.randn(1, 8, 8)
    plain = bind(toy, labels, cond)
    torch.testing.assert_close(plain(x, sigma), toy(x, sigma, class_labels=labels, cond=cond.expand(3, 1, 8, 8)))
    assert plain.nfe_per_call == 1
    guided = bind(toy, labels, cond, guidance_scale=3.0)
    uncond = toy(x, sigma, class_labels=torch.full((3,), -1), cond=torch.zeros(3, 1, 8, 8))
    cond_out = toy(x, sigma, class_labels=labels, cond=cond.expand(3, 1, 8, 8))
    torch.testing.assert_close(guided(x, sigma), uncond + 3.0 * (cond_out - uncond))
    assert guided.nfe_per_call == 2
    toy.calls = 0
    out = sample_euler(guided, x, karras_sigmas(5, 0.01, 1.0))
    assert out.nfe == 10
    assert toy.calls == 10
    torch.testing.assert_close(bind(toy, 1)(x, sigma), toy(x, sigma, class_labels=torch.ones(3, dtype=torch.long)))
    with pytest.raises(ValueError, match="guide"):
        bind(toy, guidance_scale=2.0)
