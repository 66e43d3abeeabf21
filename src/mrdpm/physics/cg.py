"""Conjugate gradient for Hermitian positive (semi-)definite systems, batched over leading axes."""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["conjugate_gradient"]


def _dot(a: torch.Tensor, b: torch.Tensor, batch_ndim: int) -> torch.Tensor:
    """Real part of <a, b> reduced over all but the first ``batch_ndim`` axes, kept broadcastable."""
    prod = (a.conj() * b).real if a.is_complex() else a * b
    dims = tuple(range(batch_ndim, a.dim()))
    return prod.sum(dim=dims, keepdim=True) if dims else prod


def conjugate_gradient(
    normal: Callable[[torch.Tensor], torch.Tensor],
    rhs: torch.Tensor,
    x0: torch.Tensor | None = None,
    *,
    max_iter: int = 10,
    tol: float = 1e-6,
    batch_ndim: int = 0,
) -> torch.Tensor:
    """Solve ``normal(x) = rhs`` by conjugate gradient.

    Parameters
    ----------
    normal
        Hermitian positive semi-definite linear map, e.g. ``lambda x: A.gram(x) + lam * x``.
    rhs
        Right-hand side, e.g. ``A.adjoint(y)``; any shape, real or complex.
    x0
        Initial guess (zeros if None).
    max_iter
        Maximum number of iterations (each costs one application of ``normal``).
    tol
        Stop when every system's residual norm falls below ``tol`` times its initial residual norm.
    batch_ndim
        Leading axes that index independent systems (each gets its own step sizes), e.g. 1 for a batch of
        posterior samples ``(B, H, W)``.

    Returns
    -------
    torch.Tensor
        The solution, shape of ``rhs``.
    """
    x = torch.zeros_like(rhs) if x0 is None else x0.clone()
    r = rhs - normal(x) if x0 is not None else rhs.clone()
    p = r.clone()
    rr = _dot(r, r, batch_ndim)
    stop = (tol**2) * rr
    for _ in range(max_iter):
        if bool((rr <= stop).all()):
            break
        ap = normal(p)
        pap = _dot(p, ap, batch_ndim)
        alpha = torch.where(pap > 0, rr / pap.clamp_min(torch.finfo(pap.dtype).tiny), torch.zeros_like(pap))
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = _dot(r, r, batch_ndim)
        beta = torch.where(rr > 0, rr_new / rr.clamp_min(torch.finfo(rr.dtype).tiny), torch.zeros_like(rr))
        p = r + beta * p
        rr = rr_new
    return x
