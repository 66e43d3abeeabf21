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
            "roi": True, "unet_stride": 32, "cg_iterations": 20, "percentile": 99.0, "dc_weight": 0.0,
            "dc_iterations": 30}
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
    # data consistency changes the network methods' records only
    kept = _start(bench, tmp_path, _settings(dc_weight=0.03))["records"]
    assert [r["method"] for r in kept] == ["svd", "low-rank"]
    # a retrained U-Net: its records are redone
    settings = _settings()
    settings["models"]["unet"]["sha256"] = "ccc"
    assert [r["method"] for r in _start(bench, tmp_path, settings)["records"]] == ["svd", "low-rank", "diffusion"]


def test_resume_redoes_records_of_the_head_mask_metrics(bench, tmp_path):
    settings = _settings()
    _saved(bench, tmp_path, settings)
    saved = json.loads((tmp_path / "mrf.json").read_text())
    for record in saved["records"]:
        del record["fingerprint"]["metrics"]  # a record from before the brain mask
    (tmp_path / "mrf.json").write_text(json.dumps(saved))
    assert _start(bench, tmp_path, settings)["records"] == []


def test_resume_refuses_another_simulation(bench, tmp_path):
    _saved(bench, tmp_path, _settings())
    settings = _settings()
    settings["simulation"] = {"coils": 8}
    with pytest.raises(MrdpmError, match="simulation"):
        _start(bench, tmp_path, settings)


def test_dc_weight_table_averages_per_method_and_weight(load_benchmark, tmp_path):
    tune = load_benchmark("mrf_dc_weight")
    args = tune.parse_args(["--weights", "0,0.03"])
    assert (args.weights, args.slices) == ([0.0, 0.03], slice(12, 13))  # validation, not mrf.md's test slices 5:10
    records = [{"volume": v, "slice": 20, "method": "unet", "weight": w, "mape_t1": t1, "mape_t2": 2 * t1}
               for v, w, t1 in (("vol08", 0.0, 20.0), ("vol09", 0.0, 22.0), ("vol08", 0.03, 9.0),
                                ("vol09", 0.03, 11.0))]
    report = {"command": "python mrf_dc_weight.py", "started": "now", "records": records,
              "machine": {"cpu": "cpu", "torch_threads": 1},
              "settings": {"volumes": ["vol08", "vol09"], "slices": "12:13", "weights": [0.0, 0.03],
                           "dc_iterations": 30, "options": {"steps": 50, "samples": 10, "patch": None}}}
    tune.write_markdown(report, tmp_path / "t.md")
    rows = [line for line in (tmp_path / "t.md").read_text().splitlines() if line.startswith("| unet")]
    assert rows == ["| unet | 0 | 21.00 | 42.00 |", "| unet | 0.03 | 10.00 | 20.00 |"]
    with pytest.raises(SystemExit):
        tune.parse_args(["--methods", "svd"])
