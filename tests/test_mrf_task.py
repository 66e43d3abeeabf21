"""MRF task layer: paired data, config, diffusion restoration, matching, baselines and the ``mrdpm mrf`` command."""

import dataclasses
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tomllib
import torch

from mrdpm.cli.main import main
from mrdpm.data.images import TrainingImages
from mrdpm.data.mrf_pairs import (
    MrfSimulationSettings,
    build_simulator,
    load_case,
    make_mrf_pairs,
    save_case,
    simulate_case,
)
from mrdpm.data.mrf_qmaps import load_qmaps, simulate_mrf_slice, time_series_subspace
from mrdpm.data.normalise import percentile_factor
from mrdpm.errors import MrdpmError
from mrdpm.models.precond import Denoiser, DenoiserConfig, to_channels
from mrdpm.physics.mrf import FispSequence, build_dictionary, t1_t2_grid
from mrdpm.physics.mrf_acquisition import low_rank_cg
from mrdpm.tasks.mrf import (
    MrfSetup,
    ReconOptions,
    map_metrics,
    quantitative_maps,
    reconstruct_slice,
    restore,
    setup_for_case,
)
from mrdpm.train.config import config_from_dict, load_config
from mrdpm.train.loop import train

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "mrf-small.toml"
# small dictionaries keep each simulator at 1-2 s; the acquisition is the paper-like default
SETTINGS = MrfSimulationSettings(n_match=(30, 30), n_interpolation=(16, 16))


@pytest.fixture(scope="module")
def volumes(shared_data, tmp_path_factory):
    """Two 58x58 (every 4th pixel) volumes, ``vol08`` (2 slices) and ``vol09`` (1 slice), as map files."""
    folder = tmp_path_factory.mktemp("qmaps")
    paths = []
    for name, keep in (("vol08", slice(6, 8)), ("vol09", slice(7, 8))):
        raw = np.load(shared_data / "mrf-qmaps" / f"{name}.npz")
        np.savez(folder / f"{name}.npz", t1_s=raw["t1_s"][keep, ::4, ::4], t2_s=raw["t2_s"][keep, ::4, ::4],
                 pd_re_im=raw["pd_re_im"][keep, :, ::4, ::4], slices=raw["slices"][keep])
        paths.append(folder / f"{name}.npz")
    return paths


@pytest.fixture(scope="module")
def simulator():
    return build_simulator(SETTINGS, (58, 58))


@pytest.fixture(scope="module")
def pairs(volumes, tmp_path_factory):
    return make_mrf_pairs(volumes, tmp_path_factory.mktemp("pairs"), SETTINGS, held_out=["vol09"])


@pytest.fixture(scope="module")
def case_path(volumes, simulator, tmp_path_factory):
    case = simulate_case(load_qmaps(volumes[1]), SETTINGS, simulator=simulator, name="vol09")
    return save_case(tmp_path_factory.mktemp("case") / "vol09.npz", case)


def _tiny_vp(rank: int = 5, seed: int = 1) -> Denoiser:
    """An untrained tiny VP model whose zero-initialised output layer is randomised (so it is not the identity)."""
    torch.manual_seed(seed)
    model = Denoiser(DenoiserConfig(preset="tiny", image_channels=2 * rank, complex_input=False,
                                    cond_channels=2 * rank, parameterisation="vp"))
    with torch.no_grad():
        for p in model.net.out.parameters():
            p.normal_(0, 0.05)
    return model.eval()


def test_pairs_files_manifest_and_held_out(pairs, volumes, simulator):
    folder = pairs.parent
    manifest = json.loads(pairs.read_text())
    assert manifest["held_out"] == ["vol09"]
    assert [(s["subject"], s["split"], [f["slice"] for f in s["slices"]]) for s in manifest["subjects"]] == [
        ("vol08", "train", [14, 15]), ("vol09", "held_out", [15])]
    assert manifest["simulator"]["settings"]["n_coils"] == 1
    assert manifest["simulator"]["settings"]["undersampling"] == 2.5
    assert sorted(p.name for p in folder.glob("vol08_*")) == [
        f"vol08_{n}_{kind}.npy" for n in (14, 15) for kind in ("cond", "mask", "target")]
    target, cond = np.load(folder / "vol09_15_target.npy"), np.load(folder / "vol09_15_cond.npy")
    assert target.shape == cond.shape == (10, 58, 58)
    assert target.dtype == cond.dtype == np.float32
    one = load_qmaps(volumes[1]).slice(0)
    expected = simulate_mrf_slice(one, simulator)
    np.testing.assert_allclose(target, to_channels(expected.reference[None])[0].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cond, to_channels(expected.condition[None])[0].numpy(), rtol=1e-4, atol=1e-5)
    assert np.array_equal(np.load(folder / "vol09_15_mask.npy"), one.mask.numpy())
    with np.load(folder / "mrf_bases.npz") as bases:
        for basis in (bases["reference_basis"], bases["acquired_basis"]):
            peak = basis[np.abs(basis).argmax(0), np.arange(basis.shape[1])]
            np.testing.assert_allclose(peak.imag, 0, atol=1e-6)  # canonical phase: largest entry real positive
            assert (peak.real > 0).all()
    with pytest.raises(MrdpmError, match=r"held-out subjects \['vol99'\]") as info:
        make_mrf_pairs(volumes, folder / "other", SETTINGS, held_out=["vol99"])
    assert str(volumes[0]) in str(info.value)


def test_config_parses_and_trains_on_the_pairs(pairs, tmp_path):
    config = load_config(CONFIG)
    assert config.data.held_out == ("vol08", "vol09")
    assert (config.data.channels_first, config.data.pair_scale, config.data.patch_size) == (True, "condition",
                                                                                            (64, 64))
    assert (config.model.parameterisation, config.model.num_timesteps, config.model.beta_schedule,
            config.model.beta_start, config.model.beta_end) == ("v", 1000, "linear", 1e-4, 0.02)
    table = tomllib.loads(CONFIG.read_text())
    table["data"]["sources"][0] |= {"paths": [str(pairs.parent / "*_target.npy")],
                                    "condition_paths": [str(pairs.parent / "*_cond.npy")]}
    table["data"]["held_out"] = ["vol09"]
    table["data"]["patch_size"] = [32, 32]
    table["model"]["preset"] = "tiny"
    table["optim"] |= {"steps": 2, "batch_size": 2, "warmup_steps": 0}
    table["run"] |= {"validate_every": 0, "log_every": 1, "device": "cpu"}
    small = config_from_dict(table)
    data = TrainingImages(small.data)
    assert data.subjects["deli-cs-mrf"] == ("vol08",)
    assert (data.image_channels, data.condition_channels) == (10, 10)
    # training divides each pair by the factor that restore() computes from the condition alone
    condition = torch.from_numpy(np.load(pairs.parent / "vol08_14_cond.npy"))
    assert data._items[0].cond_scale == pytest.approx(float(percentile_factor(condition, 99.0)))
    assert data._items[0].scale == data._items[0].cond_scale
    summary = train(small, tmp_path / "run", progress=False)
    card = json.loads(summary.model_card.read_text())
    assert card["intensity_normalisation"]["pair_scale"] == "condition"
    assert (card["config"]["image_channels"], card["config"]["cond_channels"]) == (10, 10)


def test_restore_shapes_seeds_spread_and_intensity_scale():
    gen = torch.Generator().manual_seed(0)
    condition = torch.randn(5, 24, 20, dtype=torch.complex64, generator=gen)
    model = _tiny_vp()
    kwargs = {"steps": 3, "samples": 3, "patch": 16, "stride": 8, "batch_size": 16}
    first = restore(condition, model, seed=4, **kwargs)
    assert first.samples.shape == (3, 5, 24, 20)
    assert first.samples.dtype == torch.complex64
    assert first.nfe == 3
    assert first.info["windows_per_sample"] == 2 * 2  # starts 0, 8 (rows) and 0, 4 (columns)
    torch.testing.assert_close(restore(condition, model, seed=4, **kwargs).samples, first.samples)
    assert not torch.allclose(restore(condition, model, seed=5, **kwargs).samples, first.samples)
    assert (first.samples[0] - first.samples[1]).abs().mean() > 1e-3 * first.samples.abs().mean()
    scaled = restore(7.0 * condition, model, seed=4, **kwargs)
    torch.testing.assert_close(scaled.samples, 7.0 * first.samples, rtol=1e-4, atol=1e-4)
    assert scaled.info["intensity_factor"] == pytest.approx(7.0 * first.info["intensity_factor"])
    roi = torch.zeros(24, 20, dtype=torch.bool)
    roi[10:14, 8:12] = True
    boxed = restore(condition, model, seed=4, roi=roi, **kwargs)
    assert boxed.info["region"] == [[6, 18], [4, 16]]
    assert (boxed.samples[..., :6, :] == 0).all()
    assert (boxed.samples[..., 6:18, 4:16] != 0).all()
    whole = restore(condition, model, seed=4, **{**kwargs, "patch": None})
    assert whole.info["windows_per_sample"] == 1
    with pytest.raises(ValueError, match="rank 4 needs a 2D model of 8 real channels"):
        restore(condition[:4], model, **kwargs)
    edm = Denoiser(DenoiserConfig(preset="tiny", image_channels=10, complex_input=False, cond_channels=10))
    with pytest.raises(ValueError, match="discrete-time"):
        restore(condition, edm, **kwargs)


def test_matching_recovers_maps_and_std_is_the_spread(volumes, simulator):
    one = load_qmaps(volumes[1]).slice(0)
    sim = simulate_mrf_slice(one, simulator)
    # a finer dictionary than the simulator's, compressed in the same basis (steps of 12 % in T1, 13 % in T2)
    fine = build_dictionary(FispSequence.jiang(), *t1_t2_grid(SETTINGS.t1_range_ms, SETTINGS.t2_range_ms, 50, 50))
    dictionary = fine.compress(simulator.reference_dictionary.basis)
    maps = quantitative_maps(sim.reference, dictionary, one.mask)
    metrics = map_metrics(maps, one.t1_ms, one.t2_ms, one.mask)
    # measured: 2.8 / 3.6 % (the dictionary's grid steps and the interpolation of the simulation)
    assert metrics["mape_t1"] < 5
    assert metrics["mape_t2"] < 5
    assert metrics["ssim_t1"] > 0.9
    assert (maps.t1_ms[~one.mask] == 0).all()
    assert (maps.t1_std_ms == 0).all()
    same = quantitative_maps(sim.reference.expand(3, -1, -1, -1), dictionary, one.mask)
    assert (same.t1_std_ms == 0).all()
    assert (same.t2_std_ms == 0).all()
    torch.testing.assert_close(same.t1_ms, maps.t1_ms)
    torch.testing.assert_close(same.t1_sample_mean_ms, maps.t1_ms)
    noisy = sim.reference + 0.3 * sim.reference.abs().mean() * torch.randn(
        (4, *sim.reference.shape), dtype=torch.complex64, generator=torch.Generator().manual_seed(0))
    spread = quantitative_maps(noisy, dictionary, one.mask)
    assert spread.t1_std_ms[one.mask].mean() > 10
    assert (spread.t1_std_ms[~one.mask] == 0).all()
    perfect = map_metrics(dataclasses.replace(maps, t1_ms=one.t1_ms, t2_ms=one.t2_ms), one.t1_ms, one.t2_ms, one.mask)
    assert perfect["mape_t1"] == perfect["rmse_t2_ms"] == 0
    assert perfect["ssim_t2"] == pytest.approx(1.0)


def test_case_round_trip_and_baselines(case_path, simulator, volumes):
    case = load_case(case_path)
    assert case.kspace.shape == (1, 1, 200, simulator.operator.n_samples)
    assert case.truth.t1_ms.shape == (1, 58, 58)
    setup = setup_for_case(case)
    torch.testing.assert_close(setup.reference.basis, simulator.reference_dictionary.basis)
    torch.testing.assert_close(setup.acquired.basis, simulator.acquired_dictionary.basis)
    truth = case.truth.slice(0)
    mape = {}
    for method in ("svd", "low-rank"):
        result = reconstruct_slice(setup, case.kspace[0], method, mask=truth.mask)
        assert (result.nfe, result.domain) == (0, "acquired")
        mape[method] = map_metrics(result.maps, truth.t1_ms, truth.t2_ms, truth.mask)
    # measured: svd 24 / 97 %, low-rank (20 CG iterations) 22 / 48 % (30 x 30 dictionary)
    assert mape["low-rank"]["mape_t2"] < 0.7 * mape["svd"]["mape_t2"]
    with pytest.raises(ValueError, match="network methods"):
        reconstruct_slice(setup, case.kspace[0], "svd", mask=truth.mask, options=ReconOptions(dc_weight=0.1))
    with pytest.raises(ValueError, match="dc_weight >= 0"):
        ReconOptions(dc_weight=-1.0)
    simulated = reconstruct_slice(MrfSetup.from_simulator(simulator), case.kspace[0], "svd", mask=truth.mask)
    torch.testing.assert_close(simulated.maps.t1_ms, reconstruct_slice(setup, case.kspace[0], "svd",
                                                                       mask=truth.mask).maps.t1_ms)


def test_reference_operator_models_the_acquisition_and_data_consistency_helps(case_path, simulator):
    """The reference basis cut to the acquired frames predicts the k-space from the true reference coefficients
    (up to the truncation to rank 5), and the data-consistency CG pulls a perturbed estimate back towards them."""
    case = load_case(case_path)
    setup, truth = setup_for_case(case), case.truth.slice(0)
    op = setup.reference_operator
    torch.testing.assert_close(op.basis, setup.reference.basis[:200])
    reference = time_series_subspace(truth, simulator.interpolation, setup.reference.basis)
    kspace = case.kspace[0]
    # measured 0.106 (the acquired basis: 0.015): the full series' rank-5 basis fits the first 200 frames less well
    assert ((op(reference) - kspace).norm() / kspace.norm()).item() < 0.15
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(reference.shape, dtype=torch.complex64, generator=gen) * truth.mask
    estimate = reference + 0.1 * reference[0].abs().max() * noise
    refined = low_rank_cg(op, kspace, setup.dcf, n_iter=30, lam=0.03, prior=estimate)
    error = {name: (c - reference)[:, truth.mask].norm().item() for name, c in (("estimate", estimate),
                                                                                ("refined", refined))}
    assert error["refined"] < 0.85 * error["estimate"]  # measured 0.75; MAPE T1 51 -> 33 %
    mape = {name: map_metrics(quantitative_maps(c, setup.reference, truth.mask), truth.t1_ms, truth.t2_ms,
                              truth.mask)["mape_t1"] for name, c in (("estimate", estimate), ("refined", refined))}
    assert mape["refined"] < mape["estimate"]


def _nifti(path):
    return nib.load(path).get_fdata()


def test_cli_simulate_and_recon(volumes, case_path, tmp_path, capsys):
    out = tmp_path / "case.npz"
    assert main(["mrf", "simulate", str(volumes[0]), "-o", str(out), "--slices", "1:2", "--dictionary-size",
                 "20,20", "--interpolation-size", "8,8"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["slices"], info["n_coils"], info["n_match"]) == ([15], 1, [20, 20])
    assert load_case(out).kspace.shape[:3] == (1, 1, 200)
    metrics = {}
    for method in ("svd", "low-rank"):
        folder = tmp_path / method
        assert main(["mrf", "recon", str(case_path), "-o", str(folder), "--method", method]) == 0
        assert f"{method}: 1 slice(s)" in capsys.readouterr().out
        assert sorted(p.name for p in folder.iterdir()) == ["maps.png", "pd.nii.gz", "summary.json",
                                                            "t1_ms.nii.gz", "t2_ms.nii.gz"]
        t1 = _nifti(folder / "t1_ms.nii.gz")
        assert t1.shape == (58, 58, 1)  # NIfTI (i, j, k) = (W, H, D)
        assert 500 < np.median(t1[t1 > 0]) < 2000
        metrics[method] = json.loads((folder / "summary.json").read_text())["mean"]
    assert metrics["low-rank"]["mape_t2"] < metrics["svd"]["mape_t2"]
    assert metrics["low-rank"]["mape_t2_brain"] < metrics["svd"]["mape_t2_brain"]


def test_cli_recon_with_models_and_errors(pairs, case_path, tmp_path, capsys):
    run = tmp_path / "run"
    table = tomllib.loads(CONFIG.read_text())
    table["data"]["sources"][0] |= {"paths": [str(pairs.parent / "*_target.npy")],
                                    "condition_paths": [str(pairs.parent / "*_cond.npy")]}
    table["data"] |= {"held_out": ["vol09"], "patch_size": [32, 32]}
    table["model"]["preset"] = "tiny"
    table["optim"] |= {"steps": 1, "batch_size": 2, "warmup_steps": 0}
    table["run"] |= {"validate_every": 0, "device": "cpu"}
    config = tmp_path / "mrf.toml"
    config.write_text("\n".join(f"[{k}]\n" + "\n".join(f"{key} = {json.dumps(v)}" for key, v in section.items()
                                                       if key != "sources") for k, section in table.items())
                      + f"\n[[data.sources]]\nname = \"d\"\npaths = {json.dumps(table['data']['sources'][0]['paths'])}"
                      f"\ncondition_paths = {json.dumps(table['data']['sources'][0]['condition_paths'])}\n")
    assert main(["mrf", "train", str(config), "--run-dir", str(run), "--no-progress"]) == 0
    assert main(["mrf", "train", str(config), "--kind", "unet", "--run-dir", str(run), "--steps", "2",
                 "--unet-preset", "tiny", "--no-progress"]) == 0
    capsys.readouterr()
    out = tmp_path / "diffusion"
    assert main(["mrf", "recon", str(case_path), "-o", str(out), "--model", str(run / "model.json"), "--steps", "2",
                 "--samples", "2", "--patch", "32", "--stride", "32"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["basis_check"], summary["slices"][0]["nfe"]) == ("same", 2)
    assert {"t1_std_ms.nii.gz", "t2_std_ms.nii.gz", "maps.png"} <= {p.name for p in out.iterdir()}
    mape = {}
    for name, extra in (("unet", []), ("unet-dc", ["--dc-weight", "0.03"])):
        assert main(["mrf", "recon", str(case_path), "-o", str(tmp_path / name), "--method", "unet", "--model",
                     str(run / "unet.json"), *extra]) == 0
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        mape[name] = summary["mean"]["mape_t1"]
    assert summary["options"]["dc_weight"] == 0.03
    assert mape["unet-dc"] < mape["unet"]  # an untrained U-Net: the k-space makes most of the estimate
    capsys.readouterr()
    bad = tmp_path / "bad.npz"
    bad.write_text("not a zip")
    np.savez(tmp_path / "partial.npz", kspace=np.zeros((1, 1, 2, 3), np.complex64))
    for argv, message, path in (
            (["recon", str(case_path), "-o", str(out)], "needs --model", case_path),
            (["recon", str(case_path), "-o", str(out), "--method", "svd", "--dc-weight", "0.1"],
             "dc_weight applies to the network methods", case_path),
            (["recon", str(case_path), "-o", str(out), "--method", "unet", "--model", str(run / "unet.json"),
              "--dc-weight", "-1"], "dc_weight >= 0", case_path),
            (["recon", str(bad), "-o", str(out), "--method", "svd"], "cannot read as an MRF case", bad),
            (["recon", str(tmp_path / "partial.npz"), "-o", str(out), "--method", "svd"], "missing keys",
             tmp_path / "partial.npz"),
            (["recon", str(case_path), "-o", str(out), "--method", "unet", "--model", str(run / "model.json")],
             "not a mrdpm-regression-unet card", run / "model.json"),
            (["make-pairs", str(case_path), "-o", str(tmp_path / "p"), "--held-out", "vol01"], "match no input",
             case_path)):
        assert main(["mrf", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err
        assert str(path) in err
