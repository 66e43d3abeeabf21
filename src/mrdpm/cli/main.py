"""``mrdpm``: the command-line entry point; each subcommand lives in its own module of this package."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mrdpm import __version__
from mrdpm.cli import (
    demo_cmd,
    denoise_cmd,
    finetune_cmd,
    models_cmd,
    mrf_cmd,
    neonatal_cmd,
    recon_cmd,
    simulate_cmd,
    train_cmd,
    ulf_cmd,
)
from mrdpm.errors import MrdpmError

# Subcommand modules, in the order --help lists them. Each defines ``register(subparsers)`` which adds its
# parser and sets ``func`` to a callable taking the parsed arguments and returning an exit code.
_COMMAND_MODULES = (demo_cmd, simulate_cmd, recon_cmd, train_cmd, finetune_cmd, models_cmd, ulf_cmd, neonatal_cmd,
                    denoise_cmd, mrf_cmd)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="mrdpm", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mrdpm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in _COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; user errors print one line and exit with status 2."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MrdpmError as err:
        print(f"mrdpm {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
