"""Sufficient statistics of exponential Hawkes data (:mod:`pyro_dpp.intensity.hawkes_stats`):
against the general exact log-likelihood, and the cache PointProcess.log_prob keeps."""

from __future__ import annotations

import pytest
import torch
from _helpers import DT, make_context

from pyro_dpp import PointProcess
from pyro_dpp.intensity import ExpHawkes
from pyro_dpp.intensity import hawkes_stats as hs
from pyro_dpp.intensity.hawkes_stats import ExpHawkesStatistics
from pyro_dpp.likelihood import exact_log_likelihood

BASELINE = [0.5, 0.3]
ADJACENCY = [[0.3, 0.2, 0.4], [0.1, 0.4, 0.3]]  # last column: a context mark
MATRIX_DECAY = [[1.0, 2.0, 0.5], [1.5, 0.7, 3.0]]


def _data(decay, context, durations=(20.0, 12.0), seed=0):
    torch.manual_seed(seed)
    hawkes = ExpHawkes(torch.tensor(BASELINE, dtype=DT), torch.tensor(ADJACENCY, dtype=DT),
                       torch.tensor(decay, dtype=DT))
    duration = torch.tensor(durations, dtype=DT)
    return PointProcess(hawkes, duration, context=context, max_events=200).sample(), duration


def _context(durations=(20.0, 12.0)):
    return make_context([[1.0, 4.5, 4.5, 9.0], [0.5, 11.0]], [[0, 0, 0, 0], [0, 0]], 1, max(durations))


@pytest.mark.parametrize("decay", [1.3, MATRIX_DECAY], ids=["scalar-decay", "matrix-decay"])
def test_statistics_match_the_exact_log_likelihood(decay):
    context = _context()
    value, duration = _data(decay, context)
    assert (value[..., 1:].sum(-1) > 0.5).sum() > 20
    stats = ExpHawkesStatistics(value, decay, duration, 2, context)
    params = [torch.tensor(BASELINE, dtype=DT) * 1.3, torch.tensor(ADJACENCY, dtype=DT) * 0.7]
    params = [p.requires_grad_() for p in params]

    def general(b, a):
        return exact_log_likelihood(ExpHawkes(b, a, torch.tensor(decay, dtype=DT)), value, duration, context)

    got, ref = stats.log_likelihood(*params), general(*params)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-10)
    grads = torch.autograd.grad(got.sum(), params)
    ref_grads = torch.autograd.grad(ref.sum(), params)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-11, atol=1e-10)
    # twice differentiable (Laplace approximations, Newton steps): Hessians agree
    h = torch.autograd.functional.hessian(lambda b, a: stats.log_likelihood(b, a).sum(), tuple(params))
    h_ref = torch.autograd.functional.hessian(lambda b, a: general(b, a).sum(), tuple(params))
    for row, row_ref in zip(h, h_ref):
        for x, y in zip(row, row_ref):
            torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-9)


def test_bad_parameter_shapes():
    value, duration = _data(1.3, _context())
    stats = ExpHawkesStatistics(value, 1.3, duration, 2, _context())
    with pytest.raises(ValueError, match="baseline must have shape"):
        stats.log_likelihood(torch.ones(3, dtype=DT), torch.ones(2, 3, dtype=DT))


def _process(decay=1.3, baseline=BASELINE, context=None, duration=None):
    b = torch.tensor(baseline, dtype=DT)
    return PointProcess(ExpHawkes(b, torch.tensor(ADJACENCY, dtype=DT), torch.tensor(decay, dtype=DT)),
                        duration, context=context)


def test_log_prob_reuses_statistics_of_the_same_data():
    context = _context()
    value, duration = _data(1.3, context)
    hs._CACHE.clear()
    lp = _process(context=context, duration=duration).log_prob(value)
    assert len(hs._CACHE) == 1
    lp2 = _process(baseline=[0.2, 0.9], context=context, duration=duration).log_prob(value)
    assert len(hs._CACHE) == 1  # reused for new parameters
    ref = exact_log_likelihood(_process(baseline=[0.2, 0.9], context=context, duration=duration).intensity,
                               value, duration, context)
    torch.testing.assert_close(lp2, ref, rtol=1e-12, atol=1e-10)
    assert not torch.allclose(lp, lp2)
    # other decays, other data: new statistics
    _process(decay=2.0, context=context, duration=duration).log_prob(value)
    assert len(hs._CACHE) == 2
    # an in-place change of the data invalidates them (the version counter is in the key)
    value[0, 0, 0] = value[0, 0, 0] * 0.5
    edited = _process(context=context, duration=duration).log_prob(value)
    ref = exact_log_likelihood(_process(context=context, duration=duration).intensity, value, duration, context)
    torch.testing.assert_close(edited, ref, rtol=1e-12, atol=1e-10)
    assert not torch.allclose(edited, lp)


def test_log_prob_skips_the_statistics_where_they_do_not_apply():
    value, duration = _data(1.3, None)
    hs._CACHE.clear()
    decay = torch.tensor(1.3, dtype=DT, requires_grad=True)  # gradients in the decay: the general path
    d = PointProcess(ExpHawkes(torch.tensor(BASELINE[:2], dtype=DT), torch.tensor(ADJACENCY, dtype=DT)[:, :2],
                               decay), duration)
    (g,) = torch.autograd.grad(d.log_prob(value).sum(), decay)
    assert torch.isfinite(g) and not hs._CACHE
    batched = ExpHawkes(torch.tensor([BASELINE, BASELINE], dtype=DT), torch.tensor(ADJACENCY, dtype=DT)[:, :2], 1.3)
    PointProcess(batched, duration).log_prob(value)
    assert not hs._CACHE


def test_context_marks_without_context_events():
    value, duration = _data(1.3, None)
    hawkes = ExpHawkes(torch.tensor(BASELINE, dtype=DT), torch.tensor(ADJACENCY, dtype=DT), 1.3)
    hs._CACHE.clear()
    got = PointProcess(hawkes, duration).log_prob(value)
    assert len(hs._CACHE) == 1
    torch.testing.assert_close(got, exact_log_likelihood(hawkes, value, duration), rtol=1e-12, atol=1e-10)


def test_cache_drops_statistics_of_collected_data():
    hs._CACHE.clear()
    value, duration = _data(1.3, None)
    hawkes = ExpHawkes(torch.tensor(BASELINE, dtype=DT), torch.tensor(ADJACENCY, dtype=DT), 1.3)
    PointProcess(hawkes, duration).log_prob(value)
    assert len(hs._CACHE) == 1
    del value
    other, _ = _data(1.3, None, seed=1)
    PointProcess(hawkes, duration).log_prob(other)
    assert len(hs._CACHE) == 1 and hs._CACHE[0].value() is other


@pytest.mark.parametrize("decay", [1.3, MATRIX_DECAY], ids=["scalar-decay", "matrix-decay"])
def test_hand_written_gradient_weights_sequences_and_skips_constants(decay):
    # the custom backward scales each sequence by its own upstream gradient, and returns None for a
    # parameter without gradient; compared with autograd through the general log-likelihood
    context = _context()
    value, duration = _data(decay, context)
    stats = ExpHawkesStatistics(value, decay, duration, 2, context)
    weights = torch.tensor([0.7, -1.9], dtype=DT)
    for needs in ((True, True), (False, True), (True, False)):
        params = [torch.tensor(BASELINE, dtype=DT).requires_grad_(needs[0]),
                  torch.tensor(ADJACENCY, dtype=DT).requires_grad_(needs[1])]
        inputs = [p for p in params if p.requires_grad]
        got = torch.autograd.grad((stats.log_likelihood(*params) * weights).sum(), inputs)
        general = exact_log_likelihood(ExpHawkes(*params, torch.tensor(decay, dtype=DT)), value, duration, context)
        ref = torch.autograd.grad((general * weights).sum(), inputs)
        for g, r in zip(got, ref):
            torch.testing.assert_close(g, r, rtol=1e-11, atol=1e-10)
