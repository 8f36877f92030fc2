"""The fast paths (issue #4) against the reference implementations, in float64 with the same random
numbers: the fast thinning scan (numba kernels and torch engines) and its hand-written adjoint, the
numba scoring kernels, the linear-cost exponential sums and the numba Ogata sampler for Hawkes."""

import math

import pytest
import torch

from pyro_dpp import PointProcess, event_mask, thinning
from pyro_dpp import fastscan as fs
from pyro_dpp.events import LOG_WEIGHTS_ATTR, pad_realization
from pyro_dpp.intensity import (
    GLM,
    EpanechnikovBasis,
    ExpHawkes,
    ExponentialBasis,
    Poisson,
    RaisedCosineBasis,
    _kernels,
)
from pyro_dpp.intensity._decay import decayed_sums
from pyro_dpp.likelihood import quadrature_compensator
from pyro_dpp.thinning import fast_paths

DT = torch.float64
DURATION = 6.0
BATCH = 3
BACKENDS = ["torch"] + (["numba"] if fs._nb is not None else [])


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    monkeypatch.setattr(fs, "BACKEND", request.param)
    return request.param


class KeepAllEpanechnikov(EpanechnikovBasis):
    """The reference window, keeping every row (see :func:`make`)."""

    def update(self, state, time, weights):
        times, history = state
        return (torch.cat([times[..., 1:], time.unsqueeze(-1)], -1),
                torch.cat([history[..., 1:, :], weights.unsqueeze(-2)], -2))


class KeepAllRaisedCosine(RaisedCosineBasis):
    update = KeepAllEpanechnikov.update


def make(name, batched=False, keep_all=False):
    """``(intensity, bound, params)``; parameters with a leading batch dimension of ``BATCH`` if
    ``batched``. ``keep_all``: the reference's finite-support window keeps zero-weight rows too.

    The reference window drops rows whose weights are all zero. With straight-through marks a
    rejected candidate has weight zero in the forward pass but carries the soft weights' gradient,
    which that window then loses (the exponential traces keep it); the fast paths keep it. The
    straight-through gradients of finite-support bases are therefore compared with a reference
    whose window keeps every row."""
    gen = torch.Generator().manual_seed(0)
    lead = (BATCH,) if batched else ()

    def p(x):
        x = torch.as_tensor(x, dtype=DT)
        if batched:
            x = x * (1 + 0.1 * torch.arange(BATCH, dtype=DT).reshape((BATCH,) + (1,) * x.dim()))
        return x.requires_grad_()

    if name == "poisson":
        rates = p([0.5, 1.0])
        return Poisson(rates, 1), 2.0, [rates]
    if name.startswith("hawkes"):
        mu, alpha = p([0.5, 0.3]), p([[0.3, 0.2, 0.4], [0.1, 0.4, 0.2]])
        beta = p([[1.0, 2.5, 0.7], [3.0, 0.5, 1.2]]) if name == "hawkes-matrix" else torch.tensor(1.5, dtype=DT)
        params = [mu, alpha] + ([beta] if name == "hawkes-matrix" else [])
        return ExpHawkes(mu, alpha, beta), 10.0, params
    _, basis_name, activation = name.split("-")
    basis = {
        "exp": lambda: ExponentialBasis(torch.tensor([0.3, 2.0], dtype=DT)),
        "epa": lambda: (KeepAllEpanechnikov if keep_all else EpanechnikovBasis)(2, 0.0, 3.0, 1.0).double(),
        "rc": lambda: (KeepAllRaisedCosine if keep_all else RaisedCosineBasis)(3, 4.0).double(),
    }[basis_name]()
    scale = 1.2 if activation == "sigmoid" else 0.25  # softplus: keep the rates below the bound
    weight = p(torch.randn((basis.num_basis, 2, 3), generator=gen, dtype=DT) * scale)
    bias = p([0.5, -0.5])
    amplitude = p(2.0)
    del lead
    bound = 2 * 2.0 if activation == "sigmoid" else 14.0
    return GLM(bias, weight, basis, activation, amplitude), bound, [bias, weight, amplitude]


def context_for(with_context, batch=BATCH):
    if not with_context:  # the intensities have one context column: an empty context
        value = torch.zeros(batch, 1, 3, dtype=DT)
        value[..., 0] = DURATION
        return value
    gen = torch.Generator().manual_seed(5)
    times = (torch.rand(batch, 6, generator=gen, dtype=DT) * DURATION).sort(-1).values
    return pad_realization(times, torch.ones(batch, 6, 1, dtype=DT), torch.zeros(batch, 6, dtype=DT),
                           torch.full((batch,), DURATION, dtype=DT))


def draw(name, fast, temperature, straight_through, with_context, batched, keep_all=False, seed=3):
    intensity, bound, params = make(name, batched, keep_all)
    context = context_for(with_context)
    torch.manual_seed(seed)
    with fast_paths(fast):
        process = PointProcess(intensity, DURATION, bound=bound, temperature=temperature, context=context,
                               straight_through=straight_through)
        if temperature == 0:
            return process.sample(() if batched else (BATCH,)), None, None
        value = process.rsample(() if batched else (BATCH,))
        logs = getattr(value, LOG_WEIGHTS_ATTR)
        scale = torch.linspace(0.3, 1.7, value.shape[-1] - 1, dtype=DT)
        loss = (value[..., 1:] * scale).sum() + 0.1 * logs.clamp(min=-30).sum()
        grads = torch.autograd.grad(loss, params)
    return value.detach(), logs.detach(), grads


INTENSITIES = ["poisson", "hawkes-scalar", "hawkes-matrix", "glm-exp-sigmoid", "glm-epa-sigmoid",
               "glm-rc-sigmoid", "glm-exp-softplus", "glm-epa-softplus", "glm-rc-softplus"]


@pytest.mark.parametrize("batched", [False, True], ids=["shared-params", "batched-params"])
@pytest.mark.parametrize("with_context", [False, True], ids=["no-context", "context"])
@pytest.mark.parametrize("mode", ["exact", "relaxed", "straight-through"])
@pytest.mark.parametrize("name", INTENSITIES)
def test_fast_scan_matches_reference(name, mode, with_context, batched, backend):
    temperature = 0.0 if mode == "exact" else 0.3
    st = mode == "straight-through"
    keep_all = st and ("-epa-" in name or "-rc-" in name)
    ref = draw(name, False, temperature, st, with_context, batched, keep_all=keep_all)
    got = draw(name, True, temperature, st, with_context, batched)
    assert int(event_mask(ref[0]).sum()) >= 5
    torch.testing.assert_close(got[0], ref[0], rtol=1e-12, atol=1e-12)
    if temperature > 0:
        real = event_mask(ref[0])
        torch.testing.assert_close(got[1][real], ref[1][real], rtol=1e-10, atol=1e-10)
        for g, r in zip(got[2], ref[2]):
            torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-10)


@pytest.mark.skipif(fs._nb is None, reason="numba not installed")
def test_numba_epanechnikov_window_moments_over_long_sequences(monkeypatch):
    """The numba scan keeps each Epanechnikov window as running moments (added and removed as events
    enter and leave, recomputed every 32 steps), in both passes: over hundreds of steps with dozens
    of events per window it agrees with the reference window sums to float64 rounding."""
    monkeypatch.setattr(fs, "BACKEND", "numba")
    gen = torch.Generator().manual_seed(1)
    weight = (torch.randn(3, 2, 3, generator=gen, dtype=DT) * 0.8).requires_grad_()
    bias = torch.tensor([0.3, -0.2], dtype=DT, requires_grad=True)
    duration, bound = 80.0, 6.0
    context = pad_realization((torch.rand(2, 100, generator=gen, dtype=DT) * duration).sort(-1).values,
                              torch.ones(2, 100, 1, dtype=DT), torch.zeros(2, 100, dtype=DT),
                              torch.full((2,), duration, dtype=DT))
    out = []
    for fast in (False, True):
        glm = GLM(bias, weight, EpanechnikovBasis(3, 0.0, 6.0, 2.0).double(), "sigmoid", 3.0)
        torch.manual_seed(8)
        with fast_paths(fast):
            value = PointProcess(glm, duration, bound=bound, temperature=0.4, context=context).rsample()
        scale = torch.linspace(0.3, 1.7, value.shape[-1] - 1, dtype=DT)
        out.append((value.detach(), torch.autograd.grad((value[..., 1:] * scale).sum(), [bias, weight])))
    assert int(event_mask(out[0][0]).sum()) > 800
    torch.testing.assert_close(out[1][0], out[0][0], rtol=1e-10, atol=1e-10)
    for g, r in zip(out[1][1], out[0][1]):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-9)


@pytest.mark.skipif(fs._nb is None, reason="numba not installed")
def test_numba_epanechnikov_moments_far_from_the_origin():
    """Far from time 0 (moments about a fixed origin would cancel like (t / width)^2): the numba scan
    agrees with the torch engine in values and in the gradient of the last candidates' marks, which
    the last steps of the reverse pass carry, with tied context times and empty windows."""
    gen = torch.Generator().manual_seed(3)
    weight = (torch.randn(2, 2, 3, generator=gen, dtype=DT) * 0.8).requires_grad_()
    bias = torch.tensor([0.2, -0.3], dtype=DT, requires_grad=True)
    duration = 20000.0
    times = torch.cat([torch.full((1, 3), duration - 50.0, dtype=DT),
                       duration - 50 - torch.rand(1, 60, generator=gen, dtype=DT) * 5], -1).sort(-1).values
    context = pad_realization(times, torch.ones(1, 63, 1, dtype=DT), torch.zeros(1, 63, dtype=DT),
                              torch.full((1,), duration, dtype=DT))
    out = {}
    for backend in ("torch", "numba"):
        glm = GLM(bias, weight, EpanechnikovBasis(2, 0.3, 1.0, 0.5).double(), "sigmoid", 1.0)
        previous, fs.BACKEND = fs.BACKEND, backend
        try:
            torch.manual_seed(9)
            value = PointProcess(glm, duration, bound=2.0, temperature=0.4, context=context).rsample()
        finally:
            fs.BACKEND = previous
        last = event_mask(value)[0].nonzero()[-40:, 0]
        loss = (value[0, last, 1:] * torch.linspace(0.3, 1.7, value.shape[-1] - 1, dtype=DT)).sum()
        out[backend] = (value.detach(), torch.autograd.grad(loss, [bias, weight]))
    torch.testing.assert_close(out["numba"][0], out["torch"][0], rtol=1e-10, atol=1e-10)
    for g, r in zip(out["numba"][1], out["torch"][1]):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


def test_reference_window_drops_straight_through_gradient_of_rejected_candidates():
    """Documents the one known difference: the reference finite-support window skips zero-weight
    rows, so straight-through gradients through rejected candidates differ from the fast paths'
    (which agree with a window that keeps every row, above)."""
    ref = draw("glm-epa-sigmoid", False, 0.3, True, True, False)
    got = draw("glm-epa-sigmoid", True, 0.3, True, True, False)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-12, atol=1e-12)
    assert any(not torch.allclose(g, r, rtol=1e-6) for g, r in zip(got[2], ref[2]))


def test_fast_scan_float32_and_default_backend():
    intensity, bound, params = make("glm-epa-sigmoid")
    f32 = GLM(*(x.detach().float().requires_grad_() for x in (intensity.bias, intensity.weight)),
              EpanechnikovBasis(2, 0.0, 3.0, 1.0), "sigmoid", intensity.amplitude.detach().float())
    out = []
    for fast in (False, True):
        torch.manual_seed(4)
        with fast_paths(fast):
            value = PointProcess(f32, DURATION, bound=bound, temperature=0.3).rsample((BATCH,))
            grads = torch.autograd.grad(value[..., 1:-1].sum(), [f32.bias, f32.weight])
        assert value.dtype == torch.float32
        out.append((value.detach(), grads))
    torch.testing.assert_close(out[1][0], out[0][0], rtol=1e-4, atol=1e-5)
    for g, r in zip(out[1][1], out[0][1]):
        torch.testing.assert_close(g, r, rtol=1e-3, atol=1e-4)


def test_fast_scan_window_and_bound_checks(backend):
    basis = EpanechnikovBasis(2, 0.0, 5.0, 1.0, window=3).double()
    glm = GLM(torch.tensor([2.0, 2.0], dtype=DT), torch.zeros(2, 2, 2, dtype=DT), basis, "sigmoid", 5.0)
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="window"):
        PointProcess(glm, 20.0).sample()
    with pytest.raises(ValueError, match="window"):
        PointProcess(glm, 20.0, temperature=0.5).rsample()
    softplus = GLM(torch.tensor([3.0], dtype=DT), torch.zeros(2, 1, 1, dtype=DT), ExponentialBasis([1.0, 2.0]),
                   "softplus", 2.0)
    with pytest.raises(ValueError, match="bound"):
        PointProcess(softplus, 5.0, bound=2.0, temperature=0.5).rsample((2,))


def test_fast_paths_switch_and_unsupported_intensities_run_the_reference():
    intensity, bound, _ = make("glm-epa-sigmoid")
    assert fs.supports(intensity)
    intensity.log_rates = intensity.log_rates  # an instance attribute (e.g. a spy): reference path
    assert not fs.supports(intensity)
    assert not fs.supports(make("glm-epa-sigmoid", keep_all=True)[0])  # a basis with its own scan state
    previous = thinning.set_fast_paths(False)
    try:
        assert not thinning.FAST_PATHS
    finally:
        thinning.set_fast_paths(previous)


# ---- scoring ------------------------------------------------------------------------------------------------
def _history(seed=2, batch=4, events=150, sources=3):
    gen = torch.Generator().manual_seed(seed)
    times = torch.rand(batch, events, generator=gen, dtype=DT) * 40
    weights = torch.rand(batch, events, sources, generator=gen, dtype=DT)
    query = torch.rand(batch, 120, generator=gen, dtype=DT) * 42
    return times, weights.requires_grad_(), query


@pytest.mark.skipif(fs._nb is None, reason="numba not installed")
def test_epanechnikov_kernels_match_torch(monkeypatch):
    basis = EpanechnikovBasis(3, 0.0, 8.0, 1.0).double()
    times, weights, query = _history()
    results = []
    for enabled in (False, True):
        monkeypatch.setattr(_kernels, "ENABLED", enabled)
        f = basis.features(times, weights, query)
        poly = basis.polynomial_coefficients(times, weights, query)
        grads = torch.autograd.grad((f * 1.3).sum() + (poly * torch.linspace(-1, 1, 3, dtype=DT)[:, None, None]).sum(),
                                    weights)
        results.append((f, poly, grads[0]))
    for got, ref in zip(results[1], results[0]):
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.skipif(fs._nb is None, reason="numba not installed")
@pytest.mark.parametrize("batched", [False, True], ids=["shared-weight", "batched-weight"])
@pytest.mark.parametrize("activation", ["sigmoid", "softplus", "exp", "hardtanh"])
def test_fused_compensator_matches_node_evaluation(activation, batched, monkeypatch):
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
    for enabled in (False, True):
        monkeypatch.setattr(_kernels, "ENABLED", enabled)
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

    intensity, _, params = make("hawkes-matrix")
    times, weights, query = _history(events=200)
    weights = weights.detach()
    got = intensity(times, weights, query)
    monkeypatch.setattr(hawkes_module, "_PAIRWISE_MAX", 10**9)
    ref = intensity(times, weights, query)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


# ---- exact sampling of Hawkes processes -----------------------------------------------------------------------
@pytest.mark.skipif(fs._nb is None, reason="numba not installed")
def test_numba_ogata_is_reproducible_and_matches_reference_counts():
    intensity = ExpHawkes(torch.tensor([0.5, 0.3], dtype=DT), torch.tensor([[0.3, 0.2], [0.1, 0.4]], dtype=DT),
                          torch.tensor(1.5, dtype=DT))
    process = PointProcess(intensity, 10.0)
    torch.manual_seed(1)
    a = process.sample((2000,))
    torch.manual_seed(1)
    b = process.sample((2000,))
    assert torch.equal(a, b)
    with fast_paths(False):
        torch.manual_seed(2)
        ref = process.sample((2000,))
    counts = [v[..., 1:3][event_mask(v)].sum(0) / 2000 for v in (a, ref)]
    se = (counts[1] / 2000).sqrt() * 3  # overdispersed counts: a loose bound
    assert ((counts[0] - counts[1]).abs() < 5 * se).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_fast_scan_on_cuda_matches_cpu():
    intensity, bound, _ = make("glm-epa-sigmoid")
    cuda = GLM(intensity.bias.detach().cuda(), intensity.weight.detach().cuda(), intensity.basis.cuda(), "sigmoid",
               intensity.amplitude.detach().cuda())
    value = PointProcess(cuda, DURATION, bound=bound, temperature=0.3).rsample((4,))
    assert value.is_cuda and torch.isfinite(value).all()
    assert not math.isnan(float(PointProcess(cuda, DURATION, bound=bound, temperature=0.3).log_prob(value).sum()))
