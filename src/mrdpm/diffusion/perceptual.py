"""Perceptual loss term: distance between the multi-scale features of a frozen encoder, weighted by the SNR.

MRIQT (arXiv 2511.13232) trains its v-prediction model with ``|v_hat - v|^2 + 0.25 * abar_t * P(x0_hat, x0)``,
``P`` a perceptual distance from a frozen 3D encoder trained on high-field volumes, the term skipped when
``SNR_t < 0.15``. In this package's VE notation (:mod:`mrdpm.models.precond`) a noise level ``sigma`` has
``abar = 1 / (1 + sigma^2)`` and ``SNR = abar / (1 - abar) = 1 / sigma^2``.

``P`` follows LPIPS (Zhang et al. 2018) without learned weights: every feature vector (over channels, per
voxel) is scaled to unit length, and ``P`` averages over the encoder's levels the voxel mean of the squared
distance between the two images' unit vectors (so ``0 <= P <= 4``).
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

__all__ = ["FeatureEncoder", "perceptual_distance", "perceptual_weight", "snr_weighted_perceptual"]

_NORM_EPS = 1e-6  # feature vectors shorter than this are not rescaled to unit length (F.normalize)


class FeatureEncoder(Protocol):
    """Anything with multi-scale features, e.g. mrdpm.models.autoencoder.FeatureAutoencoder."""

    def encode_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, C_l, *spatial_l)`` feature maps of ``x``, one per level."""

    def parameters(self):
        """The encoder's parameters (checked to be frozen)."""


def perceptual_distance(encoder: FeatureEncoder, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """LPIPS-style distance between ``x`` and ``y`` in a frozen encoder's features (module docstring).

    Parameters
    ----------
    encoder
        The frozen feature encoder (no parameter may require gradients; see
        mrdpm.models.autoencoder.load_autoencoder).
    x, y
        Images ``(B, C, *spatial)`` of the same shape, as the encoder takes them (float32, or complex64 for an
        encoder that reads magnitudes). Gradients flow to both.

    Returns
    -------
    torch.Tensor
        float32 ``(B,)``, 0 where ``x == y``.

    Raises
    ------
    ValueError
        Shapes differ, or the encoder is not frozen.
    """
    if x.shape != y.shape:
        raise ValueError(f"x and y must have one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if any(p.requires_grad for p in encoder.parameters()):
        raise ValueError("the perceptual encoder must be frozen (encoder.requires_grad_(False))")
    batch = x.shape[0]
    levels = encoder.encode_features(torch.cat([x, y]))
    distances = [(F.normalize(f[:batch], dim=1, eps=_NORM_EPS) - F.normalize(f[batch:], dim=1, eps=_NORM_EPS))
                 .square().sum(dim=1).flatten(1).mean(dim=1) for f in levels]
    return torch.stack(distances).mean(dim=0).float()


def perceptual_weight(sigma: torch.Tensor, weight: float = 0.25, min_snr: float = 0.15) -> torch.Tensor:
    """Per-sample weight of the perceptual term: ``weight * abar`` where ``SNR >= min_snr``, else 0.

    Parameters
    ----------
    sigma
        ``(B,)`` VE noise levels (``abar = 1 / (1 + sigma^2)``, ``SNR = 1 / sigma^2``).
    weight
        Scale of the term (MRIQT: 0.25).
    min_snr
        The term is skipped (weight 0) below this SNR (MRIQT: 0.15).

    Returns
    -------
    torch.Tensor
        ``(B,)`` of ``sigma``'s dtype.
    """
    if weight < 0 or min_snr < 0:
        raise ValueError(f"need weight >= 0 and min_snr >= 0, got {weight=}, {min_snr=}")
    s2 = sigma.square()
    return torch.where(1 / s2 >= min_snr, weight / (1 + s2), torch.zeros_like(sigma))


def snr_weighted_perceptual(encoder: FeatureEncoder, x0_hat: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor,
                            *, weight: float = 0.25, min_snr: float = 0.15) -> torch.Tensor:
    """MRIQT's perceptual loss term: ``perceptual_weight(sigma) * perceptual_distance(encoder, x0_hat, x0)``.

    The encoder runs only on the samples of non-zero weight.

    Parameters
    ----------
    encoder
        The frozen feature encoder.
    x0_hat, x0
        Denoised and clean images ``(B, C, *spatial)``.
    sigma
        ``(B,)`` noise levels of the samples.
    weight, min_snr
        See ``perceptual_weight``.

    Returns
    -------
    torch.Tensor
        float32 ``(B,)``; gradients flow to ``x0_hat`` (and ``x0``).
    """
    w = perceptual_weight(sigma, weight, min_snr).float()
    active = (w > 0).nonzero().squeeze(1)
    if active.numel() == 0:
        return w
    distance = perceptual_distance(encoder, x0_hat[active], x0[active])
    return torch.zeros_like(w).index_put((active,), w[active] * distance)
