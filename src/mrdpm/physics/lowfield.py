"""Ultra-low-field (ULF) images from high-field (HF) volumes: a measured k-space transfer function, or physics.

Two simulators, both returning a volume on the input grid (so the input's geometry/affine still applies):

1. **Transfer function** (MRIQT, arXiv 2511.13232): from paired, co-registered volumes,
   ``S(k) = sum_pairs Y_LF(k) conj(Y_HF(k)) / (sum_pairs |Y_HF(k)|^2 + eps)`` with ``Y = fftnc(volume)`` (3D,
   centred, orthonormal); applied to a new HF volume as ``S * Y_HF``, DC zeroed, real part of the inverse FFT,
   clipped at the 99th percentile and min-max scaled (each step optional). It adds no noise.
2. **Parametric physics model** (:func:`simulate_low_field`), for when no pairs exist:
   contrast (optional: re-synthesised from tissue labels with field-dependent T1/T2, :mod:`mrdpm.physics.relaxation`),
   resolution (a k-space filter: in-plane truncation to the target voxel, ``keep = round(n * voxel / target)``
   central samples per axis, so the in-plane PSF is the sinc of the coarser acquisition; through-plane a box
   slice profile of the slice thickness, i.e. circular convolution with a box of ``thickness / voxel`` voxels,
   partial end voxels weighted by their overlap), then Rician noise: complex Gaussian noise, filtered by the same
   k-space filter (band-limited like the acquisition), added to the image, then the magnitude.

SNR (this module): ``mean foreground signal / sigma`` with ``sigma`` the standard deviation of each of the real
and imaginary noise components in the output image (= the magnitude image's noise std at high SNR);
``snr_db = 20 log10(SNR)``. Foreground: voxels above 10% of the 99th percentile of the noise-free degraded image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mrdpm.errors import MrdpmError
from mrdpm.physics.fft import fftnc, ifftnc
from mrdpm.physics.noise import complex_gaussian
from mrdpm.physics.relaxation import LABEL_SETS, weighted_image

__all__ = ["LowFieldSettings", "apply_transfer_function", "degrade_resolution", "estimate_transfer_function",
           "field_scaled_snr_db", "histogram_match", "load_transfer_function", "resolution_filter",
           "save_transfer_function", "simulate_low_field"]

_SAFETENSORS_KEY = "transfer_function"
_FOREGROUND_FRACTION = 0.1


def _quantile(x: torch.Tensor, q: float) -> torch.Tensor:
    """Nearest-rank quantile of all elements (``torch.quantile`` refuses tensors above 2**24 elements)."""
    flat = x.reshape(-1)
    return flat.kthvalue(min(max(math.ceil(q * flat.numel()), 1), flat.numel())).values


def _check_volume(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 3:
        raise ValueError(f"{name} must be a (D, H, W) tensor, got {getattr(x, 'shape', type(x))}")


def estimate_transfer_function(hf_volumes: Sequence[torch.Tensor] | torch.Tensor,
                               lf_volumes: Sequence[torch.Tensor] | torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Least-squares k-space transfer function from paired HF / LF volumes (Wiener-regularised by ``eps``).

    Parameters
    ----------
    hf_volumes, lf_volumes
        Equal numbers of co-registered ``(D, H, W)`` volumes (a sequence, or a tensor ``(N, D, H, W)``), real or
        complex, all on one grid.
    eps
        Regulariser added to the HF power spectrum (same units as ``|Y_HF|^2``).

    Returns
    -------
    torch.Tensor
        ``S``, complex64 ``(D, H, W)`` on the centred k-space grid of :func:`mrdpm.physics.fft.fftnc`.
    """
    if len(hf_volumes) != len(lf_volumes) or len(hf_volumes) == 0:
        raise ValueError(f"need equal, non-zero numbers of volumes, got {len(hf_volumes)=} and {len(lf_volumes)=}")
    shape = tuple(hf_volumes[0].shape)
    numerator = torch.zeros(shape, dtype=torch.complex128)
    power = torch.zeros(shape, dtype=torch.float64)
    for i, (hf, lf) in enumerate(zip(hf_volumes, lf_volumes, strict=True)):
        _check_volume(hf, f"hf_volumes[{i}]")
        if tuple(hf.shape) != shape or tuple(lf.shape) != shape:
            raise ValueError(f"pair {i} has shapes {tuple(hf.shape)} / {tuple(lf.shape)}, expected {shape}")
        y_hf = fftnc(hf.to(torch.complex128), 3)
        numerator += fftnc(lf.to(torch.complex128), 3) * y_hf.conj()
        power += y_hf.abs().square()
    return (numerator / (power + eps)).to(torch.complex64)


def apply_transfer_function(hf: torch.Tensor, transfer: torch.Tensor, *, zero_dc: bool = True,
                            clip_percentile: float | None = 99.0, rescale: bool = True) -> torch.Tensor:
    """A simulated LF volume: ``Re(ifftnc(S * fftnc(hf)))``, then (optionally) the MRIQT post-processing.

    Parameters
    ----------
    hf
        High-field ``(D, H, W)`` volume, real.
    transfer
        ``(D, H, W)`` complex transfer function (:func:`estimate_transfer_function`).
    zero_dc
        Set the k-space centre (DC) to zero before the inverse FFT, as the MRIQT code does.
    clip_percentile
        Clip values above this percentile (0-100) of the result; None for no clipping.
    rescale
        Min-max scale the result to [0, 1].

    Returns
    -------
    torch.Tensor
        float32 ``(D, H, W)`` volume on the input grid.
    """
    _check_volume(hf, "hf")
    if tuple(transfer.shape) != tuple(hf.shape):
        raise ValueError(f"transfer has shape {tuple(transfer.shape)} but hf has {tuple(hf.shape)}")
    kspace = fftnc(hf.to(torch.complex64), 3) * transfer.to(torch.complex64)
    if zero_dc:
        kspace[tuple(n // 2 for n in kspace.shape)] = 0
    out = ifftnc(kspace, 3).real
    if clip_percentile is not None:
        if not 0 < clip_percentile <= 100:
            raise ValueError(f"clip_percentile must be in (0, 100], got {clip_percentile=}")
        out = out.clamp(max=_quantile(out, clip_percentile / 100))
    if rescale:
        span = out.max() - out.min()
        out = (out - out.min()) / span if span > 0 else torch.zeros_like(out)
    return out


def save_transfer_function(path: str | Path, transfer: torch.Tensor) -> Path:
    """Write a ``(D, H, W)`` complex transfer function as ``.npy`` (complex64) or ``.safetensors``.

    The safetensors file holds one float32 tensor ``"transfer_function"`` of shape ``(D, H, W, 2)`` (real, imag).

    Returns
    -------
    Path
        The written file.
    """
    path = Path(path)
    _check_volume(transfer, "transfer")
    transfer = transfer.detach().to(torch.complex64).cpu()
    if path.suffix == ".npy":
        np.save(path, transfer.numpy())
    elif path.suffix == ".safetensors":
        save_file({_SAFETENSORS_KEY: torch.view_as_real(transfer).contiguous()}, str(path))
    else:
        raise MrdpmError(f"unknown transfer-function format {path.suffix!r}; use .npy or .safetensors", path)
    return path


def load_transfer_function(path: str | Path, shape: Sequence[int] | None = None) -> torch.Tensor:
    """Read a transfer function written by :func:`save_transfer_function`, checking its grid.

    Parameters
    ----------
    path
        ``.npy`` or ``.safetensors`` file.
    shape
        The ``(D, H, W)`` grid it must match (the volumes it will be applied to); None to skip the check.

    Returns
    -------
    torch.Tensor
        complex64 ``(D, H, W)``.
    """
    path = Path(path)
    if not path.is_file():
        raise MrdpmError("transfer-function file not found", path)
    try:
        if path.suffix == ".npy":
            array = np.load(path, allow_pickle=False)
            transfer = torch.from_numpy(array) if np.iscomplexobj(array) and array.ndim == 3 else None
        elif path.suffix == ".safetensors":
            tensors = load_file(str(path))
            stored = tensors.get(_SAFETENSORS_KEY)
            ok = stored is not None and stored.ndim == 4 and stored.shape[-1] == 2 and stored.is_floating_point()
            transfer = torch.view_as_complex(stored.float().contiguous()) if ok else None
        else:
            raise MrdpmError(f"unknown transfer-function format {path.suffix!r}; use .npy or .safetensors", path)
    except (ValueError, OSError, SafetensorError) as error:
        raise MrdpmError(f"cannot read a transfer function: {error}", path) from error
    if transfer is None:
        raise MrdpmError("not a transfer function: expected a complex (D, H, W) array", path)
    if shape is not None and tuple(transfer.shape) != tuple(shape):
        raise MrdpmError(f"transfer function grid {tuple(transfer.shape)} does not match the volume grid "
                         f"{tuple(shape)}; estimate one on this grid or resample the volumes", path)
    return transfer.to(torch.complex64)


def histogram_match(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Quantile mapping of ``x`` onto the intensity distribution of ``reference``.

    Each value of ``x`` takes the reference quantile (linear interpolation) at its own empirical CDF level
    (tied values share their mid-rank level), so the output is monotone in ``x``.

    Parameters
    ----------
    x
        Real tensor of any shape.
    reference
        Real tensor of any shape (e.g. a real ULF volume).

    Returns
    -------
    torch.Tensor
        float32 tensor of ``x``'s shape.
    """
    if x.is_complex() or reference.is_complex() or x.numel() == 0 or reference.numel() == 0:
        raise ValueError(f"x and reference must be non-empty real tensors, got {x.dtype} {tuple(x.shape)} and "
                         f"{reference.dtype} {tuple(reference.shape)}")
    flat = x.reshape(-1).float()
    ordered = flat.sort().values
    ranks = (torch.searchsorted(ordered, flat, side="left") + torch.searchsorted(ordered, flat, side="right") - 1)
    level = ranks.double() / 2 / max(flat.numel() - 1, 1)
    ref = reference.reshape(-1).double().sort().values
    position = level * (ref.numel() - 1)
    low = position.floor().long().clamp(max=ref.numel() - 1)
    high = (low + 1).clamp(max=ref.numel() - 1)
    mapped = ref[low] + (position - low) * (ref[high] - ref[low])
    return mapped.float().reshape(x.shape)


def field_scaled_snr_db(field_t: float, voxel_mm: Sequence[float], *, reference_field_t: float,
                        reference_voxel_mm: Sequence[float], reference_snr_db: float,
                        exponent: float = 1.75) -> float:
    """SNR at another field and voxel size: ``SNR = SNR_ref (B0 / B0_ref)^exponent (V / V_ref)``.

    ``exponent = 7/4`` is the coil-noise-dominated regime of low fields (Hoult & Richards, J Magn Reson 24:71,
    1976); body-noise-dominated high fields approach 1, and 1.5 is a common compromise. Signal grows with voxel
    volume ``V``. Acquisition time, bandwidth and coil differences are ignored, so for real ULF scanners (which
    average longer) the rule is pessimistic.

    Returns
    -------
    float
        SNR in dB (``20 log10``).
    """
    if min(field_t, reference_field_t, *voxel_mm, *reference_voxel_mm) <= 0:
        raise ValueError(f"fields and voxel sizes must be positive, got {field_t=}, {reference_field_t=}, "
                         f"{voxel_mm=}, {reference_voxel_mm=}")
    ratio = (field_t / reference_field_t) ** exponent * math.prod(voxel_mm) / math.prod(reference_voxel_mm)
    return reference_snr_db + 20 * math.log10(ratio)


@dataclass(frozen=True)
class LowFieldSettings:
    """Settings of the parametric ULF simulator (all JSON-serialisable).

    Parameters
    ----------
    field_t
        Simulated main field in tesla (sets T1/T2 when contrast is re-synthesised, and the field-scaled SNR).
    voxel_mm
        Target voxel size in mm in array order ``(D, H, W)``; the entry on ``slice_axis`` is the slice
        thickness. The default is a Hyperfine-like 1.6 x 1.6 mm in-plane, 5 mm axial slices along D.
    slice_axis
        Axis (0, 1, 2) acquired as thick 2D slices, or None for a 3D acquisition (k-space truncation on all axes).
    noise
        Add noise; False gives the noise-free degraded image.
    snr_db
        Foreground-mean SNR in dB (module docstring). None: :func:`field_scaled_snr_db` from the reference
        settings below, with the HF voxel as reference voxel.
    reference_field_t, reference_snr_db, snr_field_exponent
        Reference for the field-scaled SNR: the HF input is taken to have ``reference_snr_db`` at
        ``reference_field_t``.
    rician
        Magnitude of complex data (Rician noise); False adds the real Gaussian component only.
    contrast
        ``"T1w"`` / ``"T2w"``: re-synthesise contrast from tissue labels at ``field_t`` (default ULF sequence);
        None keeps the HF contrast.
    tissue_kind
        Label set of those labels: ``"neonatal"``, ``"adult"`` or ``"dlmuse"`` (DLMUSE ROI ids, as in
        ``ixi-t1/seg``; :func:`mrdpm.physics.relaxation.tissue_classes`).
    """

    field_t: float = 0.064
    voxel_mm: tuple[float, float, float] = (5.0, 1.6, 1.6)
    slice_axis: int | None = 0
    noise: bool = True
    snr_db: float | None = 20.0
    reference_field_t: float = 3.0
    reference_snr_db: float = 40.0
    snr_field_exponent: float = 1.75
    rician: bool = True
    contrast: str | None = None
    tissue_kind: str = "neonatal"

    def __post_init__(self):
        if not all(math.isfinite(f) and f > 0 for f in (self.field_t, self.reference_field_t)):
            raise ValueError(f"fields must be positive, got {self.field_t=}, {self.reference_field_t=}")
        if len(self.voxel_mm) != 3 or min(self.voxel_mm) <= 0:
            raise ValueError(f"voxel_mm must be 3 positive sizes, got {self.voxel_mm=}")
        object.__setattr__(self, "voxel_mm", tuple(float(v) for v in self.voxel_mm))
        if self.slice_axis not in (None, 0, 1, 2):
            raise ValueError(f"slice_axis must be 0, 1, 2 or None, got {self.slice_axis=}")
        if self.snr_db is not None and not math.isfinite(self.snr_db):
            raise ValueError(f"snr_db must be finite or None (set noise=False for none), got {self.snr_db=}")
        if self.contrast not in (None, "T1w", "T2w"):
            raise ValueError(f"contrast must be None, 'T1w' or 'T2w', got {self.contrast=}")
        if self.tissue_kind not in LABEL_SETS:
            raise ValueError(f"tissue_kind must be one of {list(LABEL_SETS)}, got {self.tissue_kind=}")


def _slice_profile_response(n: int, width_voxels: float) -> torch.Tensor:
    """Centred DFT (length ``n``) of a unit-sum box of ``width_voxels`` voxels; edge voxels weighted by overlap."""
    width = max(width_voxels, 1.0)
    radius = math.ceil(width / 2 - 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = (width / 2 - offsets.abs() + 0.5).clamp(0, 1)
    kernel = torch.zeros(n, dtype=torch.float64)
    kernel.index_add_(0, offsets.long() % n, weights / weights.sum())
    return torch.fft.fftshift(torch.fft.fft(kernel)).real


def resolution_filter(shape: Sequence[int], voxel_mm: Sequence[float], target_voxel_mm: Sequence[float],
                      slice_axis: int | None = 0) -> torch.Tensor:
    """The k-space filter that takes a volume from ``voxel_mm`` to ``target_voxel_mm`` resolution on its grid.

    Parameters
    ----------
    shape
        ``(D, H, W)`` grid.
    voxel_mm, target_voxel_mm
        Input and target voxel sizes in mm, array order. Axes with a target no coarser than the input are kept.
    slice_axis
        Axis with a box slice profile of thickness ``target_voxel_mm[slice_axis]``; None: truncation on all axes.

    Returns
    -------
    torch.Tensor
        float32 ``(D, H, W)``, multiplies ``fftnc(volume, 3)``: 1 inside the central ``round(n * voxel /
        target)`` samples of in-plane axes, 0 outside, times the slice-profile response.
    """
    if len(shape) != 3 or len(voxel_mm) != 3 or len(target_voxel_mm) != 3 or min(*voxel_mm, *target_voxel_mm) <= 0:
        raise ValueError(f"need a 3D shape and 3 positive voxel sizes, got {shape=}, {voxel_mm=}, {target_voxel_mm=}")
    factors = []
    for axis, (n, voxel, target) in enumerate(zip(shape, voxel_mm, target_voxel_mm, strict=True)):
        if axis == slice_axis:
            factors.append(_slice_profile_response(n, target / voxel))
            continue
        keep = min(max(round(n * voxel / target), 1), n)
        start = n // 2 - keep // 2
        window = torch.zeros(n, dtype=torch.float64)
        window[start:start + keep] = 1
        factors.append(window)
    return (factors[0][:, None, None] * factors[1][None, :, None] * factors[2][None, None, :]).float()


def degrade_resolution(volume: torch.Tensor, voxel_mm: Sequence[float], target_voxel_mm: Sequence[float],
                       slice_axis: int | None = 0) -> torch.Tensor:
    """Apply :func:`resolution_filter` to a ``(D, H, W)`` volume; returns the complex64 image on the same grid."""
    _check_volume(volume, "volume")
    transfer = resolution_filter(tuple(volume.shape), voxel_mm, target_voxel_mm, slice_axis)
    return ifftnc(fftnc(volume.to(torch.complex64), 3) * transfer, 3)


def simulate_low_field(hf: torch.Tensor, voxel_mm_hf: Sequence[float], settings: LowFieldSettings,
                       labels: torch.Tensor | None = None, *, histogram_reference: torch.Tensor | None = None,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Simulate a ULF magnitude volume from a HF volume with the parametric physics model (module docstring).

    Parameters
    ----------
    hf
        High-field magnitude volume ``(D, H, W)``, real.
    voxel_mm_hf
        Its voxel size in mm, array order.
    settings
        :class:`LowFieldSettings`.
    labels
        ``(D, H, W)`` integer tissue labels (``settings.tissue_kind`` ids), needed when ``settings.contrast`` is
        set: the image is then re-synthesised at ``settings.field_t`` and scaled to the 99th percentile of ``hf``.
    histogram_reference
        Optional real volume whose intensity histogram the result is mapped onto (:func:`histogram_match`).
    generator
        Random generator for the noise.

    Returns
    -------
    torch.Tensor
        float32 ``(D, H, W)`` magnitude volume on the input grid (geometry unchanged).
    """
    _check_volume(hf, "hf")
    if hf.is_complex() or len(voxel_mm_hf) != 3:
        raise ValueError(f"hf must be real and voxel_mm_hf 3 sizes, got {hf.dtype}, {voxel_mm_hf=}")
    image = hf.float()
    if settings.contrast is not None:
        if labels is None or tuple(labels.shape) != tuple(hf.shape):
            raise ValueError(f"contrast={settings.contrast!r} needs labels of shape {tuple(hf.shape)}, got "
                             f"{None if labels is None else tuple(labels.shape)}")
        synthetic = weighted_image(labels, settings.contrast, settings.field_t, kind=settings.tissue_kind)
        image = synthetic * (_quantile(image, 0.99) / _quantile(synthetic, 0.99).clamp_min(1e-12))
    transfer = resolution_filter(tuple(hf.shape), voxel_mm_hf, settings.voxel_mm, settings.slice_axis)
    clean = ifftnc(fftnc(image.to(torch.complex64), 3) * transfer, 3)
    out = clean.abs()
    if settings.noise:
        snr_db = settings.snr_db
        if snr_db is None:
            snr_db = field_scaled_snr_db(
                settings.field_t, settings.voxel_mm, reference_field_t=settings.reference_field_t,
                reference_voxel_mm=voxel_mm_hf, reference_snr_db=settings.reference_snr_db,
                exponent=settings.snr_field_exponent)
        foreground = out[out > _FOREGROUND_FRACTION * _quantile(out, 0.99)]
        sigma = (foreground.mean() if foreground.numel() else out.mean()).item() / 10 ** (snr_db / 20)
        # Complex noise filtered like the signal; the filter's mean power gain keeps the image-domain std at sigma.
        gain = transfer.square().mean().item()
        kspace_noise = complex_gaussian(tuple(hf.shape), sigma * math.sqrt(2 / gain), generator=generator) * transfer
        noise = ifftnc(kspace_noise, 3)
        out = (clean + noise).abs() if settings.rician else out + noise.real
    if histogram_reference is not None:
        out = histogram_match(out, histogram_reference)
    return out.float()
