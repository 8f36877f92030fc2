"""The scan engine (:mod:`pyro_dpp.scan`) against the reference loop, in float64 with the same random
numbers: every backend ("torch" filters, "numba" accelerators) and the hand-written adjoint, the
backend setting, the filter protocol's subclass rule, the accelerator registry and the numba Ogata
sampler for Hawkes."""

import pytest
import torch

import pyro_dpp
from pyro_dpp import PointProcess, event_mask
from pyro_dpp.events import LOG_WEIGHTS_ATTR, pad_realization
from pyro_dpp.intensity import (
    GLM,
    EpanechnikovBasis,
    ExpHawkes,
    ExponentialBasis,
    Poisson,
    RaisedCosineBasis,
    SumExpHawkes,
)
from pyro_dpp.scan.backend import numba_available

DT = torch.float64
DURATION = 6.0
BATCH = 3
BACKENDS = ["torch"] + (["numba"] if numba_available() else [])
needs_numba = pytest.mark.skipif(not numba_available(), reason="numba not installed")


@pytest.fixture(params=BACKENDS)
def backend(request):
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
    if name.startswith("sumexp"):
        mu = p([0.5, 0.3])
        alpha = p([[[0.1, 0.2], [0.1, 0.05], [0.3, 0.1]], [[0.05, 0.1], [0.3, 0.1], [0.1, 0.1]]])  # K x D x U
        decays = p([0.8, 3.0]) if name == "sumexp-decays" else torch.tensor([0.8, 3.0], dtype=DT)
        params = [mu, alpha] + ([decays] if name == "sumexp-decays" else [])
        return SumExpHawkes(mu, alpha, decays), 10.0, params
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


def draw(name, backend, temperature, straight_through, with_context, batched, keep_all=False, seed=3):
    intensity, bound, params = make(name, batched, keep_all)
    context = context_for(with_context)
    torch.manual_seed(seed)
    with pyro_dpp.backend(backend):
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


INTENSITIES = ["poisson", "hawkes-scalar", "hawkes-matrix", "sumexp", "sumexp-decays", "glm-exp-sigmoid",
               "glm-epa-sigmoid", "glm-rc-sigmoid", "glm-exp-softplus", "glm-epa-softplus", "glm-rc-softplus"]


@pytest.mark.parametrize("batched", [False, True], ids=["shared-params", "batched-params"])
@pytest.mark.parametrize("with_context", [False, True], ids=["no-context", "context"])
@pytest.mark.parametrize("mode", ["exact", "relaxed", "straight-through"])
@pytest.mark.parametrize("name", INTENSITIES)
def test_engine_matches_reference(name, mode, with_context, batched, backend):
    temperature = 0.0 if mode == "exact" else 0.3
    st = mode == "straight-through"
    keep_all = st and ("-epa-" in name or "-rc-" in name)
    ref = draw(name, "reference", temperature, st, with_context, batched, keep_all=keep_all)
    got = draw(name, backend, temperature, st, with_context, batched)
    assert int(event_mask(ref[0]).sum()) >= 5
    torch.testing.assert_close(got[0], ref[0], rtol=1e-12, atol=1e-12)
    if temperature > 0:
        real = event_mask(ref[0])
        torch.testing.assert_close(got[1][real], ref[1][real], rtol=1e-10, atol=1e-10)
        for g, r in zip(got[2], ref[2]):
            torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-10)


@needs_numba
def test_numba_epanechnikov_window_moments_over_long_sequences():
    """The numba scan keeps each Epanechnikov window as running moments (added and removed as events
    enter and leave, recomputed every max(32, window) steps), in both passes: over hundreds of steps with dozens
    of events per window it agrees with the reference window sums to float64 rounding."""
    gen = torch.Generator().manual_seed(1)
    weight = (torch.randn(3, 2, 3, generator=gen, dtype=DT) * 0.8).requires_grad_()
    bias = torch.tensor([0.3, -0.2], dtype=DT, requires_grad=True)
    duration, bound = 80.0, 6.0
    context = pad_realization((torch.rand(2, 100, generator=gen, dtype=DT) * duration).sort(-1).values,
                              torch.ones(2, 100, 1, dtype=DT), torch.zeros(2, 100, dtype=DT),
                              torch.full((2,), duration, dtype=DT))
    out = []
    for name in ("reference", "numba"):
        glm = GLM(bias, weight, EpanechnikovBasis(3, 0.0, 6.0, 2.0).double(), "sigmoid", 3.0)
        torch.manual_seed(8)
        with pyro_dpp.backend(name):
            value = PointProcess(glm, duration, bound=bound, temperature=0.4, context=context).rsample()
        scale = torch.linspace(0.3, 1.7, value.shape[-1] - 1, dtype=DT)
        out.append((value.detach(), torch.autograd.grad((value[..., 1:] * scale).sum(), [bias, weight])))
    assert int(event_mask(out[0][0]).sum()) > 800
    torch.testing.assert_close(out[1][0], out[0][0], rtol=1e-10, atol=1e-10)
    for g, r in zip(out[1][1], out[0][1]):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-9)


@needs_numba
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
        with pyro_dpp.backend(backend):
            torch.manual_seed(9)
            value = PointProcess(glm, duration, bound=2.0, temperature=0.4, context=context).rsample()
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
    ref = draw("glm-epa-sigmoid", "reference", 0.3, True, True, False)
    got = draw("glm-epa-sigmoid", "auto", 0.3, True, True, False)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-12, atol=1e-12)
    assert any(not torch.allclose(g, r, rtol=1e-6) for g, r in zip(got[2], ref[2]))


def test_engine_float32_and_default_backend():
    intensity, bound, params = make("glm-epa-sigmoid")
    f32 = GLM(*(x.detach().float().requires_grad_() for x in (intensity.bias, intensity.weight)),
              EpanechnikovBasis(2, 0.0, 3.0, 1.0), "sigmoid", intensity.amplitude.detach().float())
    out = []
    for name in ("reference", "auto"):
        torch.manual_seed(4)
        with pyro_dpp.backend(name):
            value = PointProcess(f32, DURATION, bound=bound, temperature=0.3).rsample((BATCH,))
            grads = torch.autograd.grad(value[..., 1:-1].sum(), [f32.bias, f32.weight])
        assert value.dtype == torch.float32
        out.append((value.detach(), grads))
    torch.testing.assert_close(out[1][0], out[0][0], rtol=1e-4, atol=1e-5)
    for g, r in zip(out[1][1], out[0][1]):
        torch.testing.assert_close(g, r, rtol=1e-3, atol=1e-4)


def test_engine_window_and_bound_checks(backend):
    basis = EpanechnikovBasis(2, 0.0, 5.0, 1.0, window=3).double()
    glm = GLM(torch.tensor([2.0, 2.0], dtype=DT), torch.zeros(2, 2, 2, dtype=DT), basis, "sigmoid", 5.0)
    torch.manual_seed(0)
    softplus = GLM(torch.tensor([3.0], dtype=DT), torch.zeros(2, 1, 1, dtype=DT), ExponentialBasis([1.0, 2.0]),
                   "softplus", 2.0)
    with pyro_dpp.backend(backend):
        with pytest.raises(ValueError, match="window"):
            PointProcess(glm, 20.0).sample()
        with pytest.raises(ValueError, match="window"):
            PointProcess(glm, 20.0, temperature=0.5).rsample()
        with pytest.raises(ValueError, match="bound"):
            PointProcess(softplus, 5.0, bound=2.0, temperature=0.5).rsample((2,))


# ---- the backend setting, the filter protocol and the accelerator registry --------------------------------------
def test_backend_setting():
    assert pyro_dpp.get_backend() == "auto"
    with pyro_dpp.backend("reference") as name:
        assert name == "reference" and pyro_dpp.get_backend() == "reference"
        assert pyro_dpp.set_backend("torch") == "reference"
    assert pyro_dpp.get_backend() == "auto"
    with pytest.raises(ValueError, match="'auto', 'torch', 'numba', 'compiled', 'reference'"):
        pyro_dpp.set_backend("fast")
    assert pyro_dpp.get_backend() == "auto"


def test_compiled_backend_keeps_the_kernels_of_stock_filters():
    """"compiled" changes only the generic scan: registered numba kernels still run where they can."""
    from pyro_dpp.scan.backend import numba_available, numba_usable
    from pyro_dpp.scan.generic import compiled_steps

    x = torch.zeros(3, dtype=torch.float64)
    with pyro_dpp.backend("compiled"):
        assert numba_usable(x) == numba_available()
        assert compiled_steps() is not None
    assert compiled_steps() is None


def test_numba_backend_without_numba_raises(monkeypatch):
    from pyro_dpp.scan import backend as backend_module

    monkeypatch.setattr(backend_module, "numba_available", lambda: False)
    with pytest.raises(ValueError, match="needs numba"):
        pyro_dpp.set_backend("numba")
    assert pyro_dpp.get_backend() == "auto"


def test_numba_runs_only_where_it_can():
    from pyro_dpp.scan.backend import numba_usable

    x64, x16 = torch.zeros(2, dtype=DT), torch.zeros(2, dtype=torch.float16)
    assert numba_usable(x64) == numba_available()
    assert not numba_usable(x16) and not numba_usable(x64, x16.bfloat16())
    for name in ("torch", "reference"):
        with pyro_dpp.backend(name):
            assert not numba_usable(x64)


def _keys():
    return torch.linspace(0, 1, 5, dtype=DT).unsqueeze(0), torch.Size([])


class PlainHawkes(ExpHawkes):
    """A subclass that keeps the stock math (a new method only)."""

    def describe(self):
        return "plain"


class RatesHawkes(ExpHawkes):
    """A subclass that changes the rates: the stock filter would compute something else."""

    def rates(self, state, time):
        return super().rates(state, time) * 1.0


class PlainSumExp(SumExpHawkes):
    """A subclass that keeps the stock math."""


class RatesSumExp(SumExpHawkes):
    """A subclass that changes the rates."""

    def rates(self, state, time):
        return super().rates(state, time) * 1.0


def test_scan_filter_subclass_rule():
    from pyro_dpp.intensity.basis_filters import EpanechnikovFilter
    from pyro_dpp.intensity.hawkes import ExpHawkesFilter
    from pyro_dpp.intensity.sumexp import SumExpHawkesFilter

    intensity, _, _ = make("hawkes-matrix")
    args = (intensity.baseline, intensity.adjacency, intensity.decay)
    assert type(PlainHawkes(*args).scan_filter(*_keys())) is ExpHawkesFilter
    assert RatesHawkes(*args).scan_filter(*_keys()) is None
    spied = ExpHawkes(*args)
    spied.log_rates = spied.log_rates  # an instance attribute (e.g. a spy): the reference loop
    assert spied.scan_filter(*_keys()) is None
    glm = make("glm-epa-sigmoid")[0]
    assert type(glm.scan_filter(*_keys())) is EpanechnikovFilter
    sumexp = make("sumexp")[0]
    args = (sumexp.baseline, sumexp.adjacency, sumexp.decays)
    assert type(PlainSumExp(*args).scan_filter(*_keys())) is SumExpHawkesFilter
    assert RatesSumExp(*args).scan_filter(*_keys()) is None
    assert make("glm-epa-sigmoid", keep_all=True)[0].scan_filter(*_keys()) is None  # its own window state


@pytest.mark.parametrize("mode", ["exact", "relaxed"])
def test_subclasses_keep_the_engine_or_fall_back(mode, backend, monkeypatch):
    """A plain subclass runs the engine (and agrees with the reference); one that overrides ``rates``
    runs the reference loop (the engine is never asked to scan)."""
    from pyro_dpp.scan import engine

    ran = []  # whether the engine handled each scan (None: it declined)
    original = engine.scan

    def spy(*args):
        out = original(*args)
        ran.append(out is not None)
        return out

    monkeypatch.setattr(engine, "scan", spy)
    intensity, bound, _ = make("hawkes-matrix")
    temperature = 0.0 if mode == "exact" else 0.3
    out = {}
    for cls in (ExpHawkes, PlainHawkes, RatesHawkes):
        params = [x.detach().clone().requires_grad_() for x in (intensity.baseline, intensity.adjacency,
                                                                  intensity.decay)]
        torch.manual_seed(3)
        with pyro_dpp.backend("reference" if cls is ExpHawkes else backend):
            ran.clear()
            process = PointProcess(cls(*params), DURATION, bound=bound, temperature=temperature)
            value = process.sample((BATCH,)) if mode == "exact" else process.rsample((BATCH,))
        grads = torch.autograd.grad(value[..., 1:].sum(), params) if mode == "relaxed" else ()
        out[cls] = (value.detach(), grads, list(ran))
    assert out[ExpHawkes][2] == [] and out[PlainHawkes][2] == [True] and out[RatesHawkes][2] == [False]
    for cls in (PlainHawkes, RatesHawkes):
        torch.testing.assert_close(out[cls][0], out[ExpHawkes][0], rtol=1e-12, atol=1e-12)
        for g, r in zip(out[cls][1], out[ExpHawkes][1]):
            torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-10)


def test_accelerator_lookup_walks_the_mro():
    from pyro_dpp.intensity.basis_filters import BandFilter, ExponentialFilter, RaisedCosineFilter
    from pyro_dpp.intensity.hawkes import ExpHawkesFilter
    from pyro_dpp.intensity.sumexp import SumExpHawkesFilter
    from pyro_dpp.scan import find_accelerator, register_accelerator

    class MyFilter(ExpHawkesFilter):
        pass

    if numba_available():
        assert find_accelerator(MyFilter) is find_accelerator(ExpHawkesFilter) is not None
        assert find_accelerator(SumExpHawkesFilter) is not None
        assert find_accelerator(RaisedCosineFilter) is not None
        assert find_accelerator(ExpHawkesFilter, "ogata") is not None
    assert find_accelerator(BandFilter) is None  # any finite-support basis: the torch filter

    class Other(ExponentialFilter):
        pass

    sentinel = object()
    register_accelerator(Other, sentinel)
    assert find_accelerator(Other) is (sentinel if numba_available() else None)




# ---- exact sampling of Hawkes processes -----------------------------------------------------------------------
@needs_numba
@pytest.mark.parametrize("name", ["hawkes", "sumexp"])
def test_numba_ogata_is_reproducible_and_matches_reference_counts(name):
    from pyro_dpp.scan import find_accelerator

    mu = torch.tensor([0.5, 0.3], dtype=DT)
    if name == "hawkes":
        intensity = ExpHawkes(mu, torch.tensor([[0.3, 0.2], [0.1, 0.4]], dtype=DT), torch.tensor(1.5, dtype=DT))
    else:
        intensity = SumExpHawkes(mu, torch.tensor([[[0.2, 0.1], [0.1, 0.1]], [[0.05, 0.05], [0.3, 0.1]]], dtype=DT),
                                 torch.tensor([0.7, 4.0], dtype=DT))
    assert find_accelerator(type(intensity.scan_filter(*_keys())), "ogata") is not None
    process = PointProcess(intensity, 10.0)
    torch.manual_seed(1)
    a = process.sample((2000,))
    torch.manual_seed(1)
    b = process.sample((2000,))
    assert torch.equal(a, b)
    with pyro_dpp.backend("reference"):
        torch.manual_seed(2)
        ref = process.sample((2000,))
    counts = [v[..., 1:3][event_mask(v)].sum(0) / 2000 for v in (a, ref)]
    se = (counts[1] / 2000).sqrt() * 3  # overdispersed counts: a loose bound
    assert ((counts[0] - counts[1]).abs() < 5 * se).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("name", ["hawkes-matrix", "glm-epa-sigmoid", "glm-rc-sigmoid", "glm-exp-softplus"])
def test_engine_on_cuda_matches_the_reference_there(name):
    """On CUDA the torch engine runs (no numba): it agrees with the reference loop on the same device."""
    cpu, bound, params = make(name)
    cuda_params = [p.detach().cuda().requires_grad_() for p in params]
    if name.startswith("hawkes"):
        intensity = ExpHawkes(*cuda_params)
    else:
        intensity = GLM(cuda_params[0], cuda_params[1], cpu.basis.cuda(), cpu.activation, cuda_params[2])
    out = {}
    for backend in ("reference", "auto"):
        torch.manual_seed(3)
        with pyro_dpp.backend(backend):
            value = PointProcess(intensity, DURATION, bound=bound, temperature=0.3).rsample((BATCH,))
        assert value.is_cuda
        out[backend] = (value.detach(), torch.autograd.grad(value[..., 1:].sum(), cuda_params))
    log_prob = PointProcess(intensity, DURATION, bound=bound, temperature=0.3).log_prob(out["auto"][0])
    assert torch.isfinite(log_prob).all()
    torch.testing.assert_close(out["auto"][0], out["reference"][0], rtol=1e-10, atol=1e-10)
    for g, r in zip(out["auto"][1], out["reference"][1]):
        torch.testing.assert_close(g, r, rtol=1e-8, atol=1e-9)
