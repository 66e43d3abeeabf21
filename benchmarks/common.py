"""Helpers every benchmark script shares: comma lists, machine facts, a card's subjects, JSON in and out, run."""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from mrdpm.errors import MrdpmError


def csv_list(text: str) -> list[str]:
    """``"a,b,,c"`` -> ``["a", "b", "c"]`` (argparse type of comma-separated options)."""
    return [t for t in text.split(",") if t]


def machine_info(device: str = "cpu") -> dict:
    """What a timing depends on: the machine, torch threads and version, and the load average at the call.

    Also Python, the platform, the OpenMP wait policy, and the GPU's name when ``device`` is ``"cuda"``.
    """
    names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
             if line.startswith("model name")] if Path("/proc/cpuinfo").is_file() else []
    return {"cpu": names[0] if names else platform.processor(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "device": device,
            "gpu": torch.cuda.get_device_name() if device == "cuda" else None, "load_average": os.getloadavg()[0]}


def trained_subjects(card: dict) -> set[str]:
    """Subject IDs a model card says it was trained on (``training.subjects`` and each data source's list)."""
    training = card.get("training") or {}
    found = set(training.get("subjects") or [])
    for source in (training.get("data") or {}).get("sources") or []:
        found |= set(source.get("subjects") or [])
    return found


def read_json(path: Path, missing: str) -> dict:
    """A JSON input file; ``MrdpmError`` naming it if it is absent (``missing`` says what to do) or not valid JSON."""
    if not path.is_file():
        raise MrdpmError(missing, path=path)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MrdpmError(f"not valid JSON ({err})", path=path) from err


def write_results(report: dict, out: Path, name: str, write_markdown: Callable[[dict, Path], None]) -> None:
    """``<out>/<name>.json`` (the report, indented) and ``<out>/<name>.md`` (``write_markdown(report, path)``)."""
    (out / f"{name}.json").write_text(json.dumps(report, indent=1) + "\n")
    write_markdown(report, out / f"{name}.md")


def run_script(main: Callable[[], object]) -> None:
    """Run a benchmark's ``main``; a user error (a missing model, data folder or file) exits with one line, status 2."""
    try:
        main()
    except MrdpmError as err:
        print(f"{Path(sys.argv[0]).name}: error: {err}", file=sys.stderr)
        sys.exit(2)
