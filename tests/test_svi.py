"""Fitting with Pyro: SVI on exact point-process likelihoods, path-wise gradients through ``rsample``,
and ``Trace_ELBO`` with a latent relaxed point-process site.

Every test is seeded; tolerances come from standard errors estimated inside the test.
"""

from __future__ import annotations

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam
from scipy import integrate
from torch.distributions import constraints

from pyro_dpp import PointProcess, event_mask
from pyro_dpp.intensity import ExpHawkes, Poisson
from pyro_dpp.likelihood import exact_log_likelihood

DTYPE = torch.float64


@pytest.fixture(autouse=True)
def _clean_pyro():
    pyro.clear_param_store()
    pyro.enable_validation(True)
    yield
    pyro.clear_param_store()


# ---------------------------------------------------------------------------------------------
# (a) Maximum likelihood of a 2-mark exponential Hawkes process with SVI and an empty guide
# ---------------------------------------------------------------------------------------------

DECAY = 1.2
TRUE_BASELINE = torch.tensor([0.5, 0.3], dtype=DTYPE)
TRUE_ADJACENCY = torch.tensor([[0.3, 0.2], [0.1, 0.4]], dtype=DTYPE)


def _hawkes_data(num_sequences: int, duration: float, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    truth = ExpHawkes(TRUE_BASELINE, TRUE_ADJACENCY, torch.tensor(DECAY, dtype=DTYPE))
    data = PointProcess(truth, duration=duration).sample((num_sequences,))
    # keep one padding row (it carries the duration); drop the rest to make scoring cheaper
    rows = int(event_mask(data).sum(-1).max()) + 1
    return data[..., :rows, :].contiguous()


def _total_loglik(baseline: torch.Tensor, adjacency: torch.Tensor, data: torch.Tensor, duration: float) -> torch.Tensor:
    hawkes = ExpHawkes(baseline, adjacency, torch.tensor(DECAY, dtype=DTYPE))
    return exact_log_likelihood(hawkes, data, torch.tensor(duration, dtype=DTYPE)).sum()


def test_svi_recovers_hawkes_parameters():
    num_sequences, duration = 80, 30.0
    data = _hawkes_data(num_sequences, duration, seed=0)
    rows = data.shape[-2]

    def model(data):
        baseline = pyro.param("baseline", torch.full((2,), 0.2, dtype=DTYPE), constraint=constraints.positive)
        adjacency = pyro.param("adjacency", torch.full((2, 2), 0.1, dtype=DTYPE), constraint=constraints.positive)
        hawkes = ExpHawkes(baseline, adjacency, torch.tensor(DECAY, dtype=DTYPE))
        # max_events given explicitly: mean_count() cannot size it while Adam visits a
        # supercritical adjacency, and observed data need exactly this many rows anyway
        process = PointProcess(hawkes, duration=duration, max_events=rows)
        with pyro.plate("sequences", data.shape[0]):
            pyro.sample("events", process, obs=data)

    def guide(data):
        pass

    torch.manual_seed(1)
    svi = SVI(model, guide, Adam({"lr": 0.05}), Trace_ELBO())
    losses = [svi.step(data) for _ in range(300)]
    assert all(math.isfinite(x) for x in losses)
    assert np.mean(losses[-20:]) < losses[0]

    store = pyro.get_param_store()
    estimate = torch.cat([store["baseline"].detach(), store["adjacency"].detach().reshape(-1)])
    truth = torch.cat([TRUE_BASELINE, TRUE_ADJACENCY.reshape(-1)])

    # Standard errors from the observed Fisher information I: the Hessian of the exact negative
    # log-likelihood at the optimum. I^{-1} is the asymptotic covariance of the maximum-likelihood
    # estimate (all parameters are interior here, so the asymptotics apply). The SVI loss with an
    # empty guide is exactly -log p(data), so its optimum is the MLE. (Calibration, checked over
    # data seeds 1..10: |z| <= 2.1, mean Wald statistic 4.0 against the chi^2_6 mean of 6.)
    def negloglik(theta: torch.Tensor) -> torch.Tensor:
        return -_total_loglik(theta[:2], theta[2:].reshape(2, 2), data, duration)

    theta = estimate.clone().requires_grad_(True)
    grad = torch.autograd.grad(negloglik(theta), theta)[0]
    info = torch.autograd.functional.hessian(negloglik, estimate)
    assert torch.linalg.eigvalsh(info).min() > 0, "observed information not positive definite at the SVI optimum"
    cov = torch.linalg.inv(info)
    se = cov.diagonal().sqrt()

    # SVI reached the optimum: the remaining Newton step is a small fraction of a standard error.
    newton = cov @ grad
    assert (newton.abs() / se).max() < 0.1, f"SVI not converged: Newton step {newton} vs SE {se}"

    # Recovery: every coordinate within 4 SE, and the joint Wald statistic below the 0.999
    # quantile of chi^2 with 6 degrees of freedom (22.46).
    z = (estimate - truth) / se
    assert z.abs().max() < 4, f"estimate {estimate} truth {truth} se {se}"
    wald = float((estimate - truth) @ info @ (estimate - truth))
    assert wald < 22.46, wald

    # The test has power: a wrong truth (adjacency scaled by 1.5) is rejected by the same statistic.
    wrong = torch.cat([TRUE_BASELINE, 1.5 * TRUE_ADJACENCY.reshape(-1)])
    assert float((estimate - wrong) @ info @ (estimate - wrong)) > 22.46


# ---------------------------------------------------------------------------------------------
# (b) Path-wise gradients through rsample: Poisson soft counts with an analytic expectation
# ---------------------------------------------------------------------------------------------

# For a Poisson intensity of rate r under a constant bound L, every candidate has
# pi = (r/L, 1 - r/L) and a soft mark y = sigmoid((a + G) / tau) with a = logit(r / L) and
# G ~ Logistic(0, 1) (the difference of two Gumbels). Candidates are Poisson(L T), so
#     E[soft count] = L T E[sigmoid((a + G) / tau)],
# a one-dimensional integral that quadrature gives to ~1e-10; so does its derivative in r.

BOUND, DURATION, TAU = 4.0, 10.0, 0.2


def _logistic_pdf(x: float) -> float:
    s = 1 / (1 + math.exp(-abs(x)))
    return s * (1 - s)


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


def expected_soft_count(rate: float, tau: float = TAU) -> tuple[float, float]:
    """``(E[soft count], d E[soft count] / d rate)`` of the relaxed Poisson process, by quadrature."""
    a = math.log(rate) - math.log(BOUND - rate)
    mean = integrate.quad(lambda g: _sigmoid((a + g) / tau) * _logistic_pdf(g), -60, 60, points=[-a], limit=200)[0]
    dmean_da = integrate.quad(
        lambda g: _logistic_pdf((a + g) / tau) / tau * _logistic_pdf(g), -60, 60, points=[-a], limit=200
    )[0]
    da_drate = 1 / rate + 1 / (BOUND - rate)
    return BOUND * DURATION * mean, BOUND * DURATION * dmean_da * da_drate


def _soft_counts(rates: torch.Tensor) -> torch.Tensor:
    """Soft event count of one relaxed draw per row of ``rates`` (``batch x 1``)."""
    process = PointProcess(Poisson(rates), duration=DURATION, bound=BOUND, temperature=TAU)
    value = process.rsample()
    return value[..., 1].sum(-1)


def test_pathwise_gradient_matches_analytic():
    torch.manual_seed(2)
    num = 4000
    for rate in (0.8, 2.0):
        # one parameter copy per sequence: one backward pass gives iid per-sequence gradients
        rates = torch.full((num, 1), rate, dtype=DTYPE, requires_grad=True)
        counts = _soft_counts(rates)
        grads = torch.autograd.grad(counts.sum(), rates)[0].squeeze(-1)
        mean, dmean = expected_soft_count(rate)
        se_count = counts.detach().std() / math.sqrt(num)
        se_grad = grads.std() / math.sqrt(num)
        assert abs(float(counts.detach().mean()) - mean) < 4 * se_count, (rate, counts.mean(), mean, se_count)
        assert abs(float(grads.mean()) - dmean) < 4 * se_grad, (rate, grads.mean(), dmean, se_grad)
        assert float(grads.mean()) > 0 and dmean > 0
        # the estimator is not trivially tight: the tolerance is a small fraction of the gradient
        assert 4 * se_grad < 0.1 * dmean
        # and finite differences of the analytic mean agree with its analytic derivative
        eps = 1e-4
        fd = (expected_soft_count(rate + eps)[0] - expected_soft_count(rate - eps)[0]) / (2 * eps)
        assert abs(fd - dmean) < 1e-4 * dmean
    # As tau -> 0 the relaxed process tends to the exact one: E[count] -> r T and its derivative -> T.
    mean, dmean = expected_soft_count(1.5, tau=0.02)
    assert abs(mean - 1.5 * DURATION) < 0.02 * 1.5 * DURATION
    assert abs(dmean - DURATION) < 0.05 * DURATION


def test_pathwise_optimisation_hits_target_count():
    """Choose the Poisson rate so that the expected soft count hits a target, by SGD on path-wise
    gradients of an unbiased loss estimate (two independent particle batches)."""
    torch.manual_seed(3)
    target = 25.0
    particles = 64
    # the rate that solves E[soft count] = target, by bisection on the analytic mean
    lo, hi = 0.05, BOUND - 0.05
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if expected_soft_count(mid)[0] < target else (lo, mid)
    optimum = (lo + hi) / 2

    raw = torch.tensor(math.log(0.5), dtype=DTYPE, requires_grad=True)  # rate = exp(raw), starts at 0.5
    optim = torch.optim.Adam([raw], lr=0.05)
    rates_seen = []
    for _ in range(150):
        rate = raw.exp().reshape(1, 1).expand(2 * particles, 1)
        counts = _soft_counts(rate)
        first, second = counts[:particles].mean(), counts[particles:].mean()
        # E[(c1 - t) (c2 - t)] = (E c - t)^2 for independent c1, c2: an unbiased loss estimate
        loss = (first - target) * (second - target)
        optim.zero_grad()
        loss.backward()
        optim.step()
        rates_seen.append(float(raw.detach().exp()))

    initial_loss = (expected_soft_count(0.5)[0] - target) ** 2
    final_rate = float(np.mean(rates_seen[-50:]))  # Polyak average of the last iterates
    final_mean, dmean = expected_soft_count(final_rate)
    final_loss = (final_mean - target) ** 2
    # Tolerance: the noise of one step's mean count. The soft count is compound Poisson, so
    # Var(count) = L T E[y^2] <= L T E[y] = E[count] ~ target, and a batch mean has
    # sd <= sqrt(target / particles); the averaged iterate lands within one such sd.
    sd_count = math.sqrt(target / particles)
    assert abs(final_mean - target) < sd_count, (final_rate, optimum, final_mean)
    assert abs(final_rate - optimum) < sd_count / dmean
    assert final_loss < 1e-3 * initial_loss


# ---------------------------------------------------------------------------------------------
# (c) Trace_ELBO with a latent relaxed point process in model and guide
# ---------------------------------------------------------------------------------------------


def test_trace_elbo_with_latent_relaxed_process():
    torch.manual_seed(4)
    num_sequences, noise = 8, 1.0
    # observations: a noisy soft count per sequence, far above the prior's mean (~10 at rate 1), so
    # the posterior puts the guide's rate near 3 and a guide starting at 0.5 has much to learn
    observed = torch.full((num_sequences,), 30.0, dtype=DTYPE)

    def model(observed):
        prior_rate = torch.tensor([1.0], dtype=DTYPE)
        with pyro.plate("sequences", num_sequences):
            z = pyro.sample(
                "spikes", PointProcess(Poisson(prior_rate), duration=DURATION, bound=BOUND, temperature=TAU)
            )
            pyro.sample("count", dist.Normal(z[..., 1].sum(-1), noise), obs=observed)

    def guide(observed):
        rate = pyro.param(
            "q_rate", torch.tensor([0.5], dtype=DTYPE), constraint=constraints.interval(0.01, BOUND - 0.01)
        )
        with pyro.plate("sequences", num_sequences):
            pyro.sample("spikes", PointProcess(Poisson(rate), duration=DURATION, bound=BOUND, temperature=TAU))

    # the latent site is reparameterized, so Trace_ELBO differentiates path-wise through rsample
    site = pyro.poutine.trace(guide).get_trace(observed).nodes["spikes"]
    assert site["fn"].has_rsample and site["value"].requires_grad

    svi = SVI(model, guide, Adam({"lr": 0.05}), Trace_ELBO(num_particles=2))
    losses = np.array([svi.step(observed) for _ in range(100)])
    assert np.isfinite(losses).all()
    first, last = losses[:20], losses[-20:]
    # the decrease is many standard errors of the two window means
    se = math.sqrt(first.var(ddof=1) / len(first) + last.var(ddof=1) / len(last))
    assert first.mean() - last.mean() > 5 * se, (first.mean(), last.mean(), se)
    # and the guide moved towards rates whose soft count explains the observations (~3 per unit time)
    q_rate = float(pyro.param("q_rate").detach())
    assert q_rate > 1.5, q_rate
