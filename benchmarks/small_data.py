"""Priors from small, noisy data (neonatal 1 T, paper 000): noisy vs self-supervised-denoised vs clean training data.

One class-conditional prior (classes contrast x orientation, configs/neonatal-small.toml) per kind of training data,
given as ``--priors name=card,...``; the issue's comparison names them ``noisy`` (trained on the noisy volumes as
they are), ``denoised`` (on the volumes of ``mrdpm denoise-data``) and ``clean`` (the noise-free oracle).

Slices: the held-out subjects of the synthesised data set (``--data-dir``, written by ``mrdpm neonatal synthesise``;
its manifest ``neonatal.json`` names them: neo30, neo36, neo42), both contrasts (T1w, T2w), every voxel size in
the folder (1 mm and 1.5 mm: two matrix sizes) and every orientation (axial, coronal, sagittal). The ground truth is
the CLEAN volume; per volume and orientation, ``--slices-per-class`` slices ``SLICE_SPACING_MM`` apart around the
middle of the head's extent along that axis (voxels above 10% of the volume's 99th percentile,
:func:`mrdpm.data.neonatal.foreground_mask`); the chosen indices are listed in the results. Each slice is divided by
its own 99th percentile (the priors' slice normalisation) and conditioned on its own class (e.g. ``T2w-coronal``).

Acquisition (:func:`mrdpm.data.simulate.simulate_case`): smooth random phase, ``--coils`` birdcage coils, a 1D
Gaussian variable-density line mask along the last axis (phase encode) with a fully sampled centre of
``--center-fraction`` of the lines (score-MRI's mask; at 1.5x and 2x the few skipped lines are far from the centre,
which suits low accelerations better than equispaced lines, whose aliasing is coherent), drawn with seed
``--seed + j`` for the j-th slice, at each of ``--accelerations``. Noise: ``--snr-db native`` (default) gives the
acquisition the noise of the 1 T data set itself (the manifest's ``noise_sigma`` of that volume: the SENSE-combined
image then has the noisy file's complex noise, ``sigma`` per real component), a number sets the SNR in dB relative
to the image RMS as ``mrdpm simulate`` does.

Reconstruction: ``--samples`` (16) posterior samples per slice with ``--sampler`` (DDS) at each ``--nfe``, true coil
maps and noise level (:func:`mrdpm.tasks.dpm.reconstruct_slice`); the reconstruction with N samples is the mean of
the first N of them, so one sampling run gives every N of ``N_VALUES``. Metrics on magnitudes over the whole image
(:func:`mrdpm.eval.metrics.evaluate`): PSNR, SSIM, NMSE as mean +- sd (ddof 1) over slices; wall seconds per slice
for all samples. Baseline, for scale: the zero-filled SENSE combination of the same acquisitions.

Targets (issue 5): the denoised-data prior closes at least half of the PSNR gap between the noisy-data prior and
the clean oracle, ``(denoised - noisy) / (clean - noisy) >= 0.5`` (means over the slices all three share, at
``TARGET_N`` samples), per acceleration and NFE; averaging ``TARGET_N`` = 8 samples gains at least 1 dB PSNR over a
single sample (paired mean over slices), per prior, acceleration and NFE.

Outputs (``--out``): ``small_data.json`` (settings, commands, machine, chosen slices, every per-slice record,
summary, targets) and ``small_data.md``, rewritten after every record; ``small_data.png`` (PSNR against N per prior
at the largest NFE, and against NFE at N = 8), drawn at the end of each call. ``--resume`` keeps the saved records
and skips them; it refuses other settings or other weights for a prior of the same name (priors, accelerations and
NFE budgets may be added).
``--max-items K`` runs at most K slices per (prior, acceleration, NFE) in this call, to stage a long run.

Run (from the repository root, after training the three priors; see benchmarks/README.md):

    python benchmarks/small_data.py --priors noisy=../runs/neo-noisy/model.json,\
denoised=../runs/neo-denoised/model.json,clean=../runs/neo-clean/model.json --resume
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # sleeping, not spinning, OpenMP threads on a shared CPU

import argparse
import hashlib
import json
import math
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from common import csv_list, machine_info, read_json, run_script, trained_subjects
from mrdpm.data.config import ORIENTATION_AXIS
from mrdpm.data.neonatal import CONTRASTS, MANIFEST_NAME, foreground_mask
from mrdpm.data.normalise import percentile_factor
from mrdpm.data.simulate import SimulationSettings, simulate_case
from mrdpm.diffusion.guidance import bind
from mrdpm.errors import MrdpmError
from mrdpm.eval.classical import zero_filled
from mrdpm.eval.metrics import evaluate
from mrdpm.io.read import read_image
from mrdpm.models.checkpoint import read_card, resolve_model
from mrdpm.tasks.dpm import SAMPLERS, DpmSettings, load_prior, reconstruct_slice

ROOT = Path(__file__).resolve().parents[1]
N_VALUES = (1, 2, 4, 8, 16)  # samples averaged into a reconstruction
TARGET_N = 8
GAP_TARGET, AVERAGING_TARGET_DB = 0.5, 1.0
GAP_PRIORS = ("noisy", "denoised", "clean")
SLICE_SPACING_MM = 8.0  # between the chosen slices of one volume and orientation
METRICS = ("psnr", "ssim", "nmse")
# Settings that must agree between a run and the results it resumes (priors are checked by name and sha256).
FINGERPRINT_KEYS = ("data_dir", "manifest_sha256", "subjects", "slices_per_class", "coils", "snr_db", "mask",
                    "center_fraction", "seed", "samples", "sampler", "batch_size")


@dataclass(frozen=True)
class EvalSlice:
    """One held-out ground-truth slice and where it comes from."""

    subject: str
    contrast: str
    resolution: str  # nominal voxel size from the file name, e.g. "1p5mm"
    orientation: str
    index: int
    image: torch.Tensor  # (H, W) float32 clean magnitude divided by its 99th percentile
    noise_sigma: float  # the 1 T data's noise (per real component) in the same units

    @property
    def slice_id(self) -> str:
        """E.g. ``neo36_T2w_1p5mm/coronal-045``."""
        return f"{self.subject}_{self.contrast}_{self.resolution}/{self.orientation}-{self.index:03d}"

    @property
    def class_name(self) -> str:
        """The prior's class of this slice, e.g. ``T2w-coronal``."""
        return f"{self.contrast}-{self.orientation}"


def _priors(text: str) -> dict[str, str]:
    pairs = [t.partition("=") for t in csv_list(text)]
    if not pairs or any(not name or not sep or not path for name, sep, path in pairs):
        raise argparse.ArgumentTypeError(f"{text!r} is not name=card[,name=card...]")
    return {name: path for name, _, path in pairs}


def _snr(text: str) -> str | float:
    if text == "native":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--snr-db must be 'native' or a number, got {text!r}") from None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--priors", type=_priors, required=True,
                   help="name=card pairs, e.g. noisy=A.json,denoised=B.json,clean=C.json (the gap target needs "
                        "these three names)")
    p.add_argument("--data-dir", type=Path, default=ROOT / "runs" / "neonatal-1t",
                   help=f"folder of `mrdpm neonatal synthesise` (with {MANIFEST_NAME})")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--subjects", type=csv_list, default=None, help="default: the manifest's held-out subjects")
    p.add_argument("--slices-per-class", type=int, default=1,
                   help="slices per volume and orientation (so per class, subject and matrix size)")
    p.add_argument("--accelerations", type=lambda s: [float(t) for t in csv_list(s)], default=[1.5, 2.0, 4.0])
    p.add_argument("--nfe", type=lambda s: [int(t) for t in csv_list(s)], default=[20, 50])
    p.add_argument("--samples", type=int, default=max(N_VALUES))
    p.add_argument("--sampler", choices=sorted(SAMPLERS), default="dds")
    p.add_argument("--batch-size", type=int, default=None, help="samples per network batch (default: all)")
    p.add_argument("--coils", type=int, default=8)
    p.add_argument("--snr-db", type=_snr, default="native", help="'native' (the data set's noise) or dB")
    p.add_argument("--mask", default="gaussian1d", help="mask kind (mrdpm.physics.masks)")
    p.add_argument("--center-fraction", type=float, default=0.08)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--resume", action="store_true", help="keep and skip the records already in small_data.json")
    p.add_argument("--max-items", type=int, default=None,
                   help="at most this many slices per (prior, acceleration, NFE) in this call")
    args = p.parse_args(argv)
    if min(args.slices_per_class, args.samples, args.coils) < 1 or min(args.nfe, default=0) < 2:
        p.error("need --slices-per-class, --samples, --coils >= 1 and --nfe values >= 2")
    if not args.accelerations or min(args.accelerations) < 1 or (args.max_items is not None and args.max_items < 1):
        p.error("need accelerations >= 1 and --max-items >= 1")
    return args


# ---------------------------------------------------------------------------------------------- shared helpers


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for one value)."""
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def central_indices(volume: torch.Tensor, axis: int, voxel_mm: float, count: int, spacing_mm: float) -> list[int]:
    """``count`` slice indices along ``axis``, ``spacing_mm`` apart around the middle of the foreground's extent.

    Foreground: voxels above 10% of the volume's 99th percentile (:func:`mrdpm.data.neonatal.foreground_mask`);
    indices are clipped to that extent.
    """
    other = tuple(a for a in range(volume.ndim) if a != axis)
    present = torch.nonzero(foreground_mask(volume).any(dim=other)).flatten()
    if present.numel() == 0:
        raise MrdpmError("volume has no foreground")
    lo, hi = int(present[0]), int(present[-1])
    centre = (lo + hi) // 2
    return [min(max(centre + round((j - (count - 1) / 2) * spacing_mm / voxel_mm), lo), hi) for j in range(count)]


def start_report(path: Path, benchmark: str, settings: dict, keys: tuple[str, ...], command: str,
                 resume: bool) -> dict:
    """A new report, or the saved one at ``path`` when resuming (its ``keys`` settings must equal ``settings``')."""
    report = {"benchmark": benchmark, "settings": settings, "runs": [], "records": []}
    if resume and path.is_file():
        report = json.loads(path.read_text())
        changed = sorted(k for k in keys if report["settings"].get(k) != settings.get(k))
        if changed:
            raise MrdpmError(f"--resume: settings {changed} differ from those of the saved results; drop --resume "
                             "or choose another --out", path=path)
        report["settings"] = {**report["settings"], **settings}
    report["runs"].append({"index": len(report["runs"]), "command": command, "machine": machine_info(),
                           "started": time.strftime("%Y-%m-%d %H:%M:%S")})
    return report


def write_json(report: dict, path: Path) -> None:
    """Write ``report`` to ``path`` atomically (temporary file, then rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    os.replace(tmp, path)


def run_lines(report: dict) -> list[str]:
    """One markdown bullet per call of the benchmark: command, machine, start time."""
    lines = []
    for run in report["runs"]:
        m = run["machine"]
        lines.append(f"- run {run['index']}: `{run['command']}`; {m['cpu']} ({m['cpu_count']} CPUs), "
                     f"{m['torch_threads']} torch threads, torch {m['torch']}, load average "
                     f"{m['load_average']:.2f} at start, {run['started']}")
    return lines


def check_no_leak(card: dict, subjects: list[str], what: str, path: Path) -> None:
    """Refuse a model whose card lists an evaluated subject among its training subjects."""
    leaked = sorted(trained_subjects(card) & set(subjects))
    if leaked:
        raise MrdpmError(f"{what} was trained on evaluated subjects {leaked}", path=path)


# ------------------------------------------------------------------------------------------------------- slices


def read_manifest(data_dir: Path) -> dict:
    """The manifest ``neonatal.json`` of a data set written by ``mrdpm neonatal synthesise``."""
    return read_json(data_dir / MANIFEST_NAME,
                     "no manifest: synthesise the data with `mrdpm neonatal synthesise` first")


def eval_slices(data_dir: Path, subjects: list[str] | None, count: int) -> tuple[list[EvalSlice], dict]:
    """The held-out slices (ordered subject, resolution, contrast, orientation, rank) and the manifest."""
    manifest_path = data_dir / MANIFEST_NAME
    manifest = read_manifest(data_dir)
    subjects = subjects or manifest["held_out"]
    files = [r for r in manifest["files"] if r["subject"] in subjects]
    missing = sorted(set(subjects) - {r["subject"] for r in files})
    if missing:
        raise MrdpmError(f"subjects {missing} are not in the manifest", path=manifest_path)
    files.sort(key=lambda r: (subjects.index(r["subject"]), r["clean"].split("_")[2], CONTRASTS.index(r["contrast"])))
    out = []
    for record in files:
        volume = read_image(data_dir / record["clean"])
        data = volume.data.float()
        for orientation, axis in ORIENTATION_AXIS.items():
            for index in central_indices(data, axis, volume.voxel_size_mm[axis], count, SLICE_SPACING_MM):
                image = data.movedim(axis, 0)[index]
                scale = float(percentile_factor(image, 99.0))
                out.append(EvalSlice(record["subject"], record["contrast"], record["clean"].split("_")[2],
                                     orientation, index, image / scale, record["noise_sigma"] / scale))
    return out, manifest


def acquisition_snr_db(item: EvalSlice, snr_db: str | float) -> float:
    """SNR (dB, relative to the image RMS) of the simulated acquisition: ``native`` gives the data set's noise.

    The SENSE-combined noise of :func:`mrdpm.data.simulate.simulate_case` is complex with ``E|n|^2 = std^2``;
    the 1 T data have ``sigma`` per real component, so ``std = sigma sqrt(2)``.
    """
    if snr_db != "native":
        return float(snr_db)
    rms = float(item.image.square().mean().sqrt())
    return 20 * math.log10(rms / (item.noise_sigma * math.sqrt(2.0)))


# ------------------------------------------------------------------------------------------------- evaluation


def n_curve(target: torch.Tensor, samples: torch.Tensor, n_values: tuple[int, ...]) -> dict[str, dict[str, float]]:
    """Metrics of the mean of the first N samples ``(S, H, W)`` against ``target`` ``(H, W)``, for each N <= S."""
    return {str(n): {k: v for k, v in evaluate(target.abs(), samples[:n].mean(dim=0).abs()).items() if k in METRICS}
            for n in n_values if n <= samples.shape[0]}


def gap_closed(noisy: float, denoised: float, clean: float) -> float:
    """Fraction of the noisy-to-clean PSNR gap that the denoised-data prior closes; NaN when there is no gap."""
    gap = clean - noisy
    return (denoised - noisy) / gap if gap > 0 else math.nan


def summarise(records: list[dict]) -> list[dict]:
    """One row per (prior, acceleration, NFE, N): mean and sd over slices of each metric."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["prior"], r["acceleration"], r["nfe"]), []).append(r)
    rows = []
    for (prior, acceleration, nfe), group in groups.items():
        for n in group[0]["by_n"]:
            row = {"prior": prior, "acceleration": acceleration, "nfe": nfe, "n": int(n), "slices": len(group),
                   "achieved_acceleration": mean_sd([r["achieved_acceleration"] for r in group])[0],
                   "seconds_per_slice": mean_sd([r["seconds"] for r in group])[0]}
            for metric in METRICS:
                row[metric], row[f"{metric}_sd"] = mean_sd([r["by_n"][n][metric] for r in group])
            rows.append(row)
    return rows


def _psnr(records: list[dict], prior: str, acceleration: float, nfe: int, n: int) -> dict[str, float]:
    return {r["slice"]: r["by_n"][str(n)]["psnr"] for r in records
            if (r["prior"], r["acceleration"], r["nfe"]) == (prior, acceleration, nfe) and str(n) in r["by_n"]}


def targets(records: list[dict]) -> dict:
    """The issue's two targets from per-slice PSNR (see the module docstring)."""
    settings = sorted({(r["acceleration"], r["nfe"]) for r in records})
    gaps = []
    for acceleration, nfe in settings:
        by = {p: _psnr(records, p, acceleration, nfe, TARGET_N) for p in GAP_PRIORS}
        common = sorted(set.intersection(*(set(v) for v in by.values())))
        if common:
            means = {p: float(np.mean([by[p][s] for s in common])) for p in GAP_PRIORS}
            fraction = gap_closed(means["noisy"], means["denoised"], means["clean"])
            gaps.append({"acceleration": acceleration, "nfe": nfe, "slices": len(common), **means,
                         "fraction": fraction, "met": bool(fraction >= GAP_TARGET)})
    gains = []
    for prior in dict.fromkeys(r["prior"] for r in records):
        for acceleration, nfe in settings:
            one, many = (_psnr(records, prior, acceleration, nfe, n) for n in (1, TARGET_N))
            common = sorted(set(one) & set(many))
            if common:
                gain = float(np.mean([many[s] - one[s] for s in common]))
                gains.append({"prior": prior, "acceleration": acceleration, "nfe": nfe, "slices": len(common),
                              "gain_db": gain, "met": bool(gain >= AVERAGING_TARGET_DB)})
    return {"gap_closed": gaps, "averaging_gain": gains}


def reconstruct_item(denoiser, label: int, item: EvalSlice, settings: SimulationSettings, dpm: DpmSettings,
                     device: torch.device) -> tuple[dict, float, float]:
    """Simulate one acquisition and sample it: (metrics by N, seconds of sampling, achieved acceleration)."""
    case = simulate_case(item.image[None], settings)
    start = time.perf_counter()
    result, _ = reconstruct_slice(bind(denoiser, class_labels=label), case.kspace[0].to(device),
                                  case.mask.to(device), case.maps[0].to(device), dpm,
                                  noise_std=case.attrs["noise_std"])
    seconds = time.perf_counter() - start
    return n_curve(case.target[0], result.samples.cpu(), N_VALUES), seconds, case.acceleration


def load_priors(args: argparse.Namespace, subjects: list[str], classes: set[str], device: torch.device) -> dict:
    """Name -> (denoiser, card path, card); checks classes and that no evaluated subject was trained on."""
    priors = {}
    for name, path in args.priors.items():
        card_path = resolve_model(path)
        card = read_card(card_path)
        missing = sorted(classes - set(card["class_names"]))
        if missing:
            raise MrdpmError(f"prior {name!r} lacks the classes {missing} (it has {card['class_names']})",
                             path=card_path)
        check_no_leak(card, subjects, f"prior {name!r}", card_path)
        denoiser, _ = load_prior(str(card_path), device)
        priors[name] = (denoiser, card_path, card)
    return priors


def acquisition(args: argparse.Namespace, item: EvalSlice, acceleration: float, j: int) -> SimulationSettings:
    """The simulated acquisition of the ``j``-th slice at ``acceleration`` (the same for every prior)."""
    return SimulationSettings(coils=args.coils, mask=args.mask, acceleration=acceleration,
                              center_fraction=args.center_fraction, snr_db=acquisition_snr_db(item, args.snr_db),
                              seed=args.seed + j)


def zero_filled_baseline(args: argparse.Namespace, slices: list[EvalSlice]) -> list[dict]:
    """Per (acceleration, slice): metrics of the zero-filled SENSE combination of the same acquisition."""
    rows = []
    for acceleration in args.accelerations:
        for j, item in enumerate(slices[:args.max_items]):
            case = simulate_case(item.image[None], acquisition(args, item, acceleration, j))
            metrics = evaluate(case.target[0].abs(), zero_filled(case.kspace[0], case.maps[0]).abs())
            rows.append({"acceleration": acceleration, "slice": item.slice_id, **{k: metrics[k] for k in METRICS}})
    return rows


def run(args: argparse.Namespace, report: dict, slices: list[EvalSlice], priors: dict, device: torch.device) -> None:
    """Every (NFE, acceleration, prior, slice) not yet recorded, saving after each record."""
    done = {r["key"] for r in report["records"]}
    index = report["runs"][-1]["index"]
    for nfe in sorted(args.nfe):
        for acceleration in args.accelerations:
            for name, (denoiser, card_path, card) in priors.items():
                dpm = DpmSettings(model=str(card_path), sampler=args.sampler, nfe=nfe, samples=args.samples,
                                  seed=args.seed, batch_size=args.batch_size)
                for j, item in enumerate(slices[:args.max_items]):
                    key = f"{name}|x{acceleration:g}|nfe{nfe}|{item.slice_id}"
                    if key in done:
                        continue
                    settings = acquisition(args, item, acceleration, j)
                    label = card["class_names"].index(item.class_name)
                    by_n, seconds, achieved = reconstruct_item(denoiser, label, item, settings, dpm, device)
                    report["records"].append({
                        "key": key, "prior": name, "acceleration": acceleration,
                        "achieved_acceleration": round(achieved, 4), "nfe": nfe, "slice": item.slice_id,
                        "subject": item.subject, "class": item.class_name, "resolution": item.resolution,
                        "shape": list(item.image.shape), "snr_db": round(settings.snr_db, 3), "by_n": by_n,
                        "seconds": round(seconds, 3), "run": index})
                    done.add(key)
                    save_report(report, args.out)
                    print(f"{key}: PSNR {by_n['1']['psnr']:.2f} dB (N=1) -> "
                          f"{by_n[max(by_n, key=int)]['psnr']:.2f} dB (N={max(by_n, key=int)}), {seconds:.1f} s",
                          flush=True)


# ---------------------------------------------------------------------------------------------------- outputs


def plot(summary: list[dict], path: Path) -> None:
    """PSNR against N at the largest NFE (left) and against NFE at N = ``TARGET_N`` (right)."""
    fig = Figure(figsize=(10, 3.8))
    left, right = fig.subplots(1, 2)
    priors = list(dict.fromkeys(r["prior"] for r in summary))
    accelerations = sorted({r["acceleration"] for r in summary})
    top_nfe = max(r["nfe"] for r in summary)
    styles = ("-", "--", ":", "-.")
    for p, prior in enumerate(priors):
        for a, acceleration in enumerate(accelerations):
            rows = [r for r in summary if (r["prior"], r["acceleration"]) == (prior, acceleration)]
            style = {"color": f"C{p}", "linestyle": styles[a % len(styles)], "marker": ".",
                     "label": f"{prior} x{acceleration:g}"}
            by_n = sorted((r["n"], r["psnr"]) for r in rows if r["nfe"] == top_nfe)
            by_nfe = sorted((r["nfe"], r["psnr"]) for r in rows if r["n"] == TARGET_N)
            if by_n:
                left.plot(*zip(*by_n, strict=True), **style)
            if by_nfe:
                right.plot(*zip(*by_nfe, strict=True), **style)
    left.set(xscale="log", xlabel="posterior samples averaged (N)", ylabel="PSNR (dB)",
             title=f"PSNR vs N ({top_nfe} NFE)")
    left.set_xticks(list(N_VALUES), [str(n) for n in N_VALUES])
    right.set(xlabel="NFE per sample", ylabel="PSNR (dB)", title=f"PSNR vs NFE (N = {TARGET_N})")
    right.set_xticks(sorted({r["nfe"] for r in summary}))
    for ax in (left, right):
        ax.grid(alpha=0.3)
    left.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _class_lines(records: list[dict]) -> list[str]:
    """PSNR per class and matrix size at N = TARGET_N and the largest NFE: one model serves them all."""
    top = max(r["nfe"] for r in records)
    chosen = [r for r in records if r["nfe"] == top and str(TARGET_N) in r["by_n"]]
    if not chosen:
        return []
    columns = sorted({r["class"] for r in chosen}) + sorted({r["resolution"] for r in chosen})
    lines = ["", f"### PSNR (dB) by class and matrix size (N = {TARGET_N}, {top} NFE)", "",
             "| prior | R | " + " | ".join(columns) + " |", "| --- " * (len(columns) + 2) + "|"]
    for prior, acceleration in dict.fromkeys((r["prior"], r["acceleration"]) for r in chosen):
        rows = [r for r in chosen if (r["prior"], r["acceleration"]) == (prior, acceleration)]
        cells = []
        for c in columns:
            values = [r["by_n"][str(TARGET_N)]["psnr"] for r in rows if c in (r["class"], r["resolution"])]
            cells.append(f"{np.mean(values):.2f}" if values else "-")
        lines.append(f"| {prior} | {acceleration:g} | " + " | ".join(cells) + " |")
    return lines


def write_markdown(report: dict, path: Path) -> None:
    s, t = report["settings"], report["targets"]
    priors = ", ".join(f"{n} ({p['card']}, sha256 {p['sha256'][:12]})" for n, p in s["priors"].items())
    lines = [f"Held-out subjects {s['subjects']} of {s['data_dir']}: CLEAN volumes as ground truth, "
             f"{s['slices_per_class']} slice(s) per volume and orientation (indices in small_data.json), each "
             f"conditioned on its class; {s['coils']} coils, {s['mask']} masks (centre {s['center_fraction']}), "
             f"SNR {s['snr_db']}; {s['sampler']}, {s['samples']} posterior samples per slice, reconstruction = "
             f"mean of the first N. Priors: {priors}. Metrics on magnitudes over the whole image, mean ± sd over "
             "slices; seconds of wall time per slice for all samples.", "", *run_lines(report), "",
             f"### Target: denoised-data prior closes >= {GAP_TARGET:g} of the noisy-to-clean PSNR gap "
             f"(N = {TARGET_N}, mean PSNR dB over the slices all three share)", "",
             "| R | NFE | slices | noisy | denoised | clean | gap dB | fraction closed | met |", "| --- " * 9 + "|"]
    for g in t["gap_closed"]:
        lines.append(f"| {g['acceleration']:g} | {g['nfe']} | {g['slices']} | {g['noisy']:.2f} | "
                     f"{g['denoised']:.2f} | {g['clean']:.2f} | {g['clean'] - g['noisy']:+.2f} | {g['fraction']:.2f} | "
                     f"{'yes' if g['met'] else 'no'} |")
    lines += ["", f"### Target: averaging {TARGET_N} samples gains >= {AVERAGING_TARGET_DB:g} dB over one "
              "(paired mean over slices)", "", "| prior | R | NFE | slices | gain dB | met |", "| --- " * 6 + "|"]
    lines += [f"| {g['prior']} | {g['acceleration']:g} | {g['nfe']} | {g['slices']} | {g['gain_db']:+.2f} | "
              f"{'yes' if g['met'] else 'no'} |" for g in t["averaging_gain"]]
    summary = report["summary"]
    n_values = sorted({r["n"] for r in summary})
    lines += ["", "### PSNR (dB) against the number of samples averaged", "",
              "| prior | R | NFE | slices | " + " | ".join(f"N={n}" for n in n_values) + " |",
              "| --- " * (len(n_values) + 4) + "|"]
    for key in dict.fromkeys((r["prior"], r["acceleration"], r["nfe"]) for r in summary):
        rows = {r["n"]: r for r in summary if (r["prior"], r["acceleration"], r["nfe"]) == key}
        first = next(iter(rows.values()))
        cells = [f"{rows[n]['psnr']:.2f} ± {rows[n]['psnr_sd']:.2f}" if n in rows else "-" for n in n_values]
        lines.append(f"| {key[0]} | {key[1]:g} (x{first['achieved_acceleration']:.2f}) | {key[2]} | "
                     f"{first['slices']} | " + " | ".join(cells) + " |")
    baseline = report.get("zero_filled") or []
    if baseline:
        lines += ["", "### Baseline: zero-filled SENSE combination of the same acquisitions", "",
                  "| R | slices | PSNR dB | SSIM | NMSE |", "| --- " * 5 + "|"]
        for acceleration in sorted({r["acceleration"] for r in baseline}):
            rows = [r for r in baseline if r["acceleration"] == acceleration]
            cells = [mean_sd([r[m] for r in rows]) for m in METRICS]
            lines.append(f"| {acceleration:g} | {len(rows)} | {cells[0][0]:.2f} ± {cells[0][1]:.2f} | "
                         f"{cells[1][0]:.4f} | {cells[2][0]:.4f} |")
    lines += _class_lines(report["records"])
    lines += ["", "### All metrics", "", "| prior | R | NFE | N | PSNR dB | SSIM | NMSE | s / slice | slices |",
              "| --- " * 9 + "|"]
    lines += [f"| {r['prior']} | {r['acceleration']:g} | {r['nfe']} | {r['n']} | {r['psnr']:.2f} ± "
              f"{r['psnr_sd']:.2f} | {r['ssim']:.4f} ± {r['ssim_sd']:.4f} | {r['nmse']:.4f} ± {r['nmse_sd']:.4f} | "
              f"{r['seconds_per_slice']:.1f} | {r['slices']} |" for r in summary]
    path.write_text("\n".join(lines) + "\n")


def save_report(report: dict, out: Path, figure: bool = False) -> None:
    """Rewrite small_data.json and .md (and with ``figure`` the .png, a slow part) from the records."""
    report["summary"] = summarise(report["records"])
    report["targets"] = targets(report["records"])
    write_json(report, out / "small_data.json")
    if report["records"]:
        write_markdown(report, out / "small_data.md")
        if figure:
            plot(report["summary"], out / "small_data.png")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    command = shlex.join(["python", "benchmarks/small_data.py", *(sys.argv[1:] if argv is None else argv)])
    slices, manifest = eval_slices(args.data_dir, args.subjects, args.slices_per_class)
    subjects = list(dict.fromkeys(s.subject for s in slices))
    priors = load_priors(args, subjects, {s.class_name for s in slices}, device)
    settings = {"data_dir": str(args.data_dir.resolve()),
                "manifest_sha256": sha256_of(args.data_dir / MANIFEST_NAME), "subjects": subjects,
                "slices_per_class": args.slices_per_class, "coils": args.coils, "snr_db": args.snr_db,
                "mask": args.mask, "center_fraction": args.center_fraction, "seed": args.seed,
                "samples": args.samples, "sampler": args.sampler, "batch_size": args.batch_size,
                "slice_spacing_mm": SLICE_SPACING_MM, "manifest_snr_db": manifest.get("snr_db")}
    args.out.mkdir(parents=True, exist_ok=True)
    report = start_report(args.out / "small_data.json", "small_data", settings, FINGERPRINT_KEYS, command,
                          args.resume)
    saved = report["settings"].get("priors", {})  # priors may be added to saved results, never swapped
    current = {n: {"card": str(p[1]), "sha256": p[2]["weights_sha256"], "summary": p[2].get("summary")}
               for n, p in priors.items()}
    changed = sorted(n for n in current if n in saved and saved[n]["sha256"] != current[n]["sha256"])
    if changed:
        raise MrdpmError(f"--resume: the weights of priors {changed} differ from those of the saved results",
                         path=args.out / "small_data.json")
    report["settings"]["priors"] = {**saved, **current}
    report["slices"] = [s.slice_id for s in slices]
    run(args, report, slices, priors, device)
    fresh = zero_filled_baseline(args, slices)
    keys = {(r["acceleration"], r["slice"]) for r in fresh}  # a call with fewer accelerations keeps the others
    report["zero_filled"] = [r for r in report.get("zero_filled") or [] if (r["acceleration"], r["slice"]) not in keys]
    report["zero_filled"] += fresh
    save_report(report, args.out, figure=True)
    return report


if __name__ == "__main__":
    run_script(main)
