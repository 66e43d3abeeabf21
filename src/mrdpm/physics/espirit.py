"""ESPIRiT coil sensitivity estimation (Uecker et al., MRM 71:990-1001, 2014) in torch.

The calibration (auto-calibration signal, ACS) region of fully sampled k-space is unfolded into a Hankel
matrix whose rows are all ``kernel_size^ndim`` patches of all coils. Its dominant right singular vectors
``v_j`` (singular value above ``threshold`` times the largest) span the patches of the signal. At pixel
``x`` the coil sensitivities are the eigenvector, with eigenvalue near 1, of the ``coils x coils`` matrix

    W(x) = k^-ndim sum_j g_j(x) g_j(x)^H,    g_j(x) = sum_r v_j(r) exp(2 pi i r.x / N),

the image-domain form of the projection onto the kernel row space. Pixels whose largest eigenvalue is below
``crop`` (outside the object) get zero maps.

Speed. ``W(x)`` is a trigonometric polynomial with frequencies ``d`` in ``(-k, k)`` per axis: its
coefficients ``w(d) = sum_j sum_r v_j(r + d) v_j(r)^H`` come from an FFT autocorrelation of the kernels, and
``W`` is evaluated exactly at any pixel by a separable DFT. The eigenvectors, smooth wherever the top
eigenvalue is isolated, are computed exactly (``torch.linalg.eigh``) on a coarse grid, interpolated to the
full grid and refined there by a few power iterations with the exact full-resolution ``W(x)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["espirit_maps", "find_calibration_region"]

# entries of W(x) held at once during refinement: 4 MB in complex64, so that the power iterations on a chunk
# run from cache (3-4x faster than streaming a large chunk from memory at every iteration)
_CHUNK_ELEMENTS = 1 << 19


def find_calibration_region(sampled: torch.Tensor) -> tuple[slice, ...]:
    """The largest fully sampled box around the k-space centre, grown greedily one line at a time.

    Parameters
    ----------
    sampled
        Boolean sampling pattern of the spatial k-space axes, shape ``(H, W)`` or ``(D, H, W)``, DC at
        index ``n // 2`` of each axis.

    Returns
    -------
    tuple[slice, ...]
        One slice per axis delimiting the box (it need not be symmetric about the centre).
    """
    lo = [n // 2 for n in sampled.shape]
    hi = [n // 2 + 1 for n in sampled.shape]
    if not bool(sampled[tuple(lo)]):
        raise ValueError("the k-space centre is not sampled: there is no calibration region")
    grown = True
    while grown:
        grown = False
        for axis, n in enumerate(sampled.shape):
            for side in (-1, 1):
                edge = lo[axis] - 1 if side < 0 else hi[axis]
                if not 0 <= edge < n:
                    continue
                box = [slice(a, b) for a, b in zip(lo, hi, strict=True)]
                box[axis] = slice(edge, edge + 1)
                if bool(sampled[tuple(box)].all()):
                    lo[axis], hi[axis] = min(lo[axis], edge), max(hi[axis], edge + 1)
                    grown = True
    return tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))


def _calibration_data(kspace: torch.Tensor, calib_size: int | Sequence[int] | None,
                      mask: torch.Tensor | None, ndim: int) -> torch.Tensor:
    """Crop the ACS region ``(coils, *calib)`` from ``kspace`` ``(coils, *spatial)``."""
    spatial = kspace.shape[1:]
    if calib_size is None:
        sampled = (mask != 0) if mask is not None else (kspace != 0).any(dim=0)
        box = find_calibration_region(sampled.expand(spatial))
    else:
        sizes = (calib_size,) * ndim if isinstance(calib_size, int) else tuple(calib_size)
        if len(sizes) != ndim or any(not 0 < c <= n for c, n in zip(sizes, spatial, strict=True)):
            raise ValueError(f"{calib_size=} must be {ndim} sizes within the k-space matrix {tuple(spatial)}")
        box = tuple(slice(n // 2 - c // 2, n // 2 - c // 2 + c) for c, n in zip(sizes, spatial, strict=True))
    calib = kspace[(slice(None), *box)]
    missing = int((calib == 0).all(dim=0).sum())
    if missing:
        raise ValueError(f"the {tuple(calib.shape[1:])} calibration region holds {missing} unsampled (zero) "
                         "k-space positions; pass calib_size=None to detect the fully sampled centre")
    return calib


def _signal_kernels(calib: torch.Tensor, kernel_size: int, threshold: float) -> torch.Tensor:
    """Right singular vectors of the calibration (Hankel) matrix above ``threshold * s_max``.

    Returns ``(n_kernels, coils, k, ..., k)``.
    """
    n_coils, ndim = calib.shape[0], calib.dim() - 1
    if any(n <= kernel_size for n in calib.shape[1:]):
        raise ValueError(f"calibration region {tuple(calib.shape[1:])} is too small for {kernel_size=}: "
                         f"it needs more than kernel_size lines along every axis")
    patches = calib
    for axis in range(1, ndim + 1):
        patches = patches.unfold(axis, kernel_size, 1)  # (coils, *positions, *window)
    n_positions = math.prod(patches.shape[1:ndim + 1])
    hankel = patches.movedim(0, ndim).reshape(n_positions, n_coils * kernel_size**ndim)
    # SVD through the smaller Gram matrix: with A = U S VH, A A^H = U S^2 U^H and A^H A = VH^H S^2 VH
    if hankel.shape[0] < hankel.shape[1]:
        energies, left = torch.linalg.eigh(hankel @ hankel.mH)
        keep = energies > threshold**2 * energies[-1]
        rows = (left[:, keep].mH @ hankel) / energies[keep].sqrt().unsqueeze(-1)
    else:
        energies, right = torch.linalg.eigh(hankel.mH @ hankel)
        keep = energies > threshold**2 * energies[-1]
        rows = right[:, keep].mH
    return rows.reshape(-1, n_coils, *(kernel_size,) * ndim)


def _operator_coefficients(kernels: torch.Tensor) -> torch.Tensor:
    """Fourier coefficients ``w(d)`` of ``W(x)``, shape ``(2k-1, ..., 2k-1, coils, coils)``, ``d`` from ``1-k``."""
    ndim, k = kernels.dim() - 2, kernels.shape[-1]
    dims = tuple(range(-ndim, 0))
    spectra = torch.fft.fftn(kernels, s=(2 * k,) * ndim, dim=dims)  # (n_kernels, coils, 2k, ...)
    cross = torch.einsum("jc...,jd...->...cd", spectra, spectra.conj())
    coefficients = torch.fft.ifftn(cross, dim=tuple(range(ndim)))
    coefficients = torch.roll(coefficients, shifts=(k - 1,) * ndim, dims=tuple(range(ndim)))
    return coefficients[(slice(0, 2 * k - 1),) * ndim] / k**ndim


def _evaluate_operator(coefficients: torch.Tensor, positions: Sequence[torch.Tensor],
                       shape: Sequence[int]) -> torch.Tensor:
    """``W`` at the separable grid of pixel ``positions`` (float, one 1D tensor per axis of a ``shape`` image).

    Returns ``(*grid, coils, coils)``.
    """
    ndim = len(shape)
    k = (coefficients.shape[0] + 1) // 2
    frequencies = torch.arange(1 - k, k, dtype=torch.float64, device=coefficients.device)
    operator = coefficients
    for axis in range(ndim):  # the first axis holds the fewest positions in a chunk: contract it first
        phase = torch.outer(positions[axis].double() - shape[axis] // 2, frequencies) * (2 * math.pi / shape[axis])
        basis = torch.polar(torch.ones_like(phase), phase).to(coefficients.dtype)
        operator = torch.tensordot(basis, operator, dims=([1], [axis])).movedim(0, axis)
    return operator


def _align_phase(maps: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Rotate each coil vector (last axis) so that its projection on ``reference`` is real positive."""
    projection = (reference.conj() * maps).sum(dim=-1, keepdim=True)
    return maps * torch.sgn(projection).conj()


def _coarse_maps(coefficients: torch.Tensor, shape: Sequence[int], coarse_size: int,
                 reference: torch.Tensor) -> torch.Tensor:
    """Exact top eigenvectors on a coarse grid spanning the image, interpolated to ``shape``: ``(coils, *shape)``."""
    coarse = [min(n, coarse_size) for n in shape]
    positions = [torch.linspace(0, n - 1, m, dtype=torch.float64, device=coefficients.device)
                 for n, m in zip(shape, coarse, strict=True)]
    _, vectors = torch.linalg.eigh(_evaluate_operator(coefficients, positions, shape))
    top = _align_phase(vectors[..., -1], reference).movedim(-1, 0)  # (coils, *coarse)
    if list(coarse) == list(shape):
        return top
    mode = "bicubic" if len(shape) == 2 else "trilinear"
    channels = torch.view_as_real(top).movedim(-1, 0).flatten(0, 1).unsqueeze(0)  # (1, 2 coils, *coarse)
    fine = F.interpolate(channels, size=tuple(shape), mode=mode, align_corners=True)[0]
    return torch.view_as_complex(fine.unflatten(0, (2, -1)).movedim(0, -1).contiguous())


def _coil_norm(vectors: torch.Tensor) -> torch.Tensor:
    """Euclidean norm over the last (coil) axis; the real view is much faster than a complex norm on CPU."""
    return torch.linalg.vector_norm(torch.view_as_real(vectors), dim=(-2, -1))


def _refine(coefficients: torch.Tensor, maps: torch.Tensor, n_iter: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Power iterations ``s <- W s / |W s|`` at full resolution, chunked along the first spatial axis.

    Returns the maps ``(*shape, coils)`` and the eigenvalue estimate ``|W s|`` of the last iteration,
    ``(*shape)``.
    """
    shape = maps.shape[1:]
    rows_per_chunk = max(1, _CHUNK_ELEMENTS // (math.prod(shape[1:]) * maps.shape[0] ** 2))
    vectors = maps.movedim(0, -1).contiguous()  # (*shape, coils)
    eigenvalues = torch.empty(shape, dtype=coefficients.real.dtype, device=maps.device)
    positions = [torch.arange(n, dtype=torch.float64, device=maps.device) for n in shape]
    for start in range(0, shape[0], rows_per_chunk):
        rows = slice(start, start + rows_per_chunk)
        operator = _evaluate_operator(coefficients, [positions[0][rows], *positions[1:]], shape)
        chunk = vectors[rows]
        for _ in range(n_iter):
            chunk = chunk / _coil_norm(chunk).unsqueeze(-1).clamp_min(1e-12)
            chunk = torch.einsum("...cd,...d->...c", operator, chunk)
        eigenvalues[rows] = _coil_norm(chunk)
        vectors[rows] = chunk / eigenvalues[rows].unsqueeze(-1).clamp_min(1e-12)
    return vectors, eigenvalues


def _espirit_single(kspace: torch.Tensor, calib_size: int | Sequence[int] | None, mask: torch.Tensor | None,
                    kernel_size: int, threshold: float, crop: float, power_iter: int, coarse_size: int,
                    phase_reference: int | None, ndim: int) -> torch.Tensor:
    """ESPIRiT for one k-space ``(coils, *spatial)``."""
    calib = _calibration_data(kspace, calib_size, mask, ndim)
    coefficients = _operator_coefficients(_signal_kernels(calib, kernel_size, threshold))
    if phase_reference is None:  # first principal component of the coils ("virtual body coil", as BART)
        flat = calib.flatten(1)
        reference = torch.linalg.eigh(flat @ flat.mH)[1][:, -1]
    else:
        reference = torch.zeros(kspace.shape[0], dtype=kspace.dtype, device=kspace.device)
        reference[phase_reference] = 1
    shape = kspace.shape[1:]
    maps = _coarse_maps(coefficients, shape, coarse_size, reference)
    vectors, eigenvalues = _refine(coefficients, maps, power_iter)
    vectors = _align_phase(vectors, reference) * (eigenvalues > crop).unsqueeze(-1)
    return vectors.movedim(-1, 0)


def espirit_maps(kspace: torch.Tensor, *, calib_size: int | Sequence[int] | None = 24, kernel_size: int = 6,
                 threshold: float = 0.02, crop: float = 0.95, mask: torch.Tensor | None = None,
                 power_iter: int = 6, coarse_size: int = 48, phase_reference: int | None = None,
                 ndim: int = 2) -> torch.Tensor:
    """Estimate coil sensitivities from k-space with a fully sampled centre by ESPIRiT (one set of maps).

    Parameters
    ----------
    kspace
        Complex k-space ``(..., coils, H, W)`` (``ndim=2``) or ``(..., coils, D, H, W)`` (``ndim=3``),
        centered (DC at ``n // 2``), zeros where not sampled. Leading axes are independent slices/volumes.
    calib_size
        Size of the calibration (ACS) box about the centre, one int for all axes or one per axis (sigpy's
        and BART's default is 24); it must be fully sampled. ``None`` detects the largest fully sampled box
        from ``mask`` or, when no mask is given, from the non-zero k-space samples.
    kernel_size
        Kernel width ``k`` along every axis (the calibration box must be larger).
    threshold
        Keep singular vectors of the calibration matrix with singular value above ``threshold`` times the
        largest.
    crop
        Zero the maps where the top eigenvalue of ``W(x)`` is at most ``crop`` (eigenvalues lie in [0, 1]).
    mask
        Sampling mask broadcastable to the spatial axes, used only when ``calib_size is None``.
    power_iter
        Power iterations (``>= 1``) at full resolution refining the interpolated coarse eigenvectors; the
        last one also gives the eigenvalue compared with ``crop``.
    coarse_size
        Grid size per axis of the exact eigen-decomposition (the whole grid when the image is smaller).
    phase_reference
        Coil whose phase is set to zero at every pixel (sigpy uses coil 0); ``None`` (default) makes the
        projection on the first principal component of the calibration data real, as BART does, which
        keeps the phase smooth where single coils have no signal.
    ndim
        Number of spatial axes, 2 or 3.

    Returns
    -------
    torch.Tensor
        Maps of the shape and dtype of ``kspace``; unit root-sum-of-squares inside the object, 0 outside.
    """
    if not kspace.is_complex():
        raise TypeError(f"k-space must be complex, got dtype {kspace.dtype}")
    if ndim not in (2, 3) or kspace.dim() < ndim + 1:
        raise ValueError(f"need {ndim=} in (2, 3) and a coil axis, got k-space shape {tuple(kspace.shape)}")
    if not 0 < threshold < 1 or not 0 <= crop < 1 or kernel_size < 1 or power_iter < 1 or coarse_size < 2:
        raise ValueError(f"invalid {threshold=}, {crop=}, {kernel_size=}, {power_iter=} or {coarse_size=}")
    if mask is not None and calib_size is not None:
        raise ValueError("mask only serves to detect the calibration region: pass calib_size=None with it")
    if phase_reference is not None and not 0 <= phase_reference < kspace.shape[-ndim - 1]:
        raise ValueError(f"{phase_reference=} is not a coil index")
    batch = kspace.shape[:-ndim - 1]
    flat = kspace.reshape(-1, *kspace.shape[-ndim - 1:])
    maps = [_espirit_single(k, calib_size, mask, kernel_size, threshold, crop, power_iter, coarse_size,
                            phase_reference, ndim) for k in flat]
    return torch.stack(maps).reshape(*batch, *kspace.shape[-ndim - 1:])
