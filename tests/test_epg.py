"""EPG operators and the FISP signal against closed forms and an independent isochromat Bloch simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mrdpm.physics.epg import DEFAULT_N_STATES, equilibrium, fisp_signal, rf_pulse


def isochromat_fisp(t1_ms, t2_ms, flip_deg, tr_ms, te_ms, ti_ms, b1, n_spins):
    """Bloch simulation of the FISP train: ``n_spins`` isochromats per atom whose gradient precession per TR is
    spread evenly over 2 pi; the voxel signal is their mean ``Mx + i My`` at TE. Equal to the EPG whenever
    ``n_spins`` exceeds the highest dephasing order reached (no aliasing of configuration orders)."""
    t1, t2, b1 = (np.asarray(v, dtype=float)[:, None] for v in (t1_ms, t2_ms, b1))
    precession = np.exp(2j * np.pi * np.arange(n_spins) / n_spins)
    mxy = np.zeros((t1.shape[0], n_spins), dtype=complex)
    mz = -np.ones((t1.shape[0], n_spins))  # ideal inversion, transverse part spoiled

    def relax(t, mxy, mz):
        return mxy * np.exp(-t / t2), mz * np.exp(-t / t1) + 1 - np.exp(-t / t1)

    mxy, mz = relax(ti_ms, mxy, mz)
    out = []
    for flip, tr in zip(flip_deg, tr_ms, strict=True):
        alpha = np.deg2rad(flip) * b1  # right-handed rotation about x: (My, Mz) -> (c My - s Mz, s My + c Mz)
        my = np.cos(alpha) * mxy.imag - np.sin(alpha) * mz
        mz = np.sin(alpha) * mxy.imag + np.cos(alpha) * mz
        mxy, mz = relax(te_ms, mxy.real + 1j * my, mz)
        out.append(mxy.mean(axis=1))
        mxy, mz = relax(tr - te_ms, mxy, mz)
        mxy = mxy * precession
    return np.stack(out, axis=1)


def fisp_steady_state(alpha, tr_ms, te_ms, t1_ms, t2_ms):
    """Steady state of unbalanced SSFP-FID (FISP) averaged over the intra-voxel dephasing
    (Hänicke & Vogel, MRM 2003): tan(a/2) [1 - (E1 - cos a)(1 - E2^2) / sqrt(p^2 - q^2)], then T2 decay to TE."""
    e1, e2 = np.exp(-tr_ms / t1_ms), np.exp(-tr_ms / t2_ms)
    p = 1 - e1 * np.cos(alpha) - e2**2 * (e1 - np.cos(alpha))
    q = e2 * (1 - e1) * (1 + np.cos(alpha))
    return np.tan(alpha / 2) * (1 - (e1 - np.cos(alpha)) * (1 - e2**2) / np.sqrt(p**2 - q**2)) * np.exp(-te_ms / t2_ms)


def test_two_pulse_train_matches_closed_form():
    # flips a0 at j = 0 and a1 at j = n, zero between: the first echo is the inversion-recovery FID, the gradient
    # dephases it away completely (exact zeros), and the second echo reads the recovered Z_0 only.
    t1, t2 = torch.tensor([400.0, 1200.0, 3000.0]), torch.tensor([50.0, 300.0, 1500.0])
    b1 = torch.tensor([1.0, 0.8, 1.15])
    n, a0, a1, te, ti = 9, 30.0, 50.0, 2.5, 40.0
    flips = torch.zeros(n + 3)
    flips[0], flips[n] = a0, a1
    tr = 8.0 + torch.arange(n + 3, dtype=torch.float64) % 3  # variable TR
    sig = fisp_signal(t1, t2, flips, tr, te, ti, b1=b1).numpy()
    t1n, t2n, b1n = t1.double().numpy(), t2.double().numpy(), b1.double().numpy()
    mz_ti = 1 - 2 * np.exp(-ti / t1n)
    first = -1j * np.sin(np.deg2rad(a0) * b1n) * mz_ti * np.exp(-te / t2n)
    recovery = np.exp(-float(tr[:n].sum()) / t1n)
    mz_n = 1 - (1 - np.cos(np.deg2rad(a0) * b1n) * mz_ti) * recovery
    second = -1j * np.sin(np.deg2rad(a1) * b1n) * mz_n * np.exp(-te / t2n)
    np.testing.assert_allclose(sig[:, 0], first, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(sig[:, 1:n], 0)
    np.testing.assert_allclose(sig[:, n], second, rtol=1e-6, atol=1e-7)


def test_inversion_recovery_look_locker_when_t2_much_shorter_than_tr():
    # With T2 << TR no coherence survives to the next pulse, so FISP is a Look-Locker experiment:
    # M_j = M_ss + (M_0 - M_ss) (E1 cos a)^j before pulse j, M_0 = 1 - 2 exp(-TI/T1), M_ss = (1-E1)/(1-E1 cos a),
    # echo_j = -i sin(a) M_j exp(-TE/T2).
    t1 = torch.tensor([150.0, 800.0, 2500.0])
    t2 = torch.full((3,), 0.4)
    n, flip, tr, te, ti = 200, 10.0, 10.0, 0.1, 18.0
    sig = fisp_signal(t1, t2, torch.full((n,), flip), tr, te, ti).numpy()
    a = math.radians(flip)
    e1 = np.exp(-tr / t1.double().numpy())[:, None]
    m0 = 1 - 2 * np.exp(-ti / t1.double().numpy())[:, None]
    mss = (1 - e1) / (1 - e1 * math.cos(a))
    mz = mss + (m0 - mss) * (e1 * math.cos(a)) ** np.arange(n)
    expected = -1j * math.sin(a) * mz * math.exp(-te / 0.4)
    np.testing.assert_allclose(sig, expected, rtol=1e-5, atol=1e-8)
    assert np.sign(sig[0, 0].imag) != np.sign(sig[0, -1].imag)  # the curve crosses zero: inversion works


def test_transient_matches_isochromat_bloch_simulation():
    generator = torch.Generator().manual_seed(3)
    n = 60
    flips = 5 + 60 * torch.rand(n, generator=generator, dtype=torch.float64)
    tr = 9.0 + 3 * torch.rand(n, generator=generator, dtype=torch.float64)
    t1 = torch.tensor([250.0, 900.0, 1800.0, 4000.0])
    t2 = torch.tensor([25.0, 80.0, 600.0, 2000.0])
    b1 = torch.tensor([1.0, 0.7, 1.2, 0.9])
    epg = fisp_signal(t1, t2, flips, tr, 1.9, 18.0, b1=b1, n_states=n + 1).numpy()
    bloch = isochromat_fisp(t1.numpy(), t2.numpy(), flips.numpy(), tr.numpy(), 1.9, 18.0, b1.numpy(), 2 * n + 2)
    np.testing.assert_allclose(epg, bloch, atol=2e-6, rtol=0)
    assert np.abs(bloch).max() > 0.1


def test_constant_flip_train_reaches_fisp_steady_state():
    flips_deg = np.array([10.0, 35.0, 60.0, 90.0])
    t1 = torch.tensor([300.0, 800.0, 500.0, 1000.0])
    t2 = torch.tensor([40.0, 200.0, 400.0, 100.0])
    tr, te, n = 10.0, 2.0, 1500
    # one nominal 1-degree train, the flip set per atom through b1
    sig = fisp_signal(t1, t2, torch.ones(n), tr, te, 18.0, b1=torch.tensor(flips_deg), n_states=200)[:, -1]
    expected = fisp_steady_state(np.deg2rad(flips_deg), tr, te, t1.double().numpy(), t2.double().numpy())
    np.testing.assert_allclose(sig.imag.numpy(), -expected, rtol=1e-4)
    np.testing.assert_allclose(sig.real.numpy(), 0, atol=1e-7)


def test_default_truncation_close_to_exact_for_long_t2():
    # The module's claim: normalised signals within 2e-3 of the untruncated simulation for T2 up to 2 s.
    n = 1000
    t = torch.arange(n, dtype=torch.float64)
    flips = 5 + 65 * torch.sin(math.pi * (t % 200) / 200)
    t1, t2 = torch.tensor([4000.0, 1000.0]), torch.tensor([2000.0, 100.0])
    exact = fisp_signal(t1, t2, flips, 10.0, 1.908, 18.0, n_states=n + 1)
    trunc = fisp_signal(t1, t2, flips, 10.0, 1.908, 18.0, n_states=DEFAULT_N_STATES)
    exact, trunc = (s / torch.linalg.vector_norm(s, dim=1, keepdim=True) for s in (exact, trunc))
    err = torch.linalg.vector_norm(exact - trunc, dim=1)
    assert err[0] < 2e-3
    assert err[1] < 1e-5
    coarse = fisp_signal(t1[:1], t2[:1], flips, 10.0, 1.908, 18.0, n_states=10)
    coarse = coarse / torch.linalg.vector_norm(coarse)
    assert torch.linalg.vector_norm(exact[0] - coarse[0]) > 10 * err[0]  # truncation does matter, and is caught


def test_rf_pulse_axis_phase_and_inverse():
    # 90 degrees about +y (phase 90) takes +z to +x: F+ = Mx + i My = 1
    state = rf_pulse(equilibrium(1, 4), math.pi / 2, phase_rad=math.pi / 2)
    torch.testing.assert_close(state.fp[0, 0], torch.tensor(1.0 + 0j, dtype=torch.complex128))
    torch.testing.assert_close(state.z[0, 0], torch.tensor(0j, dtype=torch.complex128), atol=1e-15, rtol=0)
    # a rotation followed by the opposite rotation about the same axis is the identity, order by order
    generator = torch.Generator().manual_seed(0)
    random = [torch.randn(5, 6, dtype=torch.complex128, generator=generator) for _ in range(3)]
    alpha = torch.rand(5, dtype=torch.float64, generator=generator) * math.pi
    back = rf_pulse(rf_pulse(type(state)(*random), alpha, 0.7), -alpha, 0.7)
    for got, want in zip(back, random, strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"t2_ms": torch.tensor([50.0])}, "t1_ms and t2_ms must be 1-D of equal length"),
    ({"b1": torch.ones(3)}, "b1 must have the shape"),
    ({"tr_ms": 1.0}, "te_ms <= tr_ms"),
    ({"tr_ms": torch.full((3,), 10.0)}, "tr_ms must be a float or have the shape"),
    ({"flip_deg": torch.ones(2, 4)}, "flip_deg must be a non-empty 1-D"),
    ({"t1_ms": torch.tensor([-1.0, 900.0])}, "relaxation times must be > 0"),
])
def test_fisp_signal_input_errors(kwargs, message):
    args = {"t1_ms": torch.tensor([800.0, 900.0]), "t2_ms": torch.tensor([50.0, 60.0]), "flip_deg": torch.ones(4),
            "tr_ms": 10.0, "te_ms": 2.0, "ti_ms": 18.0} | kwargs
    with pytest.raises(ValueError, match=message):
        fisp_signal(**args)
