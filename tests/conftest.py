"""Shared fixtures: the location of ../shared/data, deterministic torch settings, tiny synthetic ULF pairs."""

from __future__ import annotations

import os

# Idle OpenMP threads must not spin: on a busy 2-core machine spinning makes small torch ops several times slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import nibabel as nib
import numpy as np
import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
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


ULF_PAIR_SHAPE = (20, 22, 18)
ULF_PAIR_AFFINE = np.array([[0.0, 0.0, 1.6, -10], [0.0, 1.6, 0.1, -14], [1.6, 0.0, 0.0, -12], [0, 0, 0, 1]])


@pytest.fixture(scope="session")
def ulf_pairs(tmp_path_factory) -> Path:
    """Folder of ``subj{A,B,C}_{hf,lf}.nii.gz``: ellipsoid 'heads' (high field) and blurred, dimmer, noisy
    magnitude low-field twins, ``ULF_PAIR_SHAPE`` voxels with the oblique ``ULF_PAIR_AFFINE``."""
    folder = tmp_path_factory.mktemp("ulf-pairs")
    rng = np.random.default_rng(0)
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in ULF_PAIR_SHAPE), indexing="ij")
    for k, name in enumerate(("subjA", "subjB", "subjC")):
        r = (z**2 / 0.8 + y**2 / 0.7 + x**2 / 0.6) / (1 - 0.05 * k)
        hf = np.select([r < 0.3, r < 0.6, r < 0.9], [100.0, 70.0, 30.0], 0.0)
        lf = np.abs(0.4 * (hf + np.roll(hf, 1, axis=0)) + rng.normal(0, 3, ULF_PAIR_SHAPE))
        for kind, data in (("hf", hf), ("lf", lf)):
            nib.save(nib.Nifti1Image(data.astype(np.float32), ULF_PAIR_AFFINE), folder / f"{name}_{kind}.nii.gz")
    return folder


@pytest.fixture
def load_benchmark(monkeypatch) -> Callable[[str], ModuleType]:
    """``load_benchmark("accel")`` imports ``benchmarks/accel.py`` as a module, registered in ``sys.modules`` while
    the test runs (its dataclasses need that), with ``benchmarks/`` on the path (scripts import each other)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))

    def load(name: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(f"{name}_benchmark", BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, spec.name, module)
        spec.loader.exec_module(module)
        return module

    return load
