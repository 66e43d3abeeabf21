"""MR fingerprinting benchmark (MRF-IDDPM, arXiv 2410.23318, Table 1): T1/T2 maps of held-out volumes.

Data: the Deli-CS quantitative maps (``shared/data/mrf-qmaps``). Models are trained on 8 volumes (``vol00`` to
``vol07``, :file:`configs/mrf-small.toml`); ``vol08`` and ``vol09`` are held out and evaluated here (checked against
the model cards). Each evaluated slice is simulated exactly as the training pairs were: the settings and seed come
from the pairs' manifest (``--pairs``; default paper-like: one coil, spiral 2.5x below Nyquist at the edge, 200 of
1000 repetitions, no noise), through :func:`mrdpm.data.mrf_pairs.simulate_case`.

Methods (:mod:`mrdpm.tasks.mrf`): ``svd`` (gridding + matching), ``low-rank`` (subspace CG, ``--cg-iterations``),
``unet`` (regression U-Net, ``--unet``), ``diffusion`` (MRF-IDDPM, ``--model``: ``--steps`` respaced steps,
``--samples`` samples, ``--patch`` windows every ``--stride`` pixels, on the tissue's bounding box unless
``--no-roi``); ``--dc-weight`` > 0 makes the U-Net's and every diffusion sample's estimate consistent with the
k-space (``--dc-iterations`` CG iterations; not in the paper: :mod:`mrdpm.tasks.mrf`). Matching uses the head
(the support mask of the maps); the metrics use the brain, as the issue and the paper: the files have no brain
mask, so it is :func:`mrdpm.data.mrf_qmaps.brain_mask` of the true T2 and head (the region inside the skull's
short-T2 ring). The scalp and skull's short T2 (< 40 ms) dominate a MAPE taken over the head, so
that MAPE is reported too (``*_head``, last columns).

Metrics per slice, then mean +- sd over slices: MAPE of T1 and T2 (%, inside the brain), RMSE (ms), NRMSE, SSIM
of the T1 and T2 maps (both zero outside the brain), SSIM of the time-series (subspace) images: the mean over the K
coefficient images of the SSIM of their magnitudes against the truth's coefficients in the method's own basis
(reference basis of the full 1000-frame series for the models, the acquired frames' basis for svd / low-rank);
NFE (sequential network evaluations) and wall seconds per slice (gridding, method and matching).

Outputs (``--out``, ``--name``): ``<name>.json`` (settings, commands, machine, every record; rewritten after each
record) and ``<name>.md`` (a table like the paper's Table 1). ``--resume`` keeps and skips the records already
there whose method settings and model are unchanged (the simulation must match).

Run (from the repository root, after `mrdpm mrf make-pairs` and training, see configs/mrf-small.toml):

    python benchmarks/mrf.py --model runs/mrf-small/model.json --unet runs/mrf-small-unet/unet.json --resume
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # sleeping, not spinning, OpenMP threads on a shared CPU

import argparse
import json
import shlex
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from common import csv_list, machine_info, run_script, trained_subjects
from mrdpm.data.mrf_pairs import MrfSimulationSettings, build_simulator, simulate_case
from mrdpm.data.mrf_qmaps import MrfSimulator, QMaps, brain_mask, load_qmaps, time_series_subspace
from mrdpm.errors import MrdpmError
from mrdpm.eval.metrics import ssim
from mrdpm.models.checkpoint import resolve_model
from mrdpm.tasks.dpm import load_prior
from mrdpm.tasks.mrf import (
    MrfSetup,
    ReconOptions,
    check_model_basis,
    check_mrf_model,
    map_metrics,
    model_percentile,
    reconstruct_slice,
)
from mrdpm.tasks.mrf_unet import load_unet_regression

ROOT = Path(__file__).resolve().parents[1]
HELD_OUT = ("vol08", "vol09")  # configs/mrf-small.toml
METHODS = ("svd", "low-rank", "unet", "diffusion")
LABELS = {"svd": "SVD-MRF (gridding)", "low-rank": "low-rank CG", "unet": "U-Net regression",
          "diffusion": "MRF-IDDPM (diffusion)"}
METRICS = ("mape_t1", "mape_t2", "rmse_t1_ms", "rmse_t2_ms", "nrmse_t1", "nrmse_t2", "ssim_t1", "ssim_t2",
           "ssim_tsmi", "nfe", "seconds", "mape_t1_head", "mape_t2_head")
# The paper's Table 1 on its own in-vivo data (FACTS.md 001): MAPE T1 %, T2 %, TSMI SSIM.
PAPER = (("SVD-MRF", 16.98, 140.86, 0.7219), ("LRTV", 15.94, 35.96, 0.7932), ("DRUNet", 8.93, 21.07, 0.8388),
         ("SCQ", 9.58, 23.67, None), ("MRF-IDDPM", 7.20, 17.69, 0.8729))


def _slices(text: str) -> slice:
    parts = text.split(":")
    if len(parts) == 1:
        return slice(int(parts[0]), int(parts[0]) + 1)
    start, stop = (int(p) if p else None for p in parts)
    return slice(start, stop)


def _slice_text(index: slice) -> str:
    return f"{index.start or 0}:{'' if index.stop is None else index.stop}"


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments both MRF scripts take for the data: shared folder, pairs' manifest, held-out volumes."""
    p.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "data", help="shared data folder")
    p.add_argument("--pairs", type=Path, default=ROOT / "runs" / "mrf-pairs" / "mrf_pairs.json",
                   help="manifest of the training pairs: the simulation settings and seed (default settings if absent)")
    p.add_argument("--volumes", type=csv_list, default=list(HELD_OUT), help="held-out volumes to evaluate")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_arguments(p)
    p.add_argument("--slices", type=_slices, default=slice(None),
                   help="slice positions per volume: i or a:b (default all 15)")
    p.add_argument("--methods", type=csv_list, default=list(METHODS), help=f"subset of {','.join(METHODS)}")
    p.add_argument("--model", default=None, help="diffusion model card (method diffusion)")
    p.add_argument("--unet", default=None, help="U-Net card (method unet)")
    p.add_argument("--steps", type=int, default=50, help="diffusion: respaced steps (default 50)")
    p.add_argument("--samples", type=int, default=10, help="diffusion: samples per slice (default 10)")
    p.add_argument("--patch", type=int, default=64, help="diffusion: window size, 0 = whole region (default 64)")
    p.add_argument("--stride", type=int, default=8, help="diffusion: window step (default 8, as the paper)")
    p.add_argument("--eta", type=float, default=1.0, help="diffusion: 1 DDPM ancestral, 0 DDIM (default 1)")
    p.add_argument("--no-roi", action="store_true", help="diffusion: sample the whole slice, not the head's box")
    p.add_argument("--batch-size", type=int, default=64, help="windows per network call (default 64)")
    p.add_argument("--cg-iterations", type=int, default=20, help="low-rank: CG iterations (default 20)")
    p.add_argument("--dc-weight", type=float, default=0.0,
                   help="unet, diffusion: data-consistency weight (default 0: the network's output as it is)")
    p.add_argument("--dc-iterations", type=int, default=30, help="data-consistency CG iterations (default 30)")
    p.add_argument("--seed", type=int, default=0, help="diffusion seed (default 0)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="results folder")
    p.add_argument("--name", default="mrf", help="results file stem (default mrf)")
    p.add_argument("--resume", action="store_true", help="keep and skip the records already in <name>.json")
    args = p.parse_args(argv)
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        p.error(f"unknown methods {unknown}; choose from {list(METHODS)}")
    return args


def simulation(args: argparse.Namespace) -> tuple[MrfSimulationSettings, int, str]:
    """Settings and seed of the training pairs (their manifest), or the defaults."""
    if not args.pairs.is_file():
        return MrfSimulationSettings(), 0, "defaults (no pairs manifest found)"
    manifest = json.loads(args.pairs.read_text())
    settings = MrfSimulationSettings.from_dict(manifest["simulator"]["settings"])
    return settings, int(manifest["seed"]), str(args.pairs)


def load_models(args: argparse.Namespace, reference_basis: torch.Tensor) -> tuple[dict, dict, float]:
    """The models of the chosen methods, what the report says about them, and their intensity percentile."""
    models, about, percentile = {}, {}, 99.0
    for method, path in (("diffusion", args.model), ("unet", args.unet)):
        if method not in args.methods:
            continue
        if path is None:
            raise MrdpmError(f"method {method} needs --{'model' if method == 'diffusion' else 'unet'}")
        if method == "unet":
            model, card = load_unet_regression(path)
            card_path = Path(path)
        else:
            card_path = resolve_model(path)
            model, card = load_prior(str(card_path))
            check_mrf_model(model, reference_basis.shape[1])
        leaked = sorted(trained_subjects(card) & set(args.volumes))
        if leaked:
            raise MrdpmError(f"the {method} model was trained on evaluated volumes {leaked}", path=card_path)
        percentile = model_percentile(card, card_path)
        models[method] = model
        about[method] = {"card": str(card_path), "summary": card.get("summary"),
                         "sha256": card.get("weights_sha256"), "trained_subjects": sorted(trained_subjects(card)),
                         "basis_check": check_model_basis(card, card_path, reference_basis)}
    return models, about, percentile


def tsmi_ssim(estimate: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean over the K coefficient images of the SSIM of magnitudes (both zero outside ``mask``)."""
    return float(np.mean([ssim(t.abs() * mask, e.abs() * mask, mask) for e, t in zip(estimate, truth, strict=True)]))


def summarise(records: list[dict], methods: list[str]) -> list[dict]:
    rows = []
    for method in methods:
        group = [r for r in records if r["method"] == method]
        if group:
            row = {"method": method, "slices": len(group)}
            for metric in METRICS:
                values = [r[metric] for r in group]
                row[metric] = float(np.mean(values))
                row[f"{metric}_sd"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
            rows.append(row)
    return rows


def _dc_text(options: dict) -> str:
    if not options.get("dc_weight"):
        return "Network outputs matched as they are (no data consistency)."
    return (f"U-Net and diffusion estimates (every sample) made consistent with the k-space: weight "
            f"{options['dc_weight']}, {options['dc_iterations']} CG iterations.")


def write_markdown(report: dict, path: Path) -> None:
    s, o, sim = report["settings"], report["settings"]["options"], report["settings"]["simulation"]
    n_slices = len({(r["volume"], r["slice"]) for r in report["records"]})
    noise = "no noise" if sim["snr_db"] is None else f"SNR {sim['snr_db']} dB"
    lines = [f"Command: `{report['runs'][-1]['command']}`", "",
             f"Held-out volumes {s['volumes']}, slice positions {s['slices']} ({n_slices} slices); simulation: "
             f"{s['simulation_source']} ({sim['n_coils']} coil(s), undersampling {sim['undersampling']}, "
             f"{sim['n_frames_acquired']} of {sim['n_frames']} frames, "
             f"{noise}). Diffusion: "
             f"{o['steps']} steps, {o['samples']} samples, patch {o['patch']}, stride {o['stride']}, eta {o['eta']}, "
             f"roi {o['roi']}. {_dc_text(o)} Mean ± sd over slices; metrics inside the brain mask (the head's MAPE in "
             "the last columns); NFE sequential network evaluations; seconds of wall time per slice.", ""]
    for run in report["runs"]:
        m = run["machine"]
        lines.append(f"- run {run['index']}: {m['cpu']} ({m['cpu_count']} CPUs), {m['torch_threads']} torch "
                     f"threads, load average {m['load_average']:.2f} at start, {run['started']}")
    lines += ["", "| method | MAPE T1 % | MAPE T2 % | RMSE T1 ms | RMSE T2 ms | NRMSE T1 | NRMSE T2 | SSIM T1 | "
              "SSIM T2 | SSIM TSMI | NFE | s / slice | MAPE T1 % (head) | MAPE T2 % (head) |", "| --- " * 14 + "|"]
    for row in report["summary"]:
        cells = [f"{row[m]:.2f} ± {row[m + '_sd']:.2f}" for m in ("mape_t1", "mape_t2", "rmse_t1_ms", "rmse_t2_ms")]
        cells += [f"{row[m]:.3f} ± {row[m + '_sd']:.3f}" for m in ("nrmse_t1", "nrmse_t2", "ssim_t1", "ssim_t2",
                                                                   "ssim_tsmi")]
        cells += [f"{row['nfe']:.0f}", f"{row['seconds']:.1f}"]
        cells += [f"{row[m]:.2f}" for m in ("mape_t1_head", "mape_t2_head")]
        lines.append(f"| {LABELS[row['method']]} | " + " | ".join(cells) + " |")
    lines += ["", "The paper's Table 1 (its own in-vivo data, 5x; not comparable numbers, for orientation):", "",
              "| method | MAPE T1 % | MAPE T2 % | SSIM TSMI |", "| --- | --- | --- | --- |"]
    lines += [f"| {name} | {t1} | {t2} | {'-' if s is None else s} |" for name, t1, t2, s in PAPER]
    path.write_text("\n".join(lines) + "\n")


def save_report(report: dict, args: argparse.Namespace) -> None:
    report["summary"] = summarise(report["records"], list(METHODS))
    tmp = args.out / f"{args.name}.json.tmp"
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    os.replace(tmp, args.out / f"{args.name}.json")
    write_markdown(report, args.out / f"{args.name}.md")


# The ReconOptions fields each method depends on: a record is kept by --resume only while these are unchanged.
# Records made before the metrics moved from the head to the brain mask (version 2) are redone by --resume.
METRICS_VERSION = 2
DC_OPTIONS = ("dc_weight", "dc_iterations")
METHOD_OPTIONS = {"svd": (), "low-rank": ("cg_iterations",), "unet": ("unet_stride", "percentile", *DC_OPTIONS),
                  "diffusion": ("steps", "samples", "patch", "stride", "eta", "seed", "roi", "percentile",
                                *DC_OPTIONS)}


def method_fingerprint(method: str, options: dict, models: dict) -> dict:
    """What a record of ``method`` depends on beyond the simulation: its options and its model's sha256."""
    return {"options": {k: options[k] for k in METHOD_OPTIONS[method]},
            "sha256": models.get(method, {}).get("sha256"), "metrics": METRICS_VERSION}


def start_report(args: argparse.Namespace, settings: dict) -> dict:
    """A new report, or with ``--resume`` the saved one without the records whose method settings changed.

    A changed simulation or seed invalidates every record (``MrdpmError``); a changed method option or model only
    that method's records (dropped and recomputed).
    """
    path = args.out / f"{args.name}.json"
    report = {"benchmark": "mrf", "settings": settings, "runs": [], "records": []}
    if args.resume and path.is_file():
        report = json.loads(path.read_text())
        old = report["settings"]
        changed = [k for k in ("simulation", "seed") if old.get(k) != settings[k]]
        if changed:
            raise MrdpmError(f"--resume: settings {changed} differ from the saved results'; drop --resume or change "
                             "--name", path=path)
        models = old["models"] | settings["models"]
        current = {m: method_fingerprint(m, settings["options"], models) for m in METHODS}
        report["records"] = [r for r in report["records"] if r.get("fingerprint") == current[r["method"]]]
        report["settings"] = settings | {"models": models}
    command = " ".join(shlex.quote(a) for a in [sys.executable.rsplit("/", 1)[-1], *sys.argv])
    report["runs"].append({"index": len(report["runs"]), "command": command, "machine": machine_info(),
                           "started": time.strftime("%Y-%m-%d %H:%M:%S")})
    return report


def slice_stacks(volumes: dict[str, QMaps], simulators: dict[tuple[int, int], MrfSimulator], positions: slice):
    """``(volume, one-slice QMaps stack, simulator of its shape)`` for every chosen slice position."""
    for volume, maps in volumes.items():
        for position in range(maps.t1_ms.shape[0])[positions]:
            stack = QMaps(*(m[position:position + 1] for m in (maps.t1_ms, maps.t2_ms, maps.pd, maps.mask,
                                                                 maps.slice_index)))
            yield volume, stack, simulators[tuple(maps.t1_ms.shape[-2:])]


def evaluate_slice(truth: QMaps, kspace: torch.Tensor, setup: MrfSetup, references: dict, method: str,
                   model, options: ReconOptions) -> dict:
    if not set(DC_OPTIONS) <= set(METHOD_OPTIONS[method]):
        options = replace(options, dc_weight=0.0)  # data consistency is for the network methods
    result = reconstruct_slice(setup, kspace, method, model=model, mask=truth.mask, options=options)
    brain = brain_mask(truth.t2_ms, truth.mask)
    head = map_metrics(result.maps, truth.t1_ms, truth.t2_ms, truth.mask)
    return {**map_metrics(result.maps, truth.t1_ms, truth.t2_ms, brain),
            "mape_t1_head": head["mape_t1"], "mape_t2_head": head["mape_t2"],
            "ssim_tsmi": tsmi_ssim(result.coefficients, references[result.domain], brain),
            "nfe": result.nfe, "seconds": result.seconds}


@dataclass
class Study:
    """What both MRF scripts set up from their arguments: simulation, held-out maps, simulators and models."""

    settings: MrfSimulationSettings
    seed: int
    source: str
    volumes: dict[str, QMaps]
    simulators: dict[tuple[int, int], MrfSimulator]
    models: dict
    about: dict
    percentile: float


def load_study(args: argparse.Namespace) -> Study:
    """Threads, output folder, the pairs' simulation, the evaluated volumes, a simulator per shape, the models."""
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    settings, seed, source = simulation(args)
    volumes = {v: load_qmaps(args.data_root / "mrf-qmaps" / f"{v}.npz") for v in args.volumes}
    simulators = {shape: build_simulator(settings, shape) for shape in {tuple(m.t1_ms.shape[-2:])
                                                                       for m in volumes.values()}}
    models, about, percentile = load_models(args, next(iter(simulators.values())).reference_dictionary.basis)
    return Study(settings, seed, source, volumes, simulators, models, about, percentile)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    study = load_study(args)
    settings, seed, source, models, percentile = (study.settings, study.seed, study.source, study.models,
                                                  study.percentile)
    options = ReconOptions(steps=args.steps, samples=args.samples, patch=args.patch or None, stride=args.stride,
                           eta=args.eta, batch_size=args.batch_size, seed=args.seed, roi=not args.no_roi,
                           cg_iterations=args.cg_iterations, percentile=percentile, dc_weight=args.dc_weight,
                           dc_iterations=args.dc_iterations)
    report = start_report(args, json.loads(json.dumps({
        "volumes": args.volumes, "slices": _slice_text(args.slices), "methods": args.methods,
        "simulation": asdict(settings), "simulation_source": source, "seed": seed, "options": asdict(options),
        "models": study.about})))
    done = {(r["volume"], r["slice"], r["method"]) for r in report["records"]}
    for volume, stack, sim in slice_stacks(study.volumes, study.simulators, args.slices):
        truth, number = stack.slice(0), int(stack.slice_index[0])
        todo = [m for m in args.methods if (volume, number, m) not in done]
        if not todo:
            continue
        setup = MrfSetup.from_simulator(sim)
        kspace = simulate_case(stack, settings, simulator=sim, seed=seed, name=volume).kspace[0]
        references = {"reference": time_series_subspace(truth, sim.interpolation, sim.reference_dictionary.basis),
                      "acquired": time_series_subspace(truth, sim.interpolation, sim.acquired_dictionary.basis)}
        for method in todo:
            record = {"volume": volume, "slice": number, "method": method,
                      "fingerprint": method_fingerprint(method, report["settings"]["options"],
                                                        report["settings"]["models"]),
                      **evaluate_slice(truth, kspace, setup, references, method, models.get(method), options)}
            report["records"].append(record)
            save_report(report, args)
            print(f"{volume} slice {number} {method}: MAPE T1 {record['mape_t1']:.2f} %, T2 "
                  f"{record['mape_t2']:.2f} %, {record['seconds']:.1f} s", flush=True)
    save_report(report, args)
    return report


if __name__ == "__main__":
    run_script(main)
