"""Tune the DDS sampler's settings (eta, lam, CG iterations, sigma_max) on a validation set apart from the test set.

The validation slices come from ``flair-small``'s T1 volumes (another scanner and population than IXI), so the
held-out IXI subjects of ``benchmarks/accel.py`` stay untouched by tuning. Each setting is varied alone around the
defaults of :data:`mrdpm.tasks.dpm.SAMPLERS` (one-at-a-time), on 8-coil SNR 30 dB simulations with the 1D
Gaussian x8 and 2D Poisson x8 masks, true coil maps; the score is the PSNR of the posterior mean.

    python benchmarks/dds_tuning.py --subjects Subj10,Subj11 --nfe 20 --samples 4
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from accel import ROOT, MaskSpec, choose_slices
from mrdpm.data.normalise import percentile_factor
from mrdpm.data.simulate import SimulationSettings, simulate_case
from mrdpm.eval.metrics import evaluate
from mrdpm.io.read import read_image
from mrdpm.tasks.dpm import SAMPLERS, DpmSettings, reconstruct_dpm

GRID = {"eta": [0.5, 1.0], "lam": [0.3, 3.0], "cg_iters": [2, 10], "sigma_max": [5.0, 20.0]}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "data",
                   help="folder with flair-small/t1/<subject>_T1.nii.gz")
    p.add_argument("--subjects", default="Subj10,Subj11", help="comma-separated flair-small subjects")
    p.add_argument("--masks", default="gaussian1d:8,poisson2d:8", help="kind:acceleration, comma-separated")
    p.add_argument("--model", default="ixi-t1-small", help="shipped prior name or checkpoint path")
    p.add_argument("--nfe", type=int, default=20, help="network evaluations per sample")
    p.add_argument("--samples", type=int, default=4, help="posterior samples per slice")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--base", default="",
                   help="settings applied to every variant, e.g. 'eta=1.0,lam=0.3,cg_iters=10,sigma_max=20'")
    p.add_argument("--no-grid", action="store_true", help="score the base settings only")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "dds_tuning.json")
    return p.parse_args(argv)


def validation_cases(args: argparse.Namespace) -> list:
    """One axial slice per subject at the ventricles' level, simulated with every mask."""
    cases = []
    for j, subject in enumerate(args.subjects.split(",")):
        volume = read_image(args.data_root / "flair-small" / "t1" / f"{subject}_T1.nii.gz")
        data = volume.data.float()
        index = choose_slices(data, volume.voxel_size_mm[0], 1)[0]
        image = data[index] / float(percentile_factor(data, 99.0))
        for text in args.masks.split(","):
            mask = MaskSpec.parse(text)
            settings = SimulationSettings(mask=mask.kind, acceleration=mask.acceleration,
                                          center_fraction=mask.center_fraction, seed=j)
            cases.append((f"{subject}/axial-{index:03d}", mask.label, simulate_case(image[None], settings)))
    return cases


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cases = validation_cases(args)
    base = {k: float(v) if k != "cg_iters" else int(v)
            for k, v in (item.split("=") for item in args.base.split(",") if item)}
    variants = [("base", base)]
    if not args.no_grid:
        variants += [(f"{k}={v}", {**base, k: v}) for k, values in GRID.items() for v in values]
    rows = []
    for name, values in variants:
        options = {k: v for k, v in values.items() if k != "sigma_max"}
        settings = DpmSettings(model=args.model, sampler="dds", nfe=args.nfe, samples=args.samples,
                               sigma_max=values.get("sigma_max", DpmSettings.sigma_max), sampler_options=options)
        start, by_mask = time.perf_counter(), {}
        for _, mask, case in cases:
            result = reconstruct_dpm(case, settings, maps=case.maps)
            by_mask.setdefault(mask, []).append(evaluate(case.target[0].abs(), result.image[0].abs())["psnr"])
        row = {"variant": name, **{m: sum(v) / len(v) for m, v in by_mask.items()},
               "seconds": round(time.perf_counter() - start, 1)}
        row["mean"] = sum(row[m] for m in by_mask) / len(by_mask)
        rows.append(row)
        print(json.dumps(row), flush=True)
    report = {"benchmark": "dds_tuning", "command": " ".join(["python", *sys.argv]),
              "defaults": {**SAMPLERS["dds"].options, "sigma_max": DpmSettings.sigma_max}, "base": base,
              "slices": sorted({c[0] for c in cases}), "nfe": args.nfe, "samples": args.samples,
              "model": args.model, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return report


if __name__ == "__main__":
    main()
