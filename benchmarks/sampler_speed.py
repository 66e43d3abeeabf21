"""Seconds per slice of every posterior sampler with the "small" denoiser, batch of 8 posterior samples.

Speed does not depend on the weights, so an untrained "small" prior (3.7M parameters, complex input) is timed on
an 8-coil SENSE problem (simulated maps, 1D Gaussian x4 mask) at 128x128 and 256x256, through the same
``mrdpm.tasks.dpm.reconstruct_slice`` that ``mrdpm recon --method dpm`` uses (so CG-SENSE scaling, the noise
estimate and the data-consistency work are included).

Run (from the repository root):

    python benchmarks/sampler_speed.py --threads 2

Writes ``benchmarks/results/sampler_speed.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from mrdpm.diffusion.guidance import bind
from mrdpm.models.precond import Denoiser, DenoiserConfig
from mrdpm.physics.coils import simulate_coil_maps
from mrdpm.physics.fft import fftnc
from mrdpm.physics.masks import make_mask
from mrdpm.tasks.dpm import SAMPLERS, DpmSettings, reconstruct_slice

RESULTS = Path(__file__).resolve().parent / "results"


def problem(size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """8-coil k-space of a smooth disc phantom, its mask and its maps."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    image = ((yy**2 + xx**2) < 0.7).to(torch.complex64) * (1 + 0.3 * yy)
    maps = simulate_coil_maps(8, (size, size))
    mask = make_mask("gaussian1d", (size, size), 4.0, seed=0).mask
    return fftnc(image * maps) * mask, mask, maps


def main(argv: list[str] | None = None) -> int:
    """Time every sampler at every size; write JSON and markdown."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--sizes", default="128,256", help="matrix sizes (default 128,256)")
    parser.add_argument("--nfe", type=int, default=20, help="network evaluations per sample (default 20)")
    parser.add_argument("--samples", type=int, default=8, help="posterior samples per slice (default 8)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    denoiser = Denoiser(DenoiserConfig(preset="small", class_names=("T1",))).eval().requires_grad_(False)
    prior = bind(denoiser, class_labels=0)
    load_before = os.getloadavg()
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        kspace, mask, maps = problem(size)
        for name in SAMPLERS:
            settings = DpmSettings(sampler=name, nfe=args.nfe, samples=args.samples)
            start = time.perf_counter()
            result, _ = reconstruct_slice(prior, kspace, mask, maps, settings, noise_std=1e-3)
            seconds = time.perf_counter() - start
            rows.append({"size": size, "sampler": name, "nfe": result.nfe, "n_backward": result.n_backward,
                         "samples": args.samples, "seconds_per_slice": round(seconds, 2),
                         "seconds_per_nfe": round(seconds / max(result.nfe, 1), 3)})
            print(rows[-1], flush=True)
    meta = {"command": "python benchmarks/sampler_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "threads": args.threads, "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "load_average_before": load_before, "load_average_after": os.getloadavg()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sampler_speed.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [f"`{meta['command']}`", "",
             f"Untrained \"small\" prior (3.7M parameters), 8-coil SENSE, 1D Gaussian x4, batch of {args.samples} "
             f"posterior samples; torch {meta['torch']}, {args.threads} threads on {meta['cpus']} CPUs; load average "
             f"before {load_before[0]:.1f}, after {meta['load_average_after'][0]:.1f} (other jobs shared the CPU).",
             "", "| matrix | sampler | NFE per sample | backward passes | seconds per slice | seconds per NFE |",
             "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['size']}x{r['size']} | {r['sampler']} | {r['nfe']} | {r['n_backward']} | "
              f"{r['seconds_per_slice']} | {r['seconds_per_nfe']} |" for r in rows]
    (RESULTS / "sampler_speed.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
