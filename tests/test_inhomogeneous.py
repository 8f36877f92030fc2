"""PiecewisePoisson and InhomogeneousPoisson against independent computations.

Rates against a NumPy lookup / the callable itself; compensators against closed forms and
``scipy.integrate.quad``; log-likelihoods against a NumPy sum; samplers (thinning with the default
and a loose bound, Ogata bin by bin) by counts against the integrated rate (mean and variance of a
Poisson count) and by time rescaling (given the count, the rescaled times of each mark are iid
uniform); gradients by ``gradcheck``; the user-given bound of a callable rate is enforced.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.integrate
import scipy.stats
import torch
from _pp_checks import P_MIN, Z_TOL, assert_exp1, counts_of, events_of, rescaled_gaps
from pyro.distributions.testing.gof import auto_goodness_of_fit

from pyro_dpp import PointProcess
from pyro_dpp.intensity import InhomogeneousPoisson, PiecewisePoisson
from pyro_dpp.likelihood import exact_log_likelihood, quadrature_compensator
from pyro_dpp.thinning import sample_exact, sample_ogata

DT = torch.float64
EDGES = np.array([0.0, 1.5, 2.0, 4.0, 7.5, 10.0])
RATES = np.array([[1.0, 0.2], [3.0, 0.0], [0.5, 1.5], [0.1, 0.4], [2.0, 1.0]])  # bins x K


def piecewise(edges=EDGES, rates=RATES, dtype=DT):
    return PiecewisePoisson(torch.tensor(edges, dtype=dtype), torch.tensor(rates, dtype=dtype))


def np_piecewise_cumulative(edges, rates):
    """``Lambda_k(q)``: the integral of the step function from 0 (edges[0] <= 0)."""
    def cumulative(times, marks, query):
        widths = np.clip(np.minimum(edges[1:], query[:, None]) - np.maximum(edges[:-1], 0), 0, None)  # Q x B
        return widths @ rates
    return cumulative


class Sine(torch.nn.Module):
    """``rate_k(t) = a_k (1 + c sin(w t))``: a smooth callable rate with parameters."""

    def __init__(self, amplitude=(1.0, 0.5), depth=0.8, frequency=2.0):
        super().__init__()
        self.amplitude = torch.nn.Parameter(torch.tensor(amplitude, dtype=DT))
        self.depth = torch.nn.Parameter(torch.tensor(depth, dtype=DT))
        self.frequency = frequency

    def forward(self, t):
        return self.amplitude * (1 + self.depth * torch.sin(self.frequency * t)).unsqueeze(-1)


def np_sine_cumulative(amplitude=(1.0, 0.5), depth=0.8, frequency=2.0):
    def cumulative(times, marks, query):
        base = query + depth * (1 - np.cos(frequency * query)) / frequency
        return base[:, None] * np.asarray(amplitude)
    return cumulative


# ---- PiecewisePoisson -----------------------------------------------------------------------------------
def test_piecewise_rates_compensator_and_bound():
    intensity = piecewise()
    query = np.array([0.0, 0.7, 1.5, 1.9999, 2.0, 3.0, 7.5, 9.0, 10.0])  # edges belong to the bin they open
    expected = np.stack([RATES[min(np.searchsorted(EDGES, q, side="right") - 1, 4)] for q in query])
    got = intensity(torch.zeros(0, dtype=DT), torch.zeros(0, 2, dtype=DT), torch.tensor(query, dtype=DT))
    np.testing.assert_allclose(got.numpy(), expected, rtol=0)
    state = intensity.initial_state(torch.Size([len(query)]), got, 1)
    np.testing.assert_allclose(intensity.rates(state, torch.tensor(query, dtype=DT)).numpy(), expected, rtol=0)
    duration = torch.tensor([10.0, 5.0, 1.0], dtype=DT)
    times, weights = torch.rand(3, 4, dtype=DT) * 5, torch.rand(3, 4, 2, dtype=DT)
    closed = intensity.compensator(times, weights, duration)
    ref = [scipy.integrate.quad(lambda t: RATES[min(np.searchsorted(EDGES, t, side="right") - 1, 4)].sum(), 0, T,
                                points=EDGES[1:-1], limit=200, epsabs=1e-13)[0] for T in duration.tolist()]
    np.testing.assert_allclose(closed.numpy(), ref, rtol=1e-10)
    torch.testing.assert_close(quadrature_compensator(intensity, times, weights, duration), closed, rtol=1e-12,
                               atol=1e-12)
    assert float(intensity.max_rate()) == pytest.approx(RATES.sum(-1).max())


def test_piecewise_local_bound_dominates_until_its_horizon():
    intensity = piecewise()
    now = torch.tensor([0.0, 1.4, 1.5 - 1e-15, 3.0, 7.6], dtype=DT)
    bound, horizon = intensity.local_bound((), now)
    totals = RATES.sum(-1)
    np.testing.assert_allclose(bound.numpy(), [max(totals[0], totals[1]), max(totals[0], totals[1]),
                                               max(totals[0], totals[1]), max(totals[2], totals[3]), totals[4]])
    np.testing.assert_allclose(horizon.numpy()[:4], [1.75, 0.35, 0.25, 2.75], rtol=1e-12)
    assert math.isinf(float(horizon[4]))
    for t, b, h in zip(now.tolist(), bound.tolist(), horizon.tolist(), strict=True):
        grid = torch.linspace(t, min(t + h, 10.0), 500, dtype=DT)
        assert float(intensity(torch.zeros(0, dtype=DT), torch.zeros(0, 2, dtype=DT), grid).sum(-1).max()) <= b


def test_piecewise_log_likelihood_matches_numpy():
    intensity = piecewise()
    torch.manual_seed(0)
    d = PointProcess(intensity, 10.0)
    value = d.sample((3,))
    got = d.log_prob(value).numpy()
    for b, (times, marks) in enumerate(events_of(value, 2)):
        bins = np.minimum(np.searchsorted(EDGES, times, side="right") - 1, 4)
        ref = np.log(RATES[bins, marks]).sum() - (np.diff(EDGES) * RATES.sum(-1)).sum()
        assert got[b] == pytest.approx(ref, rel=1e-12)


@pytest.mark.parametrize("sampler", ["max-rate", "loose-bound", "ogata"])
def test_piecewise_counts_and_rescaled_times(sampler):
    intensity = piecewise()
    duration, n = 10.0, 3000
    dur = torch.full((n,), duration, dtype=DT)
    torch.manual_seed(1)
    if sampler == "max-rate":
        value = PointProcess(intensity, duration).sample((n,))
    elif sampler == "loose-bound":
        value = sample_exact(intensity, torch.full((n,), 6.0, dtype=DT), dur, None, 80)
    else:
        value = sample_ogata(intensity, dur, None, 80)
    counts = counts_of(value, 2)
    mean = (np.diff(EDGES)[:, None] * RATES).sum(0)
    z_mean = (counts.mean(0) - mean) / np.sqrt(mean / n)
    z_var = (counts.var(0, ddof=1) - mean) / np.sqrt((mean + 2 * mean**2) / n)
    assert np.abs(z_mean).max() < Z_TOL and np.abs(z_var).max() < Z_TOL, (z_mean, z_var)
    # given the counts, Lambda_k(t) / Lambda_k(T) of the events of mark k are iid uniform
    cumulative = np_piecewise_cumulative(EDGES, RATES)
    for k in range(2):
        u = np.concatenate([cumulative(t, m, t[m == k])[:, k] for t, m in events_of(value, 2)]) / mean[k]
        assert scipy.stats.kstest(u, "uniform").pvalue > P_MIN
        assert auto_goodness_of_fit(torch.tensor(u), torch.ones(len(u), dtype=DT)) > P_MIN
    # power: the same times against a constant rate are not uniform
    flat = np.concatenate([t[m == 0] for t, m in events_of(value[:300], 2)]) / duration
    assert scipy.stats.kstest(flat, "uniform").pvalue < 1e-6


def test_piecewise_gradcheck_and_relaxed():
    torch.manual_seed(2)
    value = PointProcess(piecewise(), 10.0).sample((2,))

    def log_prob(rates):
        return exact_log_likelihood(PiecewisePoisson(torch.tensor(EDGES, dtype=DT), rates), value,
                                    torch.tensor(10.0, dtype=DT))

    rates = torch.tensor(RATES + 0.05, dtype=DT, requires_grad=True)  # no zero rate at an event
    assert torch.autograd.gradcheck(log_prob, [rates])
    d = PointProcess(PiecewisePoisson(torch.tensor(EDGES, dtype=DT), rates), 10.0, temperature=0.3, bound=5.0)
    x = d.rsample((3,))
    lp = d.log_prob(x)
    assert torch.isfinite(x).all() and torch.isfinite(lp).all()
    (grad,) = torch.autograd.grad((x[..., 1:3] * torch.rand_like(x[..., 1:3])).sum() + lp.sum(), [rates])
    assert torch.isfinite(grad).all() and (grad != 0).all()


def test_piecewise_batched_rates():
    rates = torch.tensor(np.stack([RATES, RATES[::-1].copy(), 0.5 * RATES]), dtype=DT)  # 3 x bins x K
    intensity = PiecewisePoisson(torch.tensor(EDGES, dtype=DT), rates)
    assert intensity.batch_shape == (3,)
    torch.manual_seed(3)
    d = PointProcess(intensity, torch.tensor([10.0, 8.0, 6.0], dtype=DT))
    x = d.sample((2,))
    lp = d.log_prob(x)
    assert lp.shape == (2, 3)
    for b in range(3):
        single = PointProcess(PiecewisePoisson(torch.tensor(EDGES, dtype=DT), rates[b]), [10.0, 8.0, 6.0][b])
        torch.testing.assert_close(lp[:, b], single.log_prob(x[:, b]), rtol=1e-12, atol=1e-12)


def test_piecewise_grid_must_cover_the_window():
    intensity = piecewise()
    with pytest.raises(ValueError, match="cover"):
        PointProcess(intensity, 12.0).sample()
    with pytest.raises(ValueError, match="cover"):
        PointProcess(intensity, 12.0).log_prob(torch.tensor([[1.0, 1.0, 0.0, 0.0], [12.0, 0, 0, 0]], dtype=DT))
    late = PiecewisePoisson(torch.tensor(EDGES + 1.0, dtype=DT), torch.tensor(RATES, dtype=DT))
    with pytest.raises(ValueError, match="cover"):
        PointProcess(late, 5.0).log_prob(torch.tensor([[5.0, 0.0, 0.0, 0.0]], dtype=DT))
    with pytest.raises(ValueError, match="cover"):
        sample_ogata(intensity, torch.tensor([12.0], dtype=DT), None, 100)


@pytest.mark.parametrize(
    "edges,rates,match",
    [
        ([0.0, 1.0, 1.0, 2.0], np.ones((3, 1)), "strictly increasing"),
        ([0.0, 2.0, 1.0, 3.0], np.ones((3, 1)), "strictly increasing"),
        ([0.0, 1.0, 2.0], np.ones((3, 1)), "shape"),
        ([0.0, 1.0, 2.0], np.ones(2), "shape"),
        ([0.0], np.ones((0, 1)), "edges"),
        ([[0.0, 1.0]], np.ones((1, 1)), "edges"),
        ([0.0, 1.0, 2.0], [[1.0], [-0.5]], "nonnegative"),
        ([0.0, 1.0, float("nan")], np.ones((2, 1)), "NaN"),
        ([0.0, 1.0, 2.0], [[1.0], [float("inf")]], "NaN or inf"),
    ],
)
def test_piecewise_bad_arguments(edges, rates, match):
    with pytest.raises(ValueError, match=match):
        PiecewisePoisson(torch.tensor(edges, dtype=DT), torch.tensor(rates, dtype=DT))


# ---- InhomogeneousPoisson ---------------------------------------------------------------------------------
def test_callable_rates_and_compensator_match_quad():
    rate_fn = Sine()
    intensity = InhomogeneousPoisson(rate_fn, bound=3.0)
    assert intensity.num_marks == 2 and intensity.batch_shape == () and intensity.like().dtype == DT
    query = torch.linspace(0, 10, 7, dtype=DT)
    torch.testing.assert_close(intensity(torch.zeros(0, dtype=DT), torch.zeros(0, 2, dtype=DT), query),
                               rate_fn(query), rtol=0, atol=0)
    duration = torch.tensor([10.0, 3.3], dtype=DT)
    got = intensity.compensator(torch.zeros(2, 0, dtype=DT), torch.zeros(2, 0, 2, dtype=DT), duration)
    ref = [scipy.integrate.quad(lambda t: rate_fn(torch.tensor(t, dtype=DT)).sum().item(), 0, T, epsabs=1e-13)[0]
           for T in duration.tolist()]
    np.testing.assert_allclose(got.detach().numpy(), ref, rtol=1e-10)


def test_callable_compensator_breaks_at_knots():
    def tent(t):  # kinks at 2 and 5: Gauss-Legendre over a kink converges only algebraically
        return (1 + (t - 2).abs() - 0.5 * (t - 5).clamp(min=0)).unsqueeze(-1)

    ref = scipy.integrate.quad(lambda t: 1 + abs(t - 2) - 0.5 * max(t - 5, 0), 0, 7.3, points=[2, 5])[0]
    duration = torch.tensor(7.3, dtype=DT)
    empty = torch.zeros(0, dtype=DT), torch.zeros(0, 1, dtype=DT)
    with_knots = InhomogeneousPoisson(tent, bound=6.0, knots=[2.0, 5.0], pieces=1).compensator(*empty, duration)
    without = InhomogeneousPoisson(tent, bound=6.0, pieces=1).compensator(*empty, duration)
    assert float(with_knots) == pytest.approx(ref, rel=1e-13)
    assert abs(float(without) - ref) > 1e-4  # the knots are what makes it exact
    # the generic quadrature (used by log_prob of other intensities) also breaks at the knots
    generic = quadrature_compensator(InhomogeneousPoisson(tent, bound=6.0, knots=[2.0, 5.0]), *empty, duration)
    assert float(generic) == pytest.approx(ref, rel=1e-13)


def test_callable_log_likelihood_matches_numpy():
    rate_fn = Sine()
    d = PointProcess(InhomogeneousPoisson(rate_fn, bound=3.0), 10.0)
    torch.manual_seed(4)
    value = d.sample((3,))
    got = d.log_prob(value).detach().numpy()
    cumulative = np_sine_cumulative()
    for b, (times, marks) in enumerate(events_of(value, 2)):
        rates = np.array([1.0, 0.5])[marks] * (1 + 0.8 * np.sin(2 * times))
        ref = np.log(rates).sum() - cumulative(times, marks, np.array([10.0]))[0].sum()
        assert got[b] == pytest.approx(ref, rel=1e-10)


@pytest.mark.parametrize("sampler", ["bound", "ogata"])
def test_callable_counts_and_time_rescaling(sampler):
    intensity = InhomogeneousPoisson(Sine(), bound=3.0)
    duration, n = 60.0, 60
    torch.manual_seed(5)
    with torch.no_grad():
        if sampler == "bound":
            value = PointProcess(intensity, duration).sample((n,))
        else:
            value = sample_ogata(intensity, torch.full((n,), duration, dtype=DT), None, 300)
    cumulative = np_sine_cumulative()
    mean = cumulative(None, None, np.array([duration]))[0]
    counts = counts_of(value, 2)
    assert np.abs((counts.mean(0) - mean) / np.sqrt(mean / n)).max() < Z_TOL
    gaps, margin = rescaled_gaps(cumulative, events_of(value, 2), duration, list(mean - 15))
    assert margin >= 15 - 1e-9
    assert_exp1(gaps)
    # power: rescaling without the modulation is rejected
    bad, _ = rescaled_gaps(np_sine_cumulative(depth=0.0), events_of(value, 2), duration, list(mean - 15))
    assert scipy.stats.kstest(bad, "expon").pvalue < 1e-6


def test_callable_gradcheck_and_relaxed():
    rate_fn = Sine()
    torch.manual_seed(6)
    with torch.no_grad():
        value = PointProcess(InhomogeneousPoisson(rate_fn, bound=3.0), 10.0).sample((2,))

    def log_prob(amplitude, depth):
        return exact_log_likelihood(InhomogeneousPoisson(lambda t: amplitude * (1 + depth * torch.sin(2 * t))
                                                         .unsqueeze(-1), bound=3.0), value,
                                    torch.tensor(10.0, dtype=DT))

    params = [torch.tensor([1.0, 0.5], dtype=DT, requires_grad=True), torch.tensor(0.8, dtype=DT, requires_grad=True)]
    assert torch.autograd.gradcheck(log_prob, params)
    d = PointProcess(InhomogeneousPoisson(rate_fn, bound=3.0), 10.0, temperature=0.3)
    x = d.rsample((3,))
    lp = d.log_prob(x)
    assert torch.isfinite(x).all() and torch.isfinite(lp).all()
    grads = torch.autograd.grad((x[..., 1:3] * torch.rand_like(x[..., 1:3])).sum() + lp.sum(),
                                list(rate_fn.parameters()))
    assert all(torch.isfinite(g).all() and (g != 0).any() for g in grads)


@pytest.mark.parametrize("temperature", [0.0, 0.5], ids=["exact", "relaxed"])
def test_callable_bound_violation_raises(temperature):
    intensity = InhomogeneousPoisson(Sine(), bound=2.0)  # the rates sum to 2.7 at the peaks
    torch.manual_seed(7)
    with pytest.raises(ValueError, match="bound"), torch.no_grad():
        d = PointProcess(intensity, 10.0, temperature=temperature)
        d.rsample((4,)) if temperature else d.sample((4,))
    if not temperature:
        with pytest.raises(ValueError, match="local bound"), torch.no_grad():
            sample_ogata(intensity, torch.full((4,), 10.0, dtype=DT), None, 100)


def test_callable_bad_rates_raise_where_evaluated():
    negative = InhomogeneousPoisson(lambda t: (torch.cos(t) * 0.5 + 0.2).unsqueeze(-1), bound=1.0)
    with pytest.raises(ValueError, match="negative or non-finite rate at t"):
        negative(torch.zeros(0), torch.zeros(0, 1), torch.linspace(0, 5, 50))
    with pytest.raises(ValueError, match="negative or non-finite"):
        PointProcess(negative, 5.0).sample()
    nan = InhomogeneousPoisson(lambda t: torch.where(t > 1, torch.nan, 1.0).unsqueeze(-1).expand(t.shape + (1,)),
                               bound=1.0)
    with pytest.raises(ValueError, match="negative or non-finite"):
        nan(torch.zeros(0), torch.zeros(0, 1), torch.linspace(0, 5, 50))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(bound=None), "needs bound="),
        (dict(bound=0.0), "bound must be positive"),
        (dict(bound=-1.0), "bound must be positive"),
        (dict(bound=float("nan")), "NaN"),
        (dict(rate_fn=3.0), "callable"),
        (dict(rate_fn=lambda t: t), "shape"),
        (dict(rate_fn=lambda t: torch.ones(3, 2)), "shape"),
        (dict(num_marks=3), "num_marks"),
        (dict(pieces=0), "pieces"),
        (dict(nodes=2.5), "nodes"),
        (dict(knots=[1.0, float("inf")]), "NaN or inf"),
        (dict(num_context_marks=-1), "num_context_marks"),
    ],
)
def test_callable_bad_arguments(kwargs, match):
    args = dict(rate_fn=Sine(), bound=3.0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        InhomogeneousPoisson(**args)


def test_callable_dtype_follows_its_tensors():
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        held = torch.tensor([0.5, 1.0], dtype=torch.float32)
        closure = InhomogeneousPoisson(lambda t: held * (1 + torch.sin(t)).unsqueeze(-1), 3.0)
        assert closure.like().dtype == torch.float32
        assert InhomogeneousPoisson(lambda t: (1 + torch.sin(t)).unsqueeze(-1), 3.0).like().dtype == torch.float64
        assert InhomogeneousPoisson(Sine().float(), 3.0).like().dtype == torch.float32
        bound = torch.tensor(3.0, dtype=torch.float32)
        assert InhomogeneousPoisson(lambda t: (1 + torch.sin(t)).unsqueeze(-1), bound).like().dtype == torch.float32
    finally:
        torch.set_default_dtype(default)


@pytest.mark.parametrize("kind", ["piecewise", "callable"])
def test_engine_history_free_path_matches_reference(kind):
    """Both classes hand the engine a history-free filter (all steps at once, under autograd): the
    same draw and gradients as the reference loop, also for parameters that ``rate_fn`` closes over
    (which the intensity does not hold)."""
    from pyro_dpp import backend
    from pyro_dpp.intensity.inhomogeneous import HistoryFreeFilter

    if kind == "piecewise":
        param = torch.tensor(RATES, dtype=DT, requires_grad=True)
        intensity = PiecewisePoisson(torch.tensor(EDGES, dtype=DT), param)
        param = intensity.rates_param
    else:
        param = torch.tensor([0.6, 1.0], dtype=DT, requires_grad=True)
        intensity = InhomogeneousPoisson(lambda t: param * (1 + 0.5 * torch.sin(3 * t)).unsqueeze(-1), bound=2.5)
    assert type(intensity.scan_filter(torch.zeros(1, 0, dtype=DT), torch.Size())) is HistoryFreeFilter
    duration = float(EDGES[-1]) if kind == "piecewise" else 5.0
    bound = float(intensity.max_rate().detach().max()) * 1.1
    out = {}
    for name in ("reference", "auto"):
        torch.manual_seed(4)
        with backend(name):
            value = PointProcess(intensity, duration, bound=bound, temperature=0.4).rsample((3,))
        out[name] = value, torch.autograd.grad(value[..., 1:-1].sum(), param)[0]
    torch.testing.assert_close(out["auto"][0], out["reference"][0], rtol=1e-12, atol=1e-12)
    assert out["reference"][1].abs().sum() > 0
    torch.testing.assert_close(out["auto"][1], out["reference"][1], rtol=1e-10, atol=1e-12)
