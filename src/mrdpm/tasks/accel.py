"""Accelerated Cartesian reconstruction, end to end: k-space case in, images, metrics and figure out.

The steps are the same for every method: coil maps (from the file, else ESPIRiT per slice), a per-slice
reconstruction by the chosen method, then outputs with the case's geometry.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from mrdpm.errors import MrdpmError
from mrdpm.eval.classical import METHODS as CLASSICAL_METHODS
from mrdpm.eval.figures import save_panels
from mrdpm.eval.metrics import evaluate
from mrdpm.io.containers import KSpaceCase, Volume
from mrdpm.io.nifti import write_nifti
from mrdpm.physics.espirit import espirit_maps, find_calibration_region

__all__ = ["ReconResult", "coil_maps", "reconstruct", "slice_mask", "write_outputs"]


@dataclass
class ReconResult:
    """A reconstruction of every slice of a case.

    Attributes
    ----------
    image
        ``(slices, H, W)`` complex64 reconstruction (for sampling methods: the posterior mean).
    method
        Method name.
    seconds
        Wall time of the reconstruction (coil-map estimation excluded), in seconds.
    nfe
        Network evaluations per slice (0 for classical methods).
    std
        ``(slices, H, W)`` float32 per-pixel posterior standard deviation, for sampling methods.
    samples
        ``(slices, n, H, W)`` complex64 posterior samples, when kept.
    info
        Method-specific settings and measurements (JSON-serialisable).
    """

    image: torch.Tensor
    method: str
    seconds: float
    nfe: int = 0
    std: torch.Tensor | None = None
    samples: torch.Tensor | None = None
    info: dict = field(default_factory=dict)


def coil_maps(case: KSpaceCase) -> torch.Tensor:
    """Coil sensitivities ``(slices, coils, H, W)``: the file's own, unit maps for one coil, else ESPIRiT.

    ESPIRiT uses the largest fully sampled centre box of the mask as calibration data, a kernel of 6 (smaller
    when the box is narrow, as for 1D masks with few centre lines: at least 3 rows of kernel positions are kept)
    and crops the maps where the eigenvalue is below 0.8 (BART's default; sigpy's 0.95 cuts into the object
    for small calibration regions).
    """
    if case.maps is not None:
        return case.maps
    if case.n_coils == 1:
        return torch.ones_like(case.kspace)
    mask = case.mask if case.mask.dim() == 2 else case.mask[0]
    region = find_calibration_region(mask > 0)
    calib = min(r.stop - r.start for r in region)
    if calib < 6:
        raise MrdpmError(f"the fully sampled centre of the mask is only {calib} lines wide, too small to estimate "
                         f"coil maps by ESPIRiT; supply maps in the file", path=case.path)
    return espirit_maps(case.kspace, calib_size=None, mask=mask, kernel_size=min(6, calib - 3), crop=0.8)


def slice_mask(case: KSpaceCase, s: int) -> torch.Tensor:
    """The ``(H, W)`` sampling mask of slice ``s``."""
    return case.mask if case.mask.dim() == 2 else case.mask[s]


def reconstruct(case: KSpaceCase, method: str, *, maps: torch.Tensor | None = None, progress: bool = False,
                method_fn: Callable | None = None, **options) -> ReconResult:
    """Reconstruct every slice of ``case`` with a classical method.

    Parameters
    ----------
    case
        The acquisition (``kspace`` ``(slices, coils, H, W)``, ``mask``).
    method
        A key of :data:`mrdpm.eval.classical.METHODS` (``zf``, ``sense``, ``cs-tv``, ``cs-wavelet``).
    maps
        Coil maps ``(slices, coils, H, W)``; estimated by :func:`coil_maps` when None.
    progress
        Show a progress bar over slices.
    method_fn
        Override the registry lookup (used by sampling methods, which pass their own per-slice function).
    **options
        Passed to the method (e.g. ``lam``, ``max_iter``).

    Returns
    -------
    ReconResult
    """
    fn = method_fn or CLASSICAL_METHODS.get(method)
    if fn is None:
        raise ValueError(f"unknown method {method!r}; choose from {sorted(CLASSICAL_METHODS)}")
    maps = coil_maps(case) if maps is None else maps
    start = time.perf_counter()
    images = [fn(case.kspace[s], slice_mask(case, s), maps[s], **options)
              for s in tqdm(range(case.n_slices), desc=method, disable=not progress, leave=False)]
    return ReconResult(image=torch.stack(images).to(torch.complex64), method=method,
                       seconds=time.perf_counter() - start, info={"options": options})


def _affine(case: KSpaceCase) -> np.ndarray:
    return case.affine if case.affine is not None else np.eye(4)


def write_outputs(outdir: str | Path, case: KSpaceCase, result: ReconResult, *, keep_samples: bool = False,
                  ) -> dict:
    """Write ``recon.nii.gz``, ``recon.npy``, ``figure.png``, ``metrics.json`` (with a target), ``std.nii.gz``.

    Returns
    -------
    dict
        Summary: method, seconds, NFE, achieved acceleration, the metrics when a target exists, written paths.
    """
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    affine = _affine(case)
    write_nifti(out / "recon.nii.gz", Volume(result.image.abs().float(), affine))
    np.save(out / "recon.npy", result.image.numpy())
    written = ["recon.nii.gz", "recon.npy"]
    if result.std is not None:
        write_nifti(out / "std.nii.gz", Volume(result.std.float(), affine))
        written.append("std.nii.gz")
    if keep_samples and result.samples is not None:
        np.save(out / "samples.npy", result.samples.numpy())
        written.append("samples.npy")
    summary = {"method": result.method, "seconds": round(result.seconds, 3), "nfe_per_slice": result.nfe,
               "slices": case.n_slices, "coils": case.n_coils, "acceleration": round(case.acceleration, 3),
               **result.info}
    if case.target is not None:
        summary["metrics"] = evaluate(case.target.abs(), result.image.abs())
        (out / "metrics.json").write_text(json.dumps(summary, indent=2))
        written.append("metrics.json")
    _figure(out / "figure.png", case, result)
    written.append("figure.png")
    summary["written"] = written
    return summary


def _figure(path: Path, case: KSpaceCase, result: ReconResult) -> None:
    s = case.n_slices // 2
    maps = case.maps[s] if case.maps is not None else None
    zf = CLASSICAL_METHODS["zf"](case.kspace[s], slice_mask(case, s), maps)
    panels = {"zero-filled": zf, result.method: result.image[s]}
    titles = {}
    reference = None
    if case.target is not None:
        reference = case.target[s]
        panels["target"] = reference
        for name in ("zero-filled", result.method):
            titles[name] = f"PSNR {evaluate(reference.abs()[None], panels[name].abs()[None])['psnr']:.2f} dB"
    if result.std is not None:
        panels["std"] = result.std[s]
    save_panels(path, panels, reference=reference, error_of=("zero-filled", result.method), titles=titles)
