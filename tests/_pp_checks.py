"""Independent checks shared by the tests of the stock intensities (``tests/`` is on ``sys.path``).

Everything here works on NumPy arrays and SciPy, not on the package's own likelihood code:
log-likelihoods by a loop over events plus ``scipy.integrate.quad`` between breakpoints, the
time-rescaling theorem with a caller's closed-form cumulative intensity, and count statistics.

Tolerances (as in ``test_thinning``): means within ``Z_TOL = 4.5`` standard errors (two-sided
false-alarm probability 7e-6 for a normal statistic); distributional tests need p > ``P_MIN``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import scipy.integrate
import scipy.stats
import torch
from pyro.distributions.testing.gof import auto_goodness_of_fit, exp_goodness_of_fit

from pyro_dpp import PointProcess
from pyro_dpp.events import event_mask

Z_TOL = 4.5
P_MIN = 1e-3


def events_of(value: torch.Tensor, num_marks: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per sequence of a flat batch of exact realizations: sorted ``(times, marks)`` arrays."""
    out = []
    flat = value.reshape(-1, value.shape[-2], value.shape[-1])
    for v in flat:
        real = event_mask(v).numpy()
        out.append((v[real, 0].numpy().astype(float), v[real, 1 : 1 + num_marks].argmax(-1).numpy()))
    return out


def numpy_log_likelihood(rate: Callable[[float], np.ndarray], times: np.ndarray, marks: np.ndarray, duration: float,
                         kinks: np.ndarray = np.zeros(0)) -> float:
    """``sum_e log rate(t_e)[k_e] - int_0^T sum_k rate(t) dt``; ``rate(t)`` must count history events
    strictly before ``t``. The integral is ``scipy.integrate.quad`` on each piece between
    consecutive event times and ``kinks`` (where the rate is smooth)."""
    events = sum(math.log(rate(t)[k]) for t, k in zip(times, marks, strict=True))
    points = np.unique(np.clip(np.concatenate([[0.0, duration], times, kinks]), 0.0, duration))
    integral = 0.0
    for a, b in zip(points[:-1], points[1:], strict=True):
        if b > a:
            integral += scipy.integrate.quad(lambda t: rate(t).sum(), a, b, epsabs=1e-13, epsrel=1e-13, limit=200)[0]
    return events - integral


def rescaled_gaps(cumulative: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray],
                  sequences: list[tuple[np.ndarray, np.ndarray]], duration: float,
                  start_before: list[float]) -> tuple[np.ndarray, float]:
    """Compensator increments between consecutive events of each mark (time-rescaling theorem).

    ``cumulative(times, marks, query)`` returns ``Q x K`` values of :math:`\\Lambda_k(q)` given one
    sequence. Only gaps that *start* (in rescaled time) below ``start_before[k]`` are kept: their
    start is a stopping time of the rescaled unit Poisson process, so they are iid Exp(1), unless
    one outlasts the window (then this raises; the returned margin ``min Lambda_k(T) - start``
    bounds the censoring probability by ``exp(-margin)``)."""
    gaps, margin = [], math.inf
    for times, marks in sequences:
        lam = cumulative(times, marks, np.concatenate([times, [duration]]))
        for k, start in enumerate(start_before):
            r = lam[:-1, k][marks == k]
            starts = np.concatenate([[0.0], r[:-1]])
            gaps.append((r - starts)[starts < start])
            if len(r) == 0 or r[-1] < start:
                raise AssertionError("a selected gap outlasts the window; lower start_before")
            margin = min(margin, float(lam[-1, k]) - start)
    return np.concatenate(gaps), margin


def assert_exp1(gaps: np.ndarray, min_count: int = 1000) -> None:
    """KS and Pyro's binned goodness-of-fit tests of Exp(1)."""
    assert len(gaps) >= min_count, len(gaps)
    ks = scipy.stats.kstest(gaps, "expon").pvalue
    samples = torch.tensor(gaps)
    gof_density = auto_goodness_of_fit(samples, torch.exp(-samples))
    gof_exp = exp_goodness_of_fit(samples)
    assert ks > P_MIN and gof_density > P_MIN and gof_exp > P_MIN, (ks, gof_density, gof_exp)


def z_two_sample(a, b) -> np.ndarray:
    """Per-column z statistic of the difference of two sample means."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    se = np.sqrt(a.var(0, ddof=1) / a.shape[0] + b.var(0, ddof=1) / b.shape[0])
    return (a.mean(0) - b.mean(0)) / se


def z_mean(counts, mean) -> np.ndarray:
    """Per-column z statistic of a sample mean against a known mean (standard error from the sample)."""
    counts = np.asarray(counts, dtype=float)
    return (counts.mean(0) - np.asarray(mean)) / np.sqrt(counts.var(0, ddof=1) / counts.shape[0])


def counts_of(value: torch.Tensor, num_marks: int) -> np.ndarray:
    """``batch x K`` event counts per mark of exact realizations."""
    return value[..., 1 : 1 + num_marks].sum(-2).numpy()


def soft_history(batch: int, events: int, num_sources: int, seed: int, dtype: torch.dtype = torch.float64,
                 span: float = 9.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random unsorted ``batch x events`` times in ``[0, span)`` and soft ``batch x events x
    num_sources`` weights (a softmax over the sources and "no event", as relaxed histories have)."""
    g = torch.Generator().manual_seed(seed)
    times = torch.rand(batch, events, generator=g, dtype=dtype) * span
    weights = torch.softmax(torch.randn(batch, events, num_sources + 1, generator=g, dtype=dtype) * 2, -1)
    return times, weights[..., :num_sources]


def check_log_prob_with_context(intensity, duration: float, context: torch.Tensor, make_rate: Callable,
                                kinks: Callable = lambda times, context_times: context_times, rel: float = 1e-10,
                                min_events: int = 4) -> None:
    """An exact draw (with one context mark) scores as :func:`numpy_log_likelihood` says:
    ``make_rate(times, weights)`` builds the NumPy rate from all history events (one-hot weights,
    the context in the last column), ``kinks(times, context_times)`` the quadrature breaks."""
    k = intensity.num_marks
    d = PointProcess(intensity, duration, context=context)
    value = d.sample()
    got = d.log_prob(value).detach().numpy()
    for b, (times, marks) in enumerate(events_of(value, k)):
        ctx_t = context[b, :, 0][context[b, :, 1] > 0].numpy()
        all_t = np.concatenate([times, ctx_t])
        all_w = np.concatenate([np.eye(k + 1)[marks], np.tile(np.eye(k + 1)[k], (len(ctx_t), 1))])
        ref = numpy_log_likelihood(make_rate(all_t, all_w), times, marks, duration, kinks=kinks(all_t, ctx_t))
        assert len(times) >= min_events
        assert got[b] == pytest.approx(ref, rel=rel, abs=rel)


def check_relaxed_draw(build: Callable, params: list[torch.Tensor], duration: float, bound: float,
                       context: torch.Tensor | None = None) -> None:
    """A relaxed draw from ``build(*params)`` and its density are finite, and the draw plus its
    density give every parameter a finite, nonzero gradient."""
    d = PointProcess(build(*params), duration, bound=bound, temperature=0.3, context=context)
    x = d.rsample((3,))
    lp = d.log_prob(x)
    assert torch.isfinite(x).all() and torch.isfinite(lp).all()
    marks = x[..., 1:-1]
    grads = torch.autograd.grad((marks * torch.rand_like(marks)).sum() + lp.sum(), params)
    assert all(torch.isfinite(g).all() and (g != 0).any() for g in grads)


def import_tick():
    """tick's Hawkes module, or skip (tick 0.8.0.2 installs on Python 3.11)."""
    pytest.importorskip("tick")
    from tick import hawkes

    return hawkes
