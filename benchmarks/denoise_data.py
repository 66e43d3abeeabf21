"""Self-supervised denoising of a training set (issue 5): ``mrdpm denoise-data`` output against the clean oracle.

Data: the synthesised neonatal 1 T folder (``--data-dir``, written by ``mrdpm neonatal synthesise``); its manifest
``neonatal.json`` names each noisy file's noise-free counterpart and the true noise ``sigma`` (per real channel).
Denoised: the folder written by ``mrdpm denoise-data`` (``--denoised-dir``), whose report ``denoise-data.json``
gives, per volume, the ``sigma`` that the denoiser used (estimated from the background unless given), and the
denoiser's training (steps, seconds).

Per volume, inside the head (:func:`mrdpm.data.neonatal.foreground_mask` of the clean volume): PSNR (peak = the
clean volume's maximum in the head), 3D SSIM and NRMSE of the noisy and of the denoised volume against the clean
one, and the ratio of the denoiser's sigma to the true one. Summary per contrast and voxel size: mean +- sd (ddof 1)
over volumes.

Outputs (``--out``): ``denoise_data.json`` (settings, command, machine, the denoiser's training, every per-volume
record, summary) and ``denoise_data.md``.

Run (from the repository root, after ``mrdpm denoise-data``; see benchmarks/README.md):

    python benchmarks/denoise_data.py --denoised-dir runs/neonatal-1t-denoised
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # sleeping, not spinning, OpenMP threads on a shared CPU

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch

from common import machine_info, read_json, run_script
from mrdpm.cli.denoise_cmd import REPORT_NAME
from mrdpm.data.neonatal import MANIFEST_NAME, foreground_mask
from mrdpm.errors import MrdpmError
from mrdpm.eval.metrics import nrmse, psnr, ssim
from mrdpm.io.read import read_image
from small_data import mean_sd, read_manifest, write_json

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("psnr", "ssim", "nrmse")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=ROOT / "runs" / "neonatal-1t",
                   help="the synthesised data set (with neonatal.json)")
    p.add_argument("--denoised-dir", type=Path, required=True, help="the output folder of mrdpm denoise-data")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


def read_report(denoised_dir: Path) -> dict:
    """The report that ``mrdpm denoise-data`` wrote beside the denoised volumes."""
    return read_json(denoised_dir / REPORT_NAME, "no denoise-data report here")


def _magnitude(path: Path) -> torch.Tensor:
    data = read_image(path).data
    return (data.abs() if data.is_complex() else data).float()


def volume_record(entry: dict, denoised: dict, data_dir: Path) -> dict:
    """Metrics of one noisy volume and its denoised version against the clean one, and the sigma ratio."""
    clean = _magnitude(data_dir / entry["clean"])
    head = foreground_mask(clean)
    record = {"file": entry["noisy"], "subject": entry["subject"], "contrast": entry["contrast"],
              "voxel_mm": round(float(entry["voxel_mm"][0]), 1), "true_sigma": entry["noise_sigma"],
              "used_sigma": denoised["sigma"], "sigma_ratio": denoised["sigma"] / entry["noise_sigma"]}
    for kind, path in (("noisy", data_dir / entry["noisy"]), ("denoised", Path(denoised["output"]))):
        image = _magnitude(path)
        if image.shape != clean.shape:
            raise MrdpmError(f"shape {tuple(image.shape)} differs from the clean volume's {tuple(clean.shape)}",
                             path=path)
        record[kind] = {"psnr": psnr(clean, image, head), "ssim": ssim(clean, image, head, spatial_dims=3),
                        "nrmse": nrmse(clean, image, head)}
    return record


def summarise(records: list[dict]) -> list[dict]:
    """One row per (contrast, voxel size): mean and sd over volumes of each metric, noisy and denoised."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["contrast"], r["voxel_mm"]), []).append(r)
    rows = []
    for (contrast, voxel), group in sorted(groups.items()):
        row = {"contrast": contrast, "voxel_mm": voxel, "volumes": len(group),
               "sigma_ratio": mean_sd([r["sigma_ratio"] for r in group])}
        for kind in ("noisy", "denoised"):
            row[kind] = {m: mean_sd([r[kind][m] for r in group]) for m in METRICS}
        row["psnr_gain_db"] = mean_sd([r["denoised"]["psnr"] - r["noisy"]["psnr"] for r in group])
        rows.append(row)
    return rows


def write_markdown(report: dict, path: Path) -> None:
    t, m = report["training"], report["machine"]
    lines = [f"Denoiser: {t.get('method')}, {t.get('steps')} steps of {t.get('batch_size')} patches of "
             f"{t.get('patch')}^2 on {t.get('volumes')} noisy volumes, {t.get('seconds')} s; sigma from "
             f"{report['sigma_source']}. Metrics inside the head against the clean volume, mean ± sd over volumes.",
             "", f"- `{report['command']}`; {m['cpu']} ({m['cpu_count']} CPUs), {m['torch_threads']} torch threads, "
             f"torch {m['torch']}, {report['started']}", "",
             "| contrast | voxel mm | volumes | sigma used / true | PSNR noisy dB | PSNR denoised dB | gain dB | "
             "SSIM noisy | SSIM denoised | NRMSE noisy | NRMSE denoised |", "| --- " * 11 + "|"]
    for r in report["summary"]:
        n, d = r["noisy"], r["denoised"]
        lines.append(f"| {r['contrast']} | {r['voxel_mm']:g} | {r['volumes']} | {r['sigma_ratio'][0]:.3f} ± "
                     f"{r['sigma_ratio'][1]:.3f} | {n['psnr'][0]:.2f} ± {n['psnr'][1]:.2f} | {d['psnr'][0]:.2f} ± "
                     f"{d['psnr'][1]:.2f} | {r['psnr_gain_db'][0]:+.2f} | {n['ssim'][0]:.3f} | {d['ssim'][0]:.3f} | "
                     f"{n['nrmse'][0]:.4f} | {d['nrmse'][0]:.4f} |")
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    command = shlex.join(["python", "benchmarks/denoise_data.py", *(sys.argv[1:] if argv is None else argv)])
    manifest = read_manifest(args.data_dir)
    denoise = read_report(args.denoised_dir)
    entries = {e["noisy"]: e for e in manifest["files"]}
    records = []
    for volume in denoise["volumes"]:
        name = Path(volume["input"]).name
        if name not in entries:
            raise MrdpmError(f"{name} is not a noisy file of the data set's manifest",
                             path=args.data_dir / MANIFEST_NAME)
        records.append(volume_record(entries[name], volume, args.data_dir))
        print(f"{name}: PSNR {records[-1]['noisy']['psnr']:.2f} -> {records[-1]['denoised']['psnr']:.2f} dB",
              flush=True)
    training = {k: v for k, v in (denoise.get("training") or {}).items() if k not in ("sigma", "sigma_normalised",
                                                                                      "intensity_scale", "files")}
    report = {"benchmark": "denoise_data", "command": command, "machine": machine_info(),
              "started": time.strftime("%Y-%m-%d %H:%M:%S"), "data_dir": str(args.data_dir),
              "denoised_dir": str(args.denoised_dir), "sigma_source": denoise.get("sigma_source"),
              "training": training, "records": records, "summary": summarise(records)}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(report, args.out / "denoise_data.json")
    write_markdown(report, args.out / "denoise_data.md")
    return report


if __name__ == "__main__":
    run_script(main)
