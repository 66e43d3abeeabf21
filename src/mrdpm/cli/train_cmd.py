"""``mrdpm train CONFIG``: train a diffusion prior from a TOML config (single process or under torchrun)."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

from mrdpm.cli.options import positive_int
from mrdpm.data.images import TrainingImages
from mrdpm.errors import MrdpmError
from mrdpm.models.autoencoder import DEFAULT_STEPS, train_autoencoder
from mrdpm.models.checkpoint import checkpoint_paths
from mrdpm.train.config import TrainConfig, load_config
from mrdpm.train.distributed import pick_device
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
    parser.add_argument("--steps", type=positive_int, default=None,
                        help="total steps (overrides optim.steps; with --train-encoder: the encoder's steps)")
    parser.add_argument("--max-steps", type=positive_int, default=None,
                        help="stop after this many steps in total, keeping the schedule (resume later)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                        help="overrides run.device")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--train-encoder", action="store_true",
                        help="instead of the denoiser, train the perceptual encoder (a feature autoencoder) on the "
                             f"config's target images and write it to perceptual.encoder ({DEFAULT_STEPS} steps "
                             "unless --steps)")
    parser.set_defaults(func=run)


def _train_encoder(config: TrainConfig, config_path: Path, steps: int | None, progress: bool) -> Path:
    """Train the encoder that ``config.perceptual.encoder`` names, on ``config.data``'s targets; its card path."""
    if not config.perceptual.encoder:
        raise MrdpmError("--train-encoder needs [perceptual] encoder = \"<card>.json\" in the config",
                         path=config_path)
    card, _ = checkpoint_paths(config.perceptual.encoder)
    if card.exists():
        raise MrdpmError("the perceptual encoder exists already: delete it or name another one", path=card)
    sources = tuple(dataclasses.replace(s, condition_paths=()) for s in config.data.sources)
    data = TrainingImages(dataclasses.replace(config.data, sources=sources))
    return train_autoencoder(data, card.with_suffix(""), steps=steps or DEFAULT_STEPS, seed=config.run.seed,
                             device=pick_device(config.run.device), progress=progress)


def run(args: argparse.Namespace) -> int:
    """Load the config, apply the overrides, train, and print a one-line summary (rank 0)."""
    config = load_config(args.config)
    if args.device is not None:
        config = dataclasses.replace(config, run=dataclasses.replace(config.run, device=args.device))
    if args.train_encoder:
        print(f"encoder: {_train_encoder(config, args.config, args.steps, not args.no_progress)}")
        return 0
    if args.steps is not None:
        config = dataclasses.replace(config, optim=dataclasses.replace(config.optim, steps=args.steps))
    run_dir = args.run_dir or Path("runs") / args.config.stem
    summary = train(config, run_dir, resume=args.resume, max_steps=args.max_steps, progress=not args.no_progress)
    if os.environ.get("RANK", "0") == "0":
        loss = "n/a" if summary.loss is None else f"{summary.loss:.4g}"
        print(f"step {summary.step}/{config.optim.steps}: loss {loss}, {summary.steps_per_second:.2f} steps/s; "
              f"model: {summary.model_card}")
    return 0
