"""Shared fixtures: the location of ../shared/data and deterministic torch settings."""

from __future__ import annotations

import os

# Idle OpenMP threads must not spin: on a busy 2-core machine spinning makes small torch ops several times slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(os.environ.get("MRDPM_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the repository (CI has it there); tests needing it fail loudly if absent."""
    if not SHARED_DATA.is_dir():
        raise FileNotFoundError(f"shared data folder not found at {SHARED_DATA}; set MRDPM_SHARED_DATA")
    return SHARED_DATA
