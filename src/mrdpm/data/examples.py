"""Example images that ship with the project's dependencies (no download): used by ``mrdpm demo`` and tests."""

from __future__ import annotations

import gzip

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["example_brain_slice"]


def example_brain_slice(size: int = 128) -> torch.Tensor:
    """A real T1-weighted sagittal head MRI slice, normalised so its 99th percentile is 1.

    Rows run inferior to superior and columns posterior to anterior (the layout of :class:`mrdpm.io.Volume`).

    The image is matplotlib's sample file ``s1045.ima.gz`` (256 x 256, 16-bit, about 1 mm pixels), which every
    installation of matplotlib carries; it is resampled with area averaging to ``size x size`` (128 gives about
    2 mm pixels, the resolution of the shipped brain prior).

    Returns
    -------
    torch.Tensor
        ``(size, size)`` float32 magnitude.
    """
    from matplotlib import cbook

    with cbook.get_sample_data("s1045.ima.gz") as handle:
        raw = handle.read()
    if raw[:2] == b"\x1f\x8b":  # older matplotlib hands over the compressed bytes
        raw = gzip.decompress(raw)
    image = torch.from_numpy(np.frombuffer(raw, dtype="<u2").reshape(256, 256).astype(np.float32))
    image = F.interpolate(image[None, None], size=(size, size), mode="area")[0, 0]
    image = image.flip(0, 1)  # stored superior-first and anterior-first; the project runs both axes the other way
    return image / torch.quantile(image.flatten(), 0.99)
