"""SumExpHawkes (tick's sum-of-exponentials kernels) against independent computations.

The intensity against a NumPy double loop over events; the scan (sampling) against the parallel
evaluation (scoring); the exact log-likelihood against a NumPy loop plus ``scipy.integrate.quad``;
the closed-form compensator against quadrature; samplers (thinning with a bound and Ogata) by the
exact mean count (an affine ODE solved with a matrix exponential) and by time rescaling; gradients
by ``gradcheck``; maximum likelihood recovers the parameters of simulated data within a few standard
errors; tick's simulator and log-likelihood agree where tick is installed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
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

import pyro_dpp
from pyro_dpp import PointProcess
from pyro_dpp.intensity import ExpHawkes, SumExpHawkes
from pyro_dpp.likelihood import exact_log_likelihood, quadrature_compensator
from pyro_dpp.thinning import sample_exact, sample_ogata

DT = torch.float64
MU = np.array([0.4, 0.3])
DECAYS = np.array([0.7, 4.0])
# K x (K + 1 context) x U; branching matrix (summed over decays, modelled columns) has radius ~0.5
ADJ = np.array([[[0.15, 0.10], [0.05, 0.10], [0.20, 0.10]],
                [[0.10, 0.05], [0.20, 0.10], [0.05, 0.25]]])


def make(mu=MU, adj=ADJ, decays=DECAYS, dtype=DT):
    return SumExpHawkes(*(torch.tensor(x, dtype=dtype) for x in (mu, adj, decays)))


def np_rate(mu, adj, decays, times, weights):
    """``rate(t)``: the intensity from its definition, counting history events strictly before t."""
    def rate(t):
        out = np.array(mu, dtype=float)
        for tn, wn in zip(times, weights, strict=True):
            if tn < t:
                out = out + np.einsum("kdu,d,u->k", adj, wn, decays * np.exp(-decays * (t - tn)))
        return out
    return rate


def np_cumulative(mu, adj, decays):
    """``Lambda_k(q)`` in closed form for one sequence of one-hot events (marks index columns)."""
    def cumulative(times, marks, query):
        lag = query[:, None] - times[None, :]  # Q x E
        inside = np.where(lag[..., None] > 0, -np.expm1(-decays * np.maximum(lag, 0)[..., None]), 0.0)  # Q x E x U
        return mu * query[:, None] + np.einsum("qeu,keu->qk", inside, adj[:, marks, :])
    return cumulative


def sumexp_mean_counts(mu, adj, decays, duration, context_rates=()):
    """Exact E[N_k(T)] started empty, with independent Poisson context marks: traces
    E_iju(t) = E[sum_{n of mark j, t_n < t} alpha_iju beta_u exp(-beta_u (t - t_n))] obey
    dE_iju/dt = -beta_u E_iju + alpha_iju beta_u m_j with m_j = mu_j + sum_lu E_jlu (modelled j)
    or the context rate; dN_i/dt = m_i. An affine ODE, solved exactly with a matrix exponential."""
    k, d, u = adj.shape
    n = k * d * u + k + 1
    one = n - 1
    a = np.zeros((n, n))

    def e(i, j, v):
        return (i * d + j) * u + v

    def add_rate(row, j, scale):  # row += scale * m_j
        if j < k:
            a[row, one] += scale * mu[j]
            for m in range(d):
                for v in range(u):
                    a[row, e(j, m, v)] += scale
        else:
            a[row, one] += scale * context_rates[j - k]

    for i in range(k):
        for j in range(d):
            for v in range(u):
                a[e(i, j, v), e(i, j, v)] -= decays[v]
                add_rate(e(i, j, v), j, adj[i, j, v] * decays[v])
        add_rate(k * d * u + i, i, 1.0)
    x0 = np.zeros(n)
    x0[one] = 1.0
    return (scipy.linalg.expm(a * duration) @ x0)[k * d * u : k * d * u + k]


# ---- the intensity ------------------------------------------------------------------------------------
@pytest.mark.parametrize("events,queries", [(7, 11), (150, 130)], ids=["pairwise", "chunked"])
def test_forward_matches_double_loop(events, queries):
    intensity = make()
    times, weights = soft_history(2, events, 3, seed=0, span=30.0)
    query = torch.rand(2, queries, generator=torch.Generator().manual_seed(1), dtype=DT) * 32
    got = intensity(times, weights, query).numpy()
    for b in range(2):
        rate = np_rate(MU, ADJ, DECAYS, times[b].numpy(), weights[b].numpy())
        ref = np.stack([rate(q) for q in query[b].numpy()])
        np.testing.assert_allclose(got[b], ref, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_scan_matches_parallel_and_padding_changes_nothing(dtype, tol):
    intensity = make(dtype=dtype)
    times, weights = soft_history(3, 90, 3, seed=2, dtype=dtype)
    times = times.sort(-1).values
    state = intensity.initial_state(torch.Size([3]), times, 90)
    scan = []
    for e in range(90):
        scan.append(intensity.rates(state, times[:, e]))
        state = intensity.update(state, times[:, e], weights[:, e])
    end = torch.full((3,), 10.0, dtype=dtype)
    scan.append(intensity.rates(state, end))
    query = torch.cat([times, end[:, None]], -1)  # 91 queries: the chunked path
    parallel = intensity(times, weights, query)
    torch.testing.assert_close(torch.stack(scan, -2), parallel, rtol=tol, atol=tol)
    small = intensity(times, weights, query[:, :20])  # the pairwise path
    torch.testing.assert_close(small, parallel[:, :20], rtol=tol, atol=tol)
    # padding: zero-weight rows anywhere (and at the end of the window) change nothing
    pad_t = torch.cat([times, torch.rand(3, 5, dtype=dtype) * 9, end[:, None]], -1)
    pad_w = torch.cat([weights, weights.new_zeros(3, 6, 3)], -2)
    torch.testing.assert_close(intensity(pad_t, pad_w, query), parallel, rtol=tol, atol=tol)
    duration = torch.full((3,), 10.0, dtype=dtype)
    torch.testing.assert_close(intensity.compensator(pad_t, pad_w, duration),
                               intensity.compensator(times, weights, duration), rtol=tol, atol=tol)


def test_one_decay_is_exp_hawkes():
    adj = ADJ[..., :1]
    sumexp = make(adj=adj, decays=DECAYS[:1])
    exp = ExpHawkes(torch.tensor(MU), torch.tensor(adj[..., 0]), torch.tensor(DECAYS[0]))
    torch.manual_seed(3)
    context = make_context([[1.0, 2.5, 7.0]], [[0, 0, 0]], 1, 10.0)
    value = PointProcess(sumexp, 10.0, context=context).sample((4,))
    for dist_a, dist_b in ((PointProcess(sumexp, 10.0, context=context), PointProcess(exp, 10.0, context=context)),):
        torch.testing.assert_close(dist_a.log_prob(value), dist_b.log_prob(value), rtol=1e-12, atol=1e-12)


def test_exact_log_likelihood_matches_numpy_and_quad():
    torch.manual_seed(4)
    context = make_context([[0.5, 3.0, 3.5, 8.0], [2.0]], [[0, 0, 0, 0], [0]], 1, 10.0)
    check_log_prob_with_context(make(), 10.0, context, lambda t, w: np_rate(MU, ADJ, DECAYS, t, w))


def test_compensator_matches_quadrature():
    intensity = make()
    times, weights = soft_history(2, 40, 3, seed=5)
    duration = torch.tensor([10.0, 7.5], dtype=DT)  # events beyond 7.5 do not count
    closed = intensity.compensator(times, weights, duration)
    quad = quadrature_compensator(intensity, times, weights, duration, nodes=12)
    torch.testing.assert_close(closed, quad, rtol=1e-11, atol=1e-11)


# ---- sampling ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("sampler", ["bound", "ogata"])
def test_sampled_counts_match_exact_mean(sampler, backend):
    """Both backends: "auto" runs the numba kernels (the scan filter's accelerator and the Ogata
    sampler registered for it), "reference" the eager loops."""
    duration, n, ctx_rate = 8.0, 2000, 0.6
    rng = np.random.default_rng(6)
    ctx_times = [np.sort(rng.uniform(0, duration, rng.poisson(ctx_rate * duration))) for _ in range(n)]
    context = make_context(ctx_times, [np.zeros(len(t), dtype=int) for t in ctx_times], 1, duration)
    intensity = make()
    torch.manual_seed(7)
    dur = torch.full((n,), duration, dtype=DT)
    with pyro_dpp.backend(backend):
        if sampler == "bound":
            value = sample_exact(intensity, torch.full((n,), 12.0, dtype=DT), dur, context, 120)
        else:
            value = sample_ogata(intensity, dur, context, 120)
    counts = counts_of(value, 2)
    mean = sumexp_mean_counts(MU, ADJ, DECAYS, duration, [ctx_rate])
    assert np.abs(z_mean(counts, mean)).max() < Z_TOL
    # the context matters here: without it the means are clearly lower
    assert (sumexp_mean_counts(MU, ADJ, DECAYS, duration, [0.0]) < mean - 0.5).all()


def test_mean_formula_reduces_to_stationary():
    a = ADJ[:, :2].sum(-1)
    stationary = np.linalg.solve(np.eye(2) - a, MU)
    m1, m2 = sumexp_mean_counts(MU, ADJ, DECAYS, 200.0, [0.0]), sumexp_mean_counts(MU, ADJ, DECAYS, 400.0, [0.0])
    np.testing.assert_allclose((m2 - m1) / 200.0, stationary, rtol=1e-10)
    mean, _ = make().mean_count(torch.tensor(100.0, dtype=DT))
    assert float(mean) == pytest.approx(100 * stationary.sum(), rel=1e-12)
    assert make(adj=ADJ * 3).mean_count(torch.tensor(1.0)) is None  # supercritical


@pytest.mark.parametrize("sampler", ["ogata", "bound"])
def test_time_rescaling(sampler):
    duration, n = 100.0, 120
    intensity = make(adj=ADJ[:, :2])  # no context column
    torch.manual_seed(8)
    bound = None if sampler == "ogata" else 10.0
    value = PointProcess(intensity, duration, bound=bound, max_events=600).sample((n,))
    cumulative = np_cumulative(MU, ADJ[:, :2], DECAYS)
    start = [m * duration - 15 for m in MU]  # Lambda_k(T) >= mu_k T: censoring <= e^-15
    gaps, margin = rescaled_gaps(cumulative, events_of(value, 2), duration, start)
    assert margin >= 15
    assert_exp1(gaps)
    # power: the same events rescaled with the slow decay's weight moved to the fast one, or
    # without excitation, are rejected
    fast = np.stack([np.zeros((2, 2)), ADJ[:, :2].sum(-1)], -1)
    for wrong in (np_cumulative(MU, fast, DECAYS), np_cumulative(MU, 0 * ADJ[:, :2], DECAYS)):
        bad, _ = rescaled_gaps(wrong, events_of(value, 2), duration, start)
        assert scipy.stats.kstest(bad, "expon").pvalue < 1e-6


# ---- gradients and the relaxed process --------------------------------------------------------------
def test_log_prob_gradcheck():
    torch.manual_seed(9)
    context = make_context([[1.0, 4.0]], [[0, 0]], 1, 6.0)
    value = PointProcess(make(), 6.0, context=context).sample()
    assert int(value[..., 1:3].sum()) >= 3

    def log_prob(mu, adj, decays):
        return exact_log_likelihood(SumExpHawkes(mu, adj, decays), value, torch.tensor(6.0, dtype=DT), context)

    params = [torch.tensor(x, dtype=DT, requires_grad=True) for x in (MU, ADJ, DECAYS)]
    assert torch.autograd.gradcheck(log_prob, params)


def test_relaxed_rsample_is_finite_and_differentiable():
    params = [torch.tensor(x, dtype=DT, requires_grad=True) for x in (MU, ADJ, DECAYS)]
    torch.manual_seed(10)
    check_relaxed_draw(SumExpHawkes, params, 6.0, 6.0, make_context([[1.0, 4.0]], [[0, 0]], 1, 6.0))


# ---- maximum likelihood --------------------------------------------------------------------------------
def test_maximum_likelihood_recovers_parameters():
    """Fit baseline and adjacency (decays fixed, as in tick's learners) to simulated data; every
    estimate lies within Z_TOL standard errors (inverse observed information) of the truth."""
    mu, adj = np.array([0.5, 0.4]), np.array([[[0.25, 0.15], [0.10, 0.20]], [[0.15, 0.10], [0.20, 0.25]]])
    duration, n = 100.0, 30
    truth = make(mu, adj)
    torch.manual_seed(11)
    value = PointProcess(truth, duration, max_events=700).sample((n,))
    dur = torch.tensor(duration, dtype=DT)
    decays = torch.tensor(DECAYS, dtype=DT)

    def nll(theta):
        return -exact_log_likelihood(SumExpHawkes(theta[:2], theta[2:].reshape(2, 2, 2), decays), value, dur).sum()

    log_theta = torch.full((10,), math.log(0.2), dtype=DT, requires_grad=True)
    opt = torch.optim.LBFGS([log_theta], max_iter=200, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = nll(log_theta.exp())
        loss.backward()
        return loss

    opt.step(closure)
    theta = log_theta.detach().exp()
    hessian = torch.autograd.functional.hessian(nll, theta)
    se = torch.linalg.inv(hessian).diagonal().sqrt().numpy()
    z = (theta.numpy() - np.concatenate([mu, adj.ravel()])) / se
    assert np.abs(z).max() < Z_TOL, z
    assert se.max() < 0.1  # a data set large enough to say something


# ---- tick ---------------------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_log_likelihood_matches_tick():
    tick = import_tick()
    adj = ADJ[:, :2]
    intensity = make(adj=adj)
    torch.manual_seed(12)
    value = PointProcess(intensity, 50.0).sample()
    times, marks = events_of(value, 2)[0]
    model = tick.ModelHawkesSumExpKernLogLik(DECAYS)
    model.fit([np.ascontiguousarray(times[marks == k]) for k in range(2)], end_times=50.0)
    coeffs = np.concatenate([MU, adj.ravel()])
    ours = float(PointProcess(intensity, 50.0).log_prob(value))
    # tick's loss is minus its log-likelihood divided by the number of events, and its
    # log-likelihood is relative to a unit-rate Poisson process on each node: ours + D T (see
    # hawkes_log_likelihood in tick/hawkes/model/tests/model_hawkes_test_utils.py)
    assert len(times) > 40
    assert -model.loss(coeffs) * model.n_jumps == pytest.approx(ours + 2 * 50.0, rel=1e-10)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_simulated_counts_match_tick():
    tick = import_tick()
    adj = ADJ[:, :2]
    duration, n = 10.0, 2000
    counts = np.zeros((n, 2))
    for s in range(n):
        sim = tick.SimuHawkesSumExpKernels(adjacency=adj, decays=DECAYS, baseline=MU, end_time=duration,
                                           verbose=False, seed=s + 1)
        sim.simulate()
        counts[s] = [len(ts) for ts in sim.timestamps]
    torch.manual_seed(13)
    ours = counts_of(PointProcess(make(adj=adj), duration).sample((n,)), 2)
    assert np.abs(z_two_sample(ours, counts)).max() < Z_TOL
    mean = sumexp_mean_counts(MU, adj, DECAYS, duration)
    assert np.abs(z_mean(counts, mean)).max() < Z_TOL


# ---- bad inputs ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "mu,adj,decays,match",
    [
        ([0.5, -0.1], np.ones((2, 2, 2)) * 0.1, [1.0, 2.0], "nonnegative"),
        ([0.5, 0.1], -np.ones((2, 2, 2)) * 0.1, [1.0, 2.0], "nonnegative"),
        ([0.5, 0.1], np.ones((2, 2, 2)) * 0.1, [1.0, 0.0], "positive"),
        ([0.5, 0.1], np.ones((2, 2, 2)) * 0.1, [1.0, -2.0], "positive"),
        ([0.5, float("nan")], np.ones((2, 2, 2)) * 0.1, [1.0, 2.0], "NaN"),
        ([0.5, 0.1], np.ones((2, 2, 2)) * 0.1, [1.0, float("inf")], "NaN or inf"),
        ([0.5, 0.1], np.ones((2, 2, 3)) * 0.1, [1.0, 2.0], "shape"),
        ([0.5, 0.1], np.ones((3, 2, 2)) * 0.1, [1.0, 2.0], "shape"),
        ([0.5, 0.1], np.ones((2, 1, 2)) * 0.1, [1.0, 2.0], "shape"),
        ([0.5, 0.1], np.ones((2, 2)) * 0.1, [1.0, 2.0], "shape"),
        ([[0.5, 0.1]] * 3, np.ones((2, 2, 2, 2)) * 0.1, [1.0, 2.0], "broadcast"),
    ],
)
def test_bad_parameters(mu, adj, decays, match):
    with pytest.raises(ValueError, match=match):
        SumExpHawkes(torch.tensor(mu), torch.tensor(adj), torch.tensor(decays))


def test_batched_parameters_broadcast_like_exp_hawkes():
    mu = torch.tensor([[0.4, 0.3], [0.1, 0.6], [0.2, 0.2]], dtype=DT)  # 3 x K
    decays = torch.tensor([[0.7, 4.0]], dtype=DT)  # 1 x U
    intensity = SumExpHawkes(mu, torch.tensor(ADJ[:, :2], dtype=DT), decays)
    assert intensity.batch_shape == (3,)
    torch.manual_seed(14)
    d = PointProcess(intensity, torch.tensor([5.0, 6.0, 7.0], dtype=DT))
    x = d.sample((2,))
    assert x.shape[:2] == (2, 3) and d.log_prob(x).shape == (2, 3)
    # each batch member scores as the unbatched intensity with its own baseline
    for b in range(3):
        single = PointProcess(make(mu[b].numpy(), ADJ[:, :2]), [5.0, 6.0, 7.0][b])
        torch.testing.assert_close(d.log_prob(x)[:, b], single.log_prob(x[:, b]), rtol=1e-12, atol=1e-12)
