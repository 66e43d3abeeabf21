"""``mrdpm train CONFIG``: train a diffusion prior from a TOML config (single process or under torchrun)."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

from mrdpm.cli.options import positive_int
from mrdpm.train.config import load_config
from mrdpm.train.loop import train

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` subcommand."""
    parser = subparsers.add_parser(
        "train", help="train a diffusion prior from a TOML config",
        description="Train a denoiser from a TOML config. Multi-process: torchrun --nproc_per_node=N "
                    "-m mrdpm.cli.main train CONFIG. The EMA model is written to RUN_DIR/model.json + "
                    ".safetensors at every checkpoint.")
    parser.add_argument("config", type=Path, help="training config (.toml); see configs/ for examples")
    parser.add_argument("--run-dir", type=Path, default=None,
                        help="run folder (default: runs/<config name>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in the run folder exactly where it stopped")
    parser.add_argument("--steps", type=positive_int, default=None, help="total steps (overrides optim.steps)")
    parser.add_argument("--max-steps", type=positive_int, default=None,
                        help="stop after this many steps in total, keeping the schedule (resume later)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                        help="overrides run.device")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the config, apply the overrides, train, and print a one-line summary (rank 0)."""
    config = load_config(args.config)
    if args.steps is not None:
        config = dataclasses.replace(config, optim=dataclasses.replace(config.optim, steps=args.steps))
    if args.device is not None:
        config = dataclasses.replace(config, run=dataclasses.replace(config.run, device=args.device))
    run_dir = args.run_dir or Path("runs") / args.config.stem
    summary = train(config, run_dir, resume=args.resume, max_steps=args.max_steps, progress=not args.no_progress)
    if os.environ.get("RANK", "0") == "0":
        loss = "n/a" if summary.loss is None else f"{summary.loss:.4g}"
        print(f"step {summary.step}/{config.optim.steps}: loss {loss}, {summary.steps_per_second:.2f} steps/s; "
              f"model: {summary.model_card}")
    return 0
