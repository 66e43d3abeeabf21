"""Model surgery on the class embedding: add a class to a trained denoiser without changing the old ones.

A class-conditional denoiser adds a learned embedding row to its noise-level embedding (MONAI
``DiffusionModelUNet.class_embedding``, an ``nn.Embedding`` of ``len(class_names) + 1`` rows): row ``i`` for class
``i`` and the last row for the null (unconditional) class, label -1. :func:`add_class` inserts one row before the
null row, so every old label, the null class included, looks up the very same vector and the network computes
the same outputs bit for bit. An unconditional denoiser (no embedding) gets a two-row embedding of zeros: its
null row adds exactly nothing, so the null class reproduces the old unconditional outputs bit for bit too.

The new row starts as the null class (default): the new class then begins as the unconditional prior, the
model's best guess for an unseen contrast, learned on every class by label dropout, and fine-tuning moves it
away from there. A known class of a similar contrast may be a better start (``init_from``).
"""

from __future__ import annotations

import dataclasses

import torch

from mrdpm.models.precond import Denoiser

__all__ = ["CLASS_EMBEDDING_KEY", "add_class"]

CLASS_EMBEDDING_KEY = "net.class_embedding.weight"  # (classes + 1, embedding dim), null class last


def add_class(denoiser: Denoiser, name: str, *, init_from: str | None = None) -> Denoiser:
    """A copy of ``denoiser`` with class ``name`` appended to its classes (label ``len(class_names)``).

    Parameters
    ----------
    denoiser
        The trained denoiser (left unchanged).
    name
        The new class name; must not be a class of ``denoiser`` already.
    init_from
        The existing class whose embedding the new class starts from; None: the null (unconditional) class.

    Returns
    -------
    Denoiser
        New model on ``denoiser``'s device and in its training mode; its config equals ``denoiser.config`` but
        for ``class_names + (name,)``. Old labels (``0 .. n-1`` and -1) give exactly the old outputs.

    Raises
    ------
    ValueError
        If ``name`` is empty or already a class, or ``init_from`` is not a class of ``denoiser``.
    """
    old = denoiser.config
    if name in old.class_names:
        raise ValueError(f"class {name!r} exists already (classes: {list(old.class_names)})")
    if init_from is not None and init_from not in old.class_names:
        raise ValueError(f"init_from {init_from!r} is not a class of the model (classes: {list(old.class_names)})")
    model = Denoiser(dataclasses.replace(old, class_names=(*old.class_names, name)))
    state = {k: v.detach().cpu() for k, v in denoiser.state_dict().items()}
    if old.class_names:
        table = state[CLASS_EMBEDDING_KEY]
    else:  # an unconditional model: a zero null row adds nothing to the noise embedding
        table = torch.zeros_like(model.state_dict()[CLASS_EMBEDDING_KEY][:1])
    classes, null = table[:-1], table[-1:]
    start = null if init_from is None else classes[old.class_names.index(init_from)].unsqueeze(0)
    state[CLASS_EMBEDDING_KEY] = torch.cat([classes, start, null])
    model.load_state_dict(state, strict=True)
    device = next(denoiser.parameters()).device
    return model.to(device).train(denoiser.training)
