"""Conditional MRF denoisers on held-out patches: the x0 error against the noise level, and samples drawn from T.

Why ``configs/mrf-small.toml`` predicts v rather than the paper's epsilon: an epsilon network's estimate
``x0_hat = x - sigma * eps_hat`` carries ``sigma`` times the error of ``eps_hat``, so sampling from the top of the
VP schedule (``sigma_T = 157`` for linear betas 1e-4..0.02) needs a far more accurate network than a short CPU run
gives. This script measures that for any number of trained VP/v models on the same fixed batch of held-out
validation patches (:func:`mrdpm.train.validate.validation_batch` of the config's data: the patches, normalisation
and held-out volumes of training):

- the PSNR of the denoised estimate ``D(x0 + sigma n, sigma, cond)`` at noise levels from 0.2 to ``sigma_T``, and
  the RMS error of the implied noise estimate ``(x - D) / sigma - n``;
- the PSNR of one DDIM sample (``eta = 1``, the DDPM ancestral sampler that ``mrdpm.tasks.mrf.restore`` uses) per
  patch, drawn from ``sigma_T`` with the model's levels respaced to each step count;
- as a reference, the U-Net regression on the same conditions (optional).

PSNR is in dB with peak 1 (the condition's 99th percentile, as in training). Run (from the repository root):

    python benchmarks/mrf_denoiser.py --models eps=runs/mrf-small-eps/model.json,v=runs/mrf-v/model.json \
        --unet runs/mrf-small-unet/unet.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path

import torch

from common import csv_list, machine_info, run_script
from mrdpm.diffusion.guidance import bind
from mrdpm.diffusion.samplers import sample_ddim
from mrdpm.diffusion.schedules import respace
from mrdpm.eval.regression import load_regression_unet
from mrdpm.models.checkpoint import load_checkpoint
from mrdpm.train.config import load_config
from mrdpm.train.validate import validation_batch

ROOT = Path(__file__).resolve().parents[1]

SIGMAS = (0.2, 1.0, 5.0, 20.0, 80.0)


def psnr(estimate: torch.Tensor, truth: torch.Tensor) -> float:
    """PSNR in dB with peak 1, the normalised units of training validation (not the metrics module's peak)."""
    return -10 * math.log10(float((estimate - truth).double().square().mean()))


@torch.no_grad()
def measure_model(card_path: Path, x0: torch.Tensor, cond: torch.Tensor, steps: list[int], seed: int) -> dict:
    """Denoising error per noise level and sample PSNR per step count of one conditional VP/v model."""
    model, card = load_checkpoint(card_path)
    model.eval()
    if model.config.parameterisation not in ("vp", "v"):
        raise SystemExit(f"{card_path}: a VP or v model is needed, got {model.config.parameterisation!r}")
    denoise = bind(model, cond=cond)
    sigma_top = float(model.sigma_grid[-1])
    generator = torch.Generator().manual_seed(seed)
    levels = []
    for sigma in (*SIGMAS, sigma_top):
        noise = torch.randn(x0.shape, generator=generator)
        x = x0 + sigma * noise
        estimate = denoise(x, torch.full((x0.shape[0],), sigma))
        eps_error = (x - estimate) / sigma - noise
        levels.append({"sigma": round(sigma, 3), "x0_psnr_db": round(psnr(estimate, x0), 2),
                       "eps_rms_error": round(float(eps_error.square().mean().sqrt()), 4)})
    samples = []
    for n in steps:
        generator = torch.Generator().manual_seed(seed)
        sigmas = respace(model.sigma_grid, n)
        start = float(sigmas[0]) * torch.randn(x0.shape, generator=generator)
        began = time.perf_counter()
        out = sample_ddim(denoise, start, sigmas, eta=1.0, generator=generator)
        samples.append({"steps": n, "nfe": out.nfe, "sample_psnr_db": round(psnr(out.x, x0), 2),
                        "seconds": round(time.perf_counter() - began, 1)})
    training = card.get("training") or {}
    return {"card": str(card_path), "parameterisation": model.config.parameterisation,
            "training_steps": training.get("steps"), "sigma_top": round(sigma_top, 2), "levels": levels,
            "samples": samples}


def format_markdown(report: dict) -> str:
    names = list(report["models"])
    lines = [f"`{report['command']}`", "",
             f"{report['n_patches']} held-out {report['patch']} patches of {', '.join(report['subjects'])} "
             f"(config `{report['config']}`), seed {report['seed']}. PSNR in dB, peak 1 = the condition's 99th "
             f"percentile.", "",
             *([f"Reference: the U-Net regression on the same conditions, {report['unet_psnr_db']:.2f} dB.", ""]
               if report.get("unet_psnr_db") is not None else []),
             "Denoised estimate D(x0 + sigma n) (PSNR dB / RMS error of the implied noise estimate):", "",
             "| sigma | " + " | ".join(f"{n} ({report['models'][n]['parameterisation']}, "
                                       f"{report['models'][n]['training_steps']} steps)" for n in names) + " |",
             "| --- |" + " --- |" * len(names)]
    for i, level in enumerate(report["models"][names[0]]["levels"]):
        cells = [f"{report['models'][n]['levels'][i]['x0_psnr_db']:.2f} / "
                 f"{report['models'][n]['levels'][i]['eps_rms_error']:.4f}" for n in names]
        lines.append(f"| {level['sigma']:g} | " + " | ".join(cells) + " |")
    lines += ["", "One DDPM-ancestral sample per patch from sigma_T (PSNR dB; seconds in the json, not a timing run):",
              "",
              "| steps (NFE) | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
    for i, sample in enumerate(report["models"][names[0]]["samples"]):
        cells = [f"{report['models'][n]['samples'][i]['sample_psnr_db']:.2f}" for n in names]
        lines.append(f"| {sample['steps']} ({sample['nfe']}) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", type=csv_list, required=True, help="NAME=CARD,... conditional VP/v MRF models")
    p.add_argument("--unet", type=Path, help="U-Net regression card (reference row)")
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "mrf-small.toml",
                   help="config whose [data] gives the held-out patches")
    p.add_argument("--patches", type=int, default=8, help="held-out patches (default 8)")
    p.add_argument("--steps", type=csv_list, default=["20", "50"], help="sampler step counts (default 20,50)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = dict(item.split("=", 1) for item in args.models)
    data = load_config(args.config).data
    batch = validation_batch(data, n_images=args.patches, sigmas=(1.0,), seed=args.seed)
    if batch is None or batch.cond is None:
        raise SystemExit(f"{args.config}: the data config needs held-out subjects and paired conditions")
    x0, cond = batch.images, batch.cond
    report = {"benchmark": "mrf_denoiser",
              "command": " ".join(shlex.quote(a) for a in ["python", "benchmarks/mrf_denoiser.py",
                                                           *(argv or sys.argv[1:])]),
              "machine": machine_info(), "config": os.path.relpath(args.config.resolve(), ROOT),
              "subjects": list(batch.subjects), "n_patches": x0.shape[0], "patch": "x".join(map(str, x0.shape[2:])),
              "seed": args.seed, "unet_psnr_db": None, "models": {}}
    if args.unet:
        unet = load_regression_unet(args.unet)[0]
        with torch.no_grad():
            report["unet_psnr_db"] = round(psnr(unet(cond), x0), 2)
    for name, card in models.items():
        report["models"][name] = measure_model(Path(card), x0, cond, [int(s) for s in args.steps], args.seed)
        print(name, json.dumps(report["models"][name]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "mrf_denoiser.json").write_text(json.dumps(report, indent=1) + "\n")
    text = format_markdown(report)
    (args.out / "mrf_denoiser.md").write_text(text)
    print(text)
    return report


if __name__ == "__main__":
    run_script(main)
