"""``mrdpm finetune CHECKPOINT --data ...``: fine-tune a trained prior on new data, optionally as a new class."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from mrdpm.cli.options import positive_float, positive_int
from mrdpm.train.finetune import DEFAULT_ACCELERATIONS, DEFAULT_STEPS, DEFAULT_VALIDATE_EVERY, finetune_config
from mrdpm.train.loop import BEST_STEM, train

__all__ = ["register", "run"]

# option -> (config section, key)
_OVERRIDES = {
    "lr": ("optim", "lr"), "steps": ("optim", "steps"), "batch_size": ("optim", "batch_size"),
    "validate_every": ("run", "validate_every"), "seed": ("run", "seed"), "device": ("run", "device"),
    "accelerations": ("recon_validation", "accelerations"), "val_slices": ("recon_validation", "slices"),
    "val_size": ("recon_validation", "size"), "val_nfe": ("recon_validation", "nfe"),
    "val_samples": ("recon_validation", "samples"),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``finetune`` subcommand."""
    parser = subparsers.add_parser(
        "finetune", help="fine-tune a trained prior on new data (e.g. a new contrast as a new class)",
        description="Start from a trained checkpoint (model and EMA; fresh optimiser), optionally add a class, "
                    "train at a reduced learning rate and validate by reconstructing held-out slices "
                    "(simulated multi-coil acquisitions) every --validate-every steps. RUN_DIR/best.json keeps the "
                    "EMA model of the lowest mean NRMSE, RUN_DIR/model.json the latest. Options override the "
                    "TOML config, which overrides the defaults (mrdpm.train.finetune).")
    parser.add_argument("checkpoint", help="model card (.json), weights or stem of the trained prior, or the name "
                                           "of a shipped model (mrdpm models)")
    parser.add_argument("--data", nargs="+", required=True, metavar="CONFIG_OR_GLOB",
                        help="a TOML training config (its [data] and any other sections), or image files / glob "
                             "patterns (quote them) sliced like the checkpoint's training data")
    parser.add_argument("--new-class", default="", metavar="NAME",
                        help="class added to the checkpoint's classes for the new data (refused if it exists)")
    parser.add_argument("--new-class-init", default="", metavar="CLASS",
                        help="existing class whose embedding the new class starts from (default: the null class)")
    parser.add_argument("--held-out", nargs="+", default=[], metavar="ID",
                        help="subject IDs never trained on, used for validation (required unless the config "
                             "names data.held_out)")
    parser.add_argument("--orientations", nargs="+", choices=("axial", "coronal", "sagittal"), default=[],
                        help="slicing orientations of image files (default: those of the checkpoint's training)")
    parser.add_argument("--replay", type=positive_float, default=None, metavar="WEIGHT",
                        help="joint training: also train on the checkpoint's own training sources, their sampling "
                             "weights times WEIGHT (and keep their held-out subjects out)")
    parser.add_argument("--lr", type=positive_float, default=None,
                        help="constant learning rate (default: a tenth of the pre-training peak rate)")
    parser.add_argument("--steps", type=positive_int, default=None, help=f"total steps (default {DEFAULT_STEPS})")
    parser.add_argument("--batch-size", type=positive_int, default=None,
                        help="batch size (default: the pre-training one)")
    parser.add_argument("--validate-every", type=positive_int, default=None,
                        help=f"steps between validations (default {DEFAULT_VALIDATE_EVERY})")
    parser.add_argument("--accelerations", nargs="+", type=positive_float, default=None, metavar="R",
                        help="accelerations of the validation reconstructions (default "
                             f"{' '.join(f'{r:g}' for r in DEFAULT_ACCELERATIONS)})")
    parser.add_argument("--val-slices", type=positive_int, default=None,
                        help="held-out slices reconstructed at each validation (default 4)")
    parser.add_argument("--val-size", nargs=2, type=positive_int, default=None, metavar=("H", "W"),
                        help="validation slices are centred and padded or cropped to this size (default 128 128)")
    parser.add_argument("--val-nfe", type=positive_int, default=None,
                        help="network evaluations per validation sample (default 10)")
    parser.add_argument("--val-samples", type=positive_int, default=None,
                        help="posterior samples averaged per validation reconstruction (default 2)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the run (default 0)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None, help="device (default auto)")
    parser.add_argument("--run-dir", type=Path, default=None,
                        help="run folder (default: runs/finetune-<new class or checkpoint name>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in the run folder exactly where it stopped (same options)")
    parser.add_argument("--max-steps", type=positive_int, default=None,
                        help="stop after this many steps in total, keeping the schedule (resume later)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build the fine-tuning config, train, and print where the latest and best models are."""
    overrides: dict[str, dict] = {}
    for option, (section, key) in _OVERRIDES.items():
        value = getattr(args, option)
        if value is not None:
            overrides.setdefault(section, {})[key] = list(value) if isinstance(value, list) else value
    config = finetune_config(args.checkpoint, data=args.data, new_class=args.new_class,
                             new_class_init=args.new_class_init, held_out=args.held_out,
                             orientations=args.orientations, replay_weight=args.replay, overrides=overrides)
    run_dir = args.run_dir or Path("runs") / f"finetune-{args.new_class or Path(args.checkpoint).stem}"
    summary = train(config, run_dir, resume=args.resume, max_steps=args.max_steps, progress=not args.no_progress)
    if os.environ.get("RANK", "0") != "0":
        return 0
    loss = "n/a" if summary.loss is None else f"{summary.loss:.4g}"
    print(f"step {summary.step}/{config.optim.steps}: loss {loss}; latest model: {summary.model_card}")
    best = run_dir / f"{BEST_STEM}.json"
    if best.is_file():
        chosen = json.loads(best.read_text(encoding="utf-8"))["best"]
        print(f"best model: {best} (step {chosen['step']}, {chosen['metric']} {chosen['value']:.4g})")
    return 0
