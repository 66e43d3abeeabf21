"""ESPIRiT: mrdpm.physics.espirit versus sigpy.mri.app.EspiritCalib, side by side in one process.

Cases: (1) a 16-coil 320 x 320 slice simulated from an IXI T1 slice (subject IXI132-HH-1415, axial slice 70,
2 mm, bicubic-upsampled to 320 x 240 and zero-padded to 320 x 320) times ``simulate_coil_maps`` plus complex
Gaussian k-space noise (sigma 2e-3, image maximum 1); (2) the real fully sampled 16-coil 96 x 96 brain slice.
Both methods run at sigpy's defaults (calibration 24, kernel 6, threshold 0.02, crop 0.95; sigpy 100 power
iterations, ours its defaults), alternating, with torch on ``--threads`` threads (numpy, under sigpy, uses its
default, at most the machine's cores); times are medians of ``--repeats``.

Accuracy: per-pixel ``|sum_c conj(S_a) S_b| / (||S_a|| ||S_b||)`` (``map_correlation``, blind to ESPIRiT's
per-pixel phase), mean and minimum over object pixels (image > 5% of max for the simulation, coil-RSS
> 10% of max for the real data) that both maps keep, the fraction of object pixels the crop keeps, and the
fraction of all pixels where the two crop masks disagree.

Run from the repository root: ``python benchmarks/espirit_vs_sigpy.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import sigpy
import sigpy.mri.app as mri_app
import torch
import torch.nn.functional as F

from mrdpm.physics.coils import map_correlation, rss, simulate_coil_maps
from mrdpm.physics.espirit import espirit_maps
from mrdpm.physics.fft import fftnc, ifftnc

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MRDPM_SHARED_DATA", ROOT.parent / "shared" / "data"))
PARAMS = {"calib_size": 24, "kernel_size": 6, "threshold": 0.02, "crop": 0.95}


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return f"{names[0] if names else 'unknown CPU'} ({os.cpu_count()} cores)"


def simulated_case(n: int = 320, n_coils: int = 16) -> dict:
    volume = np.asarray(nib.load(SHARED / "ixi-t1/t1/IXI132-HH-1415_T1.nii.gz").dataobj, dtype=np.float32)
    image = torch.from_numpy(volume[:, 70, :].copy())[None, None]  # (120, 90) axial at 2 mm
    width = round(image.shape[-1] * n / image.shape[-2])
    image = F.interpolate(image, size=(n, width), mode="bicubic", align_corners=False)[0, 0].clamp_min(0)
    image = F.pad(image, ((n - width) // 2, n - width - (n - width) // 2))
    image = image / image.max()
    maps = simulate_coil_maps(n_coils, (n, n))
    noise = torch.randn((n_coils, n, n), dtype=torch.complex64, generator=torch.Generator().manual_seed(0))
    return {"kspace": fftnc(maps * image) + 2e-3 * noise, "truth": maps, "object": image > 0.05}


def real_case() -> dict:
    kspace = torch.from_numpy(np.load(SHARED / "kspace/brain_16coil_96x96_full.npy"))[:, 0]
    kspace = kspace / kspace.abs().max()
    image = rss(ifftnc(kspace))
    return {"kspace": kspace, "truth": None, "object": image > 0.1 * image.max()}


def run_sigpy(kspace: torch.Tensor) -> torch.Tensor:
    calib = mri_app.EspiritCalib(kspace.numpy(), calib_width=PARAMS["calib_size"], thresh=PARAMS["threshold"],
                                 kernel_width=PARAMS["kernel_size"], crop=PARAMS["crop"], show_pbar=False)
    return torch.from_numpy(calib.run())


def run_ours(kspace: torch.Tensor) -> torch.Tensor:
    return espirit_maps(kspace, **PARAMS)


def agreement(reference: torch.Tensor, maps: torch.Tensor, obj: torch.Tensor) -> dict:
    """Correlation over object pixels kept (non-zero) in both, and how the crop masks compare."""
    kept_ref, kept = rss(reference) > 0, rss(maps) > 0
    corr = map_correlation(reference, maps)[obj & kept_ref & kept]
    return {"corr_mean": round(corr.mean().item(), 6), "corr_min": round(corr.min().item(), 6),
            "object_kept": round(kept[obj].float().mean().item(), 6),
            "mask_disagreement": round((kept_ref != kept).float().mean().item(), 6)}


def benchmark(name: str, case: dict, repeats: int) -> dict:
    times = {"sigpy": [], "mrdpm": []}
    outputs = {}
    for _ in range(repeats):
        for method, fn in (("sigpy", run_sigpy), ("mrdpm", run_ours)):
            start = time.perf_counter()
            outputs[method] = fn(case["kspace"])
            times[method].append(time.perf_counter() - start)
    result = {"case": name, "shape": list(case["kspace"].shape),
              "seconds": {m: round(statistics.median(t), 3) for m, t in times.items()},
              "all_seconds": {m: [round(x, 3) for x in t] for m, t in times.items()},
              "mrdpm_vs_sigpy": agreement(outputs["sigpy"], outputs["mrdpm"], case["object"])}
    result["speedup"] = round(result["seconds"]["sigpy"] / result["seconds"]["mrdpm"], 1)
    if case["truth"] is not None:
        for method, maps in outputs.items():
            result[f"{method}_vs_truth"] = agreement(case["truth"], maps, case["object"])
    return result


def markdown(command: str, meta: dict, results: list[dict]) -> str:
    lines = [f"`{command}`", "",
             f"torch on {meta['threads']} threads, {meta['cpu']}, torch {meta['torch']}, sigpy {meta['sigpy']}, "
             f"OMP_WAIT_POLICY={meta['omp_wait_policy']}, load average (1, 5, 15 min) before "
             f"{meta['loadavg_before']}, after {meta['loadavg_after']}. Correlation: mean (min) over object pixels "
             "kept by both; object kept: fraction of object pixels the crop keeps.", "",
             "| case | method | seconds (median) | speed-up | corr. to truth | object kept | corr. to sigpy "
             "| mask disagreement |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        other = r["mrdpm_vs_sigpy"]
        for method in ("sigpy", "mrdpm"):
            truth = r.get(f"{method}_vs_truth")
            truth_text = f"{truth['corr_mean']:.6f} ({truth['corr_min']:.4f})" if truth else "n/a"
            kept = truth["object_kept"] if truth else (other["object_kept"] if method == "mrdpm" else "n/a")
            ours = method == "mrdpm"
            to_sigpy = f"{other['corr_mean']:.6f} ({other['corr_min']:.4f})" if ours else "-"
            mask = f"{other['mask_disagreement']:.4%}" if ours else "-"
            speed = r["speedup"] if ours else 1.0
            lines.append(f"| {r['case']} {tuple(r['shape'])} | {method} | {r['seconds'][method]} | {speed} | "
                         f"{truth_text} | {kept} | {to_sigpy} | {mask} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    meta = {"threads": args.threads, "cpu": cpu_name(),
            "torch": torch.__version__, "sigpy": sigpy.__version__,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
            "loadavg_before": [round(x, 2) for x in os.getloadavg()], "params": PARAMS}
    results = [benchmark("simulated IXI", simulated_case(), args.repeats),
               benchmark("real 16-coil", real_case(), args.repeats)]
    meta["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    env = f"OMP_WAIT_POLICY={meta['omp_wait_policy']} " if "OMP_WAIT_POLICY" in os.environ else ""
    command = env + " ".join(["python", "benchmarks/espirit_vs_sigpy.py", *sys.argv[1:]])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "espirit_vs_sigpy.json").write_text(json.dumps({"command": command, **meta, "results": results},
                                                               indent=2) + "\n")
    table = markdown(command, meta, results)
    (args.out / "espirit_vs_sigpy.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
