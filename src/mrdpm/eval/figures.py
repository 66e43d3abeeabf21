"""Figures: reconstruction panels (input, result, error, uncertainty) and validation curves of training runs."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

__all__ = ["plot_validation", "save_panels"]


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


def plot_validation(run_dirs: Sequence[str | Path], out_png: str | Path, *, metric: str = "recon_nrmse",
                    dpi: int = 120) -> Path:
    """Plot a validation metric against training steps, one line per run, labelled by its learning rate.

    Parameters
    ----------
    run_dirs
        Training run folders (``log.jsonl`` and ``config.json``, see mrdpm.train.loop).
    out_png
        Output PNG path.
    metric
        Key of the validation rows of ``log.jsonl`` (e.g. ``recon_nrmse``, ``recon_psnr@4``, ``val_loss``).
    dpi
        Resolution.

    Returns
    -------
    Path
        The written file. Each run's lowest value is marked.

    Raises
    ------
    ValueError
        If a run has no validation row holding ``metric``.
    """
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for run_dir in map(Path, run_dirs):
        rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text(encoding="utf-8").splitlines()]
        points = [(row["step"], row[metric]) for row in rows if metric in row]
        if not points:
            raise ValueError(f"run {str(run_dir)!r} logged no validation {metric!r}")
        lr = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))["optim"]["lr"]
        steps, values = zip(*points, strict=True)
        (line,) = ax.plot(steps, values, marker=".", label=f"lr {lr:g} ({run_dir.name})")
        best = min(range(len(values)), key=values.__getitem__)
        ax.plot(steps[best], values[best], marker="o", fillstyle="none", markersize=9, color=line.get_color())
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(out_png)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
