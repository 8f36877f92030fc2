"""Statistical tests of the samplers (DESIGN §2, §5).

Exact sampling (thinning with a constant bound, Ogata's local bounds) is checked by counts against
closed forms and against each other, and by the time-rescaling theorem: for each mark k the
compensator increments between consecutive events are iid Exp(1) (tested with a KS test and with
``pyro.distributions.testing.gof``). The differentiable point process is checked to converge to the
exact process as the temperature falls, and its scan (sampling) to agree with the parallel
evaluation (scoring) to float precision.

Tolerances: means are compared with ``Z_TOL = 4.5`` standard errors (two-sided probability of a
false alarm 7e-6 per comparison for a normal statistic); distributional tests require p > 1e-3.
All draws are seeded, so each test is deterministic; the thresholds say how surprising a failure
would be under a correct sampler.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch
import torch.nn.functional as F
from _helpers import in_float64, make_context, poisson_context
from pyro.distributions.testing.gof import auto_goodness_of_fit, exp_goodness_of_fit

from pyro_dpp import PointProcess
from pyro_dpp.events import LOG_WEIGHTS_ATTR, event_mask
from pyro_dpp.intensity import GLM, EpanechnikovBasis, ExpHawkes, ExponentialBasis, Poisson, RaisedCosineBasis
from pyro_dpp.likelihood import history
from pyro_dpp.thinning import draw_candidates, sample_exact, sample_ogata

DT = torch.float64
Z_TOL = 4.5
P_MIN = 1e-3


def counts_of(value, k):
    """``batch x K`` event counts per mark of an exact realization."""
    return value[..., 1 : 1 + k].sum(-2)


def argmax_counts(value, k):
    """``batch x K`` counts of candidates whose largest weight is mark k (relaxed realization)."""
    top = value[..., 1:].argmax(-1)
    real = event_mask(value)
    return torch.stack([((top == j) & real).sum(-1) for j in range(k)], -1).to(DT)


def z_two_sample(a, b):
    """Per-column z statistic of the difference of two sample means (standard error from the
    sample variances: SE^2 = var_a / n_a + var_b / n_b)."""
    a, b = torch.as_tensor(a, dtype=DT), torch.as_tensor(b, dtype=DT)
    se = (a.var(0) / a.shape[0] + b.var(0) / b.shape[0]).sqrt()
    return (a.mean(0) - b.mean(0)) / se


def chi2_homogeneity(a, b, min_expected=5.0):
    """p-value of a chi^2 test that two samples of counts come from one distribution (adjacent
    count values merged, left to right, until every expected cell count is at least
    ``min_expected``; the remainder joins the last bin)."""
    a, b = np.asarray(a, dtype=int), np.asarray(b, dtype=int)
    top = max(a.max(), b.max()) + 1
    ha, hb = np.bincount(a, minlength=top), np.bincount(b, minlength=top)
    table = np.stack([ha, hb]).astype(float)
    cols, current = [], np.zeros(2)
    for j in range(top):
        current = current + table[:, j]
        expected = current.sum() * table.sum(1) / table.sum()
        if expected.min() >= min_expected:
            cols.append(current)
            current = np.zeros(2)
    if current.sum() and cols:
        cols[-1] = cols[-1] + current
    return scipy.stats.chi2_contingency(np.stack(cols, 1))[1]


# ---- Hawkes processes used below ---------------------------------------------------------------------
MU = [0.5, 0.3]
ALPHA = [[0.3, 0.2], [0.1, 0.4]]  # spectral radius 0.5
BETA = 1.5


def hawkes(mu=MU, alpha=ALPHA, beta=BETA):
    return ExpHawkes(torch.tensor(mu, dtype=DT), torch.tensor(alpha, dtype=DT), torch.as_tensor(beta, dtype=DT))


def hawkes_mean_counts(mu, alpha, beta, duration, context_rates=()):
    """Exact E[N_k(T)] for a linear exponential Hawkes process started empty at 0 (the transient
    included), with independent Poisson context marks of the given rates.

    With traces E_ij(t) = E[sum_{n of mark j, t_n < t} alpha_ij beta_ij exp(-beta_ij (t - t_n))]:
    m_i = mu_i + sum_j E_ij, dE_ij/dt = -beta_ij E_ij + alpha_ij beta_ij m_j (m_j = rate of mark j),
    dN_i/dt = m_i. An affine ODE, solved exactly with a matrix exponential."""
    alpha = np.asarray(alpha, dtype=float)
    k, d = alpha.shape
    beta = np.broadcast_to(np.asarray(beta, dtype=float), alpha.shape)
    n = k * d + k + 1  # E (row-major), N, constant 1
    a = np.zeros((n, n))
    one = n - 1

    def e(i, j):
        return i * d + j

    for i in range(k):
        for j in range(d):
            a[e(i, j), e(i, j)] -= beta[i, j]
            if j < k:  # m_j = mu_j + sum_l E_jl
                a[e(i, j), one] += alpha[i, j] * beta[i, j] * mu[j]
                for m in range(d):
                    a[e(i, j), e(j, m)] += alpha[i, j] * beta[i, j]
            else:
                a[e(i, j), one] += alpha[i, j] * beta[i, j] * context_rates[j - k]
        a[k * d + i, one] += mu[i]
        for j in range(d):
            a[k * d + i, e(i, j)] += 1.0
    x0 = np.zeros(n)
    x0[one] = 1.0
    return (scipy.linalg.expm(a * duration) @ x0)[k * d : k * d + k]


def test_hawkes_mean_formula_reduces_to_stationary_and_poisson():
    # no excitation: Poisson means; long windows: T (I - A)^-1 mu plus a constant transient
    np.testing.assert_allclose(hawkes_mean_counts([0.5, 0.3], np.zeros((2, 2)), 1.0, 10.0), [5.0, 3.0])
    a = np.array(ALPHA)
    stationary = np.linalg.solve(np.eye(2) - a, MU)
    m1, m2 = hawkes_mean_counts(MU, a, BETA, 200.0), hawkes_mean_counts(MU, a, BETA, 400.0)
    np.testing.assert_allclose((m2 - m1) / 200.0, stationary, rtol=1e-10)


# ---- Poisson ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler", ["max-rate", "loose-bound", "ogata"])
def test_poisson_counts_and_times(sampler):
    rates = torch.tensor([0.5, 1.0, 2.0], dtype=DT)
    duration, n = 10.0, 4000
    torch.manual_seed(0)
    intensity = Poisson(rates)
    dur = torch.full((n,), duration, dtype=DT)
    if sampler == "max-rate":  # bound = sum of rates: every candidate is an event
        value = PointProcess(intensity, duration).sample((n,))
    elif sampler == "loose-bound":  # half the candidates are rejected
        value = sample_exact(intensity, torch.full((n,), 7.0, dtype=DT), dur, None, 80)
    else:
        value = sample_ogata(intensity, dur, None, 80)
    counts = counts_of(value, 3)
    # counts ~ Poisson(rate T): SE of the mean sqrt(rate T / n); the sample variance has
    # Var(s^2) ~ (mu4 - sigma^4) / n = (rate T + 2 (rate T)^2) / n
    mean = rates * duration
    z_mean = (counts.mean(0) - mean) / (mean / n).sqrt()
    z_var = (counts.var(0) - mean) / ((mean + 2 * mean**2) / n).sqrt()
    assert z_mean.abs().max() < Z_TOL, z_mean
    assert z_var.abs().max() < Z_TOL, z_var
    # given the counts, the times are iid uniform on the window
    times = value[..., 0][event_mask(value)].numpy() / duration
    assert scipy.stats.kstest(times, "uniform").pvalue > P_MIN


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
def test_draw_candidates_are_sorted_uniform_order_statistics(dtype):
    """Thinning's candidates: Poisson(bound T) counts, real candidates first and sorted in [0, T],
    padding at T, and given n candidates the i-th is T * Beta(i, n + 1 - i) (mean and SE per i)."""
    torch.manual_seed(3)
    n_seq, rate, duration, n = 20000, 0.5, 8.0, 4
    times, mask = draw_candidates(torch.full((n_seq,), rate, dtype=dtype), torch.full((n_seq,), duration, dtype=dtype),
                                  100)
    assert times.dtype == dtype
    counts = mask.sum(-1)
    assert torch.equal(mask, torch.arange(mask.shape[-1]) < counts.unsqueeze(-1))
    assert (times[~mask] == duration).all() and (times >= 0).all() and (times <= duration).all()
    assert (times[..., 1:] >= times[..., :-1]).all()
    mean = rate * duration
    assert abs(float(counts.double().mean()) - mean) / math.sqrt(mean / n_seq) < Z_TOL
    rows = times[counts == n][:, :n].double() / duration
    i = torch.arange(1, n + 1, dtype=torch.float64)
    beta_mean, beta_var = i / (n + 1), i * (n + 1 - i) / ((n + 1) ** 2 * (n + 2))
    z = (rows.mean(0) - beta_mean) / (beta_var / rows.shape[0]).sqrt()
    assert z.abs().max() < Z_TOL, z


# ---- Hawkes: constant bound vs Ogata vs the exact mean --------------------------------------------------
def test_hawkes_thinning_matches_ogata_and_exact_mean():
    duration, n = 10.0, 3000
    intensity = hawkes()
    dur = torch.full((n,), duration, dtype=DT)
    torch.manual_seed(1)
    thinned = sample_exact(intensity, torch.full((n,), 10.0, dtype=DT), dur, None, 200)
    torch.manual_seed(2)
    ogata = PointProcess(intensity, duration).sample((n,))  # no bound: Ogata's local bounds
    a, b = counts_of(thinned, 2), counts_of(ogata, 2)
    assert z_two_sample(a, b).abs().max() < Z_TOL
    # the distribution of counts, not only the mean (Hawkes counts are overdispersed)
    for k in range(2):
        assert chi2_homogeneity(a[:, k].numpy(), b[:, k].numpy()) > P_MIN
    assert chi2_homogeneity(a.sum(-1).numpy(), b.sum(-1).numpy()) > P_MIN
    assert float(a.var(0).min() / a.mean(0).max()) > 1.2  # overdispersed, unlike Poisson
    # exact transient mean (the stationary T (I - A)^-1 mu is over 5% higher here: too crude)
    mean = torch.tensor(hawkes_mean_counts(MU, ALPHA, BETA, duration))
    stationary = duration * np.linalg.solve(np.eye(2) - np.array(ALPHA), MU)
    assert (stationary / mean.numpy()).min() > 1.05
    for c in (a, b):
        z = (c.mean(0) - mean) / (c.var(0) / n).sqrt()
        assert z.abs().max() < Z_TOL, z


def test_hawkes_with_context_and_matrix_decays_mean():
    mu, alpha = [0.4, 0.2], [[0.2, 0.3, 0.5], [0.4, 0.1, 0.2]]
    beta = [[1.0, 2.5, 0.7], [3.0, 0.5, 1.2]]
    duration, n, ctx_rate = 8.0, 3000, 0.8
    context = poisson_context(n, duration, ctx_rate, seed=3)[0]
    torch.manual_seed(4)
    intensity = hawkes(mu, alpha, beta)
    ogata = PointProcess(intensity, duration, context=context).sample()
    torch.manual_seed(5)
    thinned = PointProcess(intensity, duration, bound=20.0, context=context).sample()  # Hawkes bursts: room
    mean = torch.tensor(hawkes_mean_counts(mu, alpha, beta, duration, [ctx_rate]))
    for c in (counts_of(ogata, 2), counts_of(thinned, 2)):
        z = (c.mean(0) - mean) / (c.var(0) / n).sqrt()
        assert z.abs().max() < Z_TOL, z
    # without the context the means are clearly lower: the test sees the context
    assert (hawkes_mean_counts(mu, alpha, beta, duration, [0.0]) < mean.numpy() - 1.0).all()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # scipy namespaces used inside tick
def test_hawkes_matches_tick():
    try:  # optional: pip install tick==0.8.0.2 (an ImportError also covers a broken binary build)
        from tick.hawkes import SimuHawkesExpKernels
    except ImportError as err:
        pytest.skip(f"tick is not importable: {err}")
    duration, n = 10.0, 2000
    counts = np.zeros((n, 2))
    for s in range(n):
        sim = SimuHawkesExpKernels(
            adjacency=np.array(ALPHA), decays=BETA, baseline=np.array(MU), end_time=duration, verbose=False, seed=s
        )
        sim.simulate()
        counts[s] = [len(ts) for ts in sim.timestamps]
    torch.manual_seed(6)
    ours = counts_of(PointProcess(hawkes(), duration).sample((n,)), 2)
    # tick's kernel alpha beta exp(-beta t) is ours, so the count distributions agree
    assert z_two_sample(ours, counts).abs().max() < Z_TOL
    for k in range(2):
        assert chi2_homogeneity(ours[:, k].numpy().astype(int), counts[:, k].astype(int)) > P_MIN
    mean = hawkes_mean_counts(MU, ALPHA, BETA, duration)
    assert np.abs((counts.mean(0) - mean) / np.sqrt(counts.var(0) / n)).max() < Z_TOL


# ---- time rescaling -----------------------------------------------------------------------------------------
def hawkes_cumulative(intensity, times, weights, query):
    """``batch x Q x K`` closed-form Lambda_k(query) = mu_k t + sum_{t_n < t} sum_j alpha_kj w_nj
    (1 - exp(-beta_kj (t - t_n))), independent of the package's compensator."""
    mu, alpha = intensity.baseline, intensity.adjacency
    beta = intensity.decay.expand(alpha.shape)
    lag = query.unsqueeze(-1) - times.unsqueeze(-2)  # batch x Q x E
    before = (lag > 0).to(DT)
    inside = -torch.expm1(-beta[None, None, None] * lag.clamp(min=0)[..., None, None])  # b x Q x E x K x D
    excitation = (alpha * inside * (weights[:, None, :, None, :] * before[..., None, None])).sum((-3, -1))
    return mu * query.unsqueeze(-1) + excitation


def quadrature_cumulative(intensity, times, weights, query, duration, nodes=10):
    """``batch x Q x K`` Lambda_k(query) by Gauss-Legendre quadrature of the parallel intensity on
    the pieces between history events and kinks; the query times must be history times or the
    duration. (10 nodes: error < 1e-9 per piece here, see test_likelihood's convergence test.)"""
    batch = times.shape[0]
    extra = intensity.breakpoints(times, weights)
    pieces = [times.new_zeros(batch, 1), times, times.new_full((batch, 1), duration)]
    if extra is not None:
        pieces.append(extra.expand(batch, -1))
    points = torch.cat(pieces, -1).clamp(0, duration).sort(-1).values
    x, w = np.polynomial.legendre.leggauss(nodes)
    x, w = torch.tensor(x, dtype=DT), torch.tensor(w, dtype=DT)
    left, right = points[:, :-1], points[:, 1:]
    half = ((right - left) / 2).unsqueeze(-1)
    nodes_t = ((left + right) / 2).unsqueeze(-1) + half * x
    rates = intensity(times, weights, nodes_t.flatten(-2))  # batch x (P nodes) x K
    pieces = (rates.reshape(nodes_t.shape + (rates.shape[-1],)) * (half * w).unsqueeze(-1)).sum(-2)
    cumulative = torch.cat([pieces.new_zeros(batch, 1, pieces.shape[-1]), pieces.cumsum(-2)], -2)
    index = torch.searchsorted(points, query.contiguous())
    return cumulative.gather(-2, index.unsqueeze(-1).expand(index.shape + (rates.shape[-1],)))


def rescaled_gaps(intensity, value, context, duration, start_before, cumulative="quadrature", chunk=10):
    """Compensator increments Lambda_k(t_i) - Lambda_k(t_{i-1}) (t_0 = 0) between consecutive events
    of each mark, for the gaps whose start (in rescaled time) is below ``start_before[k]``.

    Selecting gaps by their start (a stopping time of the rescaled unit Poisson process) keeps
    them iid Exp(1); a selected gap is unobserved only if it outlasts the window, i.e. exceeds
    Lambda_k(T) - start_before[k], so we also return the smallest such margin (censoring
    probability <= exp(-margin))."""
    k = intensity.num_marks
    gaps, margin = [], math.inf
    for lo in range(0, value.shape[0], chunk):
        v = value[lo : lo + chunk]
        v = v[:, : int(event_mask(v).sum(-1).max()) + 1]  # drop padding beyond one row
        ctx = None if context is None else context[lo : lo + chunk]
        times, weights = history(v, k, ctx, intensity.num_context_marks)
        query = torch.cat([v[..., 0], torch.full_like(v[..., :1, 0], duration)], -1)
        if cumulative == "closed":
            lam = hawkes_cumulative(intensity, times, weights, query)
        else:
            lam = quadrature_cumulative(intensity, times, weights, query, duration)
        real = event_mask(v)
        marks = v[..., 1 : 1 + k].argmax(-1)
        for s in range(v.shape[0]):
            for j in range(k):
                r = lam[s, :-1, j][real[s] & (marks[s] == j)].numpy()
                starts = np.concatenate([[0.0], r[:-1]])
                gaps.append((r - starts)[starts < start_before[j]])
                if len(r) == 0 or r[-1] < start_before[j]:
                    # a selected gap is censored: fail loudly rather than bias the test
                    raise AssertionError("a selected gap outlasts the window; lower start_before")
                margin = min(margin, float(lam[s, -1, j]) - start_before[j])
    return np.concatenate(gaps), margin


def assert_exp1(gaps, min_count=2000):
    """KS and Pyro's binned goodness-of-fit tests of Exp(1)."""
    assert len(gaps) >= min_count
    ks = scipy.stats.kstest(gaps, "expon").pvalue
    samples = torch.tensor(gaps)
    gof_density = auto_goodness_of_fit(samples, torch.exp(-samples))
    gof_exp = exp_goodness_of_fit(samples)
    assert ks > P_MIN and gof_density > P_MIN and gof_exp > P_MIN, (ks, gof_density, gof_exp)
    return ks, gof_density, gof_exp


def test_time_rescaling_poisson():
    rates, duration, n = torch.tensor([0.5, 1.5], dtype=DT), 60.0, 100
    torch.manual_seed(7)
    value = PointProcess(Poisson(rates), duration, bound=4.0).sample((n,))
    start = (rates * duration - 15).tolist()  # Lambda_k(T) = rate_k T exactly: margin 15
    gaps, margin = rescaled_gaps(Poisson(rates), value, None, duration, start)
    assert margin >= 15 - 1e-9
    assert_exp1(gaps)
    # power: rescaling with rates 10% off is rejected
    wrong = Poisson(rates * 1.1)
    bad, _ = rescaled_gaps(wrong, value, None, duration, [s * 1.1 for s in start])
    assert scipy.stats.kstest(bad, "expon").pvalue < 1e-6


@pytest.mark.parametrize("sampler", ["ogata", "bound"])
def test_time_rescaling_hawkes(sampler):
    duration, n = 100.0, 150
    intensity = hawkes()
    torch.manual_seed(8)
    bound = None if sampler == "ogata" else 12.0
    value = PointProcess(intensity, duration, bound=bound).sample((n,))
    # Lambda_k(T) >= mu_k T surely, so gaps starting before mu_k T - 15 end inside the window
    # (censoring probability <= e^-15 per sequence and mark)
    start = [m * duration - 15 for m in MU]
    gaps, margin = rescaled_gaps(intensity, value, None, duration, start, cumulative="closed")
    assert margin >= 15
    assert_exp1(gaps)
    # the quadrature route gives the same increments
    q, _ = rescaled_gaps(intensity, value[:20], None, duration, start)
    c, _ = rescaled_gaps(intensity, value[:20], None, duration, start, cumulative="closed")
    np.testing.assert_allclose(q, c, rtol=1e-9, atol=1e-10)
    # power: the same events rescaled without their excitation are rejected
    poisson = hawkes(MU, np.zeros((2, 2)), BETA)
    bad, _ = rescaled_gaps(poisson, value, None, duration, start, cumulative="closed")
    assert scipy.stats.kstest(bad, "expon").pvalue < 1e-6


def test_time_rescaling_hawkes_with_context():
    mu, alpha = [0.4, 0.3], [[0.2, 0.3, 0.5], [0.4, 0.1, 0.2]]
    beta = [[1.0, 2.5, 0.7], [3.0, 0.5, 1.2]]
    duration, n = 100.0, 120
    intensity = hawkes(mu, alpha, beta)
    context = poisson_context(n, duration, 0.5, seed=9)[0]
    torch.manual_seed(10)
    value = PointProcess(intensity, duration, context=context).sample()
    start = [m * duration - 15 for m in mu]
    gaps, margin = rescaled_gaps(intensity, value, context, duration, start, cumulative="closed")
    assert margin >= 15
    assert_exp1(gaps)
    # power: ignoring the context events is rejected
    bad, _ = rescaled_gaps(intensity, value, None, duration, start, cumulative="closed")
    assert scipy.stats.kstest(bad, "expon").pvalue < 1e-6


def glm_exponential(dtype=DT, context_marks=0):
    k = 2
    weight = torch.zeros(2, k, k + context_marks, dtype=dtype)
    weight[:, 0, 0] = torch.tensor([-3.0, -0.5])  # refractory, fast and slow
    weight[:, 1, 1] = torch.tensor([-2.0, 0.0])
    weight[0, 1, 0] = 2.5  # mark 0 excites mark 1
    weight[1, 0, 1] = 1.0
    if context_marks:
        weight[0, :, k] = 1.5
    basis = ExponentialBasis(torch.tensor([0.3, 2.0], dtype=dtype))
    return GLM(torch.tensor([0.5, -0.5], dtype=dtype), weight, basis, "sigmoid", torch.tensor(2.0, dtype=dtype))


def test_time_rescaling_glm_sigmoid():
    duration, n = 60.0, 120
    glm = glm_exponential()
    torch.manual_seed(11)
    value = PointProcess(glm, duration).sample((n,))  # bound = max_rate = 2 K
    # no sure lower bound on Lambda_k(T) here: require a margin of 12 (censoring <= e^-12) in the
    # seeded draws; typical Lambda_k(T) are ~45 and ~30
    start = [25.0, 14.0]
    gaps, margin = rescaled_gaps(glm, value, None, duration, start)
    assert margin >= 12
    assert_exp1(gaps)
    # power: a 15% error in the amplitude is rejected
    wrong = GLM(glm.bias, glm.weight, glm.basis, "sigmoid", glm.amplitude * 1.15)
    bad, _ = rescaled_gaps(wrong, value, None, duration, [s * 1.15 for s in start])
    assert scipy.stats.kstest(bad, "expon").pvalue < 1e-6


# ---- the differentiable point process as temperature falls ------------------------------------------
def test_relaxed_argmax_counts_converge_to_exact_process():
    duration, n, bound = 10.0, 2000, 10.0
    intensity = hawkes()
    torch.manual_seed(12)
    exact = counts_of(PointProcess(intensity, duration, bound=bound).sample((n,)), 2)
    z = {}
    for i, tau in enumerate((1.0, 0.1, 0.01)):
        torch.manual_seed(13 + i)
        relaxed = PointProcess(intensity, duration, bound=bound, temperature=tau).sample((n,))
        z[tau] = z_two_sample(argmax_counts(relaxed, 2), exact)
    # at tau = 1 the soft history (every rejected candidate still excites a little) inflates the
    # counts by ~50%: far outside the standard error; at tau = 0.01 the process is the exact one
    assert (z[1.0] > 5 * Z_TOL).all(), z
    assert (z[0.01].abs() < Z_TOL).all(), z
    assert z[0.1].abs().max() < z[1.0].abs().min()


def test_relaxed_poisson_argmax_is_exact_at_any_temperature():
    """Without a history the argmax of a Concrete(pi, tau) draw is Categorical(pi): the argmax
    marks of relaxed draws are the exact Poisson process for every temperature."""
    rates = torch.tensor([0.5, 1.0], dtype=DT)
    duration, n, bound = 10.0, 3000, 3.0
    torch.manual_seed(16)
    relaxed = PointProcess(Poisson(rates), duration, bound=bound, temperature=2.0).sample((n,))
    counts = argmax_counts(relaxed, 2)
    mean = rates * duration
    z = (counts.mean(0) - mean) / (mean / n).sqrt()
    assert z.abs().max() < Z_TOL, z
    # the candidates are a Poisson(bound) process
    n_cand = event_mask(relaxed).sum(-1).to(DT)
    assert abs(float(n_cand.mean()) - bound * duration) < Z_TOL * math.sqrt(bound * duration / n)


# ---- scan vs parallel evaluation --------------------------------------------------------------------------
def scan_intensities(dtype=DT):
    g = torch.Generator().manual_seed(17)
    k, c = 2, 1

    def weight(num_basis):
        w = torch.randn(num_basis, k, k + c, generator=g, dtype=dtype)
        w[:, 0, 0] = -1.5
        return w

    bias = torch.tensor([0.3, -0.2], dtype=dtype)
    return {
        "hawkes": (ExpHawkes(torch.tensor([0.4, 0.3], dtype=dtype),
                             torch.rand(k, k + c, generator=g, dtype=dtype) * 0.5,
                             (0.5 + 2 * torch.rand(k, k + c, generator=g, dtype=dtype))), 8.0),
        "glm-exponential": (GLM(bias, weight(2), ExponentialBasis(torch.tensor([0.4, 2.0], dtype=dtype)), "sigmoid",
                                torch.tensor(2.0, dtype=dtype)), None),
        "glm-epanechnikov": (GLM(bias, weight(2), in_float64(lambda: EpanechnikovBasis(2, 0.0, 2.0, 1.0, window=40))
                                 .to(dtype), "sigmoid", torch.tensor(2.0, dtype=dtype)), None),
        "glm-raised-cosine": (GLM(bias, weight(3), in_float64(lambda: RaisedCosineBasis(3, 3.0, 0.5)).to(dtype),
                                  "sigmoid", torch.tensor(2.0, dtype=dtype)), None),
    }


class Recorder:
    """Wraps an intensity's scan methods to record the times and intensities the sampler used."""

    def __init__(self, intensity):
        self.intensity, self.calls = intensity, []
        self._rates, self._log_rates = intensity.rates, intensity.log_rates

        def rates(state, time):
            out = self._rates(state, time)
            self.calls.append((time.detach().clone(), out.detach().clone()))
            return out

        def log_rates(state, time):
            out = self._log_rates(state, time)
            self.calls.append((time.detach().clone(), out.detach().exp()))
            return out

        intensity.rates, intensity.log_rates = rates, log_rates

    def restore(self):
        del self.intensity.rates, self.intensity.log_rates


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("with_context", [False, True])
@pytest.mark.parametrize("name", ["hawkes", "glm-exponential", "glm-epanechnikov", "glm-raised-cosine"])
def test_scan_matches_parallel_on_relaxed_draws(name, with_context, dtype, rtol):
    intensity, bound = scan_intensities(dtype)[name]
    duration, batch, tau = 6.0, 4, 0.3
    context = poisson_context(batch, duration, 1.0, seed=18)[0].to(dtype) if with_context else None
    if not with_context:  # the intensity has a context column: give it an empty context
        context = make_context([[]] * batch, [[]] * batch, 1, duration).to(dtype)
    torch.manual_seed(19)
    recorder = Recorder(intensity)
    try:
        value = PointProcess(intensity, duration, bound=bound, temperature=tau, context=context).rsample()
    finally:
        recorder.restore()
    assert value.dtype == dtype
    k = intensity.num_marks
    times, weights = history(value, k, context, intensity.num_context_marks)
    real = event_mask(value)
    assert int(real.sum()) > 30
    parallel = intensity(times, weights, value[..., 0])  # batch x N x K
    log_parallel = intensity.log_forward(times, weights, value[..., 0])
    torch.testing.assert_close(log_parallel.exp(), parallel, rtol=rtol, atol=0)
    # (1) the intensities the sampler's scan used at each candidate
    step_times = torch.stack([t for t, _ in recorder.calls], -1)  # batch x S
    step_rates = torch.stack([r for _, r in recorder.calls], -2)  # batch x S x K
    for s in range(batch):
        for n in torch.nonzero(real[s]).flatten().tolist():
            hit = torch.nonzero(step_times[s] == value[s, n, 0]).flatten()
            assert len(hit) >= 1
            torch.testing.assert_close(step_rates[s, hit[0]], parallel[s, n], rtol=rtol, atol=rtol * 1e-3)
    # (2) the scan re-run by hand: candidates and context events merged in time order
    ctx_real = event_mask(context)
    for s in range(batch):
        steps = [(float(value[s, n, 0]), 0, n) for n in torch.nonzero(real[s]).flatten().tolist()]
        steps += [(float(context[s, m, 0]), 1, m) for m in torch.nonzero(ctx_real[s]).flatten().tolist()]
        steps.sort()  # candidates before context events at equal times (none here)
        state = intensity.initial_state(torch.Size([]), value, len(steps) + 1)
        for t, kind, idx in steps:
            tt = torch.tensor(t, dtype=dtype)
            if kind == 0:
                torch.testing.assert_close(intensity.rates(state, tt), parallel[s, idx], rtol=rtol, atol=rtol * 1e-3)
                w = torch.cat([value[s, idx, 1 : 1 + k], value.new_zeros(intensity.num_context_marks)])
            else:
                w = torch.cat([value.new_zeros(k), context[s, idx, 1:-1]])
            state = intensity.update(state, tt, w)
    # (3) the carried log-weights are normalised (log-softmax over K marks and "no event") and
    # match the stored weights; the density of the draw is finite
    log_w = getattr(value, LOG_WEIGHTS_ATTR)
    torch.testing.assert_close(log_w[real].logsumexp(-1), torch.zeros_like(log_w[real][:, 0]), rtol=0, atol=rtol)
    torch.testing.assert_close(log_w[real].exp(), value[..., 1:][real], rtol=rtol, atol=rtol * 1e-3)
    d = PointProcess(intensity, duration, bound=bound, temperature=tau, context=context)
    assert torch.isfinite(d.log_prob(value)).all()


def test_scan_matches_parallel_straight_through():
    intensity, bound = scan_intensities()["hawkes"]
    context = make_context([[]] * 3, [[]] * 3, 1, 6.0)
    torch.manual_seed(20)
    recorder = Recorder(intensity)
    try:
        value = PointProcess(intensity, 6.0, bound=bound, temperature=0.5, context=context,
                             straight_through=True).rsample()
    finally:
        recorder.restore()
    real = event_mask(value)
    marks = value[..., 1:][real]
    # hard forward values (hard + y - y.detach(): exact up to one rounding)
    torch.testing.assert_close(marks, F.one_hot(marks.argmax(-1), 3).to(DT), rtol=0, atol=1e-15)
    times, weights = history(value, 2, context, 1)
    parallel = intensity(times, weights, value[..., 0])
    step_times = torch.stack([t for t, _ in recorder.calls], -1)
    step_rates = torch.stack([r for _, r in recorder.calls], -2)
    for s in range(3):
        for n in torch.nonzero(real[s]).flatten().tolist():
            hit = torch.nonzero(step_times[s] == value[s, n, 0]).flatten()
            torch.testing.assert_close(step_rates[s, hit[0]], parallel[s, n], rtol=1e-10, atol=1e-13)


def test_exact_thinning_events_are_accepted_candidates_with_onehot_marks():
    torch.manual_seed(21)
    value = PointProcess(glm_exponential(), 20.0).sample((50,))
    real = event_mask(value)
    marks = value[..., 1:]
    assert ((marks == 0) | (marks == 1)).all()
    assert (marks[real].sum(-1) == 1).all() and (marks[..., -1] == 0).all()
    t = value[..., 0]
    assert ((t[..., 1:] >= t[..., :-1]) | ~real[..., 1:]).all()
    assert (t[~real] == 20.0).all()
