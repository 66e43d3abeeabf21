"""Posterior-sampler accuracy against the exact posterior of a Gaussian prior, as a function of NFE.

A 16x16 complex Gaussian prior (``exponential_prior``) has an exact denoiser, and under ``y = A x + n`` an exact
Gaussian posterior (``GaussianPrior.exact_posterior``). For every posterior sampler and every NFE budget this
script draws ``--samples`` posterior samples and reports the relative L2 error of their mean against the exact
posterior mean, and of their per-pixel variance (``E|x - mean|^2``) against the exact marginal variance, with the
Monte-Carlo floor of both. Two problems: single-coil Cartesian with a Gaussian-1D x4 mask, and 4-coil SENSE
(``simulate_coil_maps``, unit root-sum-of-squares) with the same mask; complex noise of std 0.05 per k-space entry.

Run (from the repository root; about 40 min on one CPU thread):

    python benchmarks/sampler_accuracy.py --threads 1

Writes ``benchmarks/results/sampler_accuracy.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mrdpm.diffusion.consistency import Measurement, ProximalDC
from mrdpm.diffusion.gaussian import GaussianPrior, exponential_prior
from mrdpm.diffusion.posterior import (
    posterior_samples,
    sample_dds,
    sample_dps,
    sample_langevin,
    sample_score_pc,
)
from mrdpm.diffusion.schedules import geometric_sigmas, karras_sigmas
from mrdpm.physics.coils import simulate_coil_maps
from mrdpm.physics.masks import make_mask
from mrdpm.physics.noise import complex_gaussian
from mrdpm.physics.operators import sense_operator, single_coil_operator

SHAPE = (1, 16, 16)
NOISE_STD = 0.05
THRESHOLD = 0.05
# The prior's largest eigenvalue is ~36 (std 6): sigma_max must dwarf it, or ODE samplers keep a memory
# sqrt(lam / (lam + 2 sigma_max^2)) of starting at mean 0 (9% of that component's mean at EDM's sigma_max = 80).
SIGMA_MAX = 400.0
LANGEVIN_STEPS_PER_LEVEL = 5


@dataclass(frozen=True)
class Config:
    """A sampler with its schedule rule: ``schedule(nfe)`` gives the sigmas whose run costs about ``nfe``."""

    name: str
    sampler: Callable
    schedule: Callable[[int], torch.Tensor]
    options: dict = field(default_factory=dict)
    max_nfe: int = 10**9


def configs() -> list[Config]:
    def karras(nfe: int) -> torch.Tensor:
        return karras_sigmas(nfe, 0.002, SIGMA_MAX)

    return [
        Config("score_pc (ProximalDC)", sample_score_pc, lambda nfe: geometric_sigmas((nfe + 1) // 2, 0.01, SIGMA_MAX),
               {"dc": ProximalDC(cg_iters=3)}),
        Config("langevin (T=5)", sample_langevin,
               lambda nfe: geometric_sigmas(max(1, (nfe - 1) // LANGEVIN_STEPS_PER_LEVEL), 0.01, SIGMA_MAX),
               {"n_steps_per_level": LANGEVIN_STEPS_PER_LEVEL}),
        Config("dps (zeta=0.3)", sample_dps, karras, {"zeta": 0.3}, max_nfe=1000),
        Config("dps (zeta=1)", sample_dps, karras, {"zeta": 1.0}, max_nfe=1000),
        Config("dds isotropic (eta=1)", sample_dds, karras, {"cg_iters": 5}, max_nfe=1000),
        Config("dds tweedie (eta=0)", sample_dds, karras, {"prior_cov": "tweedie", "eta": 0.0, "cg_iters": 50},
               max_nfe=100),
    ]


def problems(prior: GaussianPrior, seed: int) -> dict[str, Measurement]:
    generator = torch.Generator().manual_seed(seed)
    mask = make_mask("gaussian1d", SHAPE[1:], 4, center_fraction=0.125, seed=seed).mask
    ops = {"single-coil gaussian1d x4": single_coil_operator(mask),
           "4-coil SENSE gaussian1d x4": sense_operator(simulate_coil_maps(4, SHAPE[1:]), mask)}
    x_true = prior.sample(1, generator)
    out = {}
    for name, op in ops.items():
        clean = op(x_true)[0]
        noise = complex_gaussian(tuple(clean.shape), NOISE_STD, generator=generator) * (clean.abs() > 0)
        out[name] = Measurement(op, clean + noise, NOISE_STD)
    return out


def evaluate(prior: GaussianPrior, meas: Measurement, config: Config, nfe: int, n_samples: int,
             seed: int) -> dict:
    mean, cov = prior.exact_posterior(meas.op, meas.y, meas.noise_std)
    var = cov.diagonal().real
    result = posterior_samples(config.sampler, prior.denoiser, meas, SHAPE, n_samples, config.schedule(nfe),
                               seed=seed, **config.options)
    sample_var = result.std.double().reshape(-1) ** 2
    return {
        "nfe_budget": nfe,
        "nfe": result.nfe,
        "n_backward": result.n_backward,
        "mean_rel_err": float((result.mean.to(torch.complex128) - mean).norm() / mean.norm()),
        "var_rel_err": float((sample_var - var).norm() / var.norm()),
        "var_ratio": float(sample_var.sum() / var.sum()),
        "seconds": result.seconds,
    }


def run(args: argparse.Namespace) -> dict:
    prior = exponential_prior(SHAPE, length_scale=3.0, generator=torch.Generator().manual_seed(args.seed))
    report = {"command": args.command, "shape": SHAPE, "noise_std": NOISE_STD, "sigma_max": SIGMA_MAX,
              "n_samples": args.samples,
              "threshold": THRESHOLD, "threads": torch.get_num_threads(), "problems": {}}
    for pname, meas in problems(prior, args.seed).items():
        mean, cov = prior.exact_posterior(meas.op, meas.y, meas.noise_std)
        var = cov.diagonal().real
        entry = {
            "mc_floor_mean_rel_err": math.sqrt(float(var.sum()) / args.samples) / float(mean.norm()),
            "mc_floor_var_rel_err": 1 / math.sqrt(args.samples),
            "prior_mean_rel_err": float((prior.mean.reshape(SHAPE) - mean).norm() / mean.norm()),
            "posterior_to_prior_variance": float(var.sum() / prior.cov.diagonal().real.sum()),
            "samplers": {},
        }
        for config in configs():
            rows = []
            for nfe in (b for b in args.nfe if b <= config.max_nfe):
                row = evaluate(prior, meas, config, nfe, args.samples, args.seed)
                rows.append(row)
                print(f"{pname:28s} {config.name:24s} nfe {row['nfe']:5d} mean {row['mean_rel_err']:.4f} "
                      f"var {row['var_rel_err']:.4f} ({row['seconds']:.1f} s)", flush=True)
            within = [r["nfe"] for r in rows if r["mean_rel_err"] <= THRESHOLD]
            entry["samplers"][config.name] = {"options": {k: repr(v) for k, v in config.options.items()},
                                              "rows": rows, "max_nfe_tested": max(r["nfe"] for r in rows),
                                              "min_nfe_mean_within_5pct": min(within, default=None)}
        report["problems"][pname] = entry
        write(report, args.out)
    return report


def markdown(report: dict) -> str:
    lines = ["# Posterior-sampler accuracy on a Gaussian prior", "", f"Command: `{report['command']}`", "",
             f"16x16 complex Gaussian prior, noise std {report['noise_std']} per k-space entry, sigma_max "
             f"{report['sigma_max']} (Karras rho = 7 down to 0.002; geometric down to 0.01 for score_pc / langevin), "
             f"{report['n_samples']} samples per run, {report['threads']} thread(s). Errors are relative L2 errors "
             "against the exact posterior: `mean` of the sample mean, `var` of the per-pixel variance. NFE counts "
             "sequential denoiser calls; `bwd` counts backward passes through the denoiser (DPS, Tweedie DDS).", "",
             "Settings: score_pc with `ProximalDC(cg_iters=3)`, snr 0.16, one corrector step (NFE = 2n - 1); "
             "langevin with 5 steps per level and `step_ratio` 0.1 (NFE = 5 L + 1); DPS on an Euler ODE; isotropic "
             "DDS with `r_t = sigma_t` (lam = 1), 5 CG iterations, eta = 1; Tweedie DDS with 50 CG iterations in "
             "data space (one backward each), eta = 0. Wall times are on a shared, loaded CPU.", ""]
    for pname, entry in report["problems"].items():
        lines += [f"## {pname}", "",
                  f"Monte-Carlo floor: mean {entry['mc_floor_mean_rel_err']:.4f}, var "
                  f"{entry['mc_floor_var_rel_err']:.4f}; prior mean error {entry['prior_mean_rel_err']:.3f}; "
                  f"posterior/prior variance {entry['posterior_to_prior_variance']:.3f}.", "",
                  "| sampler | NFE | bwd | mean err | var err | var ratio | s |", "| --- | ---: | ---: | ---: | ---: "
                  "| ---: | ---: |"]
        for sname, result in entry["samplers"].items():
            lines += [f"| {sname} | {r['nfe']} | {r['n_backward']} | {r['mean_rel_err']:.4f} | "
                      f"{r['var_rel_err']:.4f} | {r['var_ratio']:.3f} | {r['seconds']:.1f} |" for r in result["rows"]]
        lines += ["", "Smallest NFE with mean error <= 5%:", ""]
        lines += [f"- {sname}: {result['min_nfe_mean_within_5pct'] or 'not within ' + str(result['max_nfe_tested'])}"
                  for sname, result in entry["samplers"].items()]
        lines.append("")
    return "\n".join(lines)


def write(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "sampler_accuracy.json").write_text(json.dumps(report, indent=2))
    (out / "sampler_accuracy.md").write_text(markdown(report))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--nfe", type=int, nargs="+", default=[10, 20, 50, 100, 200, 500, 1000, 2000],
                        help="NFE budgets; DPS and isotropic DDS stop at 1000, Tweedie DDS at 100")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.command = "python benchmarks/sampler_accuracy.py " + " ".join(
        f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in
        (("samples", args.samples), ("nfe", args.nfe), ("seed", args.seed), ("threads", args.threads)) if v)
    start = time.perf_counter()
    run(args)
    print(f"done in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
