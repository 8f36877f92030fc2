"""The scoring kernels against their torch twins, in float64: the numba Epanechnikov features and
fused potential (:mod:`pyro_dpp.intensity._basis_numba`), the fused Gauss-Legendre compensator
(:mod:`pyro_dpp.intensity._glm_numba`), and the linear-cost exponential sums (:mod:`pyro_dpp.intensity._decay`)."""

import pytest
import torch

import pyro_dpp
from pyro_dpp.intensity import GLM, EpanechnikovBasis, ExpHawkes
from pyro_dpp.intensity._decay import decayed_sums
from pyro_dpp.likelihood import quadrature_compensator
from pyro_dpp.scan.backend import numba_available

DT = torch.float64
needs_numba = pytest.mark.skipif(not numba_available(), reason="numba not installed")


# ---- scoring ------------------------------------------------------------------------------------------------
def _history(seed=2, batch=4, events=150, sources=3):
    gen = torch.Generator().manual_seed(seed)
    times = torch.rand(batch, events, generator=gen, dtype=DT) * 40
    weights = torch.rand(batch, events, sources, generator=gen, dtype=DT)
    query = torch.rand(batch, 120, generator=gen, dtype=DT) * 42
    return times, weights.requires_grad_(), query


@needs_numba
def test_epanechnikov_kernels_match_torch():
    basis = EpanechnikovBasis(3, 0.0, 8.0, 1.0).double()
    times, weights, query = _history()
    results = []
    for name in ("torch", "numba"):
        with pyro_dpp.backend(name):
            f = basis.features(times, weights, query)
            poly = basis.polynomial_coefficients(times, weights, query)
        grads = torch.autograd.grad((f * 1.3).sum() + (poly * torch.linspace(-1, 1, 3, dtype=DT)[:, None, None]).sum(),
                                    weights)
        results.append((f, poly, grads[0]))
    for got, ref in zip(results[1], results[0]):
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


@needs_numba
@pytest.mark.parametrize("sort_queries", [False, True], ids=["unsorted-queries", "sorted-queries"])
@pytest.mark.parametrize("batched", [False, True], ids=["shared-weight", "batched-weight"])
def test_fused_potential_matches_torch_features(batched, sort_queries):
    """The fused potential (event weights projected onto the targets, one kernel with the features)
    against the torch features contracted with the filter weights: values and the gradients in the
    event and filter weights, and in the filter weights alone."""
    basis = EpanechnikovBasis(3, 0.0, 8.0, 1.0).double()
    times, weights, query = _history()
    if sort_queries:
        query = query.sort(-1).values
    gen = torch.Generator().manual_seed(4)
    weight = torch.randn((4,) * batched + (3, 2, 3), generator=gen, dtype=DT).requires_grad_()
    cotangent = torch.randn(4, 120, 3, 2, generator=gen, dtype=DT)
    with pyro_dpp.backend("torch"):
        coef = basis.polynomial_coefficients(times, weights, query)
        ref = torch.einsum("...qmld,...lkd->...qmk", coef, weight)
    with pyro_dpp.backend("numba"):
        got = basis.polynomial_potential(times, weights, query, weight)
        alone = basis.polynomial_potential(times, weights.detach(), query, weight)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(alone, ref, rtol=1e-10, atol=1e-12)
    for g, r in zip(torch.autograd.grad((got * cotangent).sum(), [weights, weight]),
                    torch.autograd.grad((ref * cotangent).sum(), [weights, weight], retain_graph=True)):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)
    (g,), (r,) = (torch.autograd.grad((x * cotangent).sum(), [weight]) for x in (alone, ref))
    torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


@needs_numba
@pytest.mark.parametrize("batched", [False, True], ids=["shared-weight", "batched-weight"])
@pytest.mark.parametrize("activation", ["sigmoid", "softplus", "exp", "hardtanh"])
def test_fused_compensator_matches_node_evaluation(activation, batched):
    torch.manual_seed(6)
    basis = EpanechnikovBasis(2, 0.0, 3.0, 1.0).double()
    bias = torch.tensor([0.3, -0.4], dtype=DT, requires_grad=True)
    weight = (torch.randn((4,) * batched + (2, 2, 3), dtype=DT) * 0.8).requires_grad_()
    amplitude = torch.tensor(1.5, dtype=DT, requires_grad=True)
    glm = GLM(bias, weight, basis, activation, amplitude)
    times, weights, _ = _history(events=60)
    times = times * 0.25  # events inside [0, 10]
    duration = torch.full((times.shape[0],), 10.0, dtype=DT)
    out = []
    for name in ("torch", "numba"):
        with pyro_dpp.backend(name):
            total = quadrature_compensator(glm, times, weights, duration, 8)
        out.append((total, torch.autograd.grad(total.sum(), [bias, weight, amplitude, weights])))
    # the fused kernel may use fewer nodes where an analytic bound allows (sigmoid): 1e-14 relative
    torch.testing.assert_close(out[1][0], out[0][0], rtol=1e-11, atol=1e-11)
    for g, r in zip(out[1][1], out[0][1]):
        torch.testing.assert_close(g, r, rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("shape", ["scalar", "per-basis", "matrix"])
def test_decayed_sums_match_pairwise(shape):
    times, weights, query = _history(events=130)
    rates = {"scalar": torch.tensor([[1.5]], dtype=DT), "per-basis": torch.tensor([[0.5], [2.0]], dtype=DT),
             "matrix": torch.rand(2, 3, dtype=DT) * 2 + 0.1}[shape].requires_grad_()
    got = decayed_sums(times, weights, query, rates)
    lag = query.unsqueeze(-1) - times.unsqueeze(-2)
    kern = torch.exp(-lag.clamp(min=0)[..., None, None] * rates) * (lag > 0)[..., None, None]
    ref = (kern * weights[:, None, :, None, :]).sum(2)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-13)
    g_got = torch.autograd.grad(got.sum(), [weights, rates])
    g_ref = torch.autograd.grad(ref.sum(), [weights, rates])
    for g, r in zip(g_got, g_ref):
        torch.testing.assert_close(g, r, rtol=1e-11, atol=1e-11)


def test_hawkes_parallel_path_is_linear_cost_and_matches_pairwise(monkeypatch):
    from pyro_dpp.intensity import hawkes as hawkes_module

    intensity = ExpHawkes(torch.tensor([0.5, 0.3], dtype=DT),
                          torch.tensor([[0.3, 0.2, 0.4], [0.1, 0.4, 0.2]], dtype=DT),
                          torch.tensor([[1.0, 2.5, 0.7], [3.0, 0.5, 1.2]], dtype=DT))
    times, weights, query = _history(events=200)
    weights = weights.detach()
    got = intensity(times, weights, query)
    monkeypatch.setattr(hawkes_module, "_PAIRWISE_MAX", 10**9)
    ref = intensity(times, weights, query)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


def _numba_draw_matches_torch(draw, params, seed, min_events):
    """``draw()`` (a relaxed ``rsample``) under the torch and the numba backend from the same seed:
    at least ``min_events`` events, the same draw, and the same gradient of a fixed linear loss with
    respect to every tensor of ``params``."""
    from pyro_dpp import event_mask

    out = {}
    for name in ("torch", "numba"):
        torch.manual_seed(seed)
        with pyro_dpp.backend(name):
            value = draw()
        loss = (value[..., 1:] * torch.linspace(0.3, 1.7, value.shape[-1] - 1, dtype=DT)).sum()
        out[name] = (value.detach(), torch.autograd.grad(loss, params))
    assert int(event_mask(out["torch"][0]).sum()) > min_events
    torch.testing.assert_close(out["numba"][0], out["torch"][0], rtol=1e-11, atol=1e-12)
    for g, r in zip(out["numba"][1], out["torch"][1], strict=True):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-11)


@needs_numba
def test_sumexp_scan_kernels_match_torch_filter():
    """The numba twin of the sum-of-exponentials filter (:mod:`pyro_dpp.intensity._hawkes_numba`)
    against the torch filter (:class:`~pyro_dpp.intensity.sumexp.SumExpHawkesFilter`) over hundreds
    of steps with context events: the relaxed draw and the gradients of every parameter (the decays'
    through the lag-weighted traces), with batched parameters."""
    from pyro_dpp import PointProcess
    from pyro_dpp.events import pad_realization
    from pyro_dpp.intensity import SumExpHawkes

    gen = torch.Generator().manual_seed(4)
    duration = 60.0
    mu = torch.tensor([[0.4, 0.3], [0.2, 0.5]], dtype=DT, requires_grad=True)
    adj = (torch.rand(2, 2, 3, 3, generator=gen, dtype=DT) * 0.12).requires_grad_()  # batch x K x D x U
    decays = torch.tensor([[0.3, 1.5, 6.0], [0.5, 2.0, 9.0]], dtype=DT, requires_grad=True)
    times = (torch.rand(2, 40, generator=gen, dtype=DT) * duration).sort(-1).values
    context = pad_realization(times, torch.ones(2, 40, 1, dtype=DT), torch.zeros(2, 40, dtype=DT),
                              torch.full((2,), duration, dtype=DT))
    _numba_draw_matches_torch(lambda: PointProcess(SumExpHawkes(mu, adj, decays), duration, bound=8.0,
                                                   temperature=0.4, context=context).rsample(),
                              [mu, adj, decays], seed=11, min_events=600)


@needs_numba
@pytest.mark.parametrize("layout", ["scalar decay", "decay per pair", "sum of exponentials"])
def test_exp_trace_kernels_with_one_source(layout):
    """The numba exponential-trace kernels (:mod:`pyro_dpp.intensity._hawkes_numba`) on one mark
    and no context, where every decay is its own column (their per-entry path even for shared
    decays), against the torch filter: the relaxed draw and every parameter's gradient."""
    from pyro_dpp import PointProcess
    from pyro_dpp.intensity import SumExpHawkes

    mu = torch.tensor([0.6], dtype=DT, requires_grad=True)
    if layout == "sum of exponentials":
        adj = torch.tensor([[[0.2, 0.15, 0.1]]], dtype=DT, requires_grad=True)
        decay = torch.tensor([0.4, 2.0, 7.0], dtype=DT, requires_grad=True)
        make = SumExpHawkes
    else:
        adj = torch.tensor([[0.4]], dtype=DT, requires_grad=True)
        decay = torch.tensor(1.3 if layout == "scalar decay" else [[1.3]], dtype=DT, requires_grad=True)
        make = ExpHawkes
    _numba_draw_matches_torch(lambda: PointProcess(make(mu, adj, decay), 80.0, bound=6.0, temperature=0.4)
                              .rsample((3,)), [mu, adj, decay], seed=3, min_events=100)
