"""PowerLawHawkes (tick's power-law kernels with a support cut-off) against independent computations.

The intensity against a NumPy double loop; the scan against the parallel evaluation (with the
history window); the exact log-likelihood against a NumPy loop plus ``scipy.integrate.quad``; the
closed-form kernel integral against ``quad`` (across ``exponent = 1``); samplers (thinning with a
bound, Ogata) by the mean count from the renewal (Volterra) equation of the mean intensity and by
time rescaling; gradients by ``gradcheck``; tick's kernel values, primitives, norms and simulated
counts where tick is installed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.integrate
import scipy.stats
import torch
from _helpers import make_context
from _pp_checks import (
    Z_TOL,
    assert_exp1,
    check_log_prob_with_context,
    check_relaxed_draw,
    counts_of,
    events_of,
    import_tick,
    rescaled_gaps,
    soft_history,
    z_mean,
    z_two_sample,
)

from pyro_dpp import PointProcess
from pyro_dpp.intensity import PowerLawHawkes
from pyro_dpp.intensity.powerlaw import power_integral
from pyro_dpp.likelihood import exact_log_likelihood, quadrature_compensator
from pyro_dpp.thinning import sample_exact, sample_ogata

DT = torch.float64
MU = np.array([0.4, 0.3])
MULT = np.array([[0.15, 0.10, 0.20], [0.10, 0.20, 0.10]])  # K x (K + 1 context)
CUTOFF, EXPONENT, SUPPORT = 0.5, 1.5, 4.0
CUTOFFS = np.array([[0.5, 1.0, 0.3], [0.8, 0.4, 1.5]])
EXPONENTS = np.array([[1.5, 0.8, 1.0], [2.0, 1.2, 0.6]])


def make(mu=MU, mult=MULT, cutoff=CUTOFF, exponent=EXPONENT, support=SUPPORT, window=None, dtype=DT):
    return PowerLawHawkes(*(torch.as_tensor(np.asarray(x), dtype=dtype) for x in (mu, mult, cutoff, exponent)),
                          support=support, window=window)


def np_phi(lag, mult, cutoff, exponent, support):
    """``... x K x D`` kernel values at lags ``...``: tick's m (c + t)^-b on 0 < t < S."""
    lag = np.asarray(lag, dtype=float)[..., None, None]
    safe = np.where(lag > 0, lag, 1.0)
    return np.where((lag > 0) & (lag < support), mult * (cutoff + safe) ** (-exponent), 0.0)


def np_G(x, cutoff, exponent):
    """``int_0^x (c + s)^-b ds`` by the textbook formula (log at b = 1)."""
    x, cutoff, exponent = np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in (x, cutoff, exponent)))
    with np.errstate(divide="ignore", invalid="ignore"):
        power = ((cutoff + x) ** (1 - exponent) - cutoff ** (1 - exponent)) / (1 - exponent)
    return np.where(exponent == 1, np.log1p(x / cutoff), power)


def np_rate(mu, mult, cutoff, exponent, support, times, weights):
    def rate(t):
        out = np.array(mu, dtype=float)
        for tn, wn in zip(times, weights, strict=True):
            out = out + np_phi(t - tn, mult, cutoff, exponent, support) @ wn
        return out
    return rate


def np_cumulative(mu, mult, cutoff, exponent, support):
    """``Lambda_k(q)`` in closed form for one sequence of one-hot events (marks index columns)."""
    def cumulative(times, marks, query):
        lag = query[:, None] - times[None, :]  # Q x E
        c = np.broadcast_to(cutoff, mult.shape)[:, marks].T  # E x K: the pair (k, mark of e)
        b = np.broadcast_to(exponent, mult.shape)[:, marks].T
        mass = np_G(np.clip(lag, 0, support)[..., None], c, b) * (lag > 0)[..., None]  # Q x E x K
        return mu * query[:, None] + np.einsum("qek,ek->qk", mass, mult[:, marks].T)
    return cumulative


def volterra_mean_counts(mu, mult, cutoff, exponent, support, duration, step=2e-3):
    """E[N_k(T)] started empty (no context), from the renewal equation of the mean intensity
    m(t) = mu + int_0^t phi(s) m(t - s) ds: the kernel's exact mass on cells of length ``step``
    times the mean of m at the cell's two ends (trapezoid in m, implicit in the newest value)."""
    k = len(mu)
    n = int(round(duration / step))
    cells_n = min(n, int(math.ceil(support / step - 1e-9)) if math.isfinite(support) else n)
    edges = np.arange(cells_n + 1) * step
    mass = np_G(edges[:, None, None], cutoff, exponent)
    cells = (mass[1:] - mass[:-1]) * mult[:, :k]  # L x K x K: the kernel's mass on [l h, (l + 1) h]
    m = np.zeros((n + 1, k))
    m[0] = mu
    implicit = np.linalg.inv(np.eye(k) - cells[0] / 2)
    for i in range(1, n + 1):
        # sum_l cells[l] (m(t_i - l h) + m(t_i - (l + 1) h)) / 2, the l = 0 term's m(t_i) solved for
        rhs = mu + cells[0] @ m[i - 1] / 2
        top = min(i, cells_n)
        if top > 1:
            near, far = m[i - 1 : i - top : -1], m[i - 2 :: -1][: top - 1] if i >= 2 else None
            rhs = rhs + np.einsum("lkj,lj->k", cells[1:top], (near + far) / 2)
        m[i] = implicit @ rhs
    return scipy.integrate.trapezoid(m, dx=step, axis=0)


# ---- the kernel and the intensity ---------------------------------------------------------------------
def test_power_integral_matches_quad_across_exponent_one():
    for c in (0.1, 1.0, 3.0):
        for b in (0.3, 1.0 - 1e-9, 1.0, 1.0 + 1e-7, 1.5, 3.0):
            for x in (0.0, 0.01, 2.0, 50.0):
                ref = scipy.integrate.quad(lambda s, c=c, b=b: (c + s) ** (-b), 0, x, epsabs=1e-14, epsrel=1e-13)[0]
                got = float(power_integral(torch.tensor(x, dtype=DT), torch.tensor(c, dtype=DT),
                                           torch.tensor(b, dtype=DT)))
                assert got == pytest.approx(ref, rel=1e-10, abs=1e-14), (c, b, x)
    # the derivative in the exponent is continuous through b = 1
    b = torch.tensor([1 - 1e-3, 1.0, 1 + 1e-3], dtype=DT, requires_grad=True)
    (grad,) = torch.autograd.grad(power_integral(torch.tensor(5.0, dtype=DT), torch.tensor(0.5, dtype=DT), b).sum(), b)
    assert abs(float(grad[0] - grad[1])) < 1e-2 and abs(float(grad[2] - grad[1])) < 1e-2


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per-pair"])
@pytest.mark.parametrize("support", [SUPPORT, math.inf], ids=["support", "infinite"])
@pytest.mark.parametrize("events,queries", [(7, 11), (150, 130)], ids=["short", "long"])
def test_forward_matches_double_loop(shared, support, events, queries):
    cutoff, exponent = (CUTOFF, EXPONENT) if shared else (CUTOFFS, EXPONENTS)
    intensity = make(cutoff=cutoff, exponent=exponent, support=support)
    times, weights = soft_history(2, events, 3, seed=0, span=30.0)
    query = torch.rand(2, queries, generator=torch.Generator().manual_seed(1), dtype=DT) * 32
    query[:, 0] = times[:, 0] + support if math.isfinite(support) else 0.0  # exactly at the cut-off
    got = intensity(times, weights, query).numpy()
    for b in range(2):
        rate = np_rate(MU, MULT, cutoff, exponent, support, times[b].numpy(), weights[b].numpy())
        ref = np.stack([rate(q) for q in query[b].numpy()])
        np.testing.assert_allclose(got[b], ref, rtol=1e-12, atol=1e-13)


def test_kernel_is_zero_from_the_support_on():
    intensity = make(mult=np.ones((2, 3)), support=2.0)
    t0, w0 = torch.tensor([1.0], dtype=DT), torch.tensor([[1.0, 0.0, 0.0]], dtype=DT)
    lags = torch.tensor([1e-9, 1.0, 2.0 - 1e-9, 2.0, 2.0 + 1e-9, 5.0], dtype=DT)
    excitation = intensity(t0, w0, 1.0 + lags)[:, 0] - MU[0]
    np.testing.assert_allclose(excitation[:3].numpy(), (0.5 + lags[:3].numpy()) ** -1.5, rtol=1e-7)
    assert (excitation[3:] == 0).all()
    # the scan (right limit at lag 0) and the breakpoints agree
    state = intensity.update(intensity.initial_state(torch.Size([]), t0, 3), t0[0], w0[0])
    assert float(intensity.rates(state, t0[0])[0] - MU[0]) == pytest.approx(0.5**-1.5)
    assert float(intensity.rates(state, torch.tensor(3.0, dtype=DT))[0]) == pytest.approx(MU[0])
    torch.testing.assert_close(intensity.breakpoints(t0, w0), t0 + 2.0)


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per-pair"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_scan_matches_parallel_and_padding_changes_nothing(shared, dtype, tol):
    cutoff, exponent = (CUTOFF, EXPONENT) if shared else (CUTOFFS, EXPONENTS)
    intensity = make(cutoff=cutoff, exponent=exponent, dtype=dtype)
    times, weights = soft_history(3, 40, 3, seed=2, dtype=dtype, span=20.0)
    times = times.sort(-1).values
    state = intensity.initial_state(torch.Size([3]), times, 40)
    scan = []
    for e in range(40):
        scan.append(intensity.rates(state, times[:, e]))
        state = intensity.update(state, times[:, e], weights[:, e])
    end = torch.full((3,), 21.0, dtype=dtype)
    scan.append(intensity.rates(state, end))
    query = torch.cat([times, end[:, None]], -1)
    parallel = intensity(times, weights, query)
    torch.testing.assert_close(torch.stack(scan, -2), parallel, rtol=tol, atol=tol)
    pad_t = torch.cat([times, torch.rand(3, 5, dtype=dtype) * 20, end[:, None]], -1)
    pad_w = torch.cat([weights, weights.new_zeros(3, 6, 3)], -2)
    torch.testing.assert_close(intensity(pad_t, pad_w, query), parallel, rtol=tol, atol=tol)
    torch.testing.assert_close(intensity.compensator(pad_t, pad_w, end), intensity.compensator(times, weights, end),
                               rtol=tol, atol=tol)


def test_history_window_overflow_raises():
    intensity = make(support=2.0, window=2)
    one = torch.tensor([[1.0, 0.0, 0.0]], dtype=DT)
    state = intensity.initial_state(torch.Size([1]), one, 100)
    assert state[0].shape[-1] == 2
    for t in (0.0, 0.5):
        state = intensity.update(state, torch.tensor([t], dtype=DT), one)
    with pytest.raises(ValueError, match="window"):
        intensity.update(state, torch.tensor([1.0], dtype=DT), one)  # the event at 0 is still inside the support
    intensity.update(state, torch.tensor([2.0], dtype=DT), one)  # it left the support: dropped
    intensity.update(state, torch.tensor([1.0], dtype=DT), one * 0)  # zero weights take no slot
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="window"):
        PointProcess(make(mu=[2.0, 2.0], support=50.0, window=3), 20.0).sample()


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per-pair"])
def test_exact_log_likelihood_matches_numpy_and_quad(shared):
    cutoff, exponent = (CUTOFF, EXPONENT) if shared else (CUTOFFS, EXPONENTS)
    torch.manual_seed(4)
    context = make_context([[0.5, 3.0, 3.5, 8.0], [2.0]], [[0, 0, 0, 0], [0]], 1, 10.0)
    check_log_prob_with_context(make(cutoff=cutoff, exponent=exponent), 10.0, context,
                                lambda t, w: np_rate(MU, MULT, cutoff, exponent, SUPPORT, t, w),
                                kinks=lambda t, ctx: np.concatenate([ctx, t + SUPPORT]), rel=1e-9)


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per-pair"])
def test_compensator_matches_quadrature(shared):
    cutoff, exponent = (CUTOFF, EXPONENT) if shared else (CUTOFFS, EXPONENTS)
    intensity = make(cutoff=cutoff, exponent=exponent)
    times, weights = soft_history(2, 40, 3, seed=5)
    duration = torch.tensor([10.0, 7.5], dtype=DT)
    closed = intensity.compensator(times, weights, duration)
    quad = quadrature_compensator(intensity, times, weights, duration, nodes=16)
    torch.testing.assert_close(closed, quad, rtol=1e-9, atol=1e-9)


def test_branching_matrix_and_mean_count():
    intensity = make(cutoff=CUTOFFS, exponent=EXPONENTS)
    ref = np.array([[scipy.integrate.quad(lambda s, i=i, j=j: np_phi(s, MULT, CUTOFFS, EXPONENTS, SUPPORT)[i, j],
                                          0, SUPPORT, epsabs=1e-13)[0] for j in range(2)] for i in range(2)])
    np.testing.assert_allclose(intensity.branching_matrix().numpy(), ref, rtol=1e-9)
    mean, _ = intensity.mean_count(torch.tensor(10.0, dtype=DT))
    assert float(mean) == pytest.approx(10 * np.linalg.solve(np.eye(2) - ref, MU).sum(), rel=1e-10)
    # infinite support: c^(1-b) / (b - 1) for b > 1, infinite (no mean) for b <= 1
    light = make(support=math.inf).branching_matrix().numpy()
    np.testing.assert_allclose(light, MULT[:, :2] * CUTOFF ** (1 - EXPONENT) / (EXPONENT - 1), rtol=1e-12)
    assert make(exponent=0.9, support=math.inf).mean_count(torch.tensor(1.0)) is None


# ---- sampling ------------------------------------------------------------------------------------------
def test_volterra_mean_reduces_to_poisson_and_stationary():
    np.testing.assert_allclose(volterra_mean_counts(MU, 0 * MULT, CUTOFF, EXPONENT, SUPPORT, 10.0), 10 * MU,
                               rtol=1e-12)
    a = make().branching_matrix().numpy()
    slope = (volterra_mean_counts(MU, MULT, CUTOFF, EXPONENT, SUPPORT, 40.0, step=5e-3)
             - volterra_mean_counts(MU, MULT, CUTOFF, EXPONENT, SUPPORT, 30.0, step=5e-3)) / 10
    np.testing.assert_allclose(slope, np.linalg.solve(np.eye(2) - a, MU), rtol=3e-3)


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per-pair"])
def test_thinning_and_ogata_counts_match_the_mean(shared):
    cutoff, exponent = (CUTOFF, EXPONENT) if shared else (CUTOFFS[:, :2], EXPONENTS[:, :2])
    mult = MULT[:, :2]
    intensity = make(mult=mult, cutoff=cutoff, exponent=exponent, window=40)
    duration, n = 10.0, 1200
    dur = torch.full((n,), duration, dtype=DT)
    torch.manual_seed(5)
    thinned = counts_of(sample_exact(intensity, torch.full((n,), 12.0, dtype=DT), dur, None, 150), 2)
    torch.manual_seed(6)
    ogata = counts_of(sample_ogata(intensity, dur, None, 150), 2)
    mean = volterra_mean_counts(MU, mult, cutoff, exponent, SUPPORT, duration, step=1e-3)
    for counts in (thinned, ogata):
        assert np.abs(z_mean(counts, mean)).max() < Z_TOL, (counts.mean(0), mean)
    assert np.abs(z_two_sample(thinned, ogata)).max() < Z_TOL
    assert (mean > 1.3 * MU * duration).all()  # the excitation is visible in the means


@pytest.mark.parametrize("sampler", ["ogata", "bound"])
def test_time_rescaling(sampler):
    duration, n = 100.0, 100
    mult = MULT[:, :2]
    intensity = make(mult=mult, window=64)
    torch.manual_seed(8)
    bound = None if sampler == "ogata" else 12.0
    value = PointProcess(intensity, duration, bound=bound, max_events=600).sample((n,))
    start = [m * duration - 15 for m in MU]
    cumulative = np_cumulative(MU, mult, CUTOFF, EXPONENT, SUPPORT)
    gaps, margin = rescaled_gaps(cumulative, events_of(value, 2), duration, start)
    assert margin >= 15
    assert_exp1(gaps)
    # power: with the kernel cut off at 1 instead of 4, or without excitation, the gaps are not Exp(1)
    for wrong in (np_cumulative(MU, mult, CUTOFF, EXPONENT, 1.0), np_cumulative(MU, 0 * mult, CUTOFF, EXPONENT,
                                                                                SUPPORT)):
        bad, _ = rescaled_gaps(wrong, events_of(value, 2), duration, start)
        assert scipy.stats.kstest(bad, "expon").pvalue < 1e-6


# ---- gradients and the relaxed process --------------------------------------------------------------
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per-pair"])
def test_log_prob_gradcheck(shared):
    cutoff, exponent = (CUTOFF, EXPONENT) if shared else (CUTOFFS, EXPONENTS)
    torch.manual_seed(9)
    context = make_context([[1.0, 4.0]], [[0, 0]], 1, 6.0)
    value = PointProcess(make(cutoff=cutoff, exponent=exponent), 6.0, context=context).sample()
    assert int(value[..., 1:3].sum()) >= 3

    def log_prob(mu, mult, c, b):
        intensity = PowerLawHawkes(mu, mult, c, b, support=SUPPORT)
        return exact_log_likelihood(intensity, value, torch.tensor(6.0, dtype=DT), context)

    params = [torch.tensor(np.asarray(x), dtype=DT, requires_grad=True) for x in (MU, MULT, cutoff, exponent)]
    assert torch.autograd.gradcheck(log_prob, params)


def test_relaxed_rsample_is_finite_and_differentiable():
    params = [torch.tensor(np.asarray(x), dtype=DT, requires_grad=True) for x in (MU, MULT, CUTOFFS, EXPONENTS)]
    torch.manual_seed(10)
    check_relaxed_draw(lambda *p: PowerLawHawkes(*p, support=SUPPORT), params, 6.0, 6.0,
                       make_context([[1.0, 4.0]], [[0, 0]], 1, 6.0))


# ---- tick ---------------------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_kernel_values_primitives_and_norm_match_tick():
    tick = import_tick()
    lags = np.array([1e-9, 0.3, 1.0, 2.5, 3.999, 4.0, 4.5, 10.0])
    for m, c, b in ((0.3, 0.5, 1.4), (0.2, 1.0, 1.0), (0.5, 0.2, 0.7)):
        kernel = tick.HawkesKernelPowerLaw(m, c, b, support=SUPPORT)
        ours = make(mu=[0.0], mult=[[m]], cutoff=c, exponent=b)
        t0, w0 = torch.zeros(1, dtype=DT), torch.ones(1, 1, dtype=DT)
        values = ours(t0, w0, torch.tensor(lags, dtype=DT))[:, 0].numpy()
        np.testing.assert_allclose(values, [kernel.get_value(x) for x in lags], rtol=1e-12)
        primitive = np.array([float(ours.compensator(t0, w0, torch.tensor(x, dtype=DT))) for x in lags])
        if b == 1:  # tick's primitive and norm divide by 1 - b (NaN, tick 0.8.0.2): ours has the log limit
            assert np.isnan(kernel.get_norm())
            np.testing.assert_allclose(primitive, m * np.log1p(lags.clip(max=SUPPORT) / c), rtol=1e-12)
            continue
        # tick subtracts powers, (c + x)^(1-b) - c^(1-b), which cancels at tiny x (abs error ~1e-16)
        np.testing.assert_allclose(primitive, [kernel.get_primitive_value(x) for x in lags], rtol=1e-10, atol=1e-15)
        assert float(ours.branching_matrix()[0, 0]) == pytest.approx(kernel.get_norm(), rel=1e-6)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_simulated_counts_match_tick():
    tick = import_tick()
    mult = MULT[:, :2]
    duration, n = 10.0, 2000
    kernels = [[tick.HawkesKernelPowerLaw(mult[i, j], CUTOFF, EXPONENT, support=SUPPORT) for j in range(2)]
               for i in range(2)]
    counts = np.zeros((n, 2))
    for s in range(n):
        sim = tick.SimuHawkes(kernels=kernels, baseline=list(MU), end_time=duration, verbose=False, seed=s + 1)
        sim.simulate()
        counts[s] = [len(ts) for ts in sim.timestamps]
    torch.manual_seed(13)
    ours = counts_of(PointProcess(make(mult=mult, window=40), duration).sample((n,)), 2)
    assert np.abs(z_two_sample(ours, counts)).max() < Z_TOL
    mean = volterra_mean_counts(MU, mult, CUTOFF, EXPONENT, SUPPORT, duration, step=1e-3)
    assert np.abs(z_mean(counts, mean)).max() < Z_TOL


# ---- bad inputs ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(mu=[0.5, -0.1]), "nonnegative"),
        (dict(mult=-MULT), "nonnegative"),
        (dict(cutoff=0.0), "cutoff must be positive"),
        (dict(cutoff=-1.0), "cutoff must be positive"),
        (dict(exponent=0.0), "exponent must be positive"),
        (dict(exponent=-0.5), "exponent must be positive"),
        (dict(support=0.0), "support must be positive"),
        (dict(support=-2.0), "support must be positive"),
        (dict(support=float("nan")), "support must be positive"),
        (dict(support="long"), "support must be a positive number"),
        (dict(window=0), "window must be a positive integer"),
        (dict(window=2.5), "window must be a positive integer"),
        (dict(mu=[0.5, float("nan")]), "NaN"),
        (dict(exponent=float("inf")), "NaN or inf"),
        (dict(mult=np.ones((3, 3))), "shape"),
        (dict(mult=np.ones((2, 1))), "shape"),
        (dict(cutoff=np.ones(4)), "does not broadcast"),
        (dict(mu=[[0.5, 0.1]] * 3, mult=np.ones((2, 2, 3))), "broadcast"),
    ],
)
def test_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make(**kwargs)


def test_batched_parameters():
    mu = np.array([[0.4, 0.3], [0.1, 0.6], [0.2, 0.2]])
    mult = MULT[:, :2] * np.array([1.0, 0.5, 0.8])[:, None, None]  # 3 x K x K
    cutoffs = np.array([0.5, 1.0, 0.6])
    for cutoff in (CUTOFF, cutoffs[:, None, None]):  # shared and batched power laws
        intensity = make(mu=mu, mult=mult, cutoff=cutoff, window=40)
        assert intensity.batch_shape == (3,)
        torch.manual_seed(14)
        d = PointProcess(intensity, torch.tensor([5.0, 6.0, 7.0], dtype=DT))
        x = d.sample((2,))
        lp = d.log_prob(x)
        assert x.shape[:2] == (2, 3) and lp.shape == (2, 3)
        for b in range(3):
            single = make(mu=mu[b], mult=mult[b], cutoff=cutoff if np.ndim(cutoff) == 0 else cutoffs[b])
            torch.testing.assert_close(lp[:, b], PointProcess(single, [5.0, 6.0, 7.0][b]).log_prob(x[:, b]),
                                       rtol=1e-12, atol=1e-12)
