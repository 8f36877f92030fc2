"""Densities against independent computations (DESIGN §2).

- the exact Hawkes log-likelihood against a NumPy double loop over events (closed form);
- the Gauss-Legendre compensator against the Hawkes closed form, within the a-priori error bound of
  the rule, and for GLMs against an independent composite rule with many nodes (convergence);
- the Concrete density against torch's ``RelaxedOneHotCategorical`` and against normalisation;
- the DPP density of ``rsample()`` draws against a Python loop over candidates;
- gradients (``torch.autograd.gradcheck`` in float64) of ``log_prob`` and of ``rsample`` (fixed
  noise) w.r.t. intensity parameters;
- float32 stability at low temperature.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _helpers import in_float64, make_context, poisson_context
from scipy import integrate

from pyro_dpp import PointProcess
from pyro_dpp.events import LOG_WEIGHTS_ATTR, event_mask
from pyro_dpp.intensity import GLM, EpanechnikovBasis, ExpHawkes, ExponentialBasis, Poisson, RaisedCosineBasis
from pyro_dpp.likelihood import concrete_log_density, history, quadrature_compensator
from pyro_dpp.relaxed import plain

DT = torch.float64


def events_of(value, k):
    """Per sequence: (times, marks) numpy arrays of the real rows of an exact realization."""
    out = []
    for seq in value.detach():
        real = event_mask(seq)
        out.append((seq[real, 0].numpy(), seq[real, 1 : 1 + k].argmax(-1).numpy()))
    return out


# ---- independent Hawkes references -----------------------------------------------------------------
def np_hawkes_rate(mu, alpha, beta, hist_t, hist_w, t):
    """lambda(t) = mu + sum_{n: t_n < t} sum_j alpha_ij beta_ij exp(-beta_ij (t - t_n)) w_nj (K,)."""
    rate = np.array(mu, dtype=float).copy()
    for tn, wn in zip(hist_t, hist_w, strict=True):
        if tn < t:
            rate += (alpha * beta * np.exp(-beta * (t - tn)) * wn[None, :]).sum(-1)
    return rate


def np_hawkes_loglik(mu, alpha, beta, times, marks, duration, ctx_times=(), ctx_marks=()):
    k, d = alpha.shape
    hist_t = list(times) + list(ctx_times)
    hist_w = [np.eye(d)[m] for m in marks] + [np.eye(d)[k + m] for m in ctx_marks]
    loglik = 0.0
    for t, m in zip(times, marks, strict=True):
        loglik += math.log(np_hawkes_rate(mu, alpha, beta, hist_t, hist_w, t)[m])
    comp = mu.sum() * duration
    for tn, wn in zip(hist_t, hist_w, strict=True):
        if tn < duration:
            comp += (alpha * (1 - np.exp(-beta * (duration - tn))) * wn[None, :]).sum()
    return loglik - comp


CONTEXT_RATE = 0.8  # context events per unit time

HAWKES_CASES = {
    "scalar-decay": dict(mu=[0.6, 0.3], alpha=[[0.3, 0.2], [0.1, 0.4]], beta=1.5, context=False),
    "matrix-decay-context": dict(
        mu=[0.4, 0.5], alpha=[[0.2, 0.3, 0.5], [0.4, 0.1, 0.2]], beta=[[1.0, 2.5, 0.7], [3.0, 0.5, 1.2]], context=True
    ),
}


def _hawkes(case):
    mu = torch.tensor(case["mu"], dtype=DT)
    alpha = torch.tensor(case["alpha"], dtype=DT)
    beta = torch.as_tensor(case["beta"], dtype=DT)
    return ExpHawkes(mu, alpha, beta)


def _numpy_params(case):
    """``(mu, alpha, beta)`` of a case as NumPy arrays, ``beta`` broadcast to ``alpha``'s shape."""
    alpha = np.array(case["alpha"])
    return np.array(case["mu"]), alpha, np.broadcast_to(np.asarray(case["beta"], dtype=float), alpha.shape)


def _sample_case(case, duration, batch, seed, context_seed):
    """``(hawkes, process, value, (context, context times, context marks))``: ``batch`` exact draws
    of a case (torch seeded by ``seed``), given a Poisson context (seeded by ``context_seed``) where
    the case has one; the context triple is all None where it has none."""
    hawkes = _hawkes(case)
    torch.manual_seed(seed)
    context = poisson_context(batch, duration, CONTEXT_RATE, context_seed) if case["context"] else (None, None, None)
    d = PointProcess(hawkes, duration, context=context[0])
    value = d.sample((batch,)) if context[0] is None else d.sample()
    return hawkes, d, value, context


@pytest.mark.parametrize("name", list(HAWKES_CASES))
def test_exact_hawkes_log_prob_matches_numpy_double_loop(name):
    case = HAWKES_CASES[name]
    duration, batch = 12.0, 6
    hawkes, d, value, (context, ctx_t, ctx_m) = _sample_case(case, duration, batch, seed=0, context_seed=1)
    assert value.shape[0] == batch and value.dtype == DT
    got = d.log_prob(value)
    mu, alpha, beta = _numpy_params(case)
    for s, (t, m) in enumerate(events_of(value, hawkes.num_marks)):
        assert len(t) > 3
        ref = np_hawkes_loglik(mu, alpha, beta, t, m, duration, *((ctx_t[s], ctx_m[s]) if context is not None else ()))
        assert float(got[s]) == pytest.approx(ref, abs=1e-9, rel=1e-12)


def test_exact_hawkes_log_prob_hand_made_sequence_with_ties():
    """Events at t = 0, simultaneous events (neither is in the other's history) and context events
    at event times; the value need not be padded to max_events."""
    case = HAWKES_CASES["matrix-decay-context"]
    hawkes = _hawkes(case)
    t = np.array([0.0, 0.4, 0.4, 1.3, 2.0, 2.0])
    m = np.array([1, 0, 1, 0, 0, 1])
    ct, cm = np.array([0.4, 1.0, 2.0, 3.5]), np.array([0, 0, 0, 0])
    value = make_context([t], [m], 2, 4.0)
    context = make_context([ct], [cm], 1, 4.0)
    got = PointProcess(hawkes, 4.0, context=context).log_prob(value)
    alpha = np.array(case["alpha"])
    ref = np_hawkes_loglik(np.array(case["mu"]), alpha, np.array(case["beta"]), t, m, 4.0, ct, cm)
    assert float(got[0]) == pytest.approx(ref, abs=1e-12)


def test_exact_poisson_log_prob_closed_form():
    rates = torch.tensor([0.5, 2.0, 1.0], dtype=DT)
    torch.manual_seed(3)
    d = PointProcess(Poisson(rates), 5.0)
    value = d.sample((4,))
    for s, (_, m) in enumerate(events_of(value, 3)):
        ref = np.log(rates.numpy()[m]).sum() - 5.0 * rates.sum().item()
        assert float(d.log_prob(value)[s]) == pytest.approx(ref, abs=1e-12)


# ---- compensator quadrature -----------------------------------------------------------------------------
def gauss_legendre_constant(n):
    """E = (b - a)^(2n+1) (n!)^4 / ((2n + 1) ((2n)!)^3) f^(2n)(xi): the constant of an n-node rule."""
    return math.factorial(n) ** 4 / ((2 * n + 1) * math.factorial(2 * n) ** 3)


def hawkes_quadrature_error_bound(mu, alpha, beta, hist_t, hist_w, duration, nodes):
    """A-priori bound of the n-node Gauss-Legendre rule on the Hawkes compensator, with the rule
    applied between consecutive history events (as quadrature_compensator does).

    Between events the summed intensity is f(t) = sum mu + sum_ij alpha_ij beta_ij S_ij(a) e^{-beta_ij (t-a)}
    with S_ij(a) the trace right after the left end a, so |f^(2n)| <= sum_ij alpha_ij beta_ij^(2n+1) S_ij(a)
    and the error on [a, b] is at most C_n (b - a)^(2n+1) sum_ij alpha_ij beta_ij^(2n+1) S_ij(a)."""
    points = np.sort(np.clip(np.concatenate([[0.0], hist_t, [duration]]), 0, duration))
    c = gauss_legendre_constant(nodes)
    total = 0.0
    for a, b in zip(points[:-1], points[1:], strict=True):
        trace = np.zeros_like(alpha)
        for tn, wn in zip(hist_t, hist_w, strict=True):
            if tn <= a:
                trace += np.exp(-beta * (a - tn)) * wn[None, :]
        total += c * (b - a) ** (2 * nodes + 1) * (alpha * beta ** (2 * nodes + 1) * trace).sum()
    return total


@pytest.mark.parametrize("name", list(HAWKES_CASES))
def test_quadrature_compensator_matches_hawkes_closed_form_within_bound(name):
    case = HAWKES_CASES[name]
    duration, batch = 10.0, 5
    hawkes, _, value, (context, _, _) = _sample_case(case, duration, batch, seed=4, context_seed=5)
    times, weights = history(value, hawkes.num_marks, context, hawkes.num_context_marks)
    dur = torch.full((batch,), duration, dtype=DT)
    closed = hawkes.compensator(times, weights, dur)
    mu, alpha, beta = _numpy_params(case)
    errors = {}
    for nodes in (2, 4, 8):
        errors[nodes] = (quadrature_compensator(hawkes, times, weights, dur, nodes) - closed).abs()
    for s in range(batch):
        real = weights[s].sum(-1) > 0.5
        ht, hw = times[s][real].numpy(), weights[s][real].numpy()
        for nodes in (4, 8):
            bound = hawkes_quadrature_error_bound(mu, alpha, beta, ht, hw, duration, nodes)
            # rounding: ~1e-16 relative per node sum, on a compensator of size ~10
            assert float(errors[nodes][s]) <= bound + 1e-12, (nodes, float(errors[nodes][s]), bound)
        # for these parameters (beta <= 3, event rates ~1) the 8-node bound is far below 1e-8
        assert hawkes_quadrature_error_bound(mu, alpha, beta, ht, hw, duration, 8) < 1e-8
    assert float(errors[8].max()) < 1e-8
    # exponential convergence: each doubling of nodes gains orders of magnitude
    assert float(errors[2].max()) > float(errors[4].max()) > float(errors[8].max())


def _glm(basis_name, dtype=DT):
    g = torch.Generator().manual_seed(7)
    k, c = 2, 1
    bases = {
        "exponential": lambda: ExponentialBasis([0.5, 2.0]),
        "epanechnikov": lambda: EpanechnikovBasis(2, 0.0, 3.0, 1.0),
        "raised-cosine": lambda: RaisedCosineBasis(3, 4.0, 0.5),
    }
    basis = in_float64(bases[basis_name]).to(dtype)
    weight = torch.randn(basis.num_basis, k, k + c, generator=g, dtype=DT) * 1.5
    weight[:, 0, 0] = -2.0  # refractory self-connection
    bias = torch.tensor([0.0, -0.5], dtype=DT)
    return GLM(bias.to(dtype), weight.to(dtype), basis, "sigmoid", amplitude=torch.tensor(2.0, dtype=dtype))


def independent_breakpoints(basis_name, event_times):
    """Kinks of the GLM's summed intensity, from the bases' formulas (not from the package)."""
    if basis_name == "exponential":
        lags = np.zeros(0)
    elif basis_name == "epanechnikov":
        centres = np.linspace(0.0, 3.0, 2)
        lags = np.concatenate([centres - 1.0, centres + 1.0])
    else:
        lo, hi = math.log(0.5), math.log(4.5)
        spacing = (hi - lo) / 2
        a = math.pi / 2 / spacing
        centres = lo + spacing * np.arange(3)
        lags = np.exp(np.concatenate([centres - math.pi / a, centres + math.pi / a])) - 0.5
        # geometric grading away from each event: log(lag + 0.5) is singular at lag = -0.5
        lags = np.concatenate([lags, 0.5 * (2.0 ** np.arange(1, 8) - 1)])
    lags = lags[lags > 0]
    return np.concatenate([event_times, (event_times[:, None] + lags[None, :]).ravel()])


def reference_compensator(intensity, times, weights, duration, breakpoints, nodes=64):
    """Composite Gauss-Legendre with many nodes on independently computed pieces (one sequence)."""
    points = np.unique(np.clip(np.concatenate([[0.0], breakpoints, [duration]]), 0, duration))
    x, w = np.polynomial.legendre.leggauss(nodes)
    left, right = points[:-1], points[1:]
    query = ((left + right) / 2)[:, None] + ((right - left) / 2)[:, None] * x[None, :]
    rates = intensity(times, weights, torch.tensor(query.ravel(), dtype=DT)).sum(-1).numpy()
    return float((rates.reshape(query.shape) * ((right - left) / 2)[:, None] * w).sum())


@pytest.mark.parametrize("basis_name", ["exponential", "epanechnikov", "raised-cosine"])
def test_quadrature_compensator_converges_for_glm(basis_name):
    glm = _glm(basis_name)
    duration, batch = 8.0, 3
    torch.manual_seed(8)
    context = poisson_context(batch, duration, CONTEXT_RATE, seed=9)[0]
    value = PointProcess(glm, duration, context=context).sample()
    times, weights = history(value, 2, context, 1)
    dur = torch.full((batch,), duration, dtype=DT)
    errors = {}
    for s in range(batch):
        real = (weights[s].sum(-1) > 0.5).numpy()
        ref = reference_compensator(glm, times[s], weights[s], duration,
                                    independent_breakpoints(basis_name, times[s].numpy()[real]))
        # the reference itself against scipy's adaptive quadrature on the first piece boundaries
        if s == 0:
            def f(t, ts=times[s], ws=weights[s]):
                return float(glm(ts, ws, torch.tensor([t], dtype=DT)).sum())

            pts = np.sort(independent_breakpoints(basis_name, times[s].numpy()[real]))
            pts = pts[(pts > 0) & (pts < duration)]
            adaptive = integrate.quad(f, 0.0, duration, points=pts, limit=500, epsabs=1e-12, epsrel=1e-12)[0]
            assert ref == pytest.approx(adaptive, abs=1e-9)
        for nodes in (1, 2, 4, 8, 16):
            got = quadrature_compensator(glm, times[s : s + 1], weights[s : s + 1], dur[s : s + 1], nodes)
            errors.setdefault(nodes, []).append(abs(float(got[0]) - ref))
    worst = {n: max(e) for n, e in errors.items()}
    # The intensity is analytic between breakpoints, so the error falls geometrically; with the
    # kinks as breakpoints 8 nodes reach 1e-7 (a missed kink would leave an algebraic error ~1e-3;
    # ungraded raised cosines gave 1e-2) and 16 nodes round-off.
    assert worst[8] < 1e-7 and worst[16] < 1e-12
    assert worst[1] > worst[2] > worst[4] > worst[8]


@pytest.mark.parametrize("basis_name", ["exponential", "epanechnikov", "raised-cosine"])
def test_exact_glm_log_prob_matches_independent_computation(basis_name):
    glm = _glm(basis_name)
    duration, batch = 8.0, 3
    torch.manual_seed(10)
    context = poisson_context(batch, duration, CONTEXT_RATE, seed=11)[0]
    d = PointProcess(glm, duration, context=context, quadrature_nodes=32)
    value = d.sample()
    got = d.log_prob(value)
    # the default rule (8 nodes) is within 1e-7 of it
    torch.testing.assert_close(PointProcess(glm, duration, context=context).log_prob(value), got, rtol=0, atol=1e-7)
    times, weights = history(value, 2, context, 1)
    for s, (t, m) in enumerate(events_of(value, 2)):
        real = (weights[s].sum(-1) > 0.5).numpy()
        rates = glm(times[s], weights[s], torch.tensor(t, dtype=DT)).numpy()
        events = np.log(rates[np.arange(len(t)), m]).sum()
        comp = reference_compensator(glm, times[s], weights[s], duration,
                                     independent_breakpoints(basis_name, times[s].numpy()[real]))
        assert float(got[s]) == pytest.approx(events - comp, abs=1e-10)


# ---- Concrete density -----------------------------------------------------------------------------------
@pytest.mark.parametrize("tau", [0.3, 0.7, 1.5])
@pytest.mark.parametrize("m", [2, 3, 5])
def test_concrete_log_density_matches_torch(tau, m):
    g = torch.Generator().manual_seed(m)
    log_pi = torch.log_softmax(torch.randn(50, m, generator=g, dtype=DT) * 2, -1)
    torch.manual_seed(m)
    ref_dist = torch.distributions.RelaxedOneHotCategorical(torch.tensor(tau, dtype=DT), logits=log_pi)
    y = ref_dist.sample()
    got = concrete_log_density(y.log(), log_pi, tau)
    torch.testing.assert_close(got, ref_dist.log_prob(y), rtol=1e-10, atol=1e-10)
    # unnormalised log pi gives the same density (the formula is scale invariant in pi)
    torch.testing.assert_close(concrete_log_density(y.log(), log_pi + 3.0, tau), got, rtol=1e-10, atol=1e-10)


def test_concrete_log_density_with_zero_probability_classes():
    tau = 0.5
    g = torch.Generator().manual_seed(0)
    log_pi_active = torch.log_softmax(torch.randn(20, 3, generator=g, dtype=DT), -1)
    torch.manual_seed(1)
    ref_dist = torch.distributions.RelaxedOneHotCategorical(torch.tensor(tau, dtype=DT), logits=log_pi_active)
    y_active = ref_dist.sample()
    # insert two impossible classes (pi = 0): their weights are exactly 0 (log -inf)
    ninf = torch.full((20, 1), -math.inf, dtype=DT)
    log_pi = torch.cat([log_pi_active[:, :1], ninf, log_pi_active[:, 1:], ninf], -1)
    log_y = torch.cat([y_active.log()[:, :1], ninf, y_active.log()[:, 1:], ninf], -1)
    got = concrete_log_density(log_y, log_pi, tau)
    torch.testing.assert_close(got, ref_dist.log_prob(y_active), rtol=1e-10, atol=1e-10)
    # a value with weight on an impossible class has density zero
    bad = log_y.clone()
    bad[:, 1] = -5.0
    assert torch.isneginf(concrete_log_density(bad, log_pi, tau)).all()
    # a single possible class: a point mass (M = 1: lgamma(1) + 0 * log tau + 0 ... = 0)
    one = torch.tensor([[0.0, -math.inf]], dtype=DT)
    assert float(concrete_log_density(one, one, tau)) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("tau", [0.2, 1.0, 3.0])
def test_concrete_density_integrates_to_one(tau):
    log_pi = torch.log(torch.tensor([0.3, 0.7], dtype=DT))

    def density(x):
        # y = (sigmoid(x), sigmoid(-x)), dy1 = y1 y2 dx: a smooth integrand on the real line
        log_y = torch.nn.functional.logsigmoid(torch.tensor([x, -x], dtype=DT))
        return math.exp(float(concrete_log_density(log_y, log_pi, tau) + log_y.sum()))

    total = integrate.quad(density, -np.inf, np.inf, epsabs=1e-12, epsrel=1e-12, limit=400)[0]
    assert total == pytest.approx(1.0, abs=1e-8)


# ---- DPP density of rsample draws --------------------------------------------------------------------
def np_concrete_log_density(y, pi, tau):
    """DESIGN §2 formula over the classes with pi > 0 (M of them)."""
    active = pi > 0
    y, pi = y[active], pi[active]
    m = len(pi)
    return (math.lgamma(m) + (m - 1) * math.log(tau) + (np.log(pi) - (tau + 1) * np.log(y)).sum()
            - m * math.log((pi * y ** (-tau)).sum()))


def np_dpp_log_density(rate_fn, value, k, bound, duration, tau):
    """Loop over candidates: pi_n from the soft history of earlier candidates (rate_fn computes
    lambda(t) from the history (times, weights) by the closed-form intensity), then Concrete."""
    value = value.detach().numpy()
    real = value[:, 1:].sum(-1) > 0.5
    rows = value[real]
    total = len(rows) * math.log(bound) - bound * duration
    for n, row in enumerate(rows):
        rates = rate_fn(rows[:n, 0], rows[:n, 1 : 1 + k], row[0])
        assert rates.sum() <= bound
        pi = np.concatenate([rates / bound, [1 - rates.sum() / bound]])
        total += np_concrete_log_density(row[1:], pi, tau)
    return total


def _np_glm_rate(glm, basis_fn, ctx_t, ctx_w):
    bias, weight, amp = glm.bias.detach().numpy(), glm.weight.detach().numpy(), float(glm.amplitude)

    def rate(hist_t, hist_w, t):
        k = bias.shape[0]
        hw = np.concatenate([np.asarray(hist_w).reshape(-1, k), np.zeros((len(hist_t), weight.shape[-1] - k))], -1)
        ht = np.concatenate([hist_t, ctx_t])
        hw = np.concatenate([hw, ctx_w]) if len(ctx_t) else hw
        before = ht < t
        phi = basis_fn(t - ht[before])  # E x L
        features = phi.T @ hw[before]  # L x D
        u = bias + np.einsum("ld,lkd->k", features, weight)
        return amp / (1 + np.exp(-u))

    return rate


def _np_hawkes_rate_fn(case, ctx_t, ctx_w):
    mu, alpha, beta = _numpy_params(case)
    k = len(mu)

    def rate(hist_t, hist_w, t):
        hw = np.concatenate([np.asarray(hist_w).reshape(-1, k), np.zeros((len(hist_t), alpha.shape[1] - k))], -1)
        ht = np.concatenate([hist_t, ctx_t])
        hw = np.concatenate([hw, ctx_w]) if len(ctx_t) else hw
        return np_hawkes_rate(mu, alpha, beta, ht, hw, t)

    return rate


@pytest.mark.parametrize("tau", [0.5, 0.1])
@pytest.mark.parametrize("name", ["hawkes-scalar", "hawkes-matrix-context", "glm-exponential"])
def test_dpp_log_prob_of_rsample_matches_candidate_loop(name, tau):
    duration, batch, bound = 6.0, 3, 10.0  # room above the Hawkes processes' bursts
    torch.manual_seed(12)
    if name.startswith("hawkes"):
        case = HAWKES_CASES["scalar-decay" if name == "hawkes-scalar" else "matrix-decay-context"]
        intensity = _hawkes(case)
    else:
        intensity = _glm("exponential")
        bound = 4.0
    c = intensity.num_context_marks
    no_context = (None, [[]] * batch, [[]] * batch)
    context, ctx_t, ctx_m = poisson_context(batch, duration, CONTEXT_RATE, seed=13) if c else no_context
    d = PointProcess(intensity, duration, bound=bound, temperature=tau, context=context)
    value = d.rsample((batch,)) if context is None else d.rsample()
    got = d.log_prob(value)
    for s in range(batch):
        cw = np.eye(intensity.num_history_marks)[intensity.num_marks + np.asarray(ctx_m[s], dtype=int)]
        if name.startswith("hawkes"):
            rate_fn = _np_hawkes_rate_fn(case, np.asarray(ctx_t[s]), cw)
        else:
            rate_fn = _np_glm_rate(intensity, lambda lag: np.exp(-lag[:, None] / np.array([0.5, 2.0])),
                                   np.asarray(ctx_t[s]), cw)
        ref = np_dpp_log_density(rate_fn, value[s], intensity.num_marks, bound, duration, tau)
        assert float(got[s]) == pytest.approx(ref, abs=1e-8, rel=1e-10)
    # the carried log-weights are the logarithms of the weights (no underflow in float64 here) ...
    carried = getattr(value, LOG_WEIGHTS_ATTR)
    real = event_mask(value)
    torch.testing.assert_close(carried[real], value[..., 1:][real].log(), rtol=1e-10, atol=1e-10)
    # ... so a plain tensor without them (as stored data) scores the same
    torch.testing.assert_close(d.log_prob(plain(value.detach())), got, rtol=1e-10, atol=1e-10)


# ---- gradients ------------------------------------------------------------------------------------------
def _hawkes_from(mu, alpha, beta):
    return ExpHawkes(mu, alpha, beta)


def test_gradcheck_exact_log_prob_hawkes():
    case = HAWKES_CASES["matrix-decay-context"]
    duration = 6.0
    torch.manual_seed(14)
    context = poisson_context(2, duration, CONTEXT_RATE, seed=15)[0]
    value = PointProcess(_hawkes(case), duration, context=context).sample()
    params = [torch.tensor(case[n], dtype=DT, requires_grad=True) for n in ("mu", "alpha", "beta")]

    def f(mu, alpha, beta):
        return PointProcess(_hawkes_from(mu, alpha, beta), duration, context=context).log_prob(value)

    assert torch.autograd.gradcheck(f, params)


@pytest.mark.parametrize("basis_name", ["exponential", "epanechnikov", "raised-cosine"])
def test_gradcheck_exact_log_prob_glm(basis_name):
    glm = _glm(basis_name)
    duration = 6.0
    torch.manual_seed(16)
    context = poisson_context(2, duration, CONTEXT_RATE, seed=17)[0]
    value = PointProcess(glm, duration, context=context).sample()
    params = [p.detach().clone().requires_grad_() for p in (glm.bias, glm.weight, glm.amplitude)]

    def f(bias, weight, amplitude):
        model = GLM(bias, weight, glm.basis, "sigmoid", amplitude)
        return PointProcess(model, duration, bound=4.0, context=context).log_prob(value)

    assert torch.autograd.gradcheck(f, params)


@pytest.mark.parametrize("name", ["hawkes", "glm"])
def test_gradcheck_dpp_log_prob_and_rsample(name):
    duration, tau, seed = 4.0, 0.3, 18
    case = HAWKES_CASES["matrix-decay-context"]
    context = poisson_context(1, duration, CONTEXT_RATE, seed=19)[0]
    if name == "hawkes":
        params = [torch.tensor(case[n], dtype=DT, requires_grad=True) for n in ("mu", "alpha", "beta")]
        make, bound = _hawkes_from, 12.0
    else:
        glm = _glm("exponential")
        params = [p.detach().clone().requires_grad_() for p in (glm.bias, glm.weight, glm.amplitude)]
        make, bound = (lambda b, w, a: GLM(b, w, glm.basis, "sigmoid", a)), 4.0

    def process(*p):
        return PointProcess(make(*p), duration, bound=bound, temperature=tau, context=context)

    def draw(*p):
        torch.manual_seed(seed)  # fixed noise: candidates and Gumbels
        return process(*p).rsample()

    with torch.no_grad():
        value = draw(*params)
    assert int(event_mask(value).sum()) > 10
    # rsample has ~100 outputs; gradcheck builds the Jacobian row by row, so check it through fixed
    # random projections (every output enters; a wrong derivative of any shows up in them)
    g = torch.Generator().manual_seed(0)
    proj_w = torch.randn(value[..., 1:].shape, generator=g, dtype=DT)
    proj_l = torch.randn(value[..., 1:].shape, generator=g, dtype=DT)

    def sample_weights(*p):
        value = draw(*p)
        log_w = getattr(value, LOG_WEIGHTS_ATTR)
        real = event_mask(value).unsqueeze(-1)
        return (value[..., 1:] * proj_w).sum(), torch.where(real, log_w * proj_l[..., : log_w.shape[-1]], 0).sum()

    def log_prob(*p):
        return process(*p).log_prob(value)

    def log_prob_of_rsample(*p):
        return process(*p).log_prob(draw(*p))

    assert torch.autograd.gradcheck(log_prob, params)
    assert torch.autograd.gradcheck(sample_weights, params)
    assert torch.autograd.gradcheck(log_prob_of_rsample, params)


# ---- float32 stability at low temperature ----------------------------------------------------------------
@pytest.mark.parametrize("tau", [0.01, 0.03, 0.1])
@pytest.mark.parametrize("name", ["hawkes", "glm"])
def test_float32_low_temperature_is_finite(name, tau):
    f32 = torch.float32
    if name == "hawkes":
        case = HAWKES_CASES["matrix-decay-context"]
        params = [torch.tensor(case[n], dtype=f32, requires_grad=True) for n in ("mu", "alpha", "beta")]
        make, bound = (lambda mu, a, b: ExpHawkes(mu, a, b)), 20.0
    else:
        glm = _glm("exponential", f32)
        params = [p.detach().clone().requires_grad_() for p in (glm.bias, glm.weight, glm.amplitude)]
        make, bound = (lambda b, w, a: GLM(b, w, glm.basis, "sigmoid", a)), None
    context = poisson_context(64, 5.0, CONTEXT_RATE, seed=20)[0].to(f32)
    underflow = 0
    for seed in range(6):  # 6 seeds x 64 sequences, ~25 candidates each
        torch.manual_seed(seed)
        d = PointProcess(make(*params), 5.0, bound=bound, temperature=tau, context=context)
        value = d.rsample()
        assert value.dtype == f32 and torch.isfinite(value).all()
        log_weights = getattr(value, LOG_WEIGHTS_ATTR)
        assert not torch.isnan(log_weights).any()
        underflow += int((value[..., 1:][event_mask(value)] == 0).sum())
        lp = d.log_prob(value)
        assert torch.isfinite(lp).all()
        grads = torch.autograd.grad(lp.sum(), params, retain_graph=True)
        assert all(torch.isfinite(g).all() for g in grads)
        assert any(g.abs().sum() > 0 for g in grads)
        grads = torch.autograd.grad(value.sum(), params)
        assert all(torch.isfinite(g).all() for g in grads)
    if tau <= 0.03:
        # the regime the log-space density exists for: some weights underflow to exactly zero
        assert underflow > 0


# ---- relaxed_log_prob="exact": the exact formula at a soft realization -----------------------------------
def np_soft_exact_log_lik(rate_fn, value, k, duration, compensator):
    """sum_n sum_k y_nk log lambda_k(s_n | soft history) - compensator, by a loop over candidates."""
    value = value.detach().numpy()
    rows = value[value[:, 1:].sum(-1) > 0.5]
    total = 0.0
    for n, row in enumerate(rows):
        rates = rate_fn(rows[:n, 0], rows[:n, 1 : 1 + k], row[0])
        total += (row[1 : 1 + k] * np.log(rates)).sum()
    return total - compensator(rows[:, 0], rows[:, 1 : 1 + k])


@pytest.mark.parametrize("name", ["hawkes-matrix-context", "glm-exponential"])
def test_relaxed_exact_log_prob_matches_soft_loop(name):
    duration, batch, tau = 5.0, 2, 0.4
    torch.manual_seed(21)
    if name.startswith("hawkes"):
        case = HAWKES_CASES["matrix-decay-context"]
        intensity, bound = _hawkes(case), 8.0
    else:
        intensity, bound = _glm("exponential"), 4.0
    k, c = intensity.num_marks, intensity.num_context_marks
    no_context = (None, [[]] * batch, [[]] * batch)
    context, ctx_t, ctx_m = poisson_context(batch, duration, CONTEXT_RATE, seed=22) if c else no_context
    d = PointProcess(intensity, duration, bound=bound, temperature=tau, context=context, relaxed_log_prob="exact")
    value = d.rsample() if context is not None else d.rsample((batch,))
    got = d.log_prob(value)
    for s in range(batch):
        cw = np.eye(intensity.num_history_marks)[k + np.asarray(ctx_m[s], dtype=int)]
        ct = np.asarray(ctx_t[s])
        if name.startswith("hawkes"):
            rate_fn = _np_hawkes_rate_fn(case, ct, cw)
            mu, alpha, beta = _numpy_params(case)

            def comp(t, w, ct=ct, cw=cw, mu=mu, alpha=alpha, beta=beta):
                ht = np.concatenate([t, ct])
                hw = np.concatenate([np.concatenate([w, np.zeros((len(t), c))], -1), cw])
                decay = 1 - np.exp(-beta[None] * (duration - ht)[:, None, None])  # E x K x D
                return mu.sum() * duration + (alpha[None] * decay * hw[:, None, :]).sum()
        else:
            rate_fn = _np_glm_rate(intensity, lambda lag: np.exp(-lag[:, None] / np.array([0.5, 2.0])), ct, cw)

            def comp(t, w, rate_fn=rate_fn):
                edges = np.concatenate([[0.0], t, [duration]])
                return sum(integrate.quad(lambda x: rate_fn(t, w, x).sum(), lo, hi, epsabs=1e-12, epsrel=1e-12)[0]
                           for lo, hi in zip(edges[:-1], edges[1:], strict=True) if hi > lo)
        ref = np_soft_exact_log_lik(rate_fn, value[s], k, duration, comp)
        assert float(got[s]) == pytest.approx(ref, rel=1e-8, abs=1e-8)


def test_relaxed_exact_log_prob_tends_to_exact_log_lik_of_the_hard_draw():
    """For fixed Gumbel noise the soft draw hardens as tau -> 0, and its "exact" score tends to the
    exact log-likelihood of the hard realization (argmax marks, "no event" rows dropped)."""
    intensity, duration = _glm("exponential"), 5.0
    gaps = []
    for tau in (0.3, 0.03, 0.003):
        torch.manual_seed(5)
        d = PointProcess(intensity, duration, bound=4.0, temperature=tau, relaxed_log_prob="exact")
        value = d.rsample((2,))
        real = event_mask(value)
        marks = value[..., 1:].argmax(-1)
        keep = real & (marks < intensity.num_marks)
        times = [value[s, keep[s], 0].detach().numpy() for s in range(2)]
        hard = make_context(times, [marks[s, keep[s]].numpy() for s in range(2)], intensity.num_marks, duration)
        exact = PointProcess(intensity, duration, bound=4.0).log_prob(hard)
        gaps.append(float((d.log_prob(value) - exact).abs().max()))
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-5  # measured: 2.9, 0.14, 2e-7


def test_dpp_density_log_ratio_does_not_depend_on_temperature():
    """Why the paper's relaxed ELBO keeps a bias at every temperature: for a draw y ~ Concrete(q, tau)
    made from Gumbel noise g, log Concrete(y; q) - log Concrete(y; p) is a function of (q, p, g)
    alone, so its mean (the relaxed KL) is the same at every tau, and it is not KL(q || p)."""
    q = torch.tensor([0.9, 0.07, 0.03], dtype=DT)
    p = torch.tensor([0.5, 0.3, 0.2], dtype=DT)
    torch.manual_seed(0)
    gumbel = -torch.log(-torch.log(torch.rand(20000, 3, dtype=DT)))
    ratios = []
    for tau in (1.0, 0.1, 0.01):
        log_y = torch.log_softmax((q.log() + gumbel) / tau, -1)
        ratios.append(concrete_log_density(log_y, q.log(), tau) - concrete_log_density(log_y, p.log(), tau))
    torch.testing.assert_close(ratios[1], ratios[0], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(ratios[2], ratios[0], rtol=1e-9, atol=1e-9)
    relaxed_kl, se = ratios[0].mean(), ratios[0].std() / math.sqrt(len(gumbel))
    categorical_kl = (q * (q / p).log()).sum()
    assert abs(relaxed_kl - categorical_kl) > 20 * se  # about 1.07 against 0.37


def test_no_event_probability_rounded_to_zero_keeps_the_density_finite():
    """The sampler may see a positive "no event" probability where the scorer's sum rounds to the
    bound (saturated sigmoids in float32: training once diverged to an infinite loss this way). A
    finite log-weight on a class the scorer rounded to zero reads it as the smallest normal number."""
    rates = torch.tensor([0.6, 1.2], dtype=torch.float32)
    d = PointProcess(Poisson(rates, 2), 5.0, bound=1.8, temperature=0.5)  # rest = 1 - 1.8 / 1.8 = 0
    torch.manual_seed(0)
    value = d.rsample((3,))
    assert torch.isfinite(d.log_prob(value)).all()  # the sampler agrees: rest weights exactly zero
    carried = getattr(value, LOG_WEIGHTS_ATTR).clone()
    real = event_mask(value)
    carried[..., -1] = torch.where(real, torch.full_like(carried[..., -1], -30.0), carried[..., -1])
    setattr(value, LOG_WEIGHTS_ATTR, carried)
    assert torch.isfinite(d.log_prob(value)).all()
