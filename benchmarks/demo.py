"""Wall time and results of `mrdpm demo` (the README's first command): the issue asks for under 3 minutes on 2 cores.

Runs the demo exactly as the CLI does (:func:`mrdpm.tasks.demo.run_demo`, default methods and seed) into a
temporary folder, in this process, and writes ``demo.{json,md}``: total wall seconds (model loading, simulation,
every method, NIfTI and figure output), the demo's own per-method table, torch threads, the machine and its load
average at the start (timings on a shared CPU are pessimistic).

Run (from the repository root): ``python benchmarks/demo.py``
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI sets it

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import machine_info, run_script
from mrdpm.tasks.demo import format_table, run_demo

ROOT = Path(__file__).resolve().parents[1]

LIMIT_SECONDS = 180.0


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    machine = machine_info()
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        rows = run_demo(folder, progress=False)
        seconds = time.perf_counter() - start
        written = sorted(q.name for q in Path(folder).iterdir())
    command = " ".join(shlex.quote(a) for a in ["python", "benchmarks/demo.py", *(argv or sys.argv[1:])])
    report = {"benchmark": "demo", "command": command, "machine": machine, "seconds": round(seconds, 1),
              "limit_seconds": LIMIT_SECONDS, "within_limit": seconds <= LIMIT_SECONDS, "files": written,
              "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "demo.json").write_text(json.dumps(report, indent=1) + "\n")
    lines = [f"`{command}`: {machine['cpu']} ({machine['cpu_count']} CPUs), {machine['torch_threads']} torch "
             f"threads, load average {machine['load_average']:.2f} at start.", "",
             f"Total wall time of `mrdpm demo`: **{seconds:.1f} s** (limit {LIMIT_SECONDS:.0f} s: "
             f"{'met' if report['within_limit'] else 'NOT met'}); files written: {', '.join(written)}.", "",
             format_table(rows), ""]
    (args.out / "demo.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return report


if __name__ == "__main__":
    run_script(main)
