"""benchmarks/mrf.py --resume: records are kept per method while their options, model and the simulation hold."""

import argparse
import json

import pytest

from mrdpm.errors import MrdpmError


@pytest.fixture
def bench(load_benchmark):
    return load_benchmark("mrf")


def _settings(**options):
    base = {"steps": 50, "samples": 10, "patch": None, "stride": 8, "eta": 1.0, "batch_size": 64, "seed": 0,
            "roi": True, "unet_stride": 32, "cg_iterations": 20, "percentile": 99.0}
    return {"simulation": {"coils": 1}, "seed": 0, "options": base | options,
            "models": {"diffusion": {"sha256": "aaa"}, "unet": {"sha256": "bbb"}}}


def _saved(bench, tmp_path, settings):
    records = [{"volume": "vol08", "slice": 7, "method": m,
                "fingerprint": bench.method_fingerprint(m, settings["options"], settings["models"])}
               for m in bench.METHODS]
    (tmp_path / "mrf.json").write_text(json.dumps({"settings": settings, "runs": [], "records": records}))


def _start(bench, tmp_path, settings):
    args = argparse.Namespace(out=tmp_path, name="mrf", resume=True)
    return bench.start_report(args, settings)


def test_resume_keeps_records_whose_method_settings_hold(bench, tmp_path):
    _saved(bench, tmp_path, _settings())
    assert [r["method"] for r in _start(bench, tmp_path, _settings())["records"]] == list(bench.METHODS)
    # new diffusion sampling: only the diffusion records are redone
    kept = _start(bench, tmp_path, _settings(patch=64, samples=4))["records"]
    assert [r["method"] for r in kept] == ["svd", "low-rank", "unet"]
    # more CG iterations: only low-rank is redone; a batch size does not change results
    kept = _start(bench, tmp_path, _settings(cg_iterations=30, batch_size=8))["records"]
    assert [r["method"] for r in kept] == ["svd", "unet", "diffusion"]
    # a retrained U-Net: its records are redone
    settings = _settings()
    settings["models"]["unet"]["sha256"] = "ccc"
    assert [r["method"] for r in _start(bench, tmp_path, settings)["records"]] == ["svd", "low-rank", "diffusion"]


def test_resume_refuses_another_simulation(bench, tmp_path):
    _saved(bench, tmp_path, _settings())
    settings = _settings()
    settings["simulation"] = {"coils": 8}
    with pytest.raises(MrdpmError, match="simulation"):
        _start(bench, tmp_path, settings)
