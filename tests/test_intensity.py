"""Intensities and filter bases against their formulas (DESIGN §3, §5).

Every basis is checked pointwise against an independent NumPy implementation of its formula, for
its support (zero for lag <= 0 and beyond the last bump) and for its kinks (where the quadrature
must break intervals). GLM activations are checked against their definitions and bounds, and the
scan state (``initial_state``/``update``/``rates``) against the parallel evaluation (``forward``)
for single events and short histories. The Epanechnikov history window must raise on overflow.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _helpers import in_float64

from pyro_dpp import PointProcess
from pyro_dpp.intensity import (
    GLM,
    EpanechnikovBasis,
    ExpHawkes,
    ExponentialBasis,
    InhomogeneousPoisson,
    PiecewisePoisson,
    Poisson,
    PowerLawHawkes,
    RaisedCosineBasis,
    SumExpHawkes,
)
from pyro_dpp.intensity.glm import activate

DT = torch.float64


# ---- independent reference formulas ------------------------------------------------------------
def np_exponential(lag: np.ndarray, tau: np.ndarray) -> np.ndarray:
    out = np.exp(-np.maximum(lag, 0)[..., None] / tau)
    return np.where(lag[..., None] > 0, out, 0.0)


def np_epanechnikov(lag: np.ndarray, centres: np.ndarray, width: float) -> np.ndarray:
    z = (lag[..., None] - centres) / width
    return np.where(lag[..., None] > 0, 0.75 * np.maximum(0.0, 1 - z**2), 0.0)


def np_raised_cosine(lag: np.ndarray, num_basis: int, last_peak: float, offset: float) -> np.ndarray:
    # Pillow et al. (2008): peaks equally spaced on a log(lag + offset) axis, pi/2 apart on the
    # cosine axis, from lag 0 to lag last_peak.
    lo, hi = math.log(offset), math.log(last_peak + offset)
    spacing = (hi - lo) / max(num_basis - 1, 1)
    a = math.pi / 2 / spacing
    peaks = a * (lo + spacing * np.arange(num_basis))
    with np.errstate(invalid="ignore", divide="ignore"):
        arg = a * np.log(np.where(lag > 0, lag, 1.0) + offset)[..., None] - peaks
    value = 0.5 * (1 + np.cos(np.clip(arg, -math.pi, math.pi)))
    return np.where((lag[..., None] > 0) & (np.abs(arg) < math.pi), value, 0.0)


LAGS = np.concatenate([[-3.0, -1e-9, 0.0, 1e-12], np.linspace(1e-6, 60.0, 2001)])


# ---- bases ---------------------------------------------------------------------------------------
def test_exponential_basis_formula_and_zero_before():
    tau = np.array([0.5, 2.0, 7.0])
    basis = ExponentialBasis(torch.tensor(tau, dtype=DT))
    got = basis(torch.tensor(LAGS, dtype=DT)).numpy()
    assert got.shape == (len(LAGS), 3)
    np.testing.assert_allclose(got, np_exponential(LAGS, tau), rtol=1e-13, atol=1e-300)
    assert (got[LAGS <= 0] == 0).all()
    # right limit at zero lag is 1: an event acts immediately after it happens
    assert np.allclose(got[LAGS == 1e-12], 1.0)
    assert basis.kinks() is None and basis.support == math.inf


def test_exponential_basis_rejects_bad_time_constants():
    for bad in ([0.0], [-1.0], [float("nan")]):
        with pytest.raises(ValueError):
            ExponentialBasis(bad)


@pytest.mark.parametrize("num_basis,low,high,width", [(2, 0.0, 10.0, 1.0), (3, 0.5, 4.0, 1.5), (1, 2.0, 2.0, 0.7)])
def test_epanechnikov_basis_formula_support_kinks(num_basis, low, high, width):
    basis = in_float64(lambda: EpanechnikovBasis(num_basis, low, high, width))
    centres = np.linspace(low, high, num_basis)
    got = basis(torch.tensor(LAGS, dtype=DT)).numpy()
    np.testing.assert_allclose(got, np_epanechnikov(LAGS, centres, width), rtol=1e-13, atol=1e-15)
    assert (got[LAGS <= 0] == 0).all()
    # support: zero from high + width on, nonzero just below it
    assert basis.support == pytest.approx(high + width)
    assert (got[LAGS >= high + width] == 0).all()
    below = basis(torch.tensor([high + width - 1e-3], dtype=DT))[0, -1]
    assert 0 < float(below) < 0.01
    # kinks: c_l -/+ h, where the bump meets zero with a slope jump of 1.5 / h
    kinks = np.sort(basis.kinks().numpy())
    np.testing.assert_allclose(kinks, np.sort(np.concatenate([centres - width, centres + width])), atol=1e-15)
    eps = 1e-6
    for i, c in enumerate(centres):
        edge = c + width
        vals = basis(torch.tensor([edge - eps, edge, edge + eps], dtype=DT))[:, i].numpy()
        assert vals[1] == pytest.approx(0.0, abs=1e-12)  # continuous
        left_slope = (vals[1] - vals[0]) / eps
        right_slope = (vals[2] - vals[1]) / eps
        assert left_slope == pytest.approx(-1.5 / width, rel=1e-4) and right_slope == 0.0
    # peak value 3/4 at each positive centre
    positive = centres[centres > 0]
    if len(positive):
        peak = basis(torch.tensor(positive, dtype=DT)).numpy()
        np.testing.assert_allclose(np.diagonal(peak[:, -len(positive):]), 0.75, rtol=1e-14)


def test_single_raised_cosine_bump_peaks_at_last_peak():
    basis = in_float64(lambda: RaisedCosineBasis(1, 4.0, 1.0))
    lags = torch.linspace(0.01, 30.0, 3000, dtype=DT)
    values = basis(lags)[:, 0]
    assert float(lags[values.argmax()]) == pytest.approx(4.0, abs=0.01) and float(values.max()) == pytest.approx(1.0)


@pytest.mark.parametrize("num_basis,last_peak,offset", [(4, 10.0, 1.0), (3, 5.0, 0.2), (2, 3.0, 1.0)])
def test_raised_cosine_basis_formula_support_kinks(num_basis, last_peak, offset):
    basis = in_float64(lambda: RaisedCosineBasis(num_basis, last_peak, offset))
    got = basis(torch.tensor(LAGS, dtype=DT)).numpy()
    ref = np_raised_cosine(LAGS, num_basis, last_peak, offset)
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-14)
    # built in float32 (the default dtype) and cast, the peaks carry float32 rounding (~1e-7)
    cast = RaisedCosineBasis(num_basis, last_peak, offset).double()
    np.testing.assert_allclose(cast(torch.tensor(LAGS, dtype=DT)).numpy(), ref, atol=1e-6)
    assert (got[LAGS <= 0] == 0).all()
    assert ((got >= 0) & (got <= 1 + 1e-15)).all()
    # peaks (value 1) at lags equally spaced in log(lag + offset), the first at 0+, the last at last_peak
    peak_lags = np.exp(np.linspace(math.log(offset), math.log(last_peak + offset), num_basis)) - offset
    peak_lags[0] = max(peak_lags[0], 1e-12)
    peaks = basis(torch.tensor(peak_lags, dtype=DT)).numpy()
    np.testing.assert_allclose(np.diagonal(peaks), 1.0, atol=1e-9)
    # support: last bump's upper edge (arg = +pi); zero from there on, nonzero just below
    a = math.pi / 2 / ((math.log(last_peak + offset) - math.log(offset)) / max(num_basis - 1, 1))
    support = math.exp(math.log(last_peak + offset) + math.pi / a) - offset
    assert basis.support == pytest.approx(support, rel=1e-10)
    assert (got[LAGS >= support] == 0).all()
    assert float(basis(torch.tensor([support * (1 - 1e-3)], dtype=DT))[0, -1]) > 0
    # kinks: where each bump meets zero (arg = -/+ pi), clamped at lag 0
    lo = math.log(offset)
    centres_log = lo + np.arange(num_basis) * (math.log(last_peak + offset) - lo) / max(num_basis - 1, 1)
    edges = np.concatenate([np.exp(centres_log - math.pi / a), np.exp(centres_log + math.pi / a)]) - offset
    # plus geometric grading points c (2^j - 1) inside the support: log(lag + c) is singular at
    # lag = -c, so Gauss-Legendre needs intervals no longer than their distance to it
    grade = offset * (2.0 ** np.arange(1, 64) - 1)
    expected = np.concatenate([np.maximum(edges, 0), grade[grade < support]])
    np.testing.assert_allclose(np.sort(basis.kinks().numpy()), np.sort(expected), rtol=1e-10, atol=1e-12)
    # at a positive edge the bump and its slope vanish (a raised cosine is C^1): value ~ eps^2
    for i, edge in enumerate(edges):
        if edge > 1e-3:
            vals = basis(torch.tensor([edge - 1e-4, edge + 1e-4], dtype=DT))[:, i % num_basis].numpy()
            assert np.abs(vals).max() < 1e-6


def test_basis_parallel_features_match_double_loop():
    torch.manual_seed(0)
    times = torch.sort(torch.rand(2, 7, dtype=DT) * 8).values
    weights = torch.rand(2, 7, 3, dtype=DT)
    query = torch.rand(2, 5, dtype=DT) * 10
    for basis in (ExponentialBasis([0.5, 3.0]), EpanechnikovBasis(2, 0.0, 4.0, 1.5), RaisedCosineBasis(3, 5.0, 0.5)):
        basis = basis.double()
        got = basis.features(times, weights, query)  # 2 x 5 x L x 3
        ref = torch.zeros_like(got)
        for b in range(2):
            for q in range(5):
                for e in range(7):
                    lag = query[b, q] - times[b, e]
                    if lag > 0:
                        ref[b, q] += basis(lag.reshape(1))[0][:, None] * weights[b, e][None, :]
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-14)


# ---- GLM activations --------------------------------------------------------------------------------
def test_activations_match_definitions_and_bounds():
    u = torch.linspace(-50, 50, 1001, dtype=DT)
    a = torch.tensor(2.5, dtype=DT)
    np.testing.assert_allclose(activate("sigmoid", u, a).numpy(), 2.5 / (1 + np.exp(-u.numpy())), rtol=1e-13)
    np.testing.assert_allclose(activate("hardtanh", u, a).numpy(), 2.5 * (np.clip(u.numpy(), -1, 1) + 1) / 2)
    # torch.nn.functional.softplus is linear above its threshold 20: relative error e^-20 / 20 ~ 1e-10
    np.testing.assert_allclose(activate("softplus", u, a).numpy(), 2.5 * np.logaddexp(0, u.numpy()), rtol=1e-9)
    np.testing.assert_allclose(activate("exp", u, a).numpy(), 2.5 * np.exp(u.numpy()), rtol=1e-13)
    for name in ("sigmoid", "hardtanh"):
        rate = activate(name, u, a)
        assert (rate >= 0).all() and (rate <= 2.5).all()
        assert float(rate[-1]) == pytest.approx(2.5) and float(rate[0]) == pytest.approx(0.0, abs=1e-20)
    with pytest.raises(ValueError):
        activate("relu", u, a)


@pytest.mark.parametrize("activation", ["sigmoid", "hardtanh", "softplus", "exp"])
def test_glm_max_rate_bounds_rates(activation):
    torch.manual_seed(1)
    k = 3
    basis = ExponentialBasis([1.0, 4.0])
    glm = GLM(torch.randn(k, dtype=DT), torch.randn(2, k, k, dtype=DT) * 5, basis.double(), activation, amplitude=1.7)
    bound = glm.max_rate()
    if activation in ("sigmoid", "hardtanh"):
        assert float(bound) == pytest.approx(1.7 * k)
        times = torch.sort(torch.rand(200, dtype=DT) * 20).values
        weights = F.one_hot(torch.randint(0, k, (200,)), k).to(DT)
        rates = glm(times, weights, torch.linspace(0, 20, 4001, dtype=DT))
        assert (rates >= 0).all() and (rates <= 1.7).all() and float(rates.sum(-1).max()) <= float(bound)
    else:
        assert bound is None
        with pytest.raises(ValueError, match="bound"):
            PointProcess(glm, 1.0, temperature=0.5)


def test_glm_rejects_bad_arguments():
    basis = ExponentialBasis([1.0])
    with pytest.raises(ValueError):
        GLM(torch.zeros(2), torch.zeros(1, 2, 1), basis)  # fewer sources than marks
    with pytest.raises(ValueError):
        GLM(torch.zeros(2), torch.zeros(3, 2, 2), basis)  # wrong number of basis functions
    with pytest.raises(ValueError):
        GLM(torch.zeros(2), torch.zeros(1, 2, 2), basis, activation="relu")
    with pytest.raises(ValueError):
        GLM(torch.zeros(2), torch.zeros(1, 2, 2), basis, amplitude=0.0)


# ---- scan state vs parallel evaluation ---------------------------------------------------------------
def _intensities(dtype=DT):
    g = torch.Generator().manual_seed(2)
    k, c = 2, 1
    w = lambda L: torch.randn(L, k, k + c, generator=g, dtype=dtype)  # noqa: E731
    bias = torch.randn(k, generator=g, dtype=dtype)
    return {
        "poisson": Poisson(torch.tensor([0.7, 1.3], dtype=dtype), num_context_marks=c),
        "hawkes": ExpHawkes(torch.tensor([0.4, 0.2], dtype=dtype), torch.rand(k, k + c, generator=g, dtype=dtype),
                            torch.tensor(1.7, dtype=dtype)),
        "hawkes-matrix-decay": ExpHawkes(torch.tensor([0.4, 0.2], dtype=dtype),
                                         torch.rand(k, k + c, generator=g, dtype=dtype),
                                         0.5 + 2 * torch.rand(k, k + c, generator=g, dtype=dtype)),
        "glm-exp": GLM(bias, w(2), ExponentialBasis(torch.tensor([0.7, 3.0], dtype=dtype)), "sigmoid", 2.0),
        "glm-epanechnikov": GLM(bias, w(2), EpanechnikovBasis(2, 0.0, 3.0, 1.0).to(dtype), "hardtanh", 1.5),
        "glm-raised-cosine": GLM(bias, w(3), RaisedCosineBasis(3, 4.0, 0.5).to(dtype), "softplus", 0.8),
        "sumexp-hawkes": SumExpHawkes(torch.tensor([0.4, 0.2], dtype=dtype),
                                      0.3 * torch.rand(k, k + c, 2, generator=g, dtype=dtype),
                                      torch.tensor([0.8, 3.0], dtype=dtype)),
        "powerlaw-hawkes": PowerLawHawkes(torch.tensor([0.4, 0.2], dtype=dtype),
                                          torch.rand(k, k + c, generator=g, dtype=dtype),
                                          0.3 + torch.rand(k, k + c, generator=g, dtype=dtype),
                                          0.5 + torch.rand(k, k + c, generator=g, dtype=dtype), support=3.0),
        "piecewise-poisson": PiecewisePoisson(torch.tensor([0.0, 2.5, 4.0, 16.0], dtype=dtype),
                                              torch.rand(3, k, generator=g, dtype=dtype), num_context_marks=c),
        "inhomogeneous-poisson": InhomogeneousPoisson(
            lambda t: torch.stack([1 + torch.sin(t), 0.5 + 0.3 * torch.cos(2 * t)], -1), bound=3.0,
            num_context_marks=c),
    }


@pytest.mark.parametrize("name", list(_intensities()))
def test_scan_matches_parallel_for_single_events(name):
    intensity = _intensities()[name]
    d = intensity.num_history_marks
    query = torch.linspace(0.0, 15.0, 301, dtype=DT)
    for source in range(d):
        t0 = torch.tensor([2.0], dtype=DT)
        w0 = F.one_hot(torch.tensor([source]), d).to(DT) * 0.8  # a soft weight, as in relaxed histories
        state = intensity.initial_state(torch.Size([1]), t0, 4)
        empty = intensity.rates(state, t0)
        state = intensity.update(state, t0, w0)
        scan = torch.stack([intensity.rates(state, q.reshape(1))[0] for q in query[query > 2.0]])
        parallel = intensity(t0, w0, query)  # 301 x K
        torch.testing.assert_close(scan, parallel[query > 2.0], rtol=1e-12, atol=1e-14)
        # the event is not in its own history (strictly before), nor before it happens
        no_history = intensity(t0[:0], w0[:0], query)
        torch.testing.assert_close(parallel[query <= 2.0], no_history[query <= 2.0], rtol=0, atol=0)
        # an empty state gives the no-history rates at the same time (time-varying baselines too)
        torch.testing.assert_close(empty[0], intensity(t0[:0], w0[:0], t0)[0], rtol=1e-14, atol=0)


@pytest.mark.parametrize("name", list(_intensities()))
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_scan_matches_parallel_for_soft_histories(name, dtype, tol):
    intensity = _intensities(dtype)[name]
    d = intensity.num_history_marks
    g = torch.Generator().manual_seed(3)
    times = torch.sort(torch.rand(3, 12, generator=g, dtype=dtype) * 9, -1).values
    weights = torch.softmax(torch.randn(3, 12, d + 1, generator=g, dtype=dtype) * 2, -1)[..., :d]
    state = intensity.initial_state(torch.Size([3]), times, 12)
    scan = []
    for e in range(12):
        scan.append(intensity.rates(state, times[:, e]))
        state = intensity.update(state, times[:, e], weights[:, e])
    scan.append(intensity.rates(state, torch.full((3,), 10.0, dtype=dtype)))
    query = torch.cat([times, torch.full((3, 1), 10.0, dtype=dtype)], -1)
    parallel = intensity(times, weights, query)
    torch.testing.assert_close(torch.stack(scan, -2), parallel, rtol=tol, atol=tol)


def test_hawkes_intensity_formula():
    mu = np.array([0.3, 0.6])
    alpha = np.array([[0.2, 0.5, 0.1], [0.4, 0.1, 0.3]])
    beta = np.array([[1.0, 2.0, 0.5], [3.0, 0.7, 1.2]])
    hawkes = ExpHawkes(torch.tensor(mu), torch.tensor(alpha), torch.tensor(beta))
    times = np.array([0.5, 1.0, 1.0, 2.5])
    marks = np.array([0, 2, 1, 0])
    query = np.array([0.0, 0.5, 0.7, 1.0, 1.5, 3.0])
    ref = np.tile(mu, (len(query), 1))
    for q, tq in enumerate(query):
        for tn, j in zip(times, marks, strict=True):
            if tn < tq:
                ref[q] += alpha[:, j] * beta[:, j] * np.exp(-beta[:, j] * (tq - tn))
    got = hawkes(torch.tensor(times), F.one_hot(torch.tensor(marks), 3).double(), torch.tensor(query))
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-13)


@pytest.mark.parametrize("name", list(_intensities()))
def test_log_rates_match_log_of_rates(name):
    intensity = _intensities()[name]
    d = intensity.num_history_marks
    g = torch.Generator().manual_seed(4)
    times = torch.sort(torch.rand(2, 9, generator=g, dtype=DT) * 9, -1).values
    weights = torch.softmax(torch.randn(2, 9, d + 1, generator=g, dtype=DT), -1)[..., :d]
    query = torch.rand(2, 7, generator=g, dtype=DT) * 10
    torch.testing.assert_close(intensity.log_forward(times, weights, query), intensity(times, weights, query).log(),
                               rtol=1e-12, atol=1e-12)
    state = intensity.initial_state(torch.Size([2]), times, 9)
    for e in range(9):
        state = intensity.update(state, times[:, e], weights[:, e])
        t = times[:, e] + 0.1
        log_scan = intensity.log_rates(state, t)
        torch.testing.assert_close(log_scan, intensity.rates(state, t).log(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("activation", ["sigmoid", "exp", "softplus"])
def test_log_rates_stay_finite_where_rates_underflow(activation):
    """A strongly inhibited neuron: the rate underflows to 0, its logarithm must not be -inf."""
    basis = ExponentialBasis(torch.tensor([5.0], dtype=DT))
    glm = GLM(torch.tensor([-800.0], dtype=DT), torch.zeros(1, 1, 1, dtype=DT), basis, activation, 2.0)
    times, weights = torch.zeros(1, dtype=DT), torch.ones(1, 1, dtype=DT)
    query = torch.tensor([1.0], dtype=DT)
    assert float(glm(times, weights, query)) == 0.0
    log_rate = glm.log_forward(times, weights, query)
    assert float(log_rate) == pytest.approx(math.log(2.0) - 800.0, rel=1e-12)
    state = glm.update(glm.initial_state(torch.Size([]), times, 2), times[0], weights[0])
    assert float(glm.log_rates(state, query[0])) == pytest.approx(math.log(2.0) - 800.0, rel=1e-12)


# ---- the finite-support history window -------------------------------------------------------------
@pytest.mark.parametrize("basis_cls", [EpanechnikovBasis, RaisedCosineBasis])
def test_history_window_overflow_raises(basis_cls):
    if basis_cls is RaisedCosineBasis:
        basis = basis_cls(2, 3.0, 1.0, window=2).double()
    else:
        basis = basis_cls(2, 0.0, 3.0, 1.0, window=2).double()
    one = torch.tensor([[1.0, 0.0]], dtype=DT)
    state = basis.initial_state(torch.Size([1]), 2, one, 100)
    assert state[0].shape[-1] == 2
    state = basis.update(state, torch.tensor([0.0], dtype=DT), one)
    state = basis.update(state, torch.tensor([0.5], dtype=DT), one)
    with pytest.raises(ValueError, match="window"):
        basis.update(state, torch.tensor([1.0], dtype=DT), one)  # the event at 0 is still inside the support
    # an event that left the support may be dropped; zero-weight rows may always be dropped
    far = torch.tensor([0.0 + basis.support + 1e-9], dtype=DT)
    basis.update(state, far, one)
    state = basis.initial_state(torch.Size([1]), 2, one, 100)
    for t in (0.0, 0.1, 0.2, 0.3):
        state = basis.update(state, torch.tensor([t], dtype=DT), one * 0)


def test_history_window_overflow_raises_in_sampling():
    basis = EpanechnikovBasis(2, 0.0, 5.0, 1.0, window=3)
    glm = GLM(torch.tensor([2.0, 2.0], dtype=DT), torch.zeros(2, 2, 2, dtype=DT), basis.double(), "sigmoid", 5.0)
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="window"):
        PointProcess(glm, 20.0).sample()
    with pytest.raises(ValueError, match="window"):
        PointProcess(glm, 20.0, temperature=0.5).rsample()
    # the default window (None: the whole history) never overflows
    basis.window = None
    PointProcess(glm, 20.0).sample()
    PointProcess(glm, 20.0, temperature=0.5).rsample()
