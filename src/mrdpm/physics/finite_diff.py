"""Forward-difference gradient over the trailing image axes, as a linear operator (for total variation)."""

from __future__ import annotations

import torch

from mrdpm.physics.linop import LinearOperator

__all__ = ["GradientOperator"]

_BOUNDARIES = ("periodic", "neumann")


class GradientOperator(LinearOperator):
    """Forward differences ``(D x)_d[i] = x[i + e_d] - x[i]`` along each of the last ``ndim`` axes.

    Parameters
    ----------
    ndim
        Number of trailing spatial axes differentiated (1, 2 or 3).
    boundary
        ``"periodic"``: ``x[n] = x[0]`` (circulant, commutes with the FFT); ``"neumann"``: the difference at the
        last index is zero (zero normal derivative, no wrap-around edge).

    Notes
    -----
    ``forward`` maps ``(..., H, W)`` to ``(ndim, ..., H, W)``: one difference image per axis, stacked on a new
    leading axis, the first for the axis ``-ndim`` (H in 2D). The adjoint is the negative divergence. Its
    squared operator norm is at most ``4 ndim`` (:attr:`squared_norm_bound`).
    """

    def __init__(self, ndim: int = 2, boundary: str = "neumann"):
        if ndim not in (1, 2, 3):
            raise ValueError(f"GradientOperator supports ndim 1, 2 or 3, got {ndim=}")
        if boundary not in _BOUNDARIES:
            raise ValueError(f"unknown {boundary=}; use one of {_BOUNDARIES}")
        self.ndim, self.boundary = ndim, boundary

    @property
    def squared_norm_bound(self) -> float:
        """An upper bound on ``||D||^2`` (each 1D difference has norm at most 2)."""
        return 4.0 * self.ndim

    def _diff(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        if self.boundary == "periodic":
            return torch.roll(x, -1, dims=dim) - x
        d = x.narrow(dim, 1, x.shape[dim] - 1) - x.narrow(dim, 0, x.shape[dim] - 1)
        return torch.cat([d, torch.zeros_like(x.narrow(dim, 0, 1))], dim=dim)

    def _diff_adjoint(self, p: torch.Tensor, dim: int) -> torch.Tensor:
        if self.boundary == "periodic":
            return torch.roll(p, 1, dims=dim) - p
        # p's last entry is never written by the forward difference, so it does not contribute
        inner = p.narrow(dim, 0, p.shape[dim] - 1)
        zero = torch.zeros_like(p.narrow(dim, 0, 1))
        return torch.cat([zero, inner], dim=dim) - torch.cat([inner, zero], dim=dim)

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() < self.ndim:
            raise ValueError(f"input needs {self.ndim} spatial axes, got shape {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Gradient: ``(..., *spatial)`` -> ``(ndim, ..., *spatial)``."""
        self._check(x)
        return torch.stack([self._diff(x, dim) for dim in range(-self.ndim, 0)])

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Negative divergence: ``(ndim, ..., *spatial)`` -> ``(..., *spatial)``."""
        if y.dim() < self.ndim + 1 or y.shape[0] != self.ndim:
            raise ValueError(f"gradient field needs a leading axis of {self.ndim}, got shape {tuple(y.shape)}")
        out = self._diff_adjoint(y[0], -self.ndim)
        for axis in range(1, self.ndim):
            out = out + self._diff_adjoint(y[axis], axis - self.ndim)
        return out

    def __repr__(self) -> str:
        return f"GradientOperator({self.ndim}D, {self.boundary})"
