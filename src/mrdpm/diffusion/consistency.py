"""Measurements and data-consistency (DC) steps for posterior sampling of ``y = A x + n``.

Units: the samplers' state has noise std ``sigma`` per real channel, so the likelihood is written per real
channel too: complex measurement noise with ``E|n|^2 = noise_std^2`` has variance ``v = noise_std^2 / 2`` per
real channel (:attr:`Measurement.noise_var`) and ``-log p(y | x) = ||y - A x||^2 / (2 v) + const``, whose
real-channel gradient is ``-A^H (y - A x) / v`` (real part taken for a real image).

DC strategies (one interface, :class:`DataConsistency`, applied after every predictor / corrector step):

- :class:`ReplaceDC`: ``x <- x - A^H (A x - y)``. This is the orthogonal projection onto ``{A x = y}`` exactly
  when ``A A^H`` is an orthogonal projection (``A`` a partial isometry), i.e. ``A^+ = A^H``: single-coil
  Cartesian ``A = M F`` with a {0, 1} mask (k-space replacement ``F^H((1 - M) F x + M y)``, Chung & Ye 2022), or
  SENSE with a *full* mask and ``sum_c |S_c|^2 = 1``. For undersampled SENSE it is only a gradient step of
  unit size; use :class:`ProximalDC` for an exact projection.
- :class:`GradientDC`: ``x <- x + lam_i A^H (y - A x)`` every ``m``-th step with ``lam`` going linearly from
  1.0 to 0.2 (score-MRI's hybrid SENSE step, Chung & Ye 2022, Sec. 3.3).
- :class:`ProximalDC`: noise-aware. The proximal (implicit) step of the annealed likelihood
  ``N(y; A x, (v + sigma^2) I)`` (Jalal et al. 2021) with the step size of the sampler step just taken,
  solved by conjugate gradient; it is the operator-splitting form of adding the likelihood score to the
  prior score, so Langevin correctors keep their fixed point (for a Gaussian prior: the exact annealed mode).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch

from mrdpm.physics.cg import conjugate_gradient
from mrdpm.physics.linop import LinearOperator

__all__ = ["DataConsistency", "GradientDC", "Measurement", "ProximalDC", "ReplaceDC", "cg_tolerance",
           "solve_proximal"]


@dataclass(frozen=True)
class Measurement:
    """Measured data ``y = A x + n`` for posterior sampling.

    Attributes
    ----------
    op
        Forward operator ``A`` from images ``(B, C, *spatial)`` to data (e.g. ``(B, C, coils, H, W)`` k-space).
    y
        Data for one image, broadcastable against ``op(x)`` (shape ``op`` gives for ``B = 1``, with or without
        the leading 1).
    noise_std
        Noise std per complex entry (``E|n|^2 = noise_std^2``; per real entry for real ``y``); 0 for exact data.
    """

    op: LinearOperator
    y: torch.Tensor
    noise_std: float = 0.0

    def __post_init__(self):
        if not (self.noise_std >= 0 and float(self.noise_std) < float("inf")):
            raise ValueError(f"noise_std must be finite and >= 0, got {self.noise_std=}")

    @property
    def noise_var(self) -> float:
        """Noise variance per real channel: ``noise_std^2 / 2`` for complex data, ``noise_std^2`` for real data."""
        return self.noise_std**2 / 2 if self.y.is_complex() else self.noise_std**2

    def adjoint(self, r: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``A^H r``, its real part when the image ``like`` is real (the real-channel adjoint)."""
        v = self.op.adjoint(r)
        return v if like.is_complex() else v.real

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """``y - A x``, shape of ``op(x)``."""
        return self.y - self.op(x)

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """``A^H A x`` (real part for a real ``x``)."""
        v = self.op.gram(x)
        return v if x.is_complex() else v.real

    def normal_norm(self, like: torch.Tensor, n_iter: int = 30) -> float:
        """Largest eigenvalue of ``A^H A`` (``||A||_2^2``) on images shaped like ``like[:1]``, by power iteration.

        The start vector is drawn from a fixed seed, so the estimate is deterministic and consumes no randomness
        of the caller.
        """
        start = torch.randn((1, *like.shape[1:], 2), generator=torch.Generator().manual_seed(0))
        v = torch.view_as_complex(start) if like.is_complex() else start[..., 0]
        v = v.to(like.device, like.dtype)
        value = 0.0
        for _ in range(n_iter):
            v = v / v.norm()
            w = self.normal(v)
            value = float((v.conj() * w).real.sum())
            v = w
        return value

    def likelihood_grad(self, x: torch.Tensor, extra_var: float = 0.0) -> torch.Tensor:
        """``A^H (y - A x) / (v + extra_var)``: the real-channel gradient of ``log N(y; A x, v + extra_var)``."""
        total = self.noise_var + extra_var
        if total <= 0:
            raise ValueError("the likelihood gradient needs noise_std > 0 or extra_var > 0")
        return self.adjoint(self.residual(x), x) / total


def per_sample(value: float | torch.Tensor, like: torch.Tensor) -> float | torch.Tensor:
    """A float, or a ``(B,)`` tensor reshaped to broadcast against ``like`` ``(B, ...)``."""
    if isinstance(value, torch.Tensor):
        return value.reshape(-1, *([1] * (like.dim() - 1))).to(like.real.dtype)
    return value


def cg_tolerance(like: torch.Tensor) -> float:
    """CG relative-residual tolerance ``sqrt(eps)`` of the dtype of ``like`` (3.5e-4 in single precision).

    Tighter tolerances are not reachable through FFT round-off, and CG on a semi-definite system (exact data,
    ``rho = 0``) diverges along the null space once it iterates on round-off.
    """
    return math.sqrt(torch.finfo(like.real.dtype).eps)


def solve_proximal(measurement: Measurement, anchor: torch.Tensor, ratio: float | torch.Tensor, *,
                   cg_iters: int) -> torch.Tensor:
    """``argmin_x ||y - A x||^2 / (2 v) + ||x - anchor||^2 / (2 r^2)`` by conjugate gradient.

    The normal equations, scaled by ``v``, are ``(A^H A + rho I) x = A^H y + rho anchor`` with ``rho = v / r^2``
    (DiffPIR's ``rho_t``, Zhu et al. 2023, eq. 13). CG starts at ``anchor``, so with ``rho = 0`` (exact data) it
    converges to the orthogonal projection of ``anchor`` onto ``{A x = y}`` (for consistent ``y``).

    Parameters
    ----------
    measurement
        The data and operator.
    anchor
        ``(B, C, *spatial)`` point to stay close to.
    ratio
        ``rho = v / r^2 >= 0``, a float or a ``(B,)`` tensor.
    cg_iters
        Maximum CG iterations (each one application of ``A^H A``); stops early at :func:`cg_tolerance`.

    Returns
    -------
    torch.Tensor
        The minimiser, shape and dtype of ``anchor``.
    """
    rho = per_sample(ratio, anchor)
    rhs = measurement.adjoint(measurement.y, anchor) + rho * anchor
    return conjugate_gradient(lambda u: measurement.normal(u) + rho * u, rhs, anchor, max_iter=cg_iters,
                              tol=cg_tolerance(anchor), batch_ndim=1)


class DataConsistency(Protocol):
    """A DC step ``x -> x'`` applied after a sampler step.

    Called as ``dc(x, measurement, sigma=..., step_size=..., index=..., n_steps=...)``: ``sigma`` the noise level
    of ``x`` after the step, ``step_size`` the step's increment of ``sigma^2``-time (predictor
    ``sigma_i^2 - sigma_{i+1}^2``, Langevin step ``eps``; float or ``(B,)`` tensor), ``index`` the predictor step
    and ``n_steps`` their number.
    """

    def __call__(self, x: torch.Tensor, measurement: Measurement, *, sigma: float,
                 step_size: float | torch.Tensor, index: int, n_steps: int) -> torch.Tensor:
        """Return the data-consistent ``x``."""
        ...


class ReplaceDC:
    """``x <- x - A^H (A x - y)``: k-space replacement; an exact projection iff ``A`` is a partial isometry."""

    def __call__(self, x: torch.Tensor, measurement: Measurement, *, sigma: float,
                 step_size: float | torch.Tensor, index: int, n_steps: int) -> torch.Tensor:
        """Apply the step (only ``x`` and ``measurement`` are used)."""
        return x + measurement.adjoint(measurement.residual(x), x)


@dataclass(frozen=True)
class GradientDC:
    """``x <- x + lam_i A^H (y - A x)`` on every ``every``-th step, ``lam_i`` linear from ``lam_start`` to ``lam_end``.

    The score-MRI hybrid SENSE step (Chung & Ye 2022): ``lam`` 1.0 -> 0.2, applied every ``m = 50`` steps.
    """

    lam_start: float = 1.0
    lam_end: float = 0.2
    every: int = 1

    def __post_init__(self):
        if self.every < 1:
            raise ValueError(f"every must be >= 1, got {self.every=}")

    def __call__(self, x: torch.Tensor, measurement: Measurement, *, sigma: float,
                 step_size: float | torch.Tensor, index: int, n_steps: int) -> torch.Tensor:
        """Apply the step when ``index % every == 0``."""
        if index % self.every:
            return x
        lam = self.lam_start + (self.lam_end - self.lam_start) * index / max(n_steps - 1, 1)
        return x + lam * measurement.adjoint(measurement.residual(x), x)


@dataclass(frozen=True)
class ProximalDC:
    """Implicit likelihood step ``argmin_x' ||y - A x'||^2 / (2 (v + sigma^2)) + ||x' - x||^2 / (2 step_size)``.

    The annealed variance ``v + sigma^2`` is Jalal et al. 2021's ``sigma_noise^2 + gamma_t^2`` with
    ``gamma_t = sigma_t``; it makes the step well defined for exact data (``v = 0``) and tends to the true
    likelihood as ``sigma -> 0``. Solved by :func:`solve_proximal` with ``rho = (v + sigma^2) / step_size``.
    """

    cg_iters: int = 10

    def __call__(self, x: torch.Tensor, measurement: Measurement, *, sigma: float,
                 step_size: float | torch.Tensor, index: int, n_steps: int) -> torch.Tensor:
        """Apply the step."""
        ratio = (measurement.noise_var + sigma**2) / step_size
        return solve_proximal(measurement, x, ratio, cg_iters=self.cg_iters)
