"""Figures for reconstructions: input, result, error and uncertainty panels."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

__all__ = ["save_panels"]


def save_panels(path: str | Path, panels: Mapping[str, torch.Tensor], *, reference: torch.Tensor | None = None,
                error_of: tuple[str, ...] = (), titles: Mapping[str, str] | None = None, dpi: int = 120) -> Path:
    """Save a row of magnitude images (and, below, their errors against a reference).

    Images are drawn with row 0 at the bottom, so arrays in the project's layout (rows running posterior to
    anterior, or inferior to superior) appear in the radiological upright view.

    Parameters
    ----------
    path
        Output PNG path.
    panels
        Name -> 2D image ``(H, W)`` (complex or real); shown as magnitude on a common grey scale set by the
        reference (or the first panel), except names containing "std" which get their own colour scale.
    reference
        Ground truth ``(H, W)``; when given, a second row shows ``|panel| - |reference|`` for names in ``error_of``
        on a common scale (5x magnified relative to the image scale).
    error_of
        Panel names whose error row is drawn.
    titles
        Optional per-panel caption suffix (e.g. PSNR).
    dpi
        Resolution.

    Returns
    -------
    Path
        The written file.
    """
    names = list(panels)
    rows = 2 if reference is not None and error_of else 1
    fig, axes = plt.subplots(rows, len(names), figsize=(2.6 * len(names), 2.7 * rows), squeeze=False)
    scale_src = reference if reference is not None else panels[names[0]]
    vmax = float(torch.quantile(scale_src.abs().float().flatten(), 0.995)) or 1.0
    for col, name in enumerate(names):
        img = panels[name].detach().abs().float().cpu().numpy()
        ax = axes[0, col]
        if "std" in name:
            ax.imshow(img, cmap="magma", vmin=0, vmax=float(img.max()) or 1.0, origin="lower")
        else:
            ax.imshow(img, cmap="gray", vmin=0, vmax=vmax, origin="lower")
        ax.set_title(name + (f"\n{titles[name]}" if titles and name in titles else ""), fontsize=8)
        if rows == 2:
            err_ax = axes[1, col]
            if name in error_of:
                err = img - reference.detach().abs().float().cpu().numpy()
                err_ax.imshow(err, cmap="RdBu_r", vmin=-vmax / 5, vmax=vmax / 5, origin="lower")
                err_ax.set_title(f"error x5: {name}", fontsize=8)
            err_ax.axis("off")
        ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
