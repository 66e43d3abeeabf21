import json
import math

import pytest
import torch

from mrdpm.errors import MrdpmError
from mrdpm.io.nifti import write_nifti


@pytest.fixture
def bench(load_benchmark):
    return load_benchmark("denoise_data")


def _data_set(root, out):
    """Two volumes: clean ellipsoids; noisy = clean + N(0, 0.1); 'denoised' = clean + N(0, 0.02), sigma used 0.12."""
    root.mkdir()
    out.mkdir()
    grids = torch.meshgrid(*[torch.linspace(-1, 1, 16)] * 3, indexing="ij")
    inside = (sum(g.square() for g in grids) < 0.8).float()
    files, volumes = [], []
    for age, contrast in ((28, "T1w"), (29, "T2w")):
        noise = torch.randn(16, 16, 16, generator=torch.Generator().manual_seed(age))
        names = {kind: f"neo{age}_{contrast}_1mm_{kind}.nii.gz" for kind in ("clean", "noisy")}
        write_nifti(root / names["clean"], inside, voxel_size_mm=(1.0,) * 3)
        write_nifti(root / names["noisy"], inside + 0.1 * noise, voxel_size_mm=(1.0,) * 3)
        write_nifti(out / names["noisy"], inside + 0.02 * noise, voxel_size_mm=(1.0,) * 3)
        files.append({"subject": f"neo{age}", "contrast": contrast, **names, "voxel_mm": [1.0] * 3,
                      "noise_sigma": 0.1})
        volumes.append({"input": str(root / names["noisy"]), "output": str(out / names["noisy"]), "sigma": 0.12})
    (root / "neonatal.json").write_text(json.dumps({"files": files}))
    report = {"sigma_source": "given", "volumes": volumes, "training": {"method": "R2R", "steps": 3, "sigma": [0.12]}}
    (out / "denoise-data.json").write_text(json.dumps(report))


def test_metrics_against_the_clean_volume(bench, tmp_path):
    _data_set(tmp_path / "data", tmp_path / "denoised")
    report = bench.main(["--data-dir", str(tmp_path / "data"), "--denoised-dir", str(tmp_path / "denoised"),
                         "--out", str(tmp_path / "out"), "--threads", "1"])
    record = report["records"][0]
    assert record["sigma_ratio"] == pytest.approx(1.2)
    # PSNR inside the head (peak 1): noise 0.1 -> about 20 dB, noise 0.02 -> about 34 dB; 20 log10(5) apart exactly.
    assert record["noisy"]["psnr"] == pytest.approx(20.0, abs=1.0)
    assert record["denoised"]["psnr"] - record["noisy"]["psnr"] == pytest.approx(20 * math.log10(5), abs=1e-3)
    assert record["denoised"]["ssim"] > record["noisy"]["ssim"]
    assert [(r["contrast"], r["volumes"]) for r in report["summary"]] == [("T1w", 1), ("T2w", 1)]
    assert "sigma" not in report["training"]
    assert "| T2w | 1 | 1 | 1.200" in (tmp_path / "out" / "denoise_data.md").read_text()


def test_missing_report_names_the_file(bench, tmp_path):
    _data_set(tmp_path / "data", tmp_path / "denoised")
    (tmp_path / "denoised" / "denoise-data.json").unlink()
    with pytest.raises(MrdpmError, match=r"denoise-data\.json: no denoise-data report here"):
        bench.main(["--data-dir", str(tmp_path / "data"), "--denoised-dir", str(tmp_path / "denoised"),
                    "--out", str(tmp_path / "out")])
