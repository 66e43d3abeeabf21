"""Posterior samplers against the exact Gaussian posterior of a Gaussian prior (8x8 complex images).

Tolerances: the Monte-Carlo scale of the relative mean error is ``sqrt(tr(C_post) / n) / ||m_post||`` and of the
relative marginal-variance error ``1 / sqrt(n)`` (complex samples); each assertion allows a small multiple of that
plus the sampler's stated bias at the step count used (measured in benchmarks/sampler_accuracy.py).
"""

from __future__ import annotations

import math

import pytest
import torch

from mrdpm.diffusion.consistency import GradientDC, Measurement, ProximalDC, ReplaceDC
from mrdpm.diffusion.gaussian import exponential_prior, operator_matrix
from mrdpm.diffusion.posterior import (
    posterior_samples,
    sample_dds,
    sample_dps,
    sample_langevin,
    sample_score_pc,
)
from mrdpm.diffusion.schedules import geometric_sigmas, karras_sigmas
from mrdpm.physics.noise import complex_gaussian
from mrdpm.physics.operators import sense_operator, single_coil_operator

SHAPE = (1, 8, 8)
N = math.prod(SHAPE)
N_MC = 1000


@pytest.fixture(scope="module")
def setup():
    generator = torch.Generator().manual_seed(0)
    prior = exponential_prior(SHAPE, generator=generator)
    mask = torch.zeros(8, 8)
    mask[:, [1, 3, 4, 5]] = 1
    coef = torch.randn(3, 3, dtype=torch.complex64, generator=generator)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 8), torch.linspace(-1, 1, 8), indexing="ij")
    maps = coef[:, :1, None] + coef[:, 1:2, None] * xx + coef[:, 2:, None] * yy
    maps = maps / maps.abs().square().sum(0).amax().sqrt()  # ||A|| <= 1, but sum_c |S_c|^2 is not constant
    ops = {"single": single_coil_operator(mask), "sense": sense_operator(maps, mask)}
    x_true = prior.sample(1, generator)
    cases = {}
    for name, op in ops.items():
        clean = op(x_true)[0]
        sampled = clean.abs() > 0
        cases[name, 0.0] = Measurement(op, clean, 0.0)
        cases[name, 0.1] = Measurement(op, clean + complex_gaussian(tuple(clean.shape), 0.1, generator=generator)
                                       * sampled, 0.1)
    return prior, cases


def errors(prior, measurement, result):
    """Relative errors of the sample mean and marginal variance, and their Monte-Carlo scales."""
    mean, cov = prior.exact_posterior(measurement.op, measurement.y, measurement.noise_std)
    var = cov.diagonal().real
    mean_err = float((result.mean.to(torch.complex128) - mean).norm() / mean.norm())
    var_err = float((result.std.double().reshape(-1) ** 2 - var).norm() / var.norm())
    mc_mean = math.sqrt(float(var.sum()) / N_MC) / float(mean.norm())
    prior_err = float((prior.mean.reshape(SHAPE) - mean).norm() / mean.norm())
    return mean_err, var_err, mc_mean, prior_err


MC_VAR = 1 / math.sqrt(N_MC)


def test_denoiser_matches_real_channel_formula(setup):
    """The complex denoiser equals the real-channel Gaussian conditional with noise variance sigma^2 per channel."""
    prior = setup[0]
    c = prior.cov
    real_cov = 0.5 * torch.cat([torch.cat([c.real, -c.imag], 1), torch.cat([c.imag, c.real], 1)])
    real_mean = torch.cat([prior.mean.real, prior.mean.imag])
    x = prior.sample(3, torch.Generator().manual_seed(1)).to(torch.complex128) + 0.7
    sigma = torch.tensor([0.3, 1.0, 3.0], dtype=torch.float64)
    out = prior.denoiser(x, sigma).reshape(3, N)
    for b in range(3):
        xr = torch.cat([x[b].reshape(-1).real, x[b].reshape(-1).imag])
        gain = real_cov @ torch.linalg.inv(real_cov + sigma[b] ** 2 * torch.eye(2 * N, dtype=torch.float64))
        ref = real_mean + gain @ (xr - real_mean)
        torch.testing.assert_close(torch.cat([out[b].real, out[b].imag]), ref)


def test_exact_posterior(setup):
    prior, cases = setup
    # noisy: the mean and covariance solve the precision form
    meas = cases["sense", 0.1]
    mean, cov = prior.exact_posterior(meas.op, meas.y, meas.noise_std)
    a = operator_matrix(meas.op, SHAPE, torch.complex128)
    precision = torch.linalg.inv(prior.cov) + a.mH @ a / 0.1**2
    rhs = torch.linalg.solve(prior.cov, prior.mean) + a.mH @ meas.y.reshape(-1).to(torch.complex128) / 0.1**2
    torch.testing.assert_close(precision @ mean.reshape(-1), rhs)
    torch.testing.assert_close(cov, torch.linalg.inv(precision))
    # noise-free: the data hold exactly and the measured part has no variance
    meas = cases["single", 0.0]
    mean, cov = prior.exact_posterior(meas.op, meas.y, 0.0)
    a = operator_matrix(meas.op, SHAPE, torch.complex128)
    torch.testing.assert_close(a @ mean.reshape(-1), meas.y.reshape(-1).to(torch.complex128))
    assert float((a @ cov @ a.mH).abs().max()) < 1e-8 * float(cov.abs().max())
    # a real prior: real-channel precision form with variance noise_std^2 / 2 per real channel
    real = exponential_prior(SHAPE, complex_valued=False, generator=torch.Generator().manual_seed(2))
    meas = cases["single", 0.1]
    mean, cov = real.exact_posterior(meas.op, meas.y, 0.1)
    a = operator_matrix(meas.op, SHAPE, torch.float64)
    precision = torch.linalg.inv(real.cov) + (a.mH @ a).real / (0.1**2 / 2)
    rhs = torch.linalg.solve(real.cov, real.mean) + (a.mH @ meas.y.reshape(-1).to(torch.complex128)).real / 0.005
    torch.testing.assert_close(precision @ mean.reshape(-1), rhs)
    assert mean.dtype == torch.float64


def test_data_consistency_steps(setup):
    _, cases = setup
    x = torch.randn(2, *SHAPE, dtype=torch.complex128)
    single = cases["single", 0.0]
    y64 = Measurement(single.op, single.y.to(torch.complex128))
    once = ReplaceDC()(x, y64, sigma=0.0, step_size=1.0, index=0, n_steps=1)
    torch.testing.assert_close(single.op(once), y64.y.expand(2, *SHAPE))
    torch.testing.assert_close(ReplaceDC()(once, y64, sigma=0.0, step_size=1.0, index=0, n_steps=1), once)
    # undersampled SENSE: replacement is not a projection, the CG proximal step with v = 0, sigma = 0 is
    sense = cases["sense", 0.0]
    s64 = Measurement(sense.op, sense.y.to(torch.complex128))
    replaced = ReplaceDC()(x, s64, sigma=0.0, step_size=1.0, index=0, n_steps=1)
    assert float((sense.op(replaced) - s64.y).norm()) > 0.01 * float(s64.y.norm())
    projected = ProximalDC(cg_iters=200)(x, s64, sigma=0.0, step_size=1.0, index=0, n_steps=1)
    a = operator_matrix(sense.op, SHAPE, torch.complex128)
    flat = x.reshape(2, N).T
    ref = flat + torch.linalg.pinv(a) @ (s64.y.reshape(-1, 1) - a @ flat)
    # A^H A has condition ~1e5 here: CG's 1.5e-8 residual tolerance leaves ~1e-4 error in x
    assert float((sense.op(projected) - s64.y).norm()) < 1e-5 * float(s64.y.norm())
    torch.testing.assert_close(projected.reshape(2, N).T, ref, rtol=1e-3, atol=1e-3)
    # gradient step: lam linear 1 -> 0.2, every m-th step only
    step = GradientDC(every=2)
    grad = s64.adjoint(s64.residual(x), x)
    torch.testing.assert_close(step(x, s64, sigma=1.0, step_size=1.0, index=0, n_steps=5), x + grad)
    torch.testing.assert_close(step(x, s64, sigma=1.0, step_size=1.0, index=1, n_steps=5), x)
    torch.testing.assert_close(step(x, s64, sigma=1.0, step_size=1.0, index=4, n_steps=5), x + 0.2 * grad)
    with pytest.raises(ValueError, match="noise_std"):
        Measurement(sense.op, sense.y, -1.0)
    with pytest.raises(ValueError, match="noise_std > 0"):
        s64.likelihood_grad(x)


@pytest.mark.parametrize(("case", "dc", "n", "bias"), [
    (("single", 0.0), ReplaceDC(), 300, 0.005),
    (("single", 0.1), ProximalDC(cg_iters=3), 300, 0.008),
])
def test_score_pc_matches_posterior(setup, case, dc, n, bias):
    prior, cases = setup
    meas = cases[case]
    result = posterior_samples(sample_score_pc, prior.denoiser, meas, SHAPE, N_MC, geometric_sigmas(n, 0.01, 50.0),
                               seed=0, dc=dc)
    mean_err, var_err, mc_mean, _ = errors(prior, meas, result)
    assert result.nfe == 2 * n - 1
    assert mean_err < 1.6 * mc_mean + bias
    # the corrector's finite step inflates the variance by ~5% (snr = 0.16)
    assert var_err < 2 * MC_VAR + 0.05


def test_langevin_matches_posterior(setup):
    prior, cases = setup
    meas = cases["single", 0.1]
    result = posterior_samples(sample_langevin, prior.denoiser, meas, SHAPE, N_MC, geometric_sigmas(100, 0.01, 50.0),
                               seed=0, n_steps_per_level=10, step_ratio=0.2)
    mean_err, var_err, mc_mean, _ = errors(prior, meas, result)
    assert result.nfe == 100 * 10 + 1
    assert mean_err < 1.6 * mc_mean + 0.01
    assert var_err < 2 * MC_VAR + 0.05


def test_dds_tweedie_mean_exact_and_variance_converges(setup):
    prior, cases = setup
    # the conditional mean is exact for a Gaussian prior, so even 10 steps give the posterior mean
    meas = cases["sense", 0.1]
    result = posterior_samples(sample_dds, prior.denoiser, meas, SHAPE, N_MC, karras_sigmas(10, 0.002, 80.0), seed=0,
                               prior_cov="tweedie", cg_iters=100, eta=0.0)
    mean_err, var_err, mc_mean, _ = errors(prior, meas, result)
    assert result.nfe == 10
    assert 10 < result.n_backward <= 10 * 101
    assert mean_err < 1.6 * mc_mean
    assert var_err > 0.3  # 10 DDIM steps are far from the posterior spread
    # with more steps the variance converges too
    meas = cases["single", 0.1]
    result = posterior_samples(sample_dds, prior.denoiser, meas, SHAPE, N_MC, karras_sigmas(150, 0.002, 80.0),
                               seed=1, prior_cov="tweedie", cg_iters=5, eta=0.0)
    mean_err, var_err, mc_mean, _ = errors(prior, meas, result)
    assert mean_err < 1.6 * mc_mean
    assert var_err < 2 * MC_VAR + 0.03


def test_dds_isotropic_bias_is_bounded(setup):
    """The papers' r_t^2 = sigma_t^2 rule is biased; the bias is real (several MC errors) but a few per cent."""
    prior, cases = setup
    meas = cases["sense", 0.1]
    result = posterior_samples(sample_dds, prior.denoiser, meas, SHAPE, N_MC, karras_sigmas(50, 0.002, 80.0), seed=0)
    mean_err, _, mc_mean, prior_err = errors(prior, meas, result)
    assert result.nfe == 50
    assert result.n_backward == 0
    assert 3 * mc_mean < mean_err < 0.06 < prior_err


def test_dps_is_biased_but_informative(setup):
    prior, cases = setup
    meas = cases["single", 0.1]
    result = posterior_samples(sample_dps, prior.denoiser, meas, SHAPE, N_MC, karras_sigmas(100, 0.002, 80.0), seed=0)
    mean_err, _, mc_mean, prior_err = errors(prior, meas, result)
    assert result.nfe == 100
    assert result.n_backward == 100
    # measured: ~2.5% mean error at 100 steps, against 65% for the prior mean and 0.8% Monte-Carlo error
    assert 2 * mc_mean < mean_err < 0.1 * prior_err
    heun = sample_dps(prior.denoiser, torch.zeros(2, *SHAPE, dtype=torch.complex64), karras_sigmas(5, 0.01, 1.0),
                      measurement=meas, heun=True)
    assert heun.nfe == 9
    assert heun.n_backward == 5


def test_posterior_samples_reproducible(setup):
    prior, cases = setup
    meas = cases["single", 0.1]
    sigmas = karras_sigmas(5, 0.002, 80.0)
    runs = [posterior_samples(sample_dds, prior.denoiser, meas, SHAPE, 6, sigmas, seed=3, batch_size=4)
            for _ in range(2)]
    torch.testing.assert_close(runs[0].samples, runs[1].samples, rtol=0, atol=0)
    assert runs[0].samples.shape == (6, *SHAPE)
    assert runs[0].nfe == 5  # per sample: each of the two batches spends the same 5
    other = posterior_samples(sample_dds, prior.denoiser, meas, SHAPE, 6, sigmas, seed=4, batch_size=4)
    assert not torch.equal(other.samples, runs[0].samples)
    samples = runs[0].samples
    torch.testing.assert_close(runs[0].mean, samples.mean(0))
    spread = (samples - samples.mean(0)).abs().square().sum(0) / 5
    torch.testing.assert_close(runs[0].std, spread.sqrt())
    assert runs[0].seconds > 0
    langevin = sample_langevin(prior.denoiser, torch.zeros(2, *SHAPE, dtype=torch.complex64),
                               geometric_sigmas(4, 0.01, 1.0), measurement=meas)
    assert langevin.nfe == 4 * 5 + 1
    with pytest.raises(ValueError, match="prior_cov"):
        sample_dds(prior.denoiser, torch.zeros(2, *SHAPE, dtype=torch.complex64), sigmas, measurement=meas,
                   prior_cov="full")
