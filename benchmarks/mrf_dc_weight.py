"""Choose the MRF data-consistency weight on validation slices: each network's output once, then every weight.

``mrdpm mrf recon --dc-weight w`` refines the U-Net's and every diffusion sample's reference coefficients by CG on
``||W^(1/2) (A_ref c - y)||^2 / alpha + w ||c - c_net||^2`` (:func:`mrdpm.tasks.mrf.data_consistent`). This script
picks ``w`` without touching the test slices of ``benchmarks/mrf.py`` (positions 5:10 of vol08 and vol09): by
default it uses position 12 of both held-out volumes, simulated exactly as there (the pairs' manifest). Each
network runs once per slice (the diffusion with ``benchmarks/mrf.py``'s sampling options); every weight (0 = the
network's output as it is) is then applied to that output and matched.

Outputs (``--out``, ``--name``): ``<name>.json`` (settings, command, machine, a record per slice, method and weight)
and ``<name>.md`` (MAPE of T1 and T2 per method and weight, mean over the slices).

Run (from the repository root):

    python benchmarks/mrf_dc_weight.py --model runs/mrf-small/model.json --unet runs/mrf-small-unet/unet.json
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # sleeping, not spinning, OpenMP threads on a shared CPU

import argparse
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from common import csv_list, machine_info, run_script, write_results
from mrdpm.data.mrf_pairs import simulate_case
from mrdpm.data.mrf_qmaps import brain_mask
from mrdpm.physics.mrf_acquisition import gridding_reconstruction
from mrdpm.tasks.mrf import METHODS, MrfSetup, ReconOptions, data_consistent, map_metrics, quantitative_maps
from mrf import ROOT, _slice_text, _slices, add_data_arguments, load_study, slice_stacks

NETWORKS = ("unet", "diffusion")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_arguments(p)
    p.add_argument("--slices", type=_slices, default=slice(12, 13),
                   help="validation slice positions per volume, i or a:b (default 12; the test uses 5:10)")
    p.add_argument("--methods", type=csv_list, default=list(NETWORKS), help="unet and/or diffusion")
    p.add_argument("--model", default=None, help="diffusion model card")
    p.add_argument("--unet", default=None, help="U-Net card")
    p.add_argument("--weights", type=lambda t: [float(w) for w in csv_list(t)], default=[0, 0.003, 0.01, 0.03, 0.1,
                                                                                           0.3],
                   help="data-consistency weights, 0 = none (default 0,0.003,0.01,0.03,0.1,0.3)")
    p.add_argument("--dc-iterations", type=int, default=30, help="CG iterations (default 30)")
    p.add_argument("--steps", type=int, default=50, help="diffusion: respaced steps (default 50)")
    p.add_argument("--samples", type=int, default=10, help="diffusion: samples (default 10)")
    p.add_argument("--patch", type=int, default=0, help="diffusion: window size, 0 = whole region (default 0)")
    p.add_argument("--stride", type=int, default=8, help="diffusion: window step (default 8)")
    p.add_argument("--seed", type=int, default=0, help="diffusion seed (default 0)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="results folder")
    p.add_argument("--name", default="mrf_dc_weight", help="results file stem (default mrf_dc_weight)")
    args = p.parse_args(argv)
    if not set(args.methods) <= set(NETWORKS) or any(w < 0 for w in args.weights):
        p.error(f"--methods must be among {list(NETWORKS)} and --weights >= 0")
    return args


def write_markdown(report: dict, path: Path) -> None:
    records = report["records"]
    lines = [f"Command: `{report['command']}`", "",
             f"Validation slices: positions {report['settings']['slices']} of {report['settings']['volumes']} "
             f"({len({(r['volume'], r['slice']) for r in records})} slices, not the test slices of mrf.md); "
             f"{report['settings']['dc_iterations']} CG iterations; diffusion as in mrf.md "
             f"({report['settings']['options']['steps']} steps, {report['settings']['options']['samples']} "
             f"samples, patch {report['settings']['options']['patch']}). Mean MAPE over the slices inside the "
             "brain mask (as mrf.md), %.", "",
             f"- {report['machine']['cpu']}, {report['machine']['torch_threads']} torch threads, "
             f"{report['started']}", "", "| method | weight | MAPE T1 % | MAPE T2 % |", "| --- | --- | --- | --- |"]
    for method in NETWORKS:
        for weight in report["settings"]["weights"]:
            group = [r for r in records if r["method"] == method and r["weight"] == weight]
            if group:
                lines.append(f"| {method} | {weight:g} | {np.mean([r['mape_t1'] for r in group]):.2f} | "
                             f"{np.mean([r['mape_t2'] for r in group]):.2f} |")
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    study = load_study(args)
    options = ReconOptions(steps=args.steps, samples=args.samples, patch=args.patch or None, stride=args.stride,
                           seed=args.seed, percentile=study.percentile)
    report = {"command": " ".join(shlex.quote(a) for a in [sys.executable.rsplit("/", 1)[-1], *sys.argv]),
              "machine": machine_info(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "settings": {"volumes": args.volumes, "slices": _slice_text(args.slices), "weights": args.weights,
                           "dc_iterations": args.dc_iterations, "options": asdict(options), "models": study.about},
              "records": []}
    for volume, stack, sim in slice_stacks(study.volumes, study.simulators, args.slices):
        truth, number = stack.slice(0), int(stack.slice_index[0])
        setup = MrfSetup.from_simulator(sim)
        kspace = simulate_case(stack, study.settings, simulator=sim, seed=study.seed, name=volume).kspace[0]
        condition = gridding_reconstruction(setup.operator, kspace, setup.dcf)
        brain = brain_mask(truth.t2_ms, truth.mask)
        for method in args.methods:
            estimate = METHODS[method](setup, kspace, condition, truth.mask, study.models[method], options)[0]
            for weight in args.weights:
                refined = data_consistent(setup, kspace, estimate, weight, args.dc_iterations) if weight else estimate
                metrics = map_metrics(quantitative_maps(refined, setup.reference, truth.mask), truth.t1_ms,
                                      truth.t2_ms, brain)
                report["records"].append({"volume": volume, "slice": number, "method": method, "weight": weight,
                                          "mape_t1": metrics["mape_t1"], "mape_t2": metrics["mape_t2"]})
                print(f"{volume} slice {number} {method} weight {weight:g}: MAPE T1 {metrics['mape_t1']:.2f} %, "
                      f"T2 {metrics['mape_t2']:.2f} %", flush=True)
            write_results(report, args.out, args.name, write_markdown)
    return report


if __name__ == "__main__":
    run_script(main)
