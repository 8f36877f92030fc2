"""Chunked scoring from the events within the kernel support (:mod:`pyro_dpp.intensity._support`):
the same values and gradients whatever the chunk and piece sizes (so a chunk that missed an event
inside the support, or counted one twice, would show), with events exactly at support edges and
kinks, in float32 and float64, a float64 gradcheck, the anticausal GLM features against a pairwise
sum, and the scan's amortized window rebuilds against the reference loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _helpers import in_float64, make_context

import pyro_dpp
from pyro_dpp import PointProcess, likelihood
from pyro_dpp.events import event_mask, pad_realization
from pyro_dpp.intensity import (
    GLM,
    EpanechnikovBasis,
    ExponentialBasis,
    PowerLawHawkes,
    RaisedCosineBasis,
    _support,
    glm,
)
from pyro_dpp.likelihood import exact_log_likelihood

DT = torch.float64
TINY = [(24, 4), (64, 8), (200, 32)]  # (query chunk, piece) far below the defaults


def _tiny(monkeypatch, chunk, piece):
    monkeypatch.setattr(likelihood, "_QUERY_CHUNK", chunk)
    monkeypatch.setattr(_support, "PIECE", piece)


def _history(dtype, seed=0, events=300, marks=3, context=2, duration=60.0):
    """Exact events of ``marks`` marks and soft context events, sorted by time, as realization tensors."""
    gen = torch.Generator().manual_seed(seed)
    times = [np.sort(torch.rand(events, generator=gen, dtype=DT).numpy() * duration) for _ in range(2)]
    marks_ = [torch.randint(marks, (events,), generator=gen).numpy() for _ in range(2)]
    value = make_context(times, marks_, marks, duration).to(dtype)
    ctx_t = (torch.rand(2, events // 3, generator=gen, dtype=DT) * duration).sort(-1).values
    ctx_w = torch.softmax(torch.randn(2, events // 3, context, generator=gen, dtype=DT), -1)
    ctx = pad_realization(ctx_t, ctx_w, torch.zeros(2, events // 3, dtype=DT), torch.full((2,), duration, dtype=DT))
    return value, ctx.to(dtype), torch.full((2,), duration, dtype=dtype)


def _glm(dtype, basis=None, marks=3, context=2, seed=1):
    gen = torch.Generator().manual_seed(seed)
    basis = basis or in_float64(lambda: EpanechnikovBasis(2, 0.0, 3.0, 1.0))
    weight = (torch.randn(basis.num_basis, marks, marks + context, generator=gen, dtype=DT) * 0.7)
    bias = torch.randn(marks, generator=gen, dtype=DT) * 0.3
    params = [weight.to(dtype).requires_grad_(), bias.to(dtype).requires_grad_(),
              torch.tensor(2.0, dtype=dtype, requires_grad=True)]
    return (lambda: GLM(params[1], params[0], basis.to(dtype), "sigmoid", params[2])), params


def _score(make, params, value, context, duration):
    context = context.clone().requires_grad_()
    total = exact_log_likelihood(make(), value, duration, context)
    grads = torch.autograd.grad(total.sum(), params + [context])
    return total.detach(), [g[..., 1:-1] if i == len(params) else g for i, g in enumerate(grads)]


@pytest.mark.parametrize("basis", ["epanechnikov", "raised-cosine", "exponential"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_chunked_scoring_matches_one_chunk(basis, dtype, backend, monkeypatch):
    """The exact log-likelihood and its gradients (filter weights, bias, amplitude, soft context
    weights) with chunks of a few queries and pieces of a few events equal those of one chunk. The
    exponential basis has infinite support: a chunk sees the events within the lag where its slowest
    filter falls below the dtype's epsilon (12 s in float64, 5 s in float32 here, in a 60 s window)."""
    make_basis = {"epanechnikov": lambda: EpanechnikovBasis(2, 0.0, 3.0, 1.0),
                  "raised-cosine": lambda: RaisedCosineBasis(3, 2.0),
                  "exponential": lambda: ExponentialBasis([0.1, 0.33])}[basis]
    make, params = _glm(dtype, in_float64(make_basis))
    value, context, duration = _history(dtype, events=200 if basis == "raised-cosine" else 300)
    with pyro_dpp.backend(backend):
        monkeypatch.setattr(likelihood, "_QUERY_CHUNK", 1 << 30)
        ref = _score(make, params, value, context, duration)
        for chunk, piece in TINY:
            _tiny(monkeypatch, chunk, piece)
            got = _score(make, params, value, context, duration)
            tol = dict(rtol=1e-10, atol=1e-10) if dtype == DT else dict(rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(got[0], ref[0], **tol)
            for g, r in zip(got[1], ref[1]):
                torch.testing.assert_close(g, r, **tol)


def test_events_exactly_at_support_edges_and_kinks(monkeypatch):
    """Events on an integer grid with the bumps' kinks and support end at integer lags: every lag
    between events is exactly a kink or the support, and chunk edges fall on event times. The
    chunked scores equal one chunk, and the numba and torch paths agree."""
    make, params = _glm(DT)  # support 4, kinks at lags 1, 2, 4
    times = [np.arange(0.0, 48.0, 1.0), np.arange(0.5, 48.0, 2.0)]
    marks = [np.arange(len(t)) % 3 for t in times]
    value = make_context(times, marks, 3, 50.0)
    ctx = make_context([np.arange(0.0, 50.0, 4.0)] * 2, [np.zeros(13, int)] * 2, 2, 50.0)
    duration = torch.full((2,), 50.0, dtype=DT)
    out = []
    for backend in ("torch", "auto"):
        with pyro_dpp.backend(backend):
            monkeypatch.setattr(likelihood, "_QUERY_CHUNK", 1 << 30)
            out.append(_score(make, params, value, ctx, duration))
            for chunk, piece in [(8, 2), (16, 3), (40, 4)]:
                _tiny(monkeypatch, chunk, piece)
                out.append(_score(make, params, value, ctx, duration))
    for got in out[1:]:
        torch.testing.assert_close(got[0], out[0][0], rtol=1e-11, atol=1e-11)
        for g, r in zip(got[1], out[0][1]):
            torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-10)


def test_chunked_scoring_gradcheck(monkeypatch):
    """float64 gradcheck of the chunked log-likelihood in the filter weights and the soft context
    weights, with chunks of 16 queries and pieces of 3 events."""
    _tiny(monkeypatch, 16, 3)
    value, context, duration = _history(DT, events=30, duration=12.0)
    basis = in_float64(lambda: EpanechnikovBasis(2, 0.0, 3.0, 1.0))
    bias = torch.tensor([0.1, -0.2, 0.3], dtype=DT)

    def f(weight, ctx_w):
        ctx = torch.cat([context[..., :1], ctx_w, context[..., -1:]], -1)
        return exact_log_likelihood(GLM(bias, weight, basis, "sigmoid", 2.0), value, duration, ctx)

    weight = (torch.randn(2, 3, 5, dtype=DT, generator=torch.Generator().manual_seed(2)) * 0.5).requires_grad_()
    ctx_w = context[..., 1:-1].clone().requires_grad_()
    assert torch.autograd.gradcheck(f, (weight, ctx_w), atol=1e-6, rtol=1e-5)


def test_anticausal_features_match_pairwise_sum(monkeypatch):
    """The acausal GLM's drive from future events (reversed-time features, chunked) against the
    pairwise sum ``sum_{t_n > q} w_n phi(t_n - q)`` over all future events."""
    monkeypatch.setattr(glm, "_ANTICAUSAL_CHUNK", 7)
    monkeypatch.setattr(_support, "PIECE", 5)
    gen = torch.Generator().manual_seed(4)
    basis = in_float64(lambda: EpanechnikovBasis(2, 0.0, 3.0, 1.0))
    future_t = (torch.rand(2, 80, generator=gen, dtype=DT) * 30).sort(-1).values
    future_t[:, 10] = future_t[:, 9] + 4.0  # an event exactly one support length ahead of another
    future = pad_realization(future_t, torch.softmax(torch.randn(2, 80, 3, generator=gen, dtype=DT), -1),
                             torch.zeros(2, 80, dtype=DT), torch.full((2,), 30.0, dtype=DT))
    future_weight = torch.randn(2, 2, 3, generator=gen, dtype=DT)
    intensity = GLM(torch.zeros(2, dtype=DT), torch.zeros(2, 2, 2, dtype=DT), basis, future=future,
                    future_weight=future_weight)
    query = torch.cat([(torch.rand(2, 40, generator=gen, dtype=DT) * 32), future_t[:, 5:15]], -1)
    got = intensity._anticausal(query)
    lead = future[..., 0].unsqueeze(-2) - query.unsqueeze(-1)  # batch x Q x M
    ref = torch.einsum("...qml,...mf,...lkf->...qk", basis(lead), future[..., 1:-1], future_weight)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


def test_power_law_finite_support_chunks(monkeypatch):
    """A power-law Hawkes process with finite support: chunked log-likelihood equals one chunk."""
    value, context, duration = _history(DT, events=150, marks=2, context=2, duration=40.0)
    multiplier = torch.full((2, 4), 0.1, dtype=DT, requires_grad=True)

    def score():
        intensity = PowerLawHawkes(torch.tensor([0.5, 0.4], dtype=DT), multiplier, 0.5, 1.5, support=3.0)
        total = exact_log_likelihood(intensity, value, duration, context)
        return total.detach(), torch.autograd.grad(total.sum(), multiplier)[0]

    monkeypatch.setattr(likelihood, "_QUERY_CHUNK", 1 << 30)
    ref = score()
    for chunk, piece in TINY:
        _tiny(monkeypatch, chunk, piece)
        got = score()
        torch.testing.assert_close(got[0], ref[0], rtol=1e-11, atol=1e-11)
        torch.testing.assert_close(got[1], ref[1], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("temperature", [0.0, 0.4], ids=["exact", "relaxed"])
def test_scan_with_long_windows_matches_reference(temperature):
    """The numba scan keeps each Epanechnikov window as running moments projected onto the targets,
    rebuilt from scratch at most every window-length steps: with about a hundred events per
    window (dense one-hot context) it agrees with the reference loop in draws and gradients."""
    gen = torch.Generator().manual_seed(6)
    weight = (torch.randn(2, 3, 7, generator=gen, dtype=DT) * 0.3).requires_grad_()
    bias = torch.tensor([0.3, -0.2, 0.1], dtype=DT, requires_grad=True)
    duration, count = 40.0, 1500
    times = (torch.rand(1, count, generator=gen, dtype=DT) * duration).sort(-1).values
    marks = torch.nn.functional.one_hot(torch.randint(4, (1, count), generator=gen), 4).to(DT)
    context = pad_realization(times, marks, torch.zeros(1, count, dtype=DT), torch.full((1,), duration, dtype=DT))
    out = []
    for name in ("reference", "numba"):
        intensity = GLM(bias, weight, in_float64(lambda: EpanechnikovBasis(2, 0.0, 3.0, 1.0)), "sigmoid", 2.0)
        torch.manual_seed(8)
        with pyro_dpp.backend(name):
            process = PointProcess(intensity, duration, bound=6.0, temperature=temperature, context=context)
            if temperature == 0:
                out.append((process.sample(), None))
                continue
            value = process.rsample()
        scale = torch.linspace(0.3, 1.7, value.shape[-1] - 1, dtype=DT)
        out.append((value.detach(), torch.autograd.grad((value[..., 1:] * scale).sum(), [bias, weight])))
    assert int(event_mask(out[0][0]).sum()) > 100
    torch.testing.assert_close(out[1][0], out[0][0], rtol=1e-10, atol=1e-10)
    if temperature > 0:
        for g, r in zip(out[1][1], out[0][1]):
            torch.testing.assert_close(g, r, rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("decay", ["scalar", "matrix"])
def test_hawkes_compensator_in_event_chunks(decay, monkeypatch):
    """The exponential Hawkes compensator summed in chunks of events (matrix decay) or as one
    O(events x D) sum (scalar decay) equals the sum over events, targets and sources at once."""
    from pyro_dpp.intensity import ExpHawkes, hawkes

    value, context, duration = _history(DT, events=120, marks=2, context=2, duration=30.0)
    times, weights = likelihood.history(value, 2, context, 2)
    gen = torch.Generator().manual_seed(3)
    adjacency = (torch.rand(2, 4, generator=gen, dtype=DT) * 0.3).requires_grad_()
    beta = torch.rand(2, 4, generator=gen, dtype=DT) + 0.5 if decay == "matrix" else torch.tensor(1.3, dtype=DT)
    beta.requires_grad_()
    intensity = ExpHawkes(torch.tensor([0.2, 0.3], dtype=DT), adjacency, beta)
    monkeypatch.setattr(hawkes, "_COMPENSATOR_ELEMENTS", 16)
    got = intensity.compensator(times, weights, duration)
    remaining = (duration.unsqueeze(-1) - times).clamp(min=0)
    inside = -torch.expm1(-beta.expand(2, 4).unsqueeze(-3) * remaining[..., None, None])  # batch x E x K x D
    ref = 0.5 * duration + (adjacency.unsqueeze(-3) * inside * weights.unsqueeze(-2)).sum((-3, -2, -1))
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad(got.sum(), [adjacency, beta])
    for g, r in zip(grads, torch.autograd.grad(ref.sum(), [adjacency, beta])):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)
