"""A Gaussian image prior: its exact denoiser and, under a linear measurement, its exact Gaussian posterior.

This is the oracle that proves a sampler right before any network is trained (DESIGN.md): with
``x0 ~ N(mu, Sigma)`` the minimum-MSE denoiser is linear and the posterior under ``y = A x0 + n`` is Gaussian,
both by dense linear algebra on small images (``N = C H W`` up to a few hundred).

Complex images are *circular* complex Gaussian: ``E[(x - mu)(x - mu)^H] = Sigma`` (Hermitian) and zero
pseudo-covariance, i.e. real and imaginary parts each carry half of ``Re Sigma``. The diffusion noise has std
``sigma`` per real channel (:func:`mrdpm.diffusion.samplers.randn_like`), so its complex covariance is
``2 sigma^2 I``; the measurement noise of :class:`mrdpm.diffusion.consistency.Measurement` has
``E|n|^2 = noise_std^2`` per complex entry (as :func:`mrdpm.physics.noise.complex_gaussian`).
"""

from __future__ import annotations

import math

import torch

from mrdpm.physics.linop import LinearOperator

__all__ = ["GaussianPrior", "exponential_prior", "operator_matrix"]

# Relative eigenvalue cut-off of the pseudo-inverse in the noise-free posterior (rank-deficient A Sigma A^H).
_PINV_RTOL = 1e-10


def operator_matrix(op: LinearOperator, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """The dense matrix of a linear operator on images of ``shape``, by applying it to every basis image.

    Parameters
    ----------
    op
        Operator mapping ``(B, *shape)`` to ``(B, *kshape)``.
    shape
        Image shape ``(C, H, W)``; ``N = C H W`` columns.
    dtype
        Basis dtype: ``complex128`` for complex images, ``float64`` for real ones.

    Returns
    -------
    torch.Tensor
        ``(M, N)`` with ``M = prod(kshape)``: ``op(x).reshape(-1) = A @ x.reshape(-1)``.
    """
    n = math.prod(shape)
    basis = torch.eye(n, dtype=dtype).reshape(n, *shape)
    return op(basis).reshape(n, -1).T.to(torch.complex128)


class GaussianPrior:
    """``x0 ~ N(mean, cov)`` over images of ``shape``, flattened in C order.

    Parameters
    ----------
    mean
        ``(N,)`` mean, ``N = prod(shape)``; complex for a complex (circular) prior.
    cov
        ``(N, N)`` Hermitian positive semi-definite covariance ``E[(x - mu)(x - mu)^H]``.
    shape
        Image shape ``(C, H, W)`` (or ``(C, *spatial)``).
    """

    def __init__(self, mean: torch.Tensor, cov: torch.Tensor, shape: tuple[int, ...]):
        n = math.prod(shape)
        if mean.shape != (n,) or cov.shape != (n, n):
            raise ValueError(f"mean must be ({n},) and cov ({n}, {n}) for {shape=}, got {tuple(mean.shape)} "
                             f"and {tuple(cov.shape)}")
        self.shape = tuple(shape)
        self.is_complex = mean.is_complex() or cov.is_complex()
        self.dtype = torch.complex128 if self.is_complex else torch.float64
        self.mean = mean.detach().to(self.dtype)
        self.cov = cov.detach().to(self.dtype)
        if not torch.allclose(self.cov, self.cov.mH, atol=1e-10 * float(self.cov.abs().max())):
            raise ValueError("cov must be Hermitian")
        eigvals, self._eigvecs = torch.linalg.eigh(self.cov)
        if float(eigvals.min()) < -1e-8 * float(eigvals.max()):
            raise ValueError(f"cov must be positive semi-definite, smallest eigenvalue {float(eigvals.min()):.3g}")
        self._eigvals = eigvals.clamp_min(0)
        # complex noise of std sigma per real channel has covariance 2 sigma^2 I
        self._noise_factor = 2.0 if self.is_complex else 1.0

    def denoiser(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Exact MMSE denoiser ``E[x0 | x0 + sigma n = x] = mu + Sigma (Sigma + k sigma^2 I)^{-1} (x - mu)``.

        ``k = 2`` for a complex prior (complex noise covariance ``2 sigma^2 I``), 1 for a real one. Differentiable
        in ``x`` (used through autograd by DPS and the Tweedie-covariance DDS).

        Parameters
        ----------
        x
            ``(B, *shape)`` noisy images, complex for a complex prior; computed in the precision of ``x``.
        sigma
            ``(B,)`` (or scalar) noise std per real channel.

        Returns
        -------
        torch.Tensor
            ``(B, *shape)`` denoised images, dtype of ``x``.
        """
        work = self._working_dtype(x)
        mean, eigvecs = self.mean.to(x.device, work), self._eigvecs.to(x.device, work)
        eigvals = self._eigvals.to(x.device, mean.real.dtype)
        level = torch.as_tensor(sigma, dtype=eigvals.dtype, device=x.device).reshape(-1, 1)
        gain = eigvals / (eigvals + self._noise_factor * level**2)
        coeff = ((x.reshape(x.shape[0], -1).to(work) - mean) @ eigvecs.conj()) * gain
        return (mean + coeff @ eigvecs.T).reshape(x.shape).to(x.dtype)

    def _working_dtype(self, x: torch.Tensor) -> torch.dtype:
        """Compute in the precision of ``x`` (single or double), complex for a complex prior."""
        double = x.dtype in (torch.float64, torch.complex128)
        if self.is_complex:
            return torch.complex128 if double else torch.complex64
        if x.is_complex():
            raise TypeError(f"a real prior cannot denoise complex x ({x.dtype})")
        return torch.float64 if double else torch.float32

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``n`` prior samples.

        Returns
        -------
        torch.Tensor
            ``(n, *shape)`` complex64 (complex prior) or float32.
        """
        size = self.mean.numel()
        if self.is_complex:
            z = torch.view_as_complex(torch.randn((n, size, 2), generator=generator, dtype=torch.float64))
            z = z / math.sqrt(2.0)
        else:
            z = torch.randn((n, size), generator=generator, dtype=torch.float64)
        x = self.mean + (z * self._eigvals.sqrt()) @ self._eigvecs.T
        return x.reshape(n, *self.shape).to(torch.complex64 if self.is_complex else torch.float32)

    def exact_posterior(self, op: LinearOperator, y: torch.Tensor, noise_std: float,
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior of ``x0`` given ``y = A x0 + n`` by dense Gaussian conditioning.

        ``mean = mu + G (y - A mu)``, ``cov = Sigma - G A Sigma`` with ``G = Sigma A^H (A Sigma A^H + s I)^+``,
        where ``s = noise_std^2`` for a complex prior (circular noise, ``E|n|^2 = noise_std^2``). For a real prior
        the complex data are stacked as ``[Re; Im]`` and ``s = noise_std^2 / 2`` per real entry (``noise_std^2`` if
        ``y`` is real). With ``noise_std = 0`` the pseudo-inverse conditions on ``A x0 = y`` exactly.

        Parameters
        ----------
        op
            Forward operator on ``(B, *shape)`` images; applied to CPU basis images (dense algebra on the CPU).
        y
            Measurement for one image, ``op`` output shape with or without a leading 1.
        noise_std
            Measurement noise std per complex entry.

        Returns
        -------
        (torch.Tensor, torch.Tensor)
            Mean ``(*shape)`` and covariance ``(N, N)`` (complex128 for a complex prior, else float64);
            the marginal variances ``diag(cov)`` are ``E|x - mean|^2`` per pixel.
        """
        a = operator_matrix(op, self.shape, self.dtype)
        data = y.detach().cpu().reshape(-1).to(torch.complex128)
        if data.numel() != a.shape[0]:
            raise ValueError(f"y has {data.numel()} entries but op gives {a.shape[0]} for shape={self.shape}")
        noise_var = noise_std**2
        if not self.is_complex:
            if y.is_complex():
                a, data, noise_var = torch.cat([a.real, a.imag]), torch.cat([data.real, data.imag]), noise_var / 2
            else:
                a, data = a.real, data.real
        rows = a.abs().amax(dim=1) > 0
        a, data = a[rows], data[rows]
        sa = self.cov @ a.mH
        gram = a @ sa + noise_var * torch.eye(a.shape[0], dtype=a.dtype)
        gain = sa @ torch.linalg.pinv(gram, rtol=_PINV_RTOL, hermitian=True)
        mean = self.mean + gain @ (data - a @ self.mean)
        cov = self.cov - gain @ sa.mH
        return mean.reshape(self.shape), 0.5 * (cov + cov.mH)


def exponential_prior(shape: tuple[int, ...], *, length_scale: float = 2.0, variance: float = 1.0,
                      nugget: float = 0.02, mean_scale: float = 1.0, complex_valued: bool = True,
                      generator: torch.Generator | None = None) -> GaussianPrior:
    """A stationary test prior: exponential (Matern-1/2) kernel plus a nugget, a random smooth mean and phase.

    ``Sigma_ij = phi_i conj(phi_j) (variance exp(-|p_i - p_j| / length_scale) + nugget delta_ij)`` over pixel
    positions ``p`` (channels independent), with ``phi = exp(i theta)`` a random linear phase ramp for a complex
    prior (so ``Sigma`` is genuinely complex). The mean is a draw of the kernel scaled to RMS ``mean_scale``. The
    spectrum decays polynomially, so the prior is well conditioned enough for Langevin-type samplers.

    Parameters
    ----------
    shape
        ``(C, H, W)``.
    length_scale
        Correlation length in pixels.
    variance, nugget
        Kernel amplitude and white-noise floor (per complex entry for a complex prior).
    mean_scale
        RMS of the mean image.
    complex_valued
        Circular complex prior (True) or real.
    generator
        Source of the random mean and phase.

    Returns
    -------
    GaussianPrior
    """
    channels, *spatial = shape
    grids = torch.meshgrid(*[torch.arange(s, dtype=torch.float64) for s in spatial], indexing="ij")
    points = torch.stack([g.reshape(-1) for g in grids], dim=1)
    kernel = variance * torch.exp(-torch.cdist(points, points) / length_scale)
    cov = torch.block_diag(*[kernel] * channels) + nugget * torch.eye(math.prod(shape), dtype=torch.float64)
    chol = torch.linalg.cholesky(torch.block_diag(*[kernel] * channels)
                                 + 1e-9 * torch.eye(math.prod(shape), dtype=torch.float64))
    draw = torch.randn((math.prod(shape), 2), generator=generator, dtype=torch.float64)
    if complex_valued:
        slopes = (torch.rand(len(spatial), generator=generator, dtype=torch.float64) - 0.5) * math.pi / 2
        theta = (points * slopes).sum(dim=1).repeat(channels)
        phase = torch.polar(torch.ones_like(theta), theta)
        cov = phase[:, None] * cov * phase.conj()[None, :]
        mean = phase * (chol.to(torch.complex128) @ torch.view_as_complex(draw.contiguous()))
    else:
        mean = chol @ draw[:, 0]
    mean = mean * (mean_scale / mean.abs().square().mean().sqrt())
    return GaussianPrior(mean, cov, shape)
