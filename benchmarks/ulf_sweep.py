"""Choose the ULF diffusion's inference settings on validation volumes: noising strength x (DDIM steps, samples).

MRIQT noises the low-field input to strength 0.65 and denoises from there (SDEdit), which keeps the input's coarse
intensities. That suits low-field volumes whose contrast matches the high field's (the paper simulates them by a
k-space transfer function plus histogram matching); ``mrdpm ulf make-pairs`` re-synthesises the 64 mT tissue
contrast, so the coarse intensities of the input are wrong, and a higher strength (at 1 the condition channel
alone carries the input) may do better. At a fixed number of network passes, fewer DDIM steps with more samples
averaged may also suit the mean better. This script measures both: :func:`ulf.run_method` of
``benchmarks/ulf.py`` for every ``--strengths`` value and ``--budgets`` entry (``STEPSxSAMPLES``), every other
option (pairs, windows, guidance, seed, metrics) as there, plus the U-Net baseline once when ``--unet`` is given,
and ``ulf.py``'s ``refine`` method (diffusion from the U-Net's estimate) at every ``--refine-strengths`` value and
budget. Give it validation subjects (``--subjects``), not the ones ``ulf.py`` reports.

Outputs (``--out``, ``--name``, default ``ulf_sweep``): ``<name>.json`` (command, machine, settings, a record per
subject and setting) and ``<name>.md`` (mean ± sd over the subjects of PSNR and SSIM inside the foreground per
setting; the U-Net's row for reference).

Run (from the repository root):

    python benchmarks/ulf_sweep.py --subjects template-36 --strengths 0.65,0.8,1 --budgets 5x6 \
        --refine-strengths 0.3,0.5,0.65 --model runs/ulf-compact/model.json --unet runs/ulf-small-unet/unet.json \
        --guidance 1 --stride 24
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # sleeping, not spinning, OpenMP threads on a shared CPU

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch

from common import csv_list, machine_info, run_script, write_results
from mrdpm.io.read import read_image
from ulf import (
    LABELS,
    _mean_sd,
    choose_subjects,
    foreground,
    load_models,
    on_grid,
    pair_paths,
    run_method,
    volume_metrics,
)
from ulf import parse_args as ulf_args

SWEPT = ("--strength", "--refine-strength", "--steps", "--samples", "--methods")


def _budget(text: str) -> tuple[int, int]:
    steps, _, samples = text.partition("x")
    try:
        budget = int(steps), int(samples)
    except ValueError:
        budget = (0, 0)
    if min(budget) < 1:
        raise argparse.ArgumentTypeError(f"expected STEPSxSAMPLES with positive integers, got {text!r}")
    return budget


def _strengths(text: str) -> list[float]:
    values = [float(s) for s in csv_list(text)]
    if not all(0 < s <= 1 for s in values):
        raise argparse.ArgumentTypeError(f"expected strengths in (0, 1], got {text!r}")
    return values


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, dict[str, list[float]], list[tuple[int, int]]]:
    """``benchmarks/ulf.py``'s options (those swept aside), strengths per diffusion method, (steps, samples) budgets.

    The strengths are a dict over the methods ``diffusion`` and ``refine``.
    """
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=False, allow_abbrev=False)
    p.add_argument("--strengths", type=_strengths, default=[0.65, 0.8, 1.0],
                   help="noising strengths in (0, 1] of the low-field input (default 0.65,0.8,1)")
    p.add_argument("--refine-strengths", type=_strengths, default=[],
                   help="noising strengths in (0, 1] of the U-Net's estimate (method refine; needs --unet; "
                        "default none)")
    p.add_argument("--budgets", type=lambda t: [_budget(b) for b in csv_list(t)], default=[(10, 3), (5, 6)],
                   help="DDIM steps x samples averaged (default 10x3,5x6)")
    known, rest = p.parse_known_args(argv)
    if "-h" in rest or "--help" in rest:
        p.print_help()
        print("\nThe other options are those of benchmarks/ulf.py:\n")
    if any(option in rest for option in SWEPT):
        p.error("give strengths with --strengths / --refine-strengths and steps x samples with --budgets (not "
                f"{', '.join(SWEPT)})")
    if known.refine_strengths and "--unet" not in rest:
        p.error("--refine-strengths needs --unet")
    methods = "diffusion,unet" + (",refine" if known.refine_strengths else "") if "--unet" in rest else "diffusion"
    args = ulf_args([*rest, "--methods", methods, *([] if "--name" in rest else ["--name", "ulf_sweep"])])
    return args, {"diffusion": known.strengths, "refine": known.refine_strengths}, known.budgets


def write_markdown(report: dict, path: Path) -> None:
    s = report["settings"]
    d = s["diffusion"]
    lines = ["# ULF diffusion: inference settings on validation volumes", "",
             f"- command: `{report['command']}`",
             f"- {report['machine']['cpu']}, {report['machine']['torch_threads']} torch threads, {report['started']}",
             f"- subjects {', '.join(s['subjects'])}; diffusion `{s['models']['diffusion']['card']}`, guidance "
             f"{d['guidance']}, eta {d['eta']}, seed {d['seed']}; metrics inside the high-field foreground as in "
             "`ulf.md`; NFE = sequential network evaluations (the steps, + 1 for the U-Net)", "",
             "strength: of the low-field input (conditional diffusion) or of the U-Net's estimate (U-Net, then "
             "diffusion: `ulf.py`'s refine)", "",
             "| method | strength | steps x samples | PSNR dB | SSIM | NFE | min / volume |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    settings = [("unet", None, None)] + [(method, x, tuple(b)) for method in ("diffusion", "refine")
                                         for x in s["strengths"][method] for b in s["budgets"]]
    for method, strength, budget in settings:
        group = [r for r in report["records"] if r["method"] == method and r["strength"] == strength
                 and (budget is None or (r["steps"], r["samples"]) == budget)]
        if group:
            (p, p_sd), (q, q_sd), (m, _) = (_mean_sd([r[k] for r in group]) for k in ("psnr", "ssim", "minutes"))
            lines.append(f"| {LABELS[method]} | {'-' if strength is None else f'{strength:g}'} | "
                         f"{'-' if budget is None else f'{budget[0]} x {budget[1]}'} | {p:.2f} ± {p_sd:.2f} | "
                         f"{q:.4f} ± {q_sd:.4f} | {group[0]['nfe']} | {m:.2f} |")
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> dict:
    args, strengths, budgets = parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    models, about = load_models(args)
    subjects = choose_subjects(args, about)
    report = {"command": " ".join(shlex.quote(a) for a in ["python", "benchmarks/ulf_sweep.py",
                                                           *(sys.argv[1:] if argv is None else argv)]),
              "machine": machine_info(args.device), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "settings": {"subjects": subjects, "strengths": strengths, "budgets": budgets, "models": about,
                           "pairs": str(args.pairs), "diffusion": {k: getattr(args, k) for k in ("guidance", "eta",
                                                                                                 "seed")},
                           "patch": args.patch, "stride": args.stride}, "records": []}
    runs = ([("unet", None, None)] if "unet" in models else []) + [
        (method, strength, budget) for method in ("diffusion", "refine") for strength in strengths[method]
        for budget in budgets]
    for subject in subjects:
        hf_path, lf_path = pair_paths(args.pairs, subject)
        truth, lf = read_image(hf_path).data.float(), read_image(lf_path)
        mask = foreground(truth)
        for method, strength, budget in runs:
            if budget is not None:
                setattr(args, "strength" if method == "diffusion" else "refine_strength", strength)
                args.steps, args.samples = budget
            mean, _, nfe, seconds = run_method(args, method, lf, models, about)
            metrics = volume_metrics(truth, on_grid(mean, tuple(truth.shape)), mask)
            report["records"].append({"subject": subject, "method": method, "strength": strength,
                                      "steps": None if budget is None else budget[0],
                                      "samples": None if budget is None else budget[1], "nfe": nfe,
                                      "minutes": seconds / 60, **metrics})
            print(f"{subject} {method} strength {strength} steps x samples {budget}: PSNR {metrics['psnr']:.2f} dB, "
                  f"SSIM {metrics['ssim']:.4f}, {seconds / 60:.2f} min", flush=True)
            write_results(report, args.out, args.name, write_markdown)
    return report


if __name__ == "__main__":
    run_script(main)
