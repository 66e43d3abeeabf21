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

Other networks (baselines, the perceptual encoder, the R2R denoiser) use the same two files through
:func:`save_module` / :func:`load_module`: their cards name a ``schema`` (the kind of network) and carry
``schema_version``, ``name``, ``mrdpm_version``, ``num_parameters`` and ``weights_sha256`` beside the writer's keys.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mrdpm import __version__
from mrdpm.errors import MrdpmError
from mrdpm.models.precond import Denoiser, DenoiserConfig

__all__ = ["CARD_KEYS", "CARD_SCHEMA_VERSION", "ShippedModel", "list_models", "load_checkpoint", "load_module",
           "read_card", "read_module_card", "resolve_model", "save_checkpoint", "save_module"]

CARD_SCHEMA_VERSION = 1
CARD_KEYS = ("schema_version", "name", "summary", "mrdpm_version", "config", "parameterisation", "class_names",
             "num_parameters", "weights_sha256", "intensity_normalisation", "training", "resolution")
# Keys the writer computes; card_extra may not set them.
_COMPUTED_KEYS = frozenset({"schema_version", "mrdpm_version", "config", "parameterisation", "class_names",
                            "num_parameters", "weights_sha256"})
_PICKLE_SUFFIXES = frozenset({".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin"})
_CHECKPOINT_SUFFIXES = (".json", ".safetensors")
# Keys save_module computes; the writer's card may not set them.
_MODULE_COMPUTED_KEYS = frozenset({"schema", "schema_version", "name", "mrdpm_version", "num_parameters",
                                   "weights_sha256"})
_ModuleT = TypeVar("_ModuleT", bound=torch.nn.Module)


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
    num_parameters = _write_weights(denoiser, weights_path)
    config = denoiser.config
    card = {
        "schema_version": CARD_SCHEMA_VERSION, "name": card_path.stem, "summary": "",
        "mrdpm_version": __version__, "config": config.to_dict(), "parameterisation": config.parameterisation,
        "class_names": list(config.class_names), "num_parameters": num_parameters,
        "weights_sha256": sha256_file(weights_path), "intensity_normalisation": None, "training": None,
        "resolution": None,
    }
    card.update(extra)
    _write_card(card_path, card)
    return card_path


def _write_weights(module: torch.nn.Module, weights_path: Path) -> int:
    """Write ``module``'s state dict (CPU copies) atomically as safetensors; return its number of values."""
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    atomic_write(weights_path, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    return sum(v.numel() for v in state.values())


def _write_card(card_path: Path, card: dict[str, Any]) -> None:
    """Write a card as indented JSON, atomically."""
    text = json.dumps(card, indent=2) + "\n"
    atomic_write(card_path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _read_json_card(card_path: Path, what: str) -> dict[str, Any]:
    """The JSON object in ``card_path``; ``MrdpmError`` naming it (and ``what`` card) if missing or not one."""
    if not card_path.is_file():
        raise MrdpmError(f"{what} card not found (a checkpoint is <stem>.json + <stem>.safetensors)", path=card_path)
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MrdpmError(f"{what} card is not valid JSON: {err}", path=card_path) from err
    if not isinstance(card, dict):
        raise MrdpmError(f"{what} card must be a JSON object", path=card_path)
    return card


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
    card = _read_json_card(card_path, "model")
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


def save_module(module: torch.nn.Module, out_stem: str | Path, card: dict[str, Any], *, schema: str,
                schema_version: int) -> Path:
    """Write a network other than a ``Denoiser`` as ``<out_stem>.safetensors`` + card ``<out_stem>.json``.

    Each file is written atomically (via a temporary file); missing parent folders are created.

    Parameters
    ----------
    module
        The network; its state dict is saved from CPU copies.
    out_stem
        Output path without suffix (a ``.json`` or ``.safetensors`` suffix is dropped).
    card
        The writer's card entries (summary, architecture, normalisation, training, ...), JSON-serialisable; none
        of the keys this function computes (``schema``, ``schema_version``, ``name``, ``mrdpm_version``,
        ``num_parameters``, ``weights_sha256``).
    schema, schema_version
        The kind of network and the version of its card layout; :func:`read_module_card` checks both.

    Returns
    -------
    Path
        The card file: the computed keys (``name`` is the stem's name), then the writer's entries in their order.
    """
    clash = _MODULE_COMPUTED_KEYS & set(card)
    if clash:
        raise ValueError(f"card may not set computed card keys {sorted(clash)}")
    card_path, weights_path = checkpoint_paths(out_stem)
    num_parameters = _write_weights(module, weights_path)
    _write_card(card_path, {"schema": schema, "schema_version": schema_version, "name": card_path.stem,
                            "mrdpm_version": __version__, "num_parameters": num_parameters,
                            "weights_sha256": sha256_file(weights_path), **card})
    return card_path


def read_module_card(path: str | Path, *, schema: str, schema_version: int, what: str,
                     ) -> tuple[dict[str, Any], Path]:
    """Read a card written by :func:`save_module` and check its schema (weights are not touched).

    Parameters
    ----------
    path
        The card (``.json``), the weights (``.safetensors``) or the stem; pickles are refused.
    schema, schema_version
        What the card must say.
    what
        The kind of network in messages, e.g. ``"encoder"`` ("encoder card not found").

    Returns
    -------
    (dict, Path)
        The card and its path.

    Raises
    ------
    MrdpmError
        Naming the file: pickle given, card missing, not a JSON object, or of another schema or version.
    """
    card_path, _ = checkpoint_paths(path)
    card = _read_json_card(card_path, what)
    found = (card.get("schema"), card.get("schema_version"))
    if found != (schema, schema_version):
        raise MrdpmError(f"not a {schema} card of version {schema_version} ({what}): it says schema {found[0]!r}, "
                         f"version {found[1]!r}", path=card_path)
    return card, card_path


def load_module(path: str | Path, build: Callable[[dict[str, Any], Path], _ModuleT], *, schema: str,
                schema_version: int, what: str, map_location: str | torch.device = "cpu",
                ) -> tuple[_ModuleT, dict[str, Any]]:
    """Load a network saved by :func:`save_module`, verifying the sha256 of its weights.

    Parameters
    ----------
    path
        The card, the weights or the stem; pickles are refused.
    build
        ``build(card, card_path)`` returns the untrained network the card describes, or raises ``MrdpmError``
        naming ``card_path`` for an invalid architecture entry.
    schema, schema_version, what
        As :func:`read_module_card`.
    map_location
        Device for the weights.

    Returns
    -------
    (torch.nn.Module, dict)
        The network frozen (eval mode, no parameter requires gradients) on ``map_location``, and its card.

    Raises
    ------
    MrdpmError
        Naming the file: see :func:`read_module_card` and :func:`load_verified_weights`, and what ``build``
        raises.
    """
    card, card_path = read_module_card(path, schema=schema, schema_version=schema_version, what=what)
    module = build(card, card_path)
    _, weights_path = checkpoint_paths(card_path)
    load_verified_weights(module, weights_path, card.get("weights_sha256"), map_location)
    return module.to(map_location).eval().requires_grad_(False), card


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
