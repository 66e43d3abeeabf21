"""Exponential moving average of a model's weights (the averaged model is the one that ships)."""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["make_ema", "update_ema"]


def make_ema(model: nn.Module) -> nn.Module:
    """A frozen copy of ``model`` in eval mode, to be updated by ``update_ema``."""
    ema = copy.deepcopy(model).eval()
    ema.requires_grad_(False)
    return ema


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * model`` for every parameter; buffers are copied.

    Parameters
    ----------
    ema, model
        Modules of identical structure.
    decay
        In [0, 1]; ``0.5 ** (1 / halflife_steps)`` for a half-life in steps.
    """
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay must be in [0, 1], got {decay}")
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p.detach(), 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers(), strict=True):
        e.copy_(b)
