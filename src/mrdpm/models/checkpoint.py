"""Checkpoints: safetensors weights beside a JSON model card, and the registry of shipped models.

A checkpoint ``<stem>`` is two files side by side:

- ``<stem>.safetensors``: the denoiser's state dict (no pickle, so loading never runs code);
- ``<stem>.json``: the model card, a JSON object with at least the keys of ``CARD_KEYS``:
  ``schema_version`` (``CARD_SCHEMA_VERSION``), ``name``, ``summary`` (one line), ``mrdpm_version``,
  ``config`` (``DenoiserConfig.to_dict()``), ``parameterisation`` and ``class_names`` (copied from the config
  for readers), ``num_parameters``, ``weights_sha256`` (hex digest of the safetensors file),
  ``intensity_normalisation`` (how inputs were scaled before the prior saw them), ``training`` (data, steps,
  ...), ``resolution`` (training image size and voxel size); the last three may be null. Any further keys
  given by the writer are kept.

Shipped models are cards (and weights) in the package folder ``mrdpm/weights``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mrdpm import __version__
from mrdpm.errors import MrdpmError
from mrdpm.models.precond import Denoiser, DenoiserConfig

__all__ = ["CARD_KEYS", "CARD_SCHEMA_VERSION", "ShippedModel", "list_models", "load_checkpoint", "read_card",
           "resolve_model", "save_checkpoint"]

CARD_SCHEMA_VERSION = 1
CARD_KEYS = ("schema_version", "name", "summary", "mrdpm_version", "config", "parameterisation", "class_names",
             "num_parameters", "weights_sha256", "intensity_normalisation", "training", "resolution")
# Keys the writer computes; card_extra may not set them.
_COMPUTED_KEYS = frozenset({"schema_version", "mrdpm_version", "config", "parameterisation", "class_names",
                            "num_parameters", "weights_sha256"})
_PICKLE_SUFFIXES = frozenset({".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin"})
_CHECKPOINT_SUFFIXES = (".json", ".safetensors")


@dataclass(frozen=True)
class ShippedModel:
    """One model of the package's registry: its name, one-line summary and card file."""

    name: str
    summary: str
    card: Path


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it onto ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sha256_file(path: Path) -> str:
    """Hex sha256 digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_paths(path: str | Path) -> tuple[Path, Path]:
    """``(card, weights)`` paths of a checkpoint given as its card, its weights or its stem."""
    path = Path(path)
    if path.suffix.lower() in _PICKLE_SUFFIXES:
        raise MrdpmError("pickled checkpoints are refused (loading them can run arbitrary code); "
                         "convert the weights to safetensors with a model card", path=path)
    stem = path.with_suffix("") if path.suffix in _CHECKPOINT_SUFFIXES else path
    return stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".safetensors")


def save_checkpoint(denoiser: Denoiser, path_stem: str | Path, card_extra: dict[str, Any] | None = None,
                    ) -> Path:
    """Write ``<path_stem>.safetensors`` and ``<path_stem>.json`` atomically (each via a temporary file).

    Parameters
    ----------
    denoiser
        The model; its state dict is saved from CPU copies.
    path_stem
        Output path without suffix; missing parent folders are created.
    card_extra
        Further card entries: ``summary``, ``name`` (default: the stem's name), ``intensity_normalisation``,
        ``training``, ``resolution`` and any other JSON-serialisable keys, but none of the computed ones.

    Returns
    -------
    Path
        The card file.
    """
    extra = dict(card_extra or {})
    clash = _COMPUTED_KEYS & set(extra)
    if clash:
        raise ValueError(f"card_extra may not set computed card keys {sorted(clash)}")
    card_path, weights_path = checkpoint_paths(path_stem)
    card_path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in denoiser.state_dict().items()}
    atomic_write(weights_path, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    config = denoiser.config
    card = {
        "schema_version": CARD_SCHEMA_VERSION, "name": card_path.stem, "summary": "",
        "mrdpm_version": __version__, "config": config.to_dict(), "parameterisation": config.parameterisation,
        "class_names": list(config.class_names), "num_parameters": sum(v.numel() for v in state.values()),
        "weights_sha256": sha256_file(weights_path), "intensity_normalisation": None, "training": None,
        "resolution": None,
    }
    card.update(extra)
    text = json.dumps(card, indent=2) + "\n"
    atomic_write(card_path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return card_path


def read_card(path: str | Path) -> dict[str, Any]:
    """Read and validate a model card (weights are not touched).

    Parameters
    ----------
    path
        The card, the weights file or the checkpoint stem.

    Returns
    -------
    dict
        The card; ``DenoiserConfig.from_dict(card["config"])`` is known to succeed.

    Raises
    ------
    MrdpmError
        Naming the card if it is missing, not JSON, of an unknown schema version, missing keys, or holding an
        invalid or inconsistent config.
    """
    card_path, _ = checkpoint_paths(path)
    if not card_path.is_file():
        raise MrdpmError("model card not found (a checkpoint is <stem>.json + <stem>.safetensors)", path=card_path)
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MrdpmError(f"model card is not valid JSON: {err}", path=card_path) from err
    if not isinstance(card, dict):
        raise MrdpmError("model card must be a JSON object", path=card_path)
    if card.get("schema_version") != CARD_SCHEMA_VERSION:
        raise MrdpmError(f"unsupported card schema_version {card.get('schema_version')!r} "
                         f"(this mrdpm reads version {CARD_SCHEMA_VERSION})", path=card_path)
    missing = [key for key in CARD_KEYS if key not in card]
    if missing:
        raise MrdpmError(f"model card lacks keys {missing}", path=card_path)
    try:
        config = DenoiserConfig.from_dict(card["config"])
    except (TypeError, ValueError) as err:
        raise MrdpmError(f"invalid denoiser config in model card: {err}", path=card_path) from err
    if card["parameterisation"] != config.parameterisation or tuple(card["class_names"]) != config.class_names:
        raise MrdpmError("card's parameterisation/class_names disagree with its config", path=card_path)
    return card


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[Denoiser, dict[str, Any]]:
    """Load a checkpoint written by ``save_checkpoint``, verifying the weights' sha256 against the card.

    Parameters
    ----------
    path
        The card (``.json``), the weights (``.safetensors``) or the stem; pickles are refused.
    map_location
        Device for the weights.

    Returns
    -------
    (Denoiser, dict)
        The denoiser in eval mode on ``map_location``, and its card.

    Raises
    ------
    MrdpmError
        Naming the file: pickle given, file missing, bad card (see ``read_card``), hash mismatch (corrupted
        or replaced weights), unreadable weights, or weights that do not fit the card's architecture.
    """
    card = read_card(path)
    _, weights_path = checkpoint_paths(path)
    denoiser = Denoiser(DenoiserConfig.from_dict(card["config"]))
    load_verified_weights(denoiser, weights_path, card["weights_sha256"], map_location)
    return denoiser.to(map_location).eval(), card


def load_verified_weights(module: torch.nn.Module, weights_path: Path, sha256: str | None,
                          map_location: str | torch.device = "cpu") -> None:
    """Load a safetensors file into ``module`` (strictly) after checking its sha256 against the card's.

    Raises
    ------
    MrdpmError
        Naming the file: missing, hash mismatch (corrupted or replaced), unreadable, or not fitting ``module``.
    """
    if not weights_path.is_file():
        raise MrdpmError("weights file not found beside its model card", path=weights_path)
    if sha256_file(weights_path) != sha256:
        raise MrdpmError("sha256 of the weights does not match the model card (corrupted or replaced file)",
                         path=weights_path)
    try:
        state = load_file(weights_path, device=str(map_location))
    except SafetensorError as err:
        raise MrdpmError(f"unreadable safetensors file: {err}", path=weights_path) from err
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise MrdpmError(f"weights do not match the architecture in the model card: {err}",
                         path=weights_path) from err


def _weights_dir() -> Path:
    """The package folder of shipped models."""
    return Path(str(files("mrdpm") / "weights"))


def list_models() -> list[ShippedModel]:
    """The shipped models (cards in ``mrdpm/weights``), sorted by name."""
    folder = _weights_dir()
    cards = sorted(folder.glob("*.json")) if folder.is_dir() else []
    models = [ShippedModel(str(card["name"]), str(card["summary"]), path)
              for path in cards for card in [read_card(path)]]
    return sorted(models, key=lambda m: m.name)


def resolve_model(name_or_path: str | Path) -> Path:
    """The card path of a checkpoint given as a file path or stem, or as the name of a shipped model.

    Raises
    ------
    MrdpmError
        For a pickle, or when neither a checkpoint file nor a shipped model of that name exists.
    """
    card_path, _ = checkpoint_paths(name_or_path)
    if card_path.is_file():
        return card_path
    shipped = list_models()
    for model in shipped:
        if model.name == str(name_or_path):
            return model.card
    names = ", ".join(m.name for m in shipped) or "none"
    raise MrdpmError(f"no checkpoint file and no shipped model of this name (shipped models: {names})",
                     path=name_or_path)
