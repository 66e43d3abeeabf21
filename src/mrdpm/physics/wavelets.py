"""Orthonormal multilevel 2D Daubechies wavelet transform with periodic extension, as a linear operator.

The 1D analysis step splits a length-``n`` signal (``n`` even) into ``n / 2`` low-pass and ``n / 2`` high-pass
coefficients, ``lo[k] = sum_j h[j] x[(2k + j - L/2 + 1) mod n]`` and ``hi[k]`` likewise with the quadrature
mirror ``g[j] = (-1)^j h[L - 1 - j]``, for a filter of even length ``L``. Periodic extension makes this an
orthogonal ``n x n`` matrix; the offset ``L/2 - 1`` centres the windows, as PyWavelets' ``periodization`` mode.
One 2D level applies it along W then H to the current low-pass block; the next level recurses into the top-left
(LL) quarter (Mallat's pyramid). Coefficients are packed into one tensor of the (padded) image shape: the
coarsest approximation sits in the top-left corner, and each level's detail bands fill the rest of its block
(low-pass rows/columns first, high-pass second).

Daubechies filters (``dbN``: ``N`` vanishing moments, length ``2N``; ``haar`` is ``db1``) are computed from their
definition by spectral factorisation (Daubechies, *Ten Lectures on Wavelets*, 1992, sec. 6.1).
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import torch
import torch.nn.functional as F

from mrdpm.physics.linop import LinearOperator

__all__ = ["WaveletOperator", "daubechies_lowpass", "default_levels"]

_MAX_VANISHING_MOMENTS = 10  # root finding stays accurate to ~1e-14 up to here


@cache
def daubechies_lowpass(n_vanishing: int) -> tuple[float, ...]:
    """Orthonormal Daubechies low-pass (scaling) filter with ``n_vanishing`` vanishing moments.

    The squared magnitude response is ``|m0(w)|^2 = cos(w/2)^(2N) P(sin(w/2)^2)`` with
    ``P(y) = sum_{k<N} C(N-1+k, k) y^k``; the filter keeps the ``N`` zeros at ``z = -1`` and, of each reciprocal
    pair of zeros of ``P``, the one inside the unit circle (minimum phase). Normalised to ``sum h = sqrt(2)``.

    Parameters
    ----------
    n_vanishing
        ``N`` in 1..10; ``N = 1`` is the Haar filter.

    Returns
    -------
    tuple of float
        The ``2N`` filter taps, largest taps first (equal to PyWavelets' ``Wavelet('dbN').rec_lo``).
    """
    if not 1 <= n_vanishing <= _MAX_VANISHING_MOMENTS:
        raise ValueError(f"{n_vanishing=} must be in 1..{_MAX_VANISHING_MOMENTS}")
    n = n_vanishing
    # np.roots wants the highest power first
    p_coeffs = [math.comb(n - 1 + k, k) for k in range(n)][::-1]
    zeros = [-1.0 + 0j] * n
    for y in np.roots(p_coeffs) if n > 1 else []:
        # y = (2 - z - 1/z) / 4  <=>  z^2 - (2 - 4y) z + 1 = 0; the two roots are reciprocal
        b = 2.0 - 4.0 * y
        z1 = (b + np.sqrt(b * b - 4.0)) / 2.0
        zeros.append(z1 if abs(z1) < 1.0 else 1.0 / z1)
    taps = np.real(np.poly(zeros))  # coefficients of z^(2N-1) .. z^0: the minimum-phase order
    taps = taps * (math.sqrt(2.0) / taps.sum())
    return tuple(float(t) for t in taps)


def _vanishing_moments(wavelet: str) -> int:
    if wavelet == "haar":
        return 1
    if wavelet.startswith("db") and wavelet[2:].isdigit():
        return int(wavelet[2:])
    raise ValueError(f"unknown {wavelet=}; use 'haar' or 'db1'..'db{_MAX_VANISHING_MOMENTS}'")


def default_levels(shape: tuple[int, int], wavelet: str = "db4") -> int:
    """PyWavelets' maximum useful level, ``floor(log2(min(H, W) / (L - 1)))`` for filter length ``L``, at least 1."""
    length = 2 * _vanishing_moments(wavelet)
    size = min(shape)
    if length == 2:
        return max(1, math.floor(math.log2(size)))
    return max(1, math.floor(math.log2(size / (length - 1))))


def _periodic_pad(x: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """Extend the last axis periodically by ``before`` and ``after`` samples."""
    n = x.shape[-1]
    if before <= n and after <= n:
        return torch.cat([x[..., n - before:], x, x[..., :after]], dim=-1)
    index = torch.arange(-before, n + after, device=x.device) % n  # bands shorter than the filter
    return x.index_select(-1, index)


def _analysis(x: torch.Tensor, lowpass: tuple[float, ...], highpass: tuple[float, ...]
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """One periodic analysis step along the last axis (even length ``n``): two bands of length ``n / 2``.

    ``lo[k] = sum_j h[j] u[2k + j]`` on the extension ``u[i] = x[(i - L/2 + 1) mod n]``, as strided views.
    """
    n, left = x.shape[-1], len(lowpass) // 2 - 1
    u = _periodic_pad(x, left, left)
    first = u[..., 0:n:2]
    lo, hi = first * lowpass[0], first * highpass[0]
    for j in range(1, len(lowpass)):
        view = u[..., j : j + n : 2]
        lo.add_(view, alpha=lowpass[j])
        hi.add_(view, alpha=highpass[j])
    return lo, hi


def _synthesis(lo: torch.Tensor, hi: torch.Tensor, lowpass: tuple[float, ...], highpass: tuple[float, ...]
               ) -> torch.Tensor:
    """The adjoint (and inverse) of :func:`_analysis`: bands of length ``m`` -> signal of length ``2m``.

    Polyphase form: with ``P = L/2``, ``z[2k + q] = sum_p h[2p + q] lo[k - p] + g[2p + q] hi[k - p]``
    (indices mod ``m``), and ``x[i] = z[(i + P - 1) mod 2m]``.
    """
    m, taps = lo.shape[-1], len(lowpass) // 2
    lo_pad, hi_pad = _periodic_pad(lo, taps - 1, 0), _periodic_pad(hi, taps - 1, 0)
    phases = []
    for q in (0, 1):
        acc = lo_pad[..., taps - 1 :] * lowpass[q]
        acc.add_(hi_pad[..., taps - 1 :], alpha=highpass[q])
        for p in range(1, taps):
            start = taps - 1 - p
            acc.add_(lo_pad[..., start : start + m], alpha=lowpass[2 * p + q])
            acc.add_(hi_pad[..., start : start + m], alpha=highpass[2 * p + q])
        phases.append(acc)
    z = torch.stack(phases, dim=-1).flatten(-2)
    return torch.roll(z, -(taps - 1), dims=-1) if taps > 1 else z


class WaveletOperator(LinearOperator):
    """Multilevel 2D orthonormal DWT over the last two axes (forward = analysis, adjoint = synthesis).

    Images whose size is not a multiple of ``2**levels`` are zero-padded at the bottom/right to the next
    multiple inside the operator: then ``forward`` maps ``(..., H, W)`` to coefficients ``(..., Hp, Wp)`` and is
    an isometry (``adjoint(forward(x)) == x``), and ``adjoint`` (synthesis followed by cropping) is its exact
    adjoint; ``forward(adjoint(c)) == c`` holds only for coefficients of padded images. Without padding the
    operator is orthogonal. The packed layout equals PyWavelets'
    ``coeffs_to_array(wavedec2(x, wavelet, mode="periodization", level=levels))``.

    Parameters
    ----------
    shape
        Image shape ``(H, W)``.
    wavelet
        ``"haar"`` or ``"dbN"`` (``N`` = 1..10 vanishing moments); default ``"db4"`` (8 taps).
    levels
        Number of decomposition levels; None for :func:`default_levels`.

    Notes
    -----
    Works on real or complex tensors of any floating dtype and device, with leading batch axes; the filters
    are applied as scalar multiply-adds on strided views (no convolution), differentiable by autograd.
    """

    def __init__(self, shape: tuple[int, int], wavelet: str = "db4", levels: int | None = None):
        if len(shape) != 2 or min(shape) < 1:
            raise ValueError(f"WaveletOperator needs a 2D image shape, got {shape=}")
        self.shape = (int(shape[0]), int(shape[1]))
        self.wavelet = wavelet
        self.levels = default_levels(self.shape, wavelet) if levels is None else int(levels)
        if self.levels < 1:
            raise ValueError(f"levels must be >= 1, got {levels=}")
        self.lowpass = daubechies_lowpass(_vanishing_moments(wavelet))
        length = len(self.lowpass)
        self.highpass = tuple((-1.0) ** j * self.lowpass[length - 1 - j] for j in range(length))
        step = 2**self.levels
        self.padded_shape = tuple(-(-n // step) * step for n in self.shape)

    def _split(self, x: torch.Tensor, axis: int) -> tuple[torch.Tensor, torch.Tensor]:
        if axis == -1:
            return _analysis(x, self.lowpass, self.highpass)
        lo, hi = _analysis(x.transpose(-1, -2), self.lowpass, self.highpass)
        return lo.transpose(-1, -2), hi.transpose(-1, -2)

    def _merge(self, lo: torch.Tensor, hi: torch.Tensor, axis: int) -> torch.Tensor:
        if axis == -1:
            return _synthesis(lo, hi, self.lowpass, self.highpass)
        out = _synthesis(lo.transpose(-1, -2), hi.transpose(-1, -2), self.lowpass, self.highpass)
        return out.transpose(-1, -2)

    def _check(self, x: torch.Tensor, expected: tuple[int, int], what: str) -> None:
        if tuple(x.shape[-2:]) != expected:
            raise ValueError(f"{what} must end in {expected}, got shape {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Analysis: image ``(..., H, W)`` -> packed coefficients ``(..., Hp, Wp)``."""
        self._check(x, self.shape, "image")
        pad_h, pad_w = (p - s for p, s in zip(self.padded_shape, self.shape, strict=True))
        approx = F.pad(x, (0, pad_w, 0, pad_h)) if pad_h or pad_w else x
        halves = []
        for _ in range(self.levels):
            # W pass, then one H pass over both W bands side by side: top = [LL | HL], bottom = [LH | HH]
            top, bottom = self._split(torch.cat(self._split(approx, -1), dim=-1), -2)
            halves.append((top, bottom))
            approx = top[..., : top.shape[-1] // 2]
        for top, bottom in reversed(halves):
            top = torch.cat([approx, top[..., top.shape[-1] // 2 :]], dim=-1)
            approx = torch.cat([top, bottom], dim=-2)
        return approx

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Synthesis (the inverse on the padded grid), then crop: ``(..., Hp, Wp)`` -> ``(..., H, W)``."""
        self._check(y, self.padded_shape, "coefficients")
        rows, cols = (n >> self.levels for n in self.padded_shape)
        approx = y[..., :rows, :cols]
        for _ in range(self.levels):
            top = torch.cat([approx, y[..., :rows, cols : 2 * cols]], dim=-1)
            merged = self._merge(top, y[..., rows : 2 * rows, : 2 * cols], -2)
            approx = self._merge(merged[..., :cols], merged[..., cols:], -1)
            rows, cols = 2 * rows, 2 * cols
        return approx[..., : self.shape[0], : self.shape[1]]

    def gram(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return x  # an isometry, padded or not

    def __repr__(self) -> str:
        return f"WaveletOperator({self.wavelet}, {self.levels} levels, {self.shape})"
