"""Bind conditioning to a denoiser, with classifier-free guidance (Ho & Salimans 2022).

``bind(denoiser, class_labels, cond, guidance_scale=w)`` returns a callable ``D(x, sigma)`` that every sampler
accepts: ``D_uncond + w (D_cond - D_uncond)``. ``w = 1`` is the conditional denoiser (one evaluation); any other
``w`` costs two evaluations per call, which the samplers count (attribute ``nfe_per_call``).

The unconditional branch uses the conventions of label / condition dropout during training: class label ``-1``
(the denoiser's learned "null" class) and a condition image of zeros.
"""

from __future__ import annotations

from typing import Protocol

import torch

__all__ = ["GuidedDenoiser", "bind"]


class ConditionalDenoiser(Protocol):
    """``D(x, sigma, class_labels=None, cond=None) -> x0_hat`` (e.g. :class:`mrdpm.models.precond.Denoiser`)."""

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor | None = None,
                 cond: torch.Tensor | None = None) -> torch.Tensor: ...


def _batched(value: torch.Tensor | None, batch: int, item_ndim: int) -> torch.Tensor | None:
    """Expand a per-image value (no batch axis) to ``batch`` copies; leave a batched one as is."""
    if value is None or value.dim() > item_ndim:
        return value
    return value.unsqueeze(0).expand(batch, *value.shape)


class GuidedDenoiser:
    """A denoiser with its class labels and condition bound, optionally with classifier-free guidance.

    Parameters
    ----------
    denoiser
        Conditional denoiser ``D(x, sigma, class_labels=..., cond=...)``.
    class_labels
        ``(B,)`` long labels, or a 0-d tensor / int used for the whole batch; None for none.
    cond
        Condition image ``(B, Cc, *spatial)`` or ``(Cc, *spatial)`` (shared by the batch); None for none.
    guidance_scale
        ``w``; 1 gives the conditional denoiser, 0 the unconditional one, > 1 extrapolates.
    """

    def __init__(self, denoiser: ConditionalDenoiser, class_labels: torch.Tensor | int | None = None,
                 cond: torch.Tensor | None = None, guidance_scale: float = 1.0):
        if guidance_scale != 1.0 and class_labels is None and cond is None:
            raise ValueError(f"{guidance_scale=} needs class_labels or cond to guide with")
        self.denoiser = denoiser
        self.class_labels = None if class_labels is None else torch.as_tensor(class_labels, dtype=torch.long)
        self.cond = cond
        self.guidance_scale = float(guidance_scale)
        self.nfe_per_call = 1 if self.guidance_scale == 1.0 else 2

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """``D_uncond + w (D_cond - D_uncond)`` for ``x`` ``(B, C, *spatial)`` and ``sigma`` ``(B,)``."""
        batch = x.shape[0]
        labels = _batched(self.class_labels, batch, 0)
        labels = None if labels is None else labels.to(x.device)
        cond = _batched(self.cond, batch, x.dim() - 1)
        conditional = self.denoiser(x, sigma, class_labels=labels, cond=cond)
        if self.nfe_per_call == 1:
            return conditional
        null_labels = None if labels is None else torch.full_like(labels, -1)
        null_cond = None if cond is None else torch.zeros_like(cond)
        unconditional = self.denoiser(x, sigma, class_labels=null_labels, cond=null_cond)
        return unconditional + self.guidance_scale * (conditional - unconditional)


def bind(denoiser: ConditionalDenoiser, class_labels: torch.Tensor | int | None = None,
         cond: torch.Tensor | None = None, guidance_scale: float = 1.0) -> GuidedDenoiser:
    """Bind labels and condition to a denoiser; see :class:`GuidedDenoiser`.

    Returns
    -------
    GuidedDenoiser
        A callable ``D(x, sigma) -> x0_hat`` for the samplers.
    """
    return GuidedDenoiser(denoiser, class_labels, cond, guidance_scale)
