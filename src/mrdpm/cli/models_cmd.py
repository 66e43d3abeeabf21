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


def _training_line(training: dict | None) -> str:
    """Steps, batch, time, loss and held-out subjects of a card's ``training`` entry (all of it: ``--json``)."""
    if not training:
        return "not recorded"
    loss = training.get("loss") or {}
    held_out = (training.get("data") or {}).get("held_out_subjects") or []
    parts = [f"{training.get('steps')} of {training.get('planned_steps')} steps, batch {training.get('batch_size')}, "
             f"{training.get('seconds', 0) / 3600:.1f} h"]
    if loss:
        parts.append(f"loss {loss['first']:.3g} -> {loss['last']:.3g} ({len(loss.get('curve', []))} curve points)")
    if held_out:
        parts.append(f"held out: {', '.join(held_out)}")
    return "; ".join(parts)


def _validation_line(validation: dict | None) -> str:
    """The last and best held-out validation rows of a card."""
    if not validation:
        return "not recorded"
    last, best = validation["last"], validation["best"]
    psnr = ", ".join(f"{k.split('@')[1]}: {v:.1f}" for k, v in last.items() if k.startswith("val_psnr@"))
    return (f"step {last['step']}: val_loss {last['val_loss']:.4g}, denoised PSNR dB by sigma {{{psnr}}}; best "
            f"val_loss {best['val_loss']:.4g} at step {best['step']}")


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
        f"training:         {_training_line(card.get('training'))}",
        f"validation:       {_validation_line(card.get('validation'))}",
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
