"""Pre-training then fine-tuning on a small target set (the stroke FLAIR study, paper 002): FLAIR from 20 subjects.

Data: ``flair-small/flair/<subject>_FLAIR.nii.gz`` (20 elderly subjects, 2 mm). Split, fixed and named:
``TEST_SUBJECTS`` (evaluation only: never trained on, never used to choose a model), ``VALIDATION_SUBJECTS``
(held out of training; the fine-tuning runs' validation reconstructions, which choose the best step and the
learning rate, are drawn from them) and the other 14 for training. The test subjects' files are not even given
to the training runs.

Arms (each a run folder under ``--runs-root``, outside the repository; each stage resumes an interrupted run
exactly, :class:`mrdpm.train.loop.Trainer`):

1. ``finetune`` (stage ``finetune``): the pre-trained prior (``--pretrained``, default the shipped
   ``ixi-t1-small``, IXI T1) fine-tuned on the training FLAIR subjects as a new class ``FLAIR``
   (:func:`mrdpm.train.finetune.finetune_config`: model and EMA from the checkpoint, fresh optimiser, constant
   learning rate), one run per learning rate of ``--lrs`` for ``--steps`` steps, validated at step 0 and every
   ``--validate-every`` steps by reconstruction of validation slices at R = 4, 5, 6 (mean NRMSE; the run keeps its
   best EMA model as ``best.json``). With a constant rate a run's state at step ``d`` is that of a run of ``d``
   steps, so the duration grid is read off one run: the EMA model at each step of ``--durations`` is kept as
   ``model-step<d>.json``. The chosen learning rate is the one whose best validation NRMSE is lowest; its best
   model is the fine-tuned arm (1).
2. ``scratch`` (stage ``scratch``): the same architecture trained from random weights on the same FLAIR subjects
   only, with the pre-training optimiser settings of the checkpoint's card (warm-up, cosine decay, peak rate) for
   ``--scratch-steps`` (default: as many as pre-training), validated every ``--long-validate-every`` steps.
3. ``pretrained``: the checkpoint itself, not fine-tuned, conditioned on ``--pretrained-class`` (default: its
   unconditional null class).
4. ``joint`` (stage ``joint``): trained on the checkpoint's own pre-training sources and the training FLAIR
   subjects together (:func:`finetune_config` with ``replay_weight``, ``--replay-weight`` per pre-training slice),
   from random weights (``--joint-init scratch``, the default: joint training) with the pre-training optimiser for
   ``--joint-steps``, or from the checkpoint (``--joint-init pretrained``: replay during fine-tuning, fine-tuning
   optimiser).

Evaluation (stage ``evaluate``): ``--slices-per-subject`` axial slices of every test subject, ``SLICE_SPACING_MM``
apart around the middle of the head's extent (listed in the results), divided by the volume's 99th percentile,
simulated (:func:`mrdpm.data.simulate.simulate_case`: smooth phase, ``--coils`` coils, ``--mask`` masks with
``--center-fraction`` ACS at each of ``--accelerations``, SNR ``--snr-db``, seed ``--seed + j`` for the j-th slice)
and reconstructed by every available arm: the pre-trained model, each learning rate's best model and duration
snapshots, scratch and joint (their best models): ``--samples`` posterior samples with ``--sampler`` at ``--nfe``
NFE, true coil maps and noise level, FLAIR class. Metrics on magnitudes over the whole image: NRMSE, PSNR, SSIM,
mean +- sd over slices. Targets: the fine-tuned arm beats scratch and pretrained at every R (higher mean PSNR and
lower mean NRMSE) and is within ``JOINT_MARGIN_DB`` of joint (PSNR difference >= -0.5 dB); PSNR differences are
paired means over slices.

Outputs (``--out``): ``flair_finetune.json`` (split, settings, commands, machine, training summaries, every record,
summary, chosen learning rate, targets; rewritten after every record), ``flair_finetune.md`` and
``flair_finetune.png`` (validation NRMSE against fine-tuning steps, one line per learning rate). ``--resume`` keeps
the records of unchanged models (by weights sha256) and skips them; it refuses other evaluation settings.

Run (from the repository root; stages may run in separate calls, in the background, across sessions):

    python benchmarks/flair_finetune.py --stage finetune,scratch,joint
    python benchmarks/flair_finetune.py --stage evaluate --resume
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # sleeping, not spinning, OpenMP threads on a shared CPU

import argparse
import dataclasses
import json
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from common import run_script
from mrdpm.data.normalise import percentile_factor
from mrdpm.data.simulate import SimulationSettings, simulate_case
from mrdpm.data.volumes import subject_id
from mrdpm.diffusion.guidance import bind
from mrdpm.errors import MrdpmError
from mrdpm.eval.figures import plot_validation
from mrdpm.eval.metrics import evaluate
from mrdpm.io.read import read_image
from mrdpm.models.checkpoint import checkpoint_paths, read_card, resolve_model
from mrdpm.tasks.dpm import SAMPLERS, DpmSettings, load_prior, reconstruct_slice
from mrdpm.train.config import FinetuneConfig, TrainConfig
from mrdpm.train.distributed import pick_device
from mrdpm.train.finetune import finetune_config
from mrdpm.train.loop import BEST_STEM, MODEL_STEM, train
from small_data import (
    central_indices,
    check_no_leak,
    csv_list,
    mean_sd,
    run_lines,
    start_report,
    write_json,
)

ROOT = Path(__file__).resolve().parents[1]
TEST_SUBJECTS = ("Subj1", "Subj3", "Subj13", "Subj17")  # two men, two women, 73-89 years (participants.csv)
VALIDATION_SUBJECTS = ("Subj6", "Subj19")
NEW_CLASS = "FLAIR"
STAGES = ("finetune", "scratch", "joint", "evaluate")
SLICE_SPACING_MM = 10.0
JOINT_MARGIN_DB = 0.5
METRICS = ("nrmse", "psnr", "ssim")
FINGERPRINT_KEYS = ("data_root", "test_subjects", "slices_per_subject", "coils", "snr_db", "mask",
                    "center_fraction", "seed", "samples", "nfe", "sampler", "pretrained_class")


def _floats(text: str) -> list[float]:
    return [float(t) for t in csv_list(text)]


def _ints(text: str) -> list[int]:
    return [int(t) for t in csv_list(text)]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stage", type=csv_list, default=list(STAGES), help=f"comma-separated, of {', '.join(STAGES)}")
    p.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "data",
                   help="folder with flair-small/flair/<subject>_FLAIR.nii.gz")
    p.add_argument("--runs-root", type=Path, default=ROOT.parent / "runs", help="parent of the flair-* run folders")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--pretrained", default="ixi-t1-small", help="shipped prior name or checkpoint card")
    p.add_argument("--pretrained-class", default="", help="class of the pretrained arm (default: the null class)")
    p.add_argument("--test-subjects", type=csv_list, default=list(TEST_SUBJECTS))
    p.add_argument("--validation-subjects", type=csv_list, default=list(VALIDATION_SUBJECTS))
    p.add_argument("--lrs", type=_floats, default=[5e-4, 1e-4, 5e-5, 1e-5], help="fine-tuning learning rates")
    p.add_argument("--steps", type=int, default=1000, help="fine-tuning steps per learning rate")
    p.add_argument("--validate-every", type=int, default=50, help="fine-tuning steps between validations")
    p.add_argument("--durations", type=_ints, default=None,
                   help="fine-tuning steps whose EMA models are kept and evaluated (default: steps/4 and steps)")
    p.add_argument("--test-arms", choices=("all", "chosen"), default="all",
                   help="all: every model (each learning rate's best and snapshots); chosen: pretrained, the chosen "
                        "learning rate's best, scratch and joint (the grid is then read from the validation curves)")
    p.add_argument("--scratch-steps", type=int, default=None, help="default: the checkpoint's pre-training steps")
    p.add_argument("--joint-steps", type=int, default=None, help="default: the checkpoint's pre-training steps")
    p.add_argument("--joint-init", choices=("scratch", "pretrained"), default="scratch")
    p.add_argument("--replay-weight", type=float, default=1.0)
    p.add_argument("--long-validate-every", type=int, default=500, help="scratch and joint steps between validations")
    p.add_argument("--batch-size", type=int, default=None, help="training batch (default: the checkpoint's)")
    p.add_argument("--val-slices", type=int, default=4, help="validation slices per validation")
    p.add_argument("--val-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="validation slices padded or cropped to this size (default 128 128)")
    p.add_argument("--val-nfe", type=int, default=10)
    p.add_argument("--val-samples", type=int, default=2)
    p.add_argument("--slices-per-subject", type=int, default=2)
    p.add_argument("--accelerations", type=_floats, default=[4.0, 5.0, 6.0])
    p.add_argument("--coils", type=int, default=8)
    p.add_argument("--snr-db", type=float, default=30.0)
    p.add_argument("--mask", default="gaussian1d")
    p.add_argument("--center-fraction", type=float, default=0.08)
    p.add_argument("--sampler", choices=sorted(SAMPLERS), default="dds")
    p.add_argument("--nfe", type=int, default=30)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--resume", action="store_true", help="keep and skip the records already in flair_finetune.json")
    p.add_argument("--max-items", type=int, default=None, help="at most this many slices per (arm, R) this call")
    p.add_argument("--progress", action="store_true")
    args = p.parse_args(argv)
    args.durations = args.durations or sorted({max(args.steps // 4, 1), args.steps})
    if set(args.stage) - set(STAGES):
        p.error(f"unknown stage {sorted(set(args.stage) - set(STAGES))}")
    if len(args.test_subjects) < 4 or set(args.test_subjects) & set(args.validation_subjects):
        p.error("need at least 4 test subjects, none of them a validation subject")
    counts = (args.steps, args.validate_every, args.long_validate_every, args.slices_per_subject, args.samples,
              args.val_slices, args.val_samples, args.max_items or 1, min(args.durations))
    if min(counts) < 1 or max(args.durations) > args.steps or min(args.nfe, args.val_nfe) < 2 or not args.lrs:
        p.error("need positive counts, --nfe and --val-nfe >= 2, learning rates, and durations in 1..--steps")
    return args


# --------------------------------------------------------------------------------------------------- training


def flair_file(args: argparse.Namespace, subject: str) -> Path:
    return args.data_root / "flair-small" / "flair" / f"{subject}_FLAIR.nii.gz"


def split(args: argparse.Namespace) -> dict[str, list[str]]:
    """``test``, ``validation`` and ``train`` subject IDs (every FLAIR subject not tested or validated trains)."""
    folder = args.data_root / "flair-small" / "flair"
    found = sorted((subject_id(f) for f in folder.glob("*_FLAIR.nii.gz")), key=lambda s: (len(s), s))
    missing = sorted(set(args.test_subjects + args.validation_subjects) - set(found))
    if missing:
        raise MrdpmError(f"subjects {missing} have no FLAIR file", path=folder)
    named = set(args.test_subjects) | set(args.validation_subjects)
    return {"test": list(args.test_subjects), "validation": list(args.validation_subjects),
            "train": [s for s in found if s not in named]}


def finetune_lrs(args: argparse.Namespace) -> dict[str, float]:
    """Fine-tuning run name (``finetune-lr5e-04``...) -> learning rate."""
    return {f"finetune-lr{lr:.0e}": lr for lr in args.lrs}


def run_dirs(args: argparse.Namespace) -> dict[str, Path]:
    """Run name -> run folder: ``finetune-lr<lr>`` for each learning rate, ``scratch``, ``joint``."""
    dirs = {name: args.runs_root / f"flair-{name}" for name in finetune_lrs(args)}
    return dirs | {"scratch": args.runs_root / "flair-scratch",
                   "joint": args.runs_root / f"flair-joint-{args.joint_init}"}


def _pretraining_optim(card: dict, steps: int | None, path: Path) -> dict:
    """The checkpoint's pre-training optimiser settings with ``steps`` (default: its own)."""
    training = card.get("training") or {}
    if "optim" not in training:
        raise MrdpmError("the checkpoint's card does not record its optimiser settings", path=path)
    return {**training["optim"], "steps": steps or training["steps"]}


def training_config(args: argparse.Namespace, arm: str, files: list[str], validation: list[str]) -> TrainConfig:
    """The training config of ``arm`` (a ``finetune-lr...`` name, ``scratch`` or ``joint``)."""
    card_path = resolve_model(args.pretrained)
    card = read_card(card_path)
    every = args.validate_every if arm.startswith("finetune") else args.long_validate_every
    overrides = {"run": {"validate_every": every, "checkpoint_every": every, "seed": args.seed,
                         "device": args.device, "name": f"flair-{arm}"},
                 "recon_validation": {"accelerations": args.accelerations, "slices": args.val_slices,
                                      "nfe": args.val_nfe, "samples": args.val_samples, "seed": args.seed,
                                      **({"size": args.val_size} if args.val_size else {})},
                 "optim": {"batch_size": args.batch_size} if args.batch_size else {}}
    from_scratch = arm == "scratch" or (arm == "joint" and args.joint_init == "scratch")
    if arm.startswith("finetune"):
        overrides["optim"] |= {"lr": finetune_lrs(args)[arm], "steps": args.steps}
    elif from_scratch:
        steps = args.scratch_steps if arm == "scratch" else args.joint_steps
        overrides["optim"] = _pretraining_optim(card, steps, card_path) | overrides["optim"]
    else:
        overrides["optim"] |= {"steps": args.joint_steps or card["training"]["steps"]}
    config = finetune_config(card_path, data=files, new_class=NEW_CLASS, held_out=validation,
                             replay_weight=args.replay_weight if arm == "joint" else None, overrides=overrides)
    return dataclasses.replace(config, finetune=FinetuneConfig()) if from_scratch else config


def snapshot_stem(run_dir: Path, step: int) -> Path:
    return run_dir / f"{MODEL_STEM}-step{step}"


def train_arm(config: TrainConfig, run_dir: Path, snapshots: list[int], progress: bool) -> None:
    """Train (or resume) ``run_dir`` to the end, copying the EMA model at each step of ``snapshots``."""
    for stop in sorted({*snapshots, config.optim.steps}):
        card, weights = checkpoint_paths(snapshot_stem(run_dir, stop))
        if stop in snapshots and card.is_file():
            continue
        summary = train(config, run_dir, resume=True, max_steps=stop, progress=progress)
        if summary.step != stop:
            raise MrdpmError(f"the run is at step {summary.step}, past {stop}, without the model of step {stop}: "
                             "use another run folder to keep that duration", path=run_dir)
        if stop in snapshots:
            shutil.copyfile(run_dir / f"{MODEL_STEM}.safetensors", weights)
            shutil.copyfile(run_dir / f"{MODEL_STEM}.json", card)
        print(f"{run_dir.name}: step {summary.step}/{config.optim.steps}", flush=True)


def train_stages(args: argparse.Namespace, groups: dict[str, list[str]]) -> None:
    files = [str(flair_file(args, s)) for s in sorted(groups["train"] + groups["validation"])]
    for arm, run_dir in run_dirs(args).items():
        stage = "finetune" if arm.startswith("finetune") else arm
        if stage in args.stage:
            config = training_config(args, arm, files, groups["validation"])
            train_arm(config, run_dir, args.durations if stage == "finetune" else [], args.progress)


# ------------------------------------------------------------------------------------------------- evaluation


def arms(args: argparse.Namespace, chosen: dict | None = None) -> list[dict]:
    """The models to evaluate that exist: label, card, class, kind, learning rate, step.

    With ``--test-arms chosen`` the fine-tuning runs give only the best model of ``chosen`` (:func:`chosen_lr`).
    """
    out = [{"arm": "pretrained", "card": str(resolve_model(args.pretrained)), "kind": "pretrained",
            "class": args.pretrained_class or None}]
    for arm, run_dir in run_dirs(args).items():
        if arm.startswith("finetune"):
            lr = finetune_lrs(args)[arm]
            stems = {f"{arm}-best": run_dir / BEST_STEM} | {
                f"{arm}-step{d}": snapshot_stem(run_dir, d) for d in args.durations}
            out += [{"arm": label, "card": str(checkpoint_paths(stem)[0]), "kind": "finetune", "lr": lr,
                     "class": NEW_CLASS} for label, stem in stems.items()]
        else:
            best = run_dir / f"{BEST_STEM}.json"
            card = best if best.is_file() else run_dir / f"{MODEL_STEM}.json"
            out.append({"arm": arm, "card": str(card), "kind": arm, "class": NEW_CLASS})
    if args.test_arms == "chosen":
        out = [a for a in out if a["kind"] != "finetune" or (chosen and a["arm"] == chosen["arm"])]
    return [a for a in out if Path(a["card"]).is_file()]


def test_slices(args: argparse.Namespace) -> list[tuple[str, torch.Tensor]]:
    """(slice ID, ``(H, W)`` magnitude divided by the volume's 99th percentile) for every test subject."""
    out = []
    for subject in args.test_subjects:
        volume = read_image(flair_file(args, subject))
        data = volume.data.float()
        scale = float(percentile_factor(data, 99.0))
        for index in central_indices(data, 0, volume.voxel_size_mm[0], args.slices_per_subject, SLICE_SPACING_MM):
            out.append((f"{subject}/axial-{index:03d}", data[index] / scale))
    return out


def evaluate_arm(args: argparse.Namespace, arm: dict, report: dict, slices: list, device: torch.device) -> None:
    """Reconstruct every test slice at every acceleration with one arm's model (skipping recorded ones)."""
    card = read_card(arm["card"])
    check_no_leak(card, args.test_subjects, f"the {arm['arm']} model", Path(arm["card"]))
    if arm["class"] is not None and arm["class"] not in card["class_names"]:
        raise MrdpmError(f"the {arm['arm']} model has no class {arm['class']!r} (it has {card['class_names']})",
                         path=arm["card"])
    sha = card["weights_sha256"]
    report["records"] = [r for r in report["records"] if r["arm"] != arm["arm"] or r["weights_sha256"] == sha]
    done = {r["key"] for r in report["records"]}
    pending = [(r, j, s) for r in args.accelerations for j, s in enumerate(slices[:args.max_items])
               if f"{arm['arm']}|x{r:g}|{s[0]}" not in done]
    if not pending:
        return
    denoiser, _ = load_prior(arm["card"], device)
    label = None if arm["class"] is None else card["class_names"].index(arm["class"])
    prior = bind(denoiser, class_labels=label)
    dpm = DpmSettings(model=arm["card"], sampler=args.sampler, nfe=args.nfe, samples=args.samples, seed=args.seed)
    for acceleration, j, (slice_id, image) in pending:
        case = simulate_case(image[None], SimulationSettings(
            coils=args.coils, mask=args.mask, acceleration=acceleration, center_fraction=args.center_fraction,
            snr_db=args.snr_db, seed=args.seed + j))
        start = time.perf_counter()
        result, _ = reconstruct_slice(prior, case.kspace[0].to(device), case.mask.to(device),
                                      case.maps[0].to(device), dpm, noise_std=case.attrs["noise_std"])
        seconds = time.perf_counter() - start
        metrics = evaluate(case.target[0].abs(), result.mean.cpu().abs())
        report["records"].append({
            "key": f"{arm['arm']}|x{acceleration:g}|{slice_id}", **arm, "weights_sha256": sha,
            "acceleration": acceleration, "achieved_acceleration": round(case.acceleration, 4), "slice": slice_id,
            **{k: metrics[k] for k in METRICS}, "seconds": round(seconds, 3), "run": report["runs"][-1]["index"]})
        save_report(report, args.out)
        print(f"{report['records'][-1]['key']}: PSNR {metrics['psnr']:.2f} dB, NRMSE {metrics['nrmse']:.4f}, "
              f"{seconds:.1f} s", flush=True)


def training_summaries(args: argparse.Namespace) -> dict[str, dict]:
    """Per run folder with a model: learning rate, steps, seconds, and the best validation (step, NRMSE)."""
    out = {}
    for arm, run_dir in run_dirs(args).items():
        model = run_dir / f"{MODEL_STEM}.json"
        if not model.is_file():
            continue
        training = read_card(model)["training"]
        best = run_dir / f"{BEST_STEM}.json"
        rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]
        out[arm] = {"run_dir": str(run_dir), "lr": training["optim"]["lr"], "schedule": training["optim"]["schedule"],
                    "steps": training["steps"], "planned_steps": training["planned_steps"],
                    "seconds": training["seconds"], "best": read_card(best).get("best") if best.is_file() else None,
                    "validation": [[r["step"], r["recon_nrmse"]] for r in rows if "recon_nrmse" in r]}
    return out


def chosen_lr(training: dict[str, dict]) -> dict | None:
    """The fine-tuning run whose best validation NRMSE is lowest: its name, learning rate, step and NRMSE."""
    runs = {arm: t for arm, t in training.items() if arm.startswith("finetune") and t["best"]}
    if not runs:
        return None
    arm = min(runs, key=lambda a: runs[a]["best"]["value"])
    return {"arm": f"{arm}-best", "run": arm, "lr": runs[arm]["lr"], "step": runs[arm]["best"]["step"],
            "validation_nrmse": runs[arm]["best"]["value"]}


def summarise(records: list[dict]) -> list[dict]:
    """One row per (arm, acceleration): mean and sd over slices of each metric, mean seconds per slice."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["arm"], r["acceleration"]), []).append(r)
    rows = []
    for (arm, acceleration), group in groups.items():
        row = {"arm": arm, "kind": group[0]["kind"], "acceleration": acceleration, "slices": len(group),
               "seconds_per_slice": mean_sd([r["seconds"] for r in group])[0]}
        for metric in METRICS:
            row[metric], row[f"{metric}_sd"] = mean_sd([r[metric] for r in group])
        rows.append(row)
    return sorted(rows, key=lambda r: (r["acceleration"], r["arm"]))


def targets(records: list[dict], finetuned: str | None) -> list[dict]:
    """Fine-tuned arm vs scratch, pretrained (must be better) and joint (within ``JOINT_MARGIN_DB``), per R."""
    if finetuned is None:
        return []
    rows = []
    for acceleration in sorted({r["acceleration"] for r in records}):
        by = {}
        for r in records:
            if r["acceleration"] == acceleration:
                by.setdefault(r["arm"], {})[r["slice"]] = r
        for other in ("scratch", "pretrained", "joint"):
            common = sorted(set(by.get(finetuned, {})) & set(by.get(other, {})))
            if not common:
                continue
            psnr = float(np.mean([by[finetuned][s]["psnr"] - by[other][s]["psnr"] for s in common]))
            nrmse = [float(np.mean([by[arm][s]["nrmse"] for s in common])) for arm in (finetuned, other)]
            met = psnr >= -JOINT_MARGIN_DB if other == "joint" else (psnr > 0 and nrmse[0] < nrmse[1])
            rows.append({"acceleration": acceleration, "finetuned": finetuned, "other": other, "slices": len(common),
                         "psnr_difference_db": psnr, "nrmse_finetuned": nrmse[0], "nrmse_other": nrmse[1],
                         "met": bool(met)})
    return rows


# ---------------------------------------------------------------------------------------------------- outputs


def _validation_lines(report: dict) -> list[str]:
    """Validation NRMSE (validation subjects, mean over R) against training steps, one row per run."""
    runs = {arm: t["validation"] for arm, t in report["training"].items() if t.get("validation")}
    if not runs:
        return []
    steps = sorted({step for curve in runs.values() for step, _ in curve})
    lines = ["", "### Validation NRMSE against training steps (validation subjects, mean over R)", "",
             "| run | " + " | ".join(str(step) for step in steps) + " |", "| --- " * (len(steps) + 1) + "|"]
    for arm, curve in runs.items():
        by_step = dict(curve)
        lines.append(f"| {arm} | " + " | ".join(f"{by_step[step]:.4f}" if step in by_step else "-"
                                               for step in steps) + " |")
    return lines


def _grid_lines(report: dict) -> list[str]:
    """Learning rate x duration: PSNR dB / NRMSE on the test slices, each the mean over the accelerations."""
    rows: dict[str, dict[str, list[dict]]] = {}
    for r in report["summary"]:
        if r["kind"] == "finetune":
            run, _, column = r["arm"].rpartition("-")
            rows.setdefault(run, {}).setdefault(column, []).append(r)
    if not rows:
        return []
    columns = sorted({c for cells in rows.values() for c in cells}, key=lambda c: (c == "best", len(c), c))
    best_steps = {arm: (t["best"] or {}).get("step") for arm, t in report["training"].items()}
    lines = ["", "### Grid: learning rate x fine-tuning steps (test PSNR dB / NRMSE, means over R)", "",
             "| run | " + " | ".join(columns) + " |", "| --- " * (len(columns) + 1) + "|"]
    for run, cells in rows.items():
        text = [f"{np.mean([r['psnr'] for r in cells[c]]):.2f} / {np.mean([r['nrmse'] for r in cells[c]]):.4f}"
                + (f" (step {best_steps.get(run)})" if c == "best" else "") if c in cells else "-" for c in columns]
        lines.append(f"| {run} | " + " | ".join(text) + " |")
    return lines


def write_markdown(report: dict, path: Path) -> None:
    s, sp, chosen = report["settings"], report["split"], report.get("chosen")
    lines = [f"FLAIR subjects: test {', '.join(sp['test'])} (evaluation only); validation "
             f"{', '.join(sp['validation'])} (fine-tuning curves and model choice); training {len(sp['train'])}: "
             f"{', '.join(sp['train'])}. Pre-trained model: {s['pretrained']}. Test slices: {s['slices_per_subject']} "
             f"axial per subject (in flair_finetune.json); {s['coils']} coils, {s['mask']} masks (ACS "
             f"{s['center_fraction']}), SNR {s['snr_db']} dB; {s['sampler']} at {s['nfe']} NFE, mean of "
             f"{s['samples']} samples. Metrics on magnitudes over the whole image, mean ± sd over slices.", "",
             *run_lines(report), ""]
    if chosen:
        lines.append(f"Chosen learning rate: {chosen['lr']:g} (run {chosen['run']}, best validation NRMSE "
                     f"{chosen['validation_nrmse']:.4f} at step {chosen['step']}); the fine-tuned arm is "
                     f"{chosen['arm']}.")
    lines += ["", "### Targets (fine-tuned vs each arm; PSNR difference = paired mean over slices)", "",
              "| R | vs | slices | PSNR diff dB | NRMSE fine-tuned | NRMSE other | met |", "| --- " * 7 + "|"]
    lines += [f"| {t['acceleration']:g} | {t['other']} | {t['slices']} | {t['psnr_difference_db']:+.2f} | "
              f"{t['nrmse_finetuned']:.4f} | {t['nrmse_other']:.4f} | {'yes' if t['met'] else 'no'} |"
              for t in report["targets"]]
    accelerations = sorted({r["acceleration"] for r in report["summary"]})
    lines += ["", "### Test results: NRMSE / PSNR dB per acceleration", "",
              "| arm | " + " | ".join(f"R={a:g}" for a in accelerations) + " | slices | s / slice |",
              "| --- " * (len(accelerations) + 3) + "|"]
    for arm in dict.fromkeys(r["arm"] for r in sorted(report["summary"], key=lambda r: r["arm"])):
        rows = {r["acceleration"]: r for r in report["summary"] if r["arm"] == arm}
        cells = [f"{rows[a]['nrmse']:.4f} ± {rows[a]['nrmse_sd']:.4f} / {rows[a]['psnr']:.2f} ± "
                 f"{rows[a]['psnr_sd']:.2f}" if a in rows else "-" for a in accelerations]
        first = next(iter(rows.values()))
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {first['slices']} | {first['seconds_per_slice']:.2f} |")
    lines += _grid_lines(report)
    lines += _validation_lines(report)
    lines += ["", "### Training runs", "", "| run | lr | schedule | steps | best step | best validation NRMSE | "
              "hours |", "| --- " * 7 + "|"]
    for arm, t in report["training"].items():
        best = t["best"] or {}
        lines.append(f"| {arm} | {t['lr']:g} | {t['schedule']} | {t['steps']}/{t['planned_steps']} | "
                     f"{best.get('step', '-')} | {best.get('value', float('nan')):.4f} | {t['seconds'] / 3600:.2f} |")
    path.write_text("\n".join(lines) + "\n")


def save_report(report: dict, out: Path) -> None:
    """Rewrite flair_finetune.json and .md from the records."""
    report["summary"] = summarise(report["records"])
    report["targets"] = targets(report["records"], (report.get("chosen") or {}).get("arm"))
    write_json(report, out / "flair_finetune.json")
    write_markdown(report, out / "flair_finetune.md")


def evaluate_stage(args: argparse.Namespace, groups: dict[str, list[str]], command: str) -> dict:
    device = pick_device(args.device)
    settings = {"data_root": str(args.data_root.resolve()), "test_subjects": args.test_subjects,
                "slices_per_subject": args.slices_per_subject, "coils": args.coils, "snr_db": args.snr_db,
                "mask": args.mask, "center_fraction": args.center_fraction, "seed": args.seed,
                "samples": args.samples, "nfe": args.nfe, "sampler": args.sampler,
                "pretrained_class": args.pretrained_class, "pretrained": args.pretrained,
                "slice_spacing_mm": SLICE_SPACING_MM}
    args.out.mkdir(parents=True, exist_ok=True)
    report = start_report(args.out / "flair_finetune.json", "flair_finetune", settings, FINGERPRINT_KEYS, command,
                          args.resume)
    slices = test_slices(args)
    report |= {"split": groups, "slices": [s[0] for s in slices], "training": training_summaries(args)}
    report["chosen"] = chosen_lr(report["training"])
    available = arms(args, report["chosen"])
    report["arms"] = available
    for arm in available:
        evaluate_arm(args, arm, report, slices, device)
    save_report(report, args.out)
    curves = [Path(t["run_dir"]) for arm, t in report["training"].items() if arm.startswith("finetune")
              and "recon_nrmse" in (Path(t["run_dir"]) / "log.jsonl").read_text()]
    if curves:
        plot_validation(curves, args.out / "flair_finetune.png", metric="recon_nrmse")
    return report


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    command = shlex.join(["python", "benchmarks/flair_finetune.py", *(sys.argv[1:] if argv is None else argv)])
    groups = split(args)
    train_stages(args, groups)
    return evaluate_stage(args, groups, command) if "evaluate" in args.stage else None


if __name__ == "__main__":
    run_script(main)
