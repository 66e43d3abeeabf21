"""``mrdpm demo``: the main job on an embedded example, with no user data and no download.

A real head slice shipped with matplotlib (:func:`mrdpm.data.examples.example_brain_slice`) is turned into an
8-coil acquisition with noise (SNR 30 dB) and undersampled with a 1D Gaussian x4 and a 2D Poisson-disc x8 mask;
every available method reconstructs it; NIfTI files, figures and metrics go to the output folder and a table is
printed; ``<case>.png`` shows every method side by side with its error and, for ``dpm``, the uncertainty.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from mrdpm.data.examples import example_brain_slice
from mrdpm.data.simulate import SimulationSettings, simulate_case
from mrdpm.eval.figures import save_panels
from mrdpm.models.checkpoint import list_models
from mrdpm.tasks.accel import ReconResult, reconstruct, write_outputs
from mrdpm.tasks.dpm import DpmSettings, reconstruct_dpm

__all__ = ["DEMO_CASES", "DemoCase", "run_demo"]


@dataclass(frozen=True)
class DemoCase:
    """One undersampling scenario of the demo."""

    name: str
    mask: str
    acceleration: float


DEMO_CASES = (DemoCase("gaussian1d-x4", "gaussian1d", 4.0), DemoCase("poisson2d-x8", "poisson2d", 8.0))
CLASSICAL = ("zf", "cs-tv", "cs-wavelet")
DEMO_DPM = DpmSettings(model="ixi-t1-small", sampler="dds", nfe=20, samples=8)


def default_methods() -> tuple[str, ...]:
    """The classical methods, plus ``dpm`` when the shipped brain prior is installed."""
    shipped = {m.name for m in list_models()}
    return (*CLASSICAL, "dpm") if DEMO_DPM.model in shipped else CLASSICAL


def _reconstruct(case, method: str, seed: int, progress: bool) -> ReconResult:
    if method == "dpm":
        return reconstruct_dpm(case, replace(DEMO_DPM, seed=seed), progress=progress)
    return reconstruct(case, method, progress=progress)


def run_demo(outdir: str | Path, *, methods: tuple[str, ...] | None = None, seed: int = 0, size: int = 128,
             progress: bool = True) -> list[dict]:
    """Run every demo case with every method; write outputs under ``outdir/<case>/<method>/``.

    ``methods`` defaults to :func:`default_methods`; ``dpm`` draws 8 posterior samples with 20 NFE each (DDS).

    Returns
    -------
    list[dict]
        One row per (case, method): PSNR, SSIM, NMSE, seconds, NFE.
    """
    methods = default_methods() if methods is None else methods
    image = example_brain_slice(size)[None]
    rows = []
    for demo in DEMO_CASES:
        settings = SimulationSettings(coils=8, mask=demo.mask, acceleration=demo.acceleration, snr_db=30.0,
                                      seed=seed)
        case = simulate_case(image, settings)
        panels, titles = {}, {}
        for method in methods:
            result = _reconstruct(case, method, seed, progress)
            summary = write_outputs(Path(outdir) / demo.name / method, case, result)
            rows.append({"case": demo.name, "method": method, **summary["metrics"],
                         "seconds": summary["seconds"], "nfe": summary["nfe_per_slice"],
                         "acceleration": summary["acceleration"]})
            panels[method], titles[method] = result.image[0], f"PSNR {summary['metrics']['psnr']:.2f} dB"
            if result.std is not None:
                panels[f"{method} std"] = result.std[0]
        save_panels(Path(outdir) / f"{demo.name}.png", {**panels, "target": case.target[0]},
                    reference=case.target[0], error_of=tuple(methods), titles=titles)
    (Path(outdir) / "metrics.json").write_text(json.dumps(rows, indent=2))
    return rows


def format_table(rows: list[dict]) -> str:
    """A markdown table of the demo's rows."""
    lines = ["| case | method | PSNR (dB) | SSIM | NMSE | NFE | seconds |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['case']} (R={r['acceleration']:.2f}) | {r['method']} | {r['psnr']:.2f} | {r['ssim']:.4f} | "
              f"{r['nmse']:.5f} | {r['nfe']} | {r['seconds']:.1f} |" for r in rows]
    return "\n".join(lines)
