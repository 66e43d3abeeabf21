"""Ultra-low-field (64 mT) -> high-field quality transfer benchmark (MRIQT, arXiv 2511.13232) on held-out volumes.

Data: the pairs of ``mrdpm ulf make-pairs`` (``--pairs``, default ``../runs/ulf-pairs``: high-field targets and
simulated 64 mT conditions, see :file:`configs/ulf.toml`), each subject's ``*_hf`` / ``*_lf`` files found by
subject ID as in training (:func:`pair_paths`). The subjects
are the held-out list of the diffusion model's card (else the U-Net's), or ``--subjects``; a model trained on an
evaluated subject is refused.

The methods:

- ``lf``: the low-field input on the high-field grid. In these pairs both volumes already lie on one 1.6 mm grid
  (``make-pairs`` resamples both), so the input is used as it is; volumes of another shape would be resampled
  trilinearly onto the high-field array (``torch`` ``interpolate``, same field of view assumed);
- ``unet``: the 3D regression U-Net baseline (``--unet``, from ``mrdpm ulf train-unet``,
  :func:`mrdpm.tasks.ulf.enhance_unet`), windows of its training patch;
- ``diffusion``: the conditional 3D diffusion model (``--model``, :func:`mrdpm.tasks.ulf.enhance`): SDEdit from
  ``--strength`` with ``--steps`` DDIM steps, ``--samples`` samples averaged, guidance ``--guidance``; the
  standard deviation of the samples is the uncertainty map;
- ``refine``: both models in turn: the U-Net's estimate is noised to ``--refine-strength`` and denoised by the
  diffusion model, conditioned on the low-field input as above (``enhance(..., init=...)``: SDEdit from the
  regression instead of from the input). The U-Net fixes the coarse intensities; the diffusion model redraws the
  detail. NFE: 1 + the DDIM steps.

Metrics against the high-field truth (:mod:`mrdpm.eval.metrics`, magnitudes, float64): PSNR (peak: the truth's
maximum), 3D SSIM (7x7x7 window), MAE (the pairs' intensity units), Pearson correlation and the mean intensity
bias (% of the truth's mean, ``mean_bias``), inside the high-field
foreground mask (truth above 0.1 x its 99th percentile: the training config's foreground rule; for SSIM the
windows centred in it) and, as ``*_all``, over the whole volume. NFE: sequential network evaluations (0 for
``lf``, 1 for the U-Net); minutes of wall time per volume (the method alone). ``--time-128`` also times the
diffusion methods (``diffusion``, ``refine``) on one 128^3 volume (the first subject's low-field volume
zero-padded / cropped to 128^3, centred) on the CPU with ``--threads`` threads, for the issue's target (<= 10
minutes on 2 cores).

Outputs (``--out``, ``--name``): ``<name>.json`` (settings, commands, machine, every record, summary, targets;
rewritten after each record), ``<name>.md`` (table of mean ± sd over subjects) and ``<name>.png`` (orthogonal
slices of low field / U-Net / diffusion mean / diffusion std / truth for ``--figure-subject``, drawn from the
volumes kept in ``--work-dir``). ``--resume`` keeps the records already there whose fingerprint (model sha256,
method settings) and data hash still match, and runs the rest.

Run (from the repository root, after make-pairs and training):

    python benchmarks/ulf.py --model runs/ulf-compact/model.json --unet runs/ulf-small-unet/unet.json --time-128 \
        --resume
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # sleeping, not spinning, OpenMP threads on a shared CPU

import argparse
import copy
import hashlib
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common import csv_list, machine_info, run_script, trained_subjects
from mrdpm.data.config import DataConfig
from mrdpm.data.images import pair_files
from mrdpm.data.normalise import percentile_factor
from mrdpm.data.ulf_pairs import MANIFEST_NAME
from mrdpm.data.volumes import subject_id
from mrdpm.errors import MrdpmError
from mrdpm.eval.figures import save_panels
from mrdpm.eval.metrics import mae, mean_bias, pearson, psnr, ssim
from mrdpm.eval.regression import load_regression_unet, training_patch
from mrdpm.io.containers import Volume
from mrdpm.io.nifti import write_nifti
from mrdpm.io.read import read_image
from mrdpm.models.checkpoint import checkpoint_paths, resolve_model
from mrdpm.tasks.dpm import load_prior
from mrdpm.tasks.ulf import check_ulf_model, condition_percentile, enhance, enhance_unet, orthogonal_mosaic

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("lf", "unet", "diffusion", "refine")
LABELS = {"lf": "low field (input)", "unet": "3D U-Net regression", "diffusion": "conditional diffusion",
          "refine": "U-Net, then diffusion from its estimate"}
DIFFUSION_METHODS = ("diffusion", "refine")  # compared with the U-Net and timed
METRICS = ("psnr", "ssim", "mae", "pearson", "bias")
METRICS_VERSION = 2  # 2: with the mean intensity bias; records of older versions are redone on --resume
FOREGROUND_LEVEL, FOREGROUND_PERCENTILE = 0.1, 99.0
PSNR_TARGET_PERCENT = 1.78  # the issue: diffusion's PSNR at least 1.78% above the U-Net's, and a higher SSIM
TIME_TARGET_MINUTES = 10.0  # the issue: a 128^3 volume in <= 10 minutes on 2 CPU cores


def _patch(text: str) -> list[int]:
    values = [int(v) for v in text.split(",")]
    if len(values) not in (1, 3) or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected one positive size or D,H,W, got {text!r}")
    return values * 3 if len(values) == 1 else values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=Path, default=ROOT.parent / "runs" / "ulf-pairs", help="folder of the pairs")
    p.add_argument("--subjects", type=csv_list, default=None,
                   help="subjects to evaluate (default: the held-out list of the diffusion card, else the U-Net's)")
    p.add_argument("--methods", type=csv_list, default=list(METHODS), help=f"subset of {','.join(METHODS)}")
    p.add_argument("--model", default=None, help="diffusion model card (method diffusion)")
    p.add_argument("--unet", default=None, help="U-Net card (method unet)")
    p.add_argument("--strength", type=float, default=0.65, help="diffusion: noising strength (default 0.65)")
    p.add_argument("--steps", type=int, default=20, help="diffusion: DDIM steps (default 20)")
    p.add_argument("--samples", type=int, default=4, help="diffusion: samples averaged (default 4)")
    p.add_argument("--guidance", type=float, default=2.0, help="diffusion: guidance weight (default 2)")
    p.add_argument("--eta", type=float, default=0.0, help="diffusion: DDIM stochasticity (default 0)")
    p.add_argument("--seed", type=int, default=0, help="diffusion: seed of the start noise (default 0)")
    p.add_argument("--refine-strength", type=float, default=0.65,
                   help="refine: noising strength of the U-Net estimate (default 0.65, the best on the validation "
                        "volume: results/ulf_sweep.md); the other diffusion options as for diffusion")
    p.add_argument("--patch", type=_patch, default=None, help="window D,H,W or one size (default: each model's "
                                                               "training patch)")
    p.add_argument("--stride", type=_patch, default=None, help="window step (default half the patch)")
    p.add_argument("--batch-size", type=int, default=8, help="windows per network call (default 8)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the models run (default cpu)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--time-128", action="store_true", help="also time the diffusion methods on one 128^3 volume")
    p.add_argument("--time-size", type=int, default=128, help="edge of the timed volume (default 128)")
    p.add_argument("--figure-subject", default=None, help="subject of the figure (default the first)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="results folder")
    p.add_argument("--name", default="ulf", help="results file stem (default ulf)")
    p.add_argument("--work-dir", type=Path, default=ROOT.parent / "runs" / "ulf-benchmark",
                   help="folder for the methods' output volumes (for the figure and inspection)")
    p.add_argument("--resume", action="store_true", help="keep the matching records already in <name>.json")
    args = p.parse_args(argv)
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        p.error(f"unknown methods {unknown}; choose from {list(METHODS)}")
    return args


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def _file_digest(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def held_out(card: dict) -> list[str]:
    return list(((card.get("training") or {}).get("data") or {}).get("held_out_subjects") or [])


def load_models(args: argparse.Namespace) -> tuple[dict, dict]:
    """The models of the chosen methods and what the report says of them (card, sha256, percentile, patch)."""
    models, about = {}, {}
    needed = set(args.methods) | ({"diffusion", "unet"} if "refine" in args.methods else set())
    for method, path in (("diffusion", args.model), ("unet", args.unet)):
        if method not in needed:
            continue
        if path is None:
            raise MrdpmError(f"method {method}{' (and refine)' if 'refine' in args.methods else ''} needs "
                             f"--{'model' if method == 'diffusion' else 'unet'}")
        if method == "unet":
            card_path = checkpoint_paths(path)[0]
            model, card = load_regression_unet(card_path, args.device, spatial_dims=3, channels=1, what="ULF U-Net")
        else:
            card_path = resolve_model(path)
            model, card = load_prior(str(card_path), args.device)
            try:
                check_ulf_model(model)
            except ValueError as err:
                raise MrdpmError(str(err), path=card_path) from err
        models[method] = model
        about[method] = {"card": str(card_path), "summary": card.get("summary"), "sha256": card["weights_sha256"],
                         "percentile": condition_percentile(card, card_path), "patch": training_patch(card),
                         "held_out": held_out(card), "trained_subjects": sorted(trained_subjects(card)),
                         "parameters": card.get("num_parameters")}
    return models, about


def choose_subjects(args: argparse.Namespace, about: dict) -> list[str]:
    subjects = args.subjects or next((about[m]["held_out"] for m in ("diffusion", "unet")
                                      if m in about and about[m]["held_out"]), None)
    if not subjects:
        raise MrdpmError("no subjects: give --subjects, or a model whose card lists held-out subjects")
    for method, info in about.items():
        leaked = sorted(set(info["trained_subjects"]) & set(subjects))
        if leaked:
            raise MrdpmError(f"the {method} model was trained on evaluated subjects {leaked}", path=info["card"])
    return subjects


def pair_paths(folder: Path, subject: str) -> tuple[Path, Path]:
    """The (high-field, low-field) files ``<stem>_hf.*`` / ``<stem>_lf.*`` of ``subject``, paired as in training.

    :func:`mrdpm.data.images.pair_files` by subject ID, with the ``subject_pattern`` of ``mrdpm ulf make-pairs``'
    manifest (``ulf_pairs.json``) when the folder has one, else the default of ``DataConfig``: so
    ``IXI575-HH-2658_T1_hf.nii.gz`` is subject ``IXI575-HH-2658``.
    """
    manifest = folder / MANIFEST_NAME
    pattern = DataConfig.subject_pattern
    if manifest.is_file():
        pattern = json.loads(manifest.read_text()).get("subject_pattern", pattern)
    pairs = pair_files(sorted(folder.glob("*_hf.*")), sorted(folder.glob("*_lf.*")), pattern, source=str(folder))
    found = [pair for pair in pairs if subject_id(pair[0], pattern) == subject]
    if len(found) != 1:
        raise MrdpmError(f"no pair <stem>_hf / <stem>_lf for subject {subject!r} ({len(found)} found)", path=folder)
    return found[0]


def on_grid(volume: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """``volume`` as it is when it has ``shape``, else trilinearly resampled onto it (same field of view)."""
    if tuple(volume.shape) == tuple(shape):
        return volume.float()
    return F.interpolate(volume.float()[None, None], size=shape, mode="trilinear", align_corners=False)[0, 0]


def foreground(truth: torch.Tensor) -> torch.Tensor:
    """The truth above 0.1 x its 99th percentile (boolean, the truth's shape)."""
    return truth > FOREGROUND_LEVEL * percentile_factor(truth, FOREGROUND_PERCENTILE)


def volume_metrics(truth: torch.Tensor, estimate: torch.Tensor, mask: torch.Tensor) -> dict:
    out = {}
    for suffix, m in (("", mask), ("_all", None)):
        out |= {f"psnr{suffix}": psnr(truth, estimate, m), f"ssim{suffix}": ssim(truth, estimate, m, spatial_dims=3),
                f"mae{suffix}": mae(truth, estimate, m), f"pearson{suffix}": pearson(truth, estimate, m),
                f"bias{suffix}": mean_bias(truth, estimate, m)}
    return out


def method_settings(args: argparse.Namespace, about: dict, method: str) -> dict:
    """What changes a method's result: its model and options (the fingerprint's input)."""
    if method == "lf":
        return {"method": "lf"}
    if method == "refine":
        diffusion = method_settings(args, about, "diffusion") | {"strength": args.refine_strength}
        return {"method": "refine", "unet": method_settings(args, about, "unet"), "diffusion": diffusion}
    settings = {"method": method, "sha256": about[method]["sha256"], "percentile": about[method]["percentile"],
                "patch": args.patch or about[method]["patch"], "stride": args.stride}
    if method == "diffusion":
        settings |= {"strength": args.strength, "steps": args.steps, "samples": args.samples,
                     "guidance": args.guidance, "eta": args.eta, "seed": args.seed}
    return settings


def run_method(args: argparse.Namespace, method: str, lf: Volume, models: dict, about: dict):
    """(mean, std or None, NFE, seconds) of a method on a low-field volume, on the low-field grid."""
    if method == "lf":
        return lf.data.float(), None, 0, 0.0
    settings = method_settings(args, about, method)
    if method == "unet":
        result = enhance_unet(lf, models["unet"], **_window_options(args, settings))
        return result.mean.data, None, result.nfe, result.seconds
    init, nfe, seconds = None, 0, 0.0
    if method == "refine":
        first = enhance_unet(lf, models["unet"], **_window_options(args, settings["unet"]))
        init, nfe, seconds, settings = first.mean, first.nfe, first.seconds, settings["diffusion"]
    result = enhance(lf, models["diffusion"], strength=settings["strength"], steps=args.steps, samples=args.samples,
                     guidance=args.guidance, eta=args.eta, seed=args.seed, init=init,
                     **_window_options(args, settings))
    return result.mean.data, result.std.data, nfe + result.nfe, seconds + result.seconds


def _window_options(args: argparse.Namespace, settings: dict) -> dict:
    return {"patch": settings["patch"], "stride": args.stride, "batch_size": args.batch_size,
            "percentile": settings["percentile"]}


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def summarise(records: list[dict]) -> list[dict]:
    rows = []
    for method in METHODS:
        group = [r for r in records if r["method"] == method]
        if group:
            row = {"method": method, "volumes": len(group), "nfe": group[0]["nfe"]}
            for metric in (*METRICS, *(f"{m}_all" for m in METRICS), "minutes"):
                row[metric], row[f"{metric}_sd"] = _mean_sd([r[metric] for r in group])
            rows.append(row)
    return rows


def targets(records: list[dict], timings: dict) -> dict:
    """The issue's targets for each diffusion method: beating the U-Net, and its 128^3 timing.

    The comparison uses the foreground metrics of the subjects both methods ran on.
    """
    by = {m: {r["subject"]: r for r in records if r["method"] == m} for m in ("unet", *DIFFUSION_METHODS)}
    out: dict = {f"timing_128_{m}": {"minutes": t["minutes"], "target_minutes": TIME_TARGET_MINUTES,
                                     "met": t["minutes"] <= TIME_TARGET_MINUTES} for m, t in timings.items()}
    for method in DIFFUSION_METHODS:
        common = sorted(set(by["unet"]) & set(by[method]))
        if not common:
            continue
        psnr_u, psnr_d = (float(np.mean([by[m][s]["psnr"] for s in common])) for m in ("unet", method))
        ssim_u, ssim_d = (float(np.mean([by[m][s]["ssim"] for s in common])) for m in ("unet", method))
        gain = 100.0 * (psnr_d - psnr_u) / psnr_u
        out[f"{method}_vs_unet"] = {
            "subjects": common, "psnr_unet": psnr_u, "psnr_diffusion": psnr_d, "psnr_gain_percent": gain,
            "psnr_target_percent": PSNR_TARGET_PERCENT, "ssim_unet": ssim_u, "ssim_diffusion": ssim_d,
            "ssim_difference": ssim_d - ssim_u,
            "met": gain >= PSNR_TARGET_PERCENT and ssim_d > ssim_u}
    return out


def write_markdown(report: dict, path: Path) -> None:
    s = report["settings"]
    lines = ["# ULF (64 mT) -> high-field quality transfer, held-out volumes", ""]
    for run in report["runs"]:
        m = run["machine"]
        lines.append(f"- run {run['index']}: `{run['command']}`; {m['cpu']} ({m['cpu_count']} CPUs), "
                     f"{m['torch_threads']} torch threads, device {m['device']}"
                     f"{' (' + m['gpu'] + ')' if m.get('gpu') else ''}, torch {m['torch']}, load average "
                     f"{m['load_average']:.2f} at start, {run['started']}")
    lines += ["", f"Pairs `{s['pairs']}`, subjects {', '.join(s['subjects'])}. The low-field input is "
              f"{s['lf_grid']}. Metrics against the high-field truth: inside its foreground mask (truth > "
              f"{FOREGROUND_LEVEL} x its {FOREGROUND_PERCENTILE:g}th percentile; SSIM: 3D, 7x7x7 windows centred in "
              "it) and over the whole volume; PSNR peak = the truth's maximum; MAE in the pairs' intensity units; "
              "mean bias = the mean intensity's error in % of the truth's (a global scale error shows here, not in "
              "Pearson). "
              "Mean ± sd over volumes; NFE = sequential network evaluations; minutes of wall time per volume."]
    unused = sorted({h for info in s["models"].values() for h in info["held_out"]} - set(s["subjects"]))
    if unused:
        lines.append(f"- held out by the models but not evaluated here: {', '.join(unused)} (validation volumes, "
                     "e.g. of `benchmarks/ulf_sweep.py`)")
    for method, info in s["models"].items():
        summary = f": {info['summary']}" if info["summary"] else ""
        size = f", {info['parameters']:,} parameters" if info.get("parameters") else ""
        lines.append(f"- {LABELS[method]}: `{info['card']}` (sha256 {info['sha256'][:12]}{size}){summary}")
    if "diffusion" in s["models"]:
        d = s["diffusion"]
        refine = (f"; refine: the U-Net's estimate noised to strength {d['refine_strength']}, the rest as for "
                  "diffusion" if "refine" in s["methods"] else "")
        lines.append(f"- diffusion settings: strength {d['strength']}, {d['steps']} DDIM steps, {d['samples']} "
                     f"samples, guidance {d['guidance']}, eta {d['eta']}, seed {d['seed']}{refine}")
    lines += ["", "| method | NFE | PSNR dB | SSIM | MAE | Pearson | mean bias % | PSNR dB (whole) | SSIM (whole) | "
              "MAE (whole) | Pearson (whole) | min / volume | volumes |", "| --- " * 13 + "|"]
    digits = {"psnr": 2, "ssim": 4, "mae": 2, "pearson": 4, "bias": 1}
    for row in report["summary"]:
        cells = [f"{row[m]:.{n}f} ± {row[m + '_sd']:.{n}f}" for m, n in digits.items()]
        cells += [f"{row[m + '_all']:.{n}f}" for m, n in digits.items() if m != "bias"]
        lines.append(f"| {LABELS[row['method']]} | {row['nfe']} | " + " | ".join(cells)
                     + f" | {row['minutes']:.2f} | {row['volumes']} |")
    lines += _target_lines(report["targets"], report.get("timings_128", {}))
    if report.get("figure"):
        lines += ["", f"![orthogonal slices]({report['figure']})"]
    path.write_text("\n".join(lines) + "\n")


def _target_lines(found: dict, timings: dict) -> list[str]:
    lines = ["", "## Targets", ""]
    for method in DIFFUSION_METHODS:
        versus, timing = found.get(f"{method}_vs_unet"), timings.get(method)
        if versus:
            lines.append(f"- {LABELS[method]} vs U-Net on {len(versus['subjects'])} volume(s): PSNR "
                         f"{versus['psnr_diffusion']:.2f} vs {versus['psnr_unet']:.2f} dB "
                         f"({versus['psnr_gain_percent']:+.2f}%, target >= +{PSNR_TARGET_PERCENT}%), SSIM "
                         f"{versus['ssim_diffusion']:.4f} vs {versus['ssim_unet']:.4f}: "
                         f"{'met' if versus['met'] else 'not met'}")
        if timing:
            lines.append(f"- {LABELS[method]} on one {timing['size']}^3 volume ({timing['subject']} padded / "
                         f"cropped), {timing['threads']} CPU threads: {timing['minutes']:.2f} min, NFE "
                         f"{timing['nfe']} (target <= {TIME_TARGET_MINUTES:g} min: "
                         f"{'met' if found[f'timing_128_{method}']['met'] else 'not met'})")
    return lines if len(lines) > 3 else []


def save_report(report: dict, args: argparse.Namespace) -> None:
    report["summary"] = summarise(report["records"])
    report["targets"] = targets(report["records"], report.get("timings_128", {}))
    tmp = args.out / f"{args.name}.json.tmp"
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    os.replace(tmp, args.out / f"{args.name}.json")
    write_markdown(report, args.out / f"{args.name}.md")


def start_report(args: argparse.Namespace, settings: dict, command: str, fingerprints: dict,
                 data_hashes: dict) -> dict:
    """A new report, or with ``--resume`` the saved one without the records that no longer match."""
    path = args.out / f"{args.name}.json"
    report = {"benchmark": "ulf", "settings": settings, "runs": [], "records": []}
    if args.resume and path.is_file():
        report = json.loads(path.read_text())
        kept = [r for r in report["records"]
                if r["method"] not in fingerprints or (r["fingerprint"] == fingerprints[r["method"]]
                                                       and data_hashes.get(r["subject"], r["data"]) == r["data"])]
        if len(kept) < len(report["records"]):
            print(f"--resume: dropping {len(report['records']) - len(kept)} record(s) of other models, settings or "
                  "data", flush=True)
        models = report["settings"].get("models", {}) | settings["models"]
        report["records"], report["settings"] = kept, settings | {"models": models}
        report.pop("timing_128", None)  # the single timing of reports before "timings_128" (per method)
    report["runs"].append({"index": len(report["runs"]), "command": command, "machine": machine_info(args.device),
                           "started": time.strftime("%Y-%m-%d %H:%M:%S")})
    return report


def keep_volumes(args: argparse.Namespace, subject: str, method: str, lf: Volume, mean: torch.Tensor,
                 std: torch.Tensor | None) -> None:
    args.work_dir.mkdir(parents=True, exist_ok=True)
    write_nifti(args.work_dir / f"{subject}_{method}.nii.gz", Volume(mean.float(), np.asarray(lf.affine)))
    if std is not None:
        write_nifti(args.work_dir / f"{subject}_{method}_std.nii.gz", Volume(std.float(), np.asarray(lf.affine)))


def draw_figure(args: argparse.Namespace, report: dict, subject: str, truth: Volume, lf: Volume) -> str | None:
    """Orthogonal slices of the methods' kept volumes for ``subject``; the figure's file name."""
    shape = tuple(truth.data.shape)
    records = {r["method"]: r for r in report["records"] if r["subject"] == subject}
    files = {"U-Net": ("unet", ""), "diffusion mean": ("diffusion", ""), "diffusion std": ("diffusion", "_std"),
             "U-Net + diffusion": ("refine", "")}
    panels = {"low field": orthogonal_mosaic(on_grid(lf.data, shape))}
    titles = {}
    for label, (method, suffix) in files.items():
        path = args.work_dir / f"{subject}_{method}{suffix}.nii.gz"
        if method in records and path.is_file():
            panels[label] = orthogonal_mosaic(on_grid(read_image(path).data, shape))
    panels["high field (truth)"] = orthogonal_mosaic(truth.data.float())
    shown = (("low field", "lf"), ("U-Net", "unet"), ("diffusion mean", "diffusion"), ("U-Net + diffusion", "refine"))
    for label, method in shown:
        if label in panels and method in records:
            titles[label] = f"PSNR {records[method]['psnr']:.2f} dB, SSIM {records[method]['ssim']:.3f}"
    name = f"{args.name}.png"
    save_panels(args.out / name, panels, reference=panels["high field (truth)"],
                error_of=tuple(label for label, _ in shown if label in panels), titles=titles)
    return name


def time_volume(args: argparse.Namespace, method: str, models: dict, about: dict, subject: str, lf: Volume) -> dict:
    """``method`` on the low-field volume zero-padded / cropped (centred) to ``time_size^3``, on the CPU."""
    size = args.time_size
    pads = []
    for n in reversed(lf.data.shape):
        before = (size - n) // 2
        pads += [before, size - n - before]
    volume = Volume(F.pad(lf.data.float(), pads), np.asarray(lf.affine))
    on_cpu = models if args.device == "cpu" else {k: copy.deepcopy(m).cpu() for k, m in models.items()}
    _, _, nfe, seconds = run_method(args, method, volume, on_cpu, about)
    settings = method_settings(args, about, method)
    return {"size": size, "subject": subject, "seconds": seconds, "minutes": seconds / 60, "nfe": nfe,
            "threads": torch.get_num_threads(), "settings": settings, "fingerprint": _digest(settings)}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    given = sys.argv[1:] if argv is None else argv
    command = " ".join(shlex.quote(a) for a in ["python", "benchmarks/ulf.py", *given])
    args.out.mkdir(parents=True, exist_ok=True)
    models, about = load_models(args)
    subjects = choose_subjects(args, about)
    files = {s: pair_paths(args.pairs, s) for s in subjects}
    data_hashes = {s: _file_digest(*paths) for s, paths in files.items()}
    fingerprints = {m: _digest(method_settings(args, about, m) | {"metrics": METRICS_VERSION}) for m in args.methods}
    pairs = {s: (read_image(hf), read_image(lf)) for s, (hf, lf) in files.items()}
    same_grid = all(tuple(h.data.shape) == tuple(low.data.shape) for h, low in pairs.values())
    settings = json.loads(json.dumps({
        "pairs": str(args.pairs), "subjects": subjects, "methods": args.methods, "models": about,
        "lf_grid": "on the high-field grid already (same shape), used as it is" if same_grid else
                   "resampled trilinearly onto the high-field array where shapes differ",
        "diffusion": {k: getattr(args, k) for k in ("strength", "refine_strength", "steps", "samples", "guidance",
                                                    "eta", "seed")},
        "patch": args.patch, "stride": args.stride, "batch_size": args.batch_size,
        "foreground": f"truth > {FOREGROUND_LEVEL} x its {FOREGROUND_PERCENTILE:g}th percentile"}))
    report = start_report(args, settings, command, fingerprints, data_hashes)
    done = {(r["subject"], r["method"]) for r in report["records"]}
    for subject, (truth, lf) in pairs.items():
        shape, mask = tuple(truth.data.shape), foreground(truth.data.float())
        for method in [m for m in args.methods if (subject, m) not in done]:
            mean, std, nfe, seconds = run_method(args, method, lf, models, about)
            keep_volumes(args, subject, method, lf, mean, std)
            record = {"subject": subject, "method": method, "fingerprint": fingerprints[method],
                      "data": data_hashes[subject], **volume_metrics(truth.data.float(), on_grid(mean, shape), mask),
                      "nfe": nfe, "seconds": seconds, "minutes": seconds / 60, "run": len(report["runs"]) - 1}
            report["records"].append(record)
            save_report(report, args)
            print(f"{subject} {method}: PSNR {record['psnr']:.2f} dB, SSIM {record['ssim']:.4f}, "
                  f"{record['minutes']:.2f} min", flush=True)
    timings = report.setdefault("timings_128", {})
    for method in [m for m in DIFFUSION_METHODS if m in args.methods and args.time_128]:
        old = timings.get(method)
        if not (args.resume and old and old["fingerprint"] == _digest(method_settings(args, about, method))
                and old["size"] == args.time_size):
            timings[method] = time_volume(args, method, models, about, subjects[0], pairs[subjects[0]][1])
            save_report(report, args)
    figure_subject = args.figure_subject or subjects[0]
    if figure_subject in pairs:
        report["figure"] = draw_figure(args, report, figure_subject, *pairs[figure_subject])
    save_report(report, args)
    return report


if __name__ == "__main__":
    run_script(main)
