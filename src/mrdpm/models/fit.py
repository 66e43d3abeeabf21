"""Plain fitting of the small auxiliary networks: Adam, cosine learning-rate decay to 0, gradients clipped at 1.

The feature autoencoder (:mod:`mrdpm.models.autoencoder`), the supervised U-Net baselines
(:mod:`mrdpm.eval.supervised`, :mod:`mrdpm.tasks.mrf_unet`) and the R2R denoiser (:mod:`mrdpm.data.denoise`) are
all trained by :func:`fit`: one optimiser step per call of a loss function, no EMA, no resume (the diffusion
prior's loop, :mod:`mrdpm.train.loop`, has those).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

__all__ = ["OPTIMIZER", "FitResult", "first_last_tenth", "fit"]

OPTIMIZER = "Adam, cosine decay, clip 1.0"  # what model cards say of fit's optimisation
_CLIP_NORM = 1.0


def first_last_tenth(values: Sequence[float]) -> tuple[float, float]:
    """Means of the first and of the last tenth (at least one value) of a non-empty sequence."""
    if not values:
        raise ValueError("first_last_tenth needs at least one value")
    tenth = max(1, len(values) // 10)
    return float(np.mean(values[:tenth])), float(np.mean(values[-tenth:]))


@dataclass(frozen=True)
class FitResult:
    """The losses of every step (float, in the loss function's units) and the wall time of the loop (s)."""

    losses: list[float]
    seconds: float

    def card(self) -> dict[str, float]:
        """``loss_first`` / ``loss_last`` (means of the first and last tenth of the steps) and ``seconds``."""
        first, last = first_last_tenth(self.losses)
        return {"loss_first": first, "loss_last": last, "seconds": round(self.seconds, 1)}


def fit(model: nn.Module, loss_fn: Callable[[int], torch.Tensor], *, steps: int, lr: float, desc: str,
        progress: bool = False) -> FitResult:
    """Minimise ``loss_fn`` over ``model``'s parameters with ``steps`` Adam steps.

    The learning rate decays from ``lr`` to 0 along a half cosine over ``steps``; the gradient norm is clipped at 1.

    Parameters
    ----------
    model
        The network, already in train mode on its device; its parameters are updated in place.
    loss_fn
        ``loss_fn(step)`` for ``step = 1 .. steps`` draws the step's batch and returns the scalar loss (with its
        graph).
    steps, lr
        Optimiser steps (>= 1) and initial learning rate (> 0).
    desc
        Label of the progress bar.
    progress
        Show a progress bar.

    Returns
    -------
    FitResult
    """
    if steps < 1 or not lr > 0:
        raise ValueError(f"need steps >= 1 and lr > 0, got {steps=}, {lr=}")
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: 0.5 * (1 + math.cos(math.pi * k / steps)))
    losses, start = [], time.perf_counter()
    for step in tqdm(range(1, steps + 1), desc=desc, disable=not progress):
        loss = loss_fn(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), _CLIP_NORM)
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
    return FitResult(losses, time.perf_counter() - start)
