"""L1-wavelet compressed sensing: mrdpm's FISTA (torch) against sigpy.mri.app.L1WaveletRecon, on 2 threads.

Both solve ``min_x 1/2 ||M F S x - y||^2 + lam ||W x||_1`` (db4, PyWavelets' default number of levels) with
accelerated proximal gradient from ``x = 0`` for the same number of iterations, on the same normalised k-space,
maps, mask and ``lam`` (mrdpm's default). Wavelet boundaries differ: mrdpm's transform is periodic and
orthonormal, sigpy's zero-extended. sigpy estimates its step by 30 power iterations (its default), mrdpm by 10
(capped by a closed-form bound); sigpy is also timed with 10 (``max_power_iter=10``) for a like-for-like count.
Times include everything from k-space to image (step estimation included), median of repeats run interleaved.

Cases:

- ``ixi256-poisson8``: an axial IXI T1 slice (the last subject in ixi-t1/t1, axial index 75; not used for
  training in this project), zero-padded to 120x120, bicubic-upsampled to 256x256, smooth random phase,
  16 simulated coils, complex Gaussian noise of 1% of the image's 99th percentile, variable-density
  Poisson disc x8. Reference: the noise-free image's magnitude.
- ``real96-gaussian1d4``: the measured 16-coil 96x96 k-space, 1D Gaussian x4 (8% ACS), ESPIRiT maps from the
  fully sampled data. Reference: the SENSE combination of the fully sampled data with those maps.

Run: ``python benchmarks/cs_vs_sigpy.py [--iterations 30] [--repeats 3]`` (from the repository root; needs
sigpy and ../shared/data). Writes benchmarks/results/cs_vs_sigpy.{json,md}.
"""

from __future__ import annotations

import os

THREADS = 2
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = str(THREADS)
# Waiting OpenMP threads sleep instead of spinning: on a shared machine with more runnable threads than cores,
# spinning makes torch's 2-thread kernels 5-10x slower (measured here at load average 3 on 2 cores).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from mrdpm.eval.classical import DEFAULT_LAM, cs_wavelet, normalisation_scale, zero_filled  # noqa: E402
from mrdpm.eval.metrics import psnr, ssim  # noqa: E402
from mrdpm.physics.coils import simulate_coil_maps  # noqa: E402
from mrdpm.physics.espirit import espirit_maps  # noqa: E402
from mrdpm.physics.masks import make_mask  # noqa: E402
from mrdpm.physics.noise import complex_gaussian  # noqa: E402
from mrdpm.physics.operators import sense_operator  # noqa: E402
from mrdpm.physics.synthetic import smooth_phase  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MRDPM_SHARED_DATA", ROOT.parent / "shared" / "data"))
RESULTS = ROOT / "benchmarks" / "results"


def ixi_case() -> dict:
    path = sorted((DATA / "ixi-t1" / "t1").glob("*.nii.gz"))[-1]
    img = torch.from_numpy(nib.load(path).get_fdata()[:, 75, :].astype(np.float32))
    img = F.pad(img, (15, 15))[None, None]  # 120 x 90 -> 120 x 120 (square field of view)
    img = F.interpolate(img, size=(256, 256), mode="bicubic", align_corners=False)[0, 0].clamp_min(0)
    x = img / img.max() * smooth_phase((256, 256), generator=torch.Generator().manual_seed(0))
    maps = simulate_coil_maps(16, (256, 256))
    mask = make_mask("poisson2d", (256, 256), 8.0, seed=0).mask
    sigma = 0.01 * float(torch.quantile(x.abs().flatten(), 0.99))
    noise = complex_gaussian((16, 256, 256), sigma, generator=torch.Generator().manual_seed(1))
    kspace = sense_operator(maps, mask)(x) + noise * mask
    return {"name": "ixi256-poisson8", "source": f"{path.name}, axial index 75", "kspace": kspace,
            "maps": maps, "mask": mask, "reference": x.abs(), "mask_kind": "poisson2d", "acceleration": 8.0}


def real_case() -> dict:
    full = torch.from_numpy(np.load(DATA / "kspace" / "brain_16coil_96x96_full.npy")[:, 0])
    maps = espirit_maps(full)
    mask = make_mask("gaussian1d", (96, 96), 4.0, seed=0).mask
    return {"name": "real96-gaussian1d4", "source": "kspace/brain_16coil_96x96_full.npy", "kspace": full * mask,
            "maps": maps, "mask": mask, "reference": zero_filled(full, maps).abs(), "mask_kind": "gaussian1d",
            "acceleration": 4.0}


def sigpy_recon(case: dict, lam: float, iterations: int, power_iterations: int) -> torch.Tensor:
    import sigpy.mri

    # the same normalisation as mrdpm, so that lam means the same problem
    scale = normalisation_scale(sense_operator(case["maps"], case["mask"]).adjoint(case["kspace"]))
    y = (case["kspace"] / scale).numpy()
    app = sigpy.mri.app.L1WaveletRecon(y, case["maps"].numpy(), lam, max_iter=iterations,
                                       max_power_iter=power_iterations, show_pbar=False)
    return torch.from_numpy(app.run()) * scale


def ours_recon(case: dict, lam: float, iterations: int) -> torch.Tensor:
    return cs_wavelet(case["kspace"], case["maps"], case["mask"], lam=lam, max_iter=iterations)


def timed_runs(methods: dict[str, Callable[[], torch.Tensor]], repeats: int) -> dict[str, dict]:
    """Run every method ``repeats`` times, interleaved, after one untimed warm-up each."""
    results = {name: {"seconds": [], "cpu_seconds": []} for name in methods}
    for name, fn in methods.items():
        results[name]["image"] = fn()
    for _ in range(repeats):
        for name, fn in methods.items():
            start, cpu_start = time.perf_counter(), time.process_time()
            fn()
            results[name]["seconds"].append(time.perf_counter() - start)
            results[name]["cpu_seconds"].append(time.process_time() - cpu_start)
    return results


def run_case(case: dict, lam: float, iterations: int, repeats: int) -> dict:
    methods = {
        "mrdpm": lambda: ours_recon(case, lam, iterations),
        "sigpy": lambda: sigpy_recon(case, lam, iterations, 30),
        "sigpy_10_power_iter": lambda: sigpy_recon(case, lam, iterations, 10),
    }
    runs = timed_runs(methods, repeats)
    out = {key: case[key] for key in ("name", "source", "mask_kind", "acceleration")}
    out.update(shape=list(case["kspace"].shape), lam=lam, iterations=iterations,
               achieved_acceleration=float(case["mask"].numel() / case["mask"].sum()))
    zf = zero_filled(case["kspace"], case["maps"])
    out["zero_filled_psnr"] = psnr(case["reference"], zf)
    for name, run in runs.items():
        out[name] = {"seconds_median": float(np.median(run["seconds"])), "seconds": run["seconds"],
                     "cpu_seconds_median": float(np.median(run["cpu_seconds"])),
                     "psnr": psnr(case["reference"], run["image"]), "ssim": ssim(case["reference"], run["image"])}
    out["speedup_vs_sigpy"] = out["sigpy"]["seconds_median"] / out["mrdpm"]["seconds_median"]
    out["speedup_vs_sigpy_10_power_iter"] = (out["sigpy_10_power_iter"]["seconds_median"]
                                             / out["mrdpm"]["seconds_median"])
    out["psnr_difference_db"] = out["mrdpm"]["psnr"] - out["sigpy"]["psnr"]
    return out


def write_markdown(report: dict, path: Path) -> None:
    lines = [f"Command: `{report['command']}`", "",
             f"L1-wavelet CS (db4, lam = {report['lam']} in normalised units, {report['iterations']} iterations), "
             f"{report['threads']} threads (OMP_WAIT_POLICY={report['omp_wait_policy']}), torch {report['torch']}, "
             f"sigpy {report['sigpy']}, {report['cpu_count']} CPUs shared with other jobs: load average before/after "
             f"{report['load_before']:.2f} / {report['load_after']:.2f}. Median of {report['repeats']} interleaved "
             "repeats; CPU seconds are summed over threads.", "",
             "| case | method | wall seconds | CPU seconds | PSNR dB | SSIM |",
             "| --- | --- | --- | --- | --- | --- |"]
    for case in report["cases"]:
        lines.append(f"| {case['name']} | zero-filled | | | {case['zero_filled_psnr']:.2f} | |")
        for name in ("mrdpm", "sigpy", "sigpy_10_power_iter"):
            r = case[name]
            lines.append(f"| {case['name']} | {name} | {r['seconds_median']:.3f} | {r['cpu_seconds_median']:.3f} | "
                         f"{r['psnr']:.2f} | {r['ssim']:.4f} |")
    lines += ["", "| case | speed-up vs sigpy | vs sigpy (10 power iterations) | PSNR mrdpm - sigpy (dB) |",
              "| --- | --- | --- | --- |"]
    lines += [f"| {c['name']} | {c['speedup_vs_sigpy']:.2f}x | {c['speedup_vs_sigpy_10_power_iter']:.2f}x | "
              f"{c['psnr_difference_db']:+.2f} |" for c in report["cases"]]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    import sigpy

    lam = DEFAULT_LAM["cs-wavelet"]
    load_before = os.getloadavg()[0]
    cases = [run_case(c, lam, args.iterations, args.repeats) for c in (ixi_case(), real_case())]
    report = {"command": "python benchmarks/cs_vs_sigpy.py " + " ".join(sys.argv[1:]), "threads": THREADS,
              "omp_wait_policy": os.environ["OMP_WAIT_POLICY"], "iterations": args.iterations,
              "repeats": args.repeats, "lam": lam, "torch": torch.__version__,
              "sigpy": sigpy.__version__, "python": platform.python_version(), "cpu_count": os.cpu_count(),
              "load_before": load_before, "load_after": os.getloadavg()[0], "cases": cases}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cs_vs_sigpy.json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(report, RESULTS / "cs_vs_sigpy.md")
    print((RESULTS / "cs_vs_sigpy.md").read_text())


if __name__ == "__main__":
    main()
