"""``mrdpm models list`` and ``mrdpm models info NAME|PATH``: the shipped models and any checkpoint's card."""

from __future__ import annotations

import argparse
import json

from mrdpm.models.checkpoint import list_models, read_card, resolve_model

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``models`` subcommand to the ``mrdpm`` parser."""
    parser = subparsers.add_parser("models", help="list shipped models, show a model card",
                                   description=__doc__)
    actions = parser.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    actions.add_parser("list", help="list the shipped models")
    info = actions.add_parser("info", help="show a model card (shipped name or checkpoint path)")
    info.add_argument("model", metavar="NAME|PATH", help="shipped model name, or a checkpoint .json/.safetensors/stem")
    info.add_argument("--json", action="store_true", help="print the whole card as JSON")
    parser.set_defaults(func=run)


def _describe(card: dict) -> list[str]:
    """Human-readable lines of a card's main entries."""
    config = card["config"]
    classes = ", ".join(card["class_names"]) or "none (unconditional)"
    image = f"{config['image_channels']} {'complex' if config['complex_input'] else 'real'} channel(s)"
    lines = [
        f"name:             {card['name']}",
        f"summary:          {card['summary']}",
        f"parameterisation: {card['parameterisation']}",
        f"network:          {config['preset']} {config['spatial_dims']}D U-Net, {card['num_parameters']:,} parameters",
        f"image:            {image}; condition channels: {config['cond_channels']}",
        f"classes:          {classes}",
        f"resolution:       {json.dumps(card['resolution'])}",
        f"intensity:        {json.dumps(card['intensity_normalisation'])}",
        f"training:         {json.dumps(card['training'])}",
        f"weights sha256:   {card['weights_sha256']}",
        f"mrdpm version:    {card['mrdpm_version']}",
    ]
    return lines


def run(args: argparse.Namespace) -> int:
    """Execute ``mrdpm models ACTION``; returns the exit code."""
    if args.models_command == "list":
        models = list_models()
        if not models:
            print("no shipped models")
        for model in models:
            print(f"{model.name:24s} {model.summary}")
        return 0
    card_path = resolve_model(args.model)
    card = read_card(card_path)
    if args.json:
        print(json.dumps(card, indent=2))
    else:
        print(f"card:             {card_path}")
        print("\n".join(_describe(card)))
    return 0
