"""Tiny synthetic training images (nested random ellipses) for tests and demonstrations.

Write a demo data set for ``configs/tiny-synthetic.toml`` with ``python -m mrdpm.data.phantoms runs/phantoms``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

__all__ = ["ellipse_phantoms", "write_phantom_volumes"]


def ellipse_phantoms(n: int, size: int = 32, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random magnitude images: an ellipse of intensity 0.5-1 holding a brighter or darker inner ellipse.

    Parameters
    ----------
    n
        Number of images.
    size
        Images are ``size x size`` pixels.
    generator
        Random generator.

    Returns
    -------
    torch.Tensor
        float32 ``(n, size, size)`` in [0, 1.5], background 0.
    """
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1  # pixel centres in (-1, 1)
    y, x = torch.meshgrid(coords, coords, indexing="ij")

    def ellipse(centre: torch.Tensor, radii: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
        c, s = angle.cos().view(-1, 1, 1), angle.sin().view(-1, 1, 1)
        dy, dx = y - centre[:, 0].view(-1, 1, 1), x - centre[:, 1].view(-1, 1, 1)
        u, v = c * dx + s * dy, c * dy - s * dx
        return ((u / radii[:, 1].view(-1, 1, 1)) ** 2 + (v / radii[:, 0].view(-1, 1, 1)) ** 2 <= 1).float()

    def uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(shape, generator=generator)

    outer_radii = uniform(0.45, 0.8, n, 2)
    outer = ellipse(uniform(-0.1, 0.1, n, 2), outer_radii, uniform(0, np.pi, n))
    inner = ellipse(uniform(-0.2, 0.2, n, 2), outer_radii * uniform(0.25, 0.5, n, 1), uniform(0, np.pi, n))
    return uniform(0.5, 1.0, n, 1, 1) * outer + uniform(-0.4, 0.5, n, 1, 1) * inner * outer


def write_phantom_volumes(folder: str | Path, *, n_subjects: int = 8, n_slices: int = 8, size: int = 32,
                          seed: int = 0) -> list[Path]:
    """Write ``phantomNN_img.npy`` stacks of shape ``(n_slices, size, size)``, one per "subject".

    Returns
    -------
    list of Path
        The files written (subject IDs ``phantom00``, ``phantom01``...).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    paths = []
    for subject in range(n_subjects):
        path = folder / f"phantom{subject:02d}_img.npy"
        np.save(path, ellipse_phantoms(n_slices, size, generator=generator).numpy())
        paths.append(path)
    return paths


if __name__ == "__main__":
    written = write_phantom_volumes(sys.argv[1] if len(sys.argv) > 1 else "runs/phantoms")
    print(f"wrote {len(written)} phantom volumes to {written[0].parent}")
