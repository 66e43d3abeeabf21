"""Resumable training state in one safetensors file: model, EMA and optimiser tensors plus JSON scalars.

No pickle is involved: optimiser state tensors are stored as ``optim.<param index>.<name>``, and everything else
(step, timers, running sums, non-tensor optimiser entries) goes into the file's metadata as JSON.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from mrdpm.errors import MrdpmError

__all__ = ["load_training_state", "save_training_state"]

_META_KEY = "mrdpm_training_state"


def save_training_state(path: str | Path, *, model: nn.Module, ema: nn.Module,
                        optimizer: torch.optim.Optimizer, meta: dict[str, Any]) -> None:
    """Write the state atomically (temporary file, then rename).

    Parameters
    ----------
    path
        Output ``.safetensors`` file.
    model, ema
        The trained model and its moving average.
    optimizer
        Its per-parameter state is saved; hyper-parameters come from the config on resume.
    meta
        JSON-serialisable scalars (step, timers, running sums).
    """
    path = Path(path)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors |= {f"ema.{k}": v for k, v in ema.state_dict().items()}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in optimizer.state_dict()["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{name}"] = value
            else:
                scalars.setdefault(str(index), {})[name] = value
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    metadata = {_META_KEY: json.dumps({"meta": meta, "optim_scalars": scalars})}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, tmp, metadata=metadata)
    os.replace(tmp, path)


def load_training_state(path: str | Path, *, model: nn.Module, ema: nn.Module,
                        optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore model, EMA and optimiser from ``save_training_state``'s file; return its ``meta``.

    Raises
    ------
    MrdpmError
        Naming the file if it is unreadable or does not fit the model and optimiser.
    """
    path = Path(path)
    try:  # read onto the CPU: load_state_dict moves tensors to the parameters' device (AdamW's step stays)
        with safe_open(str(path), framework="pt", device="cpu") as f:
            stored = json.loads((f.metadata() or {})[_META_KEY])
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
    except (OSError, SafetensorError, KeyError, json.JSONDecodeError) as err:
        raise MrdpmError(f"unreadable training state: {err}", path=path) from err

    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

    optim_state: dict[int, dict[str, Any]] = {}
    for key, value in part("optim.").items():
        index, name = key.split(".", 1)
        optim_state.setdefault(int(index), {})[name] = value
    for index, entries in stored["optim_scalars"].items():
        optim_state.setdefault(int(index), {}).update(entries)
    try:
        model.load_state_dict(part("model."), strict=True)
        ema.load_state_dict(part("ema."), strict=True)
        optimizer.load_state_dict({"state": optim_state,
                                   "param_groups": optimizer.state_dict()["param_groups"]})
    except (RuntimeError, ValueError, KeyError) as err:
        raise MrdpmError(f"training state does not fit this model/config: {err}", path=path) from err
    return stored["meta"]
