"""Patch-wise inference: a network trained on patches applied to whole images through overlapping windows.

``sliding_window`` cuts an image ``(B, C, *spatial)`` into windows of shape ``patch`` every ``stride`` voxels
along each axis (the last window of an axis aligned to its far edge, so the windows cover the image), calls a
function on batches of windows, and blends the outputs: every output voxel is the weighted mean of the windows
covering it, with a smooth window weight (``triangular``: linear fall-off from the centre, ``gaussian``: standard
deviation ``patch / 8``, or ``flat``), which hides the seams of networks that are less accurate at patch edges.
Accumulation is in float64 (complex128), so a function that does not depend on the window position (the
identity, any pixel-wise map) comes back unchanged up to the final rounding. An axis shorter than the patch is
padded on both sides (centred, as training's ``crop_or_pad`` centres small images) by reflection (default; noise
keeps its statistics there) or zeros, and cropped back.

``PatchDenoiser`` wraps a denoiser ``D(x, sigma, class_labels=None, cond=None)`` so that it runs patch-wise,
cutting the condition image at the same windows: every sampler of :mod:`mrdpm.diffusion.samplers` and
:mod:`mrdpm.diffusion.posterior` (through :func:`mrdpm.diffusion.guidance.bind`) then works on whole images with
a patch-trained model. One call counts as one network evaluation (NFE) for the samplers, although it runs the
network on ``ceil(B * windows / batch_size)`` batches of patches.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import torch

from mrdpm.diffusion.guidance import ConditionalDenoiser

__all__ = ["PAD_MODES", "WEIGHTS", "PatchDenoiser", "sliding_window", "window_starts", "window_weight"]

WEIGHTS = ("triangular", "gaussian", "flat")
PAD_MODES = ("reflect", "zeros")
_GAUSSIAN_SIGMA_SCALE = 0.125  # standard deviation / patch size (as nnU-Net and MONAI's sliding window)

PatchFn = Callable[..., torch.Tensor]


def _per_axis(value: int | Sequence[int], ndim: int, name: str) -> tuple[int, ...]:
    """``value`` as ``ndim`` positive ints (an int is repeated)."""
    values = (int(value),) * ndim if isinstance(value, int) else tuple(int(v) for v in value)
    if len(values) != ndim or min(values) < 1:
        raise ValueError(f"{name} must be a positive int or {ndim} positive ints, got {value!r}")
    return values


def window_starts(size: int, patch: int, stride: int) -> list[int]:
    """Start indices of the windows along one axis: ``0, stride, 2 stride, ...`` and ``size - patch`` last.

    Parameters
    ----------
    size
        Axis length, at least ``patch``.
    patch, stride
        Window length and step, ``1 <= stride <= patch``.

    Returns
    -------
    list of int
        Increasing starts whose windows cover ``[0, size)``.
    """
    if not 1 <= stride <= patch <= size:
        raise ValueError(f"need 1 <= stride <= patch <= size, got {stride=}, {patch=}, {size=}")
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


def window_weight(patch: Sequence[int], kind: str = "triangular", *,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """The blending weight of one window: a separable product of 1D profiles, positive everywhere.

    Parameters
    ----------
    patch
        Window shape.
    kind
        ``triangular``: ``min(i + 1, p - i)`` along an axis of length ``p``; ``gaussian``:
        ``exp(-(i - (p - 1)/2)^2 / (2 (p/8)^2))``; ``flat``: ones (each profile scaled to maximum 1).
    device
        Where to build it.

    Returns
    -------
    torch.Tensor
        float64 of shape ``patch``, maximum 1.
    """
    if kind not in WEIGHTS:
        raise ValueError(f"weight must be one of {WEIGHTS}, got {kind!r}")
    weight = torch.ones((), dtype=torch.float64, device=device)
    for p in patch:
        i = torch.arange(p, dtype=torch.float64, device=device)
        if kind == "triangular":
            profile = torch.minimum(i + 1, p - i) / math.ceil(p / 2)
        elif kind == "gaussian":
            profile = torch.exp(-0.5 * ((i - (p - 1) / 2) / (_GAUSSIAN_SIGMA_SCALE * p)).square())
            profile = profile / profile.max()
        else:
            profile = torch.ones_like(i)
        weight = weight.unsqueeze(-1) * profile
    return weight


def _pad(x: torch.Tensor, before: Sequence[int], after: Sequence[int], mode: str) -> torch.Tensor:
    """Pad the trailing ``len(before)`` axes of ``x``: reflection (repeated as needed) or zeros."""
    spatial = x.shape[x.dim() - len(before):]
    if mode == "zeros":
        out = x.new_zeros((*x.shape[:x.dim() - len(before)], *(n + b + a for n, b, a in zip(
            spatial, before, after, strict=True))))
        out[(..., *(slice(b, b + n) for n, b in zip(spatial, before, strict=True)))] = x
        return out
    for axis, (n, b, a) in enumerate(zip(spatial, before, after, strict=True)):
        if b == a == 0:
            continue
        index = torch.arange(-b, n + a, device=x.device)
        if n == 1:
            index = torch.zeros_like(index)
        else:  # mirror about the first and last voxel, periodically (reflection without edge repetition)
            index = index.remainder(2 * (n - 1))
            index = torch.where(index >= n, 2 * (n - 1) - index, index)
        x = x.index_select(x.dim() - len(spatial) + axis, index)
    return x


def _blend(fn: PatchFn, tensors: Sequence[torch.Tensor], patch: Sequence[int], stride: Sequence[int], *,
           batch_size: int, weight: str, pad_mode: str) -> torch.Tensor:
    """``sliding_window`` over several aligned tensors; ``fn(index, *patches)`` gets each patch's image index."""
    image = tensors[0]
    ndim = image.dim() - 2
    if ndim < 1:
        raise ValueError(f"image must be (B, C, *spatial), got shape {tuple(image.shape)}")
    patch, stride = _per_axis(patch, ndim, "patch"), _per_axis(stride, ndim, "stride")
    if any(s > p for s, p in zip(stride, patch, strict=True)):
        raise ValueError(f"stride {stride} must not exceed patch {patch} (the windows would leave gaps)")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if pad_mode not in PAD_MODES:
        raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {pad_mode!r}")
    spatial = tuple(image.shape[2:])
    before = [max(p - n, 0) // 2 for n, p in zip(spatial, patch, strict=True)]
    after = [max(p - n, 0) - b for n, p, b in zip(spatial, patch, before, strict=True)]
    padded = [_pad(t, before, after, pad_mode) for t in tensors]
    size = tuple(padded[0].shape[2:])
    w = window_weight(patch, weight, device=image.device)
    windows = [tuple(slice(s, s + p) for s, p in zip(starts, patch, strict=True))
               for starts in itertools.product(*(window_starts(n, p, s) for n, p, s in
                                                 zip(size, patch, stride, strict=True)))]
    total = torch.zeros(size, dtype=torch.float64, device=image.device)
    for window in windows:
        total[window] += w
    jobs = [(b, window) for window in windows for b in range(image.shape[0])]
    out: torch.Tensor | None = None
    for first in range(0, len(jobs), batch_size):
        chunk = jobs[first:first + batch_size]
        index = torch.tensor([b for b, _ in chunk], device=image.device)
        patches = [torch.stack([t[b][(..., *window)] for b, window in chunk]) for t in padded]
        result = fn(index, *patches)
        if result.dim() != ndim + 2 or result.shape[0] != len(chunk) or tuple(result.shape[2:]) != patch:
            raise ValueError(f"fn must map ({len(chunk)}, C, *{patch}) to ({len(chunk)}, C_out, *{patch}), "
                             f"got {tuple(result.shape)}")
        if out is None:  # the first batch tells the output channels and dtype
            dtype = torch.complex128 if result.is_complex() else torch.float64
            out = torch.zeros((image.shape[0], result.shape[1], *size), dtype=dtype, device=image.device)
        for k, (b, window) in enumerate(chunk):
            out[(b, slice(None), *window)] += result[k].to(out.dtype) * w
    crop = tuple(slice(b, b + n) for b, n in zip(before, spatial, strict=True))
    return (out / total)[(..., *crop)].to(result.dtype)


def sliding_window(fn: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, patch: int | Sequence[int],
                   stride: int | Sequence[int], *, batch_size: int, weight: str = "triangular",
                   pad_mode: str = "reflect") -> torch.Tensor:
    """Apply ``fn`` to overlapping windows of ``image`` and blend the outputs (see the module docstring).

    Parameters
    ----------
    fn
        Maps a batch of patches ``(N, C, *patch)`` to ``(N, C_out, *patch)``; ``N <= batch_size``.
    image
        ``(B, C, *spatial)``, any number of spatial axes (2 or 3 in practice), real or complex.
    patch
        Window shape (an int: the same along every axis).
    stride
        Step between windows, at most ``patch`` along each axis (an int: the same along every axis).
    batch_size
        Patches per call of ``fn`` (taken from all images of the batch).
    weight
        Blending window: ``triangular``, ``gaussian`` or ``flat`` (see :func:`window_weight`).
    pad_mode
        Padding of axes shorter than the patch: ``reflect`` or ``zeros``.

    Returns
    -------
    torch.Tensor
        ``(B, C_out, *spatial)`` in ``fn``'s output dtype; differentiable if ``fn`` is.
    """
    return _blend(lambda index, patches: fn(patches), (image,), patch, stride, batch_size=batch_size,
                  weight=weight, pad_mode=pad_mode)


class PatchDenoiser:
    """A denoiser applied patch-wise: ``D(x, sigma, class_labels=None, cond=None)`` on whole images.

    Parameters
    ----------
    denoiser
        ``D(x, sigma, class_labels=None, cond=None) -> x0_hat`` for patches (e.g. a patch-trained
        :class:`mrdpm.models.precond.Denoiser`; put it in eval mode first).
    patch
        Window shape (the training patch size, say); an int: the same along every axis.
    stride
        Step between windows, at most ``patch``; None: half the patch (rounded up).
    batch_size
        Patches per network call.
    weight, pad_mode
        As in :func:`sliding_window`.
    """

    def __init__(self, denoiser: ConditionalDenoiser, patch: int | Sequence[int],
                 stride: int | Sequence[int] | None = None, batch_size: int = 8, weight: str = "triangular",
                 pad_mode: str = "reflect"):
        if weight not in WEIGHTS or pad_mode not in PAD_MODES or batch_size < 1:
            raise ValueError(f"bad options {weight=}, {pad_mode=}, {batch_size=}")
        self.denoiser = denoiser
        self.patch = patch
        self.stride = stride if stride is not None else (
            (patch + 1) // 2 if isinstance(patch, int) else tuple((p + 1) // 2 for p in patch))
        self.batch_size = batch_size
        self.weight = weight
        self.pad_mode = pad_mode

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float, class_labels: torch.Tensor | None = None,
                 cond: torch.Tensor | None = None) -> torch.Tensor:
        """Denoise ``x`` window by window.

        Parameters
        ----------
        x
            ``(B, C, *spatial)`` noisy images, any spatial size.
        sigma
            ``(B,)`` noise levels or one scalar.
        class_labels
            ``(B,)`` int64 labels (or one for the batch) or None; each patch gets its image's label.
        cond
            ``(B, Cc, *spatial)`` condition, spatially aligned with ``x`` (cut at the same windows), or None.

        Returns
        -------
        torch.Tensor
            ``x0_hat`` with the shape and dtype of ``x``.
        """
        batch = x.shape[0]
        sigma = torch.as_tensor(sigma, dtype=x.real.dtype, device=x.device)
        sigma = sigma.expand(batch) if sigma.dim() == 0 else sigma
        if sigma.shape != (batch,):
            raise ValueError(f"sigma must be a scalar or ({batch},), got shape {tuple(sigma.shape)}")
        if cond is not None and (cond.dim() != x.dim() or cond.shape[0] != batch or cond.shape[2:] != x.shape[2:]):
            raise ValueError(f"cond must be (B, Cc, *spatial) aligned with x {tuple(x.shape)}, got "
                             f"{tuple(cond.shape)}")

        labels = None if class_labels is None else torch.as_tensor(class_labels, device=x.device).expand(batch)

        def denoise(index: torch.Tensor, patches: torch.Tensor, *cond_patches: torch.Tensor) -> torch.Tensor:
            return self.denoiser(patches, sigma[index], class_labels=None if labels is None else labels[index],
                                 cond=cond_patches[0] if cond_patches else None)

        tensors = (x,) if cond is None else (x, cond)
        return _blend(denoise, tensors, self.patch, self.stride, batch_size=self.batch_size, weight=self.weight,
                      pad_mode=self.pad_mode)
