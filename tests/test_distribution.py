"""Table-driven tests of :class:`pyro_dpp.PointProcess` (in the style of NumPyro's test_distributions).

One table, ``CASES``, lists PointProcess configurations; generic tests run over every row. Each row
builds its intensity through a parameter factory ``p(name, value, positive=False)`` so that the same
row can be built with plain tensors, with ``requires_grad`` leaves, or with ``pyro.param`` sites.
Tests of bad inputs follow the table.
"""

from __future__ import annotations

import copy
import io
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import SVI, Predictive, Trace_ELBO, TraceGraph_ELBO
from pyro.optim import Adam
from torch.distributions import constraints

from pyro_dpp import PointProcess, SpikeTrains, event_mask
from pyro_dpp.distribution import DEFAULT_MAX_EVENTS
from pyro_dpp.events import LOG_WEIGHTS_ATTR
from pyro_dpp.intensity import (
    GLM,
    EpanechnikovBasis,
    ExpHawkes,
    ExponentialBasis,
    InhomogeneousPoisson,
    PiecewisePoisson,
    Poisson,
    PowerLawHawkes,
    RaisedCosineBasis,
    SumExpHawkes,
)
from pyro_dpp.relaxed import plain

# --------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------

Param = Callable[..., torch.Tensor]


@dataclass
class Case:
    """One PointProcess configuration: ``intensity(p)`` builds the intensity from the parameter
    factory ``p``; ``kwargs`` go to :class:`PointProcess`; ``context`` (a realization tensor) is
    passed as ``context=`` if given; ``batch_shape`` is the expected batch shape."""

    intensity: Callable[[Param], Any]
    kwargs: dict = field(default_factory=dict)
    context: torch.Tensor | None = None
    batch_shape: tuple = ()

    @property
    def relaxed(self) -> bool:
        return self.kwargs.get("temperature", 0.0) > 0

    @property
    def straight_through(self) -> bool:
        return self.kwargs.get("straight_through", False)


def T(case_id: str, intensity: Callable[[Param], Any], context: torch.Tensor | None = None, batch: tuple = (),
      **kwargs: Any):
    kwargs.setdefault("duration", 2.0)
    return pytest.param(Case(intensity, kwargs, context, batch), id=case_id)


def _ctx(times, marks, num_marks=1, duration=2.0):
    return SpikeTrains.from_events(torch.tensor(times), torch.tensor(marks), num_marks, duration).to_tensor()


# Context events (one context mark) for the rows with context: unbatched, and batched (2 sequences).
CTX1 = _ctx([0.3, 0.9, 1.4], [0, 0, 0])
CTX2 = SpikeTrains.from_events(
    [torch.tensor([0.2, 1.1]), torch.tensor([0.7])], [torch.tensor([0, 0]), torch.tensor([0])], 1, 2.0
).to_tensor()


def poisson(rates):
    return lambda p: Poisson(p("rates", rates, positive=True))


def hawkes(baseline, adjacency, decay):
    return lambda p: ExpHawkes(
        p("baseline", baseline, positive=True),
        p("adjacency", adjacency, positive=True),
        p("decay", decay, positive=True),
    )


def glm(bias, weight, basis, activation="sigmoid", amplitude=2.0):
    return lambda p: GLM(
        p("bias", bias), p("weight", weight), basis(), activation, p("amplitude", amplitude, positive=True)
    )


def sumexp(baseline, adjacency, decays):
    return lambda p: SumExpHawkes(
        p("baseline", baseline, positive=True),
        p("adjacency", adjacency, positive=True),
        p("decays", decays, positive=True),
    )


def powerlaw(baseline, multiplier, cutoff, exponent, support=1.5):
    return lambda p: PowerLawHawkes(
        p("baseline", baseline, positive=True),
        p("multiplier", multiplier, positive=True),
        p("cutoff", cutoff, positive=True),
        p("exponent", exponent, positive=True),
        support=support,
    )


def piecewise(rates, edges=(0.0, 0.5, 1.2, 2.5)):
    return lambda p: PiecewisePoisson(torch.tensor(edges), p("rates", rates, positive=True))


def sine_poisson(amplitude, depth, bound=2.5):
    """``amplitude_k (1 + depth sin(3 t))``: a callable rate with parameters."""
    def build(p):
        a, c = p("amplitude", amplitude, positive=True), p("depth", depth)
        return InhomogeneousPoisson(lambda t: a * (1 + c * torch.sin(3 * t)).unsqueeze(-1), bound=bound)
    return build


_W3 = [[[-0.5, 0.4, 0.1], [0.3, -0.4, 0.2], [0.0, 0.5, -0.3]]]  # 1 x 3 x 3
_W3_SMALL = [[[0.2 * w for w in row] for row in _W3[0]]]
_W_EPAN = [[[-0.5, 0.4], [0.3, -0.6]], [[0.2, 0.1], [-0.1, 0.3]]]  # 2 x 2 x 2
_B_CTX = [[0.0, 0.3], [0.5, -0.5]]  # 2 sequences x 2 marks
_W_CTX = [[[0.2, -0.3, 0.5], [0.1, 0.2, -0.4]], [[0.0, 0.1, 0.2], [0.3, 0.0, 0.1]]]  # 2 x 2 x (2 + 1 context)
_W_INHIB = [[[-0.3, -0.2], [-0.1, -0.4]], [[-0.2, -0.1], [-0.3, -0.2]], [[-0.1, -0.1], [-0.1, -0.1]]]  # 3 x 2 x 2


def _exp_basis():
    return ExponentialBasis([0.5])


def _exp_basis2():
    return ExponentialBasis([0.3, 1.0])


def _epan_basis():
    return EpanechnikovBasis(2, 0.0, 1.0, 0.5)


def _rc_basis():
    return RaisedCosineBasis(3, 1.0, 0.5)


_HAWKES_ADJ = [[0.2, 0.1], [0.1, 0.2]]
_HAWKES_ADJ_CTX = [[0.2, 0.1, 0.3], [0.1, 0.2, 0.2]]
_DECAY_MATRIX = [[1.0, 2.0], [0.5, 1.5]]
_DECAY_MATRIX_CTX = [[1.0, 2.0, 3.0], [0.5, 1.5, 1.0]]
_SUMEXP_ADJ = [[[0.1, 0.1], [0.05, 0.05]], [[0.05, 0.1], [0.1, 0.1]]]  # K x K x U
_SUMEXP_ADJ_CTX = [[[0.1, 0.1], [0.05, 0.05], [0.2, 0.1]], [[0.05, 0.1], [0.1, 0.1], [0.1, 0.1]]]
_PIECEWISE_RATES = [[0.5, 1.0], [1.5, 0.2], [0.3, 0.9]]  # bins x K

CASES = [
    # Poisson
    T("poisson-exact", poisson([0.6, 1.2])),
    T("poisson-relaxed", poisson([0.6, 1.2]), temperature=0.5),
    T("poisson-relaxed-loose-bound", poisson([0.6, 1.2]), temperature=0.3, bound=3.0),
    T("poisson-relaxed-st", poisson([0.6, 1.2]), temperature=0.5, straight_through=True),
    T("poisson-batched-durations-exact", poisson([[0.5, 1.0], [1.0, 0.5], [0.2, 0.2]]), duration=[1.0, 2.0, 1.5],
      batch=(3,)),
    T("poisson-broadcast-batch-relaxed", poisson([[[0.5, 1.0]], [[1.0, 0.3]]]), temperature=0.5,
      duration=[1.0, 2.0, 1.5], batch=(2, 3)),
    T("poisson-max-events-exact", poisson([0.7]), max_events=30),  # rate * T = 1.4: no zero score
    # linear Hawkes, exponential kernels
    T("hawkes-exact-ogata", hawkes([0.4, 0.3], _HAWKES_ADJ, 1.0)),
    T("hawkes-exact-bound", hawkes([0.4, 0.3], _HAWKES_ADJ, 1.0), bound=6.0),
    T("hawkes-relaxed", hawkes([0.4, 0.3], _HAWKES_ADJ, 1.0), temperature=0.5, bound=4.0),
    T("hawkes-matrix-decay-exact", hawkes([0.4, 0.3], _HAWKES_ADJ, _DECAY_MATRIX)),
    T("hawkes-matrix-decay-relaxed", hawkes([0.4, 0.3], _HAWKES_ADJ, _DECAY_MATRIX), temperature=0.3, bound=4.0),
    T("hawkes-context-exact", hawkes([0.4, 0.3], _HAWKES_ADJ_CTX, 1.0), context=CTX1),
    T("hawkes-context-relaxed-matrix-decay", hawkes([0.4, 0.3], _HAWKES_ADJ_CTX, _DECAY_MATRIX_CTX),
      context=CTX1, temperature=0.5, bound=5.0),
    T("hawkes-context-relaxed-exact-score", hawkes([0.4, 0.3], _HAWKES_ADJ_CTX, 1.0), context=CTX1, temperature=0.5,
      bound=5.0, relaxed_log_prob="exact"),
    T("hawkes-context-batched-relaxed-st", hawkes([0.4, 0.3], _HAWKES_ADJ_CTX, 1.0), context=CTX2,
      temperature=0.5, bound=5.0, straight_through=True, batch=(2,)),
    T("hawkes-batched-durations-exact-ogata", hawkes([[0.4, 0.3], [0.1, 0.6]], _HAWKES_ADJ, 1.0),
      duration=[1.5, 2.5], batch=(2,)),
    T("hawkes-batched-durations-relaxed", hawkes([[0.4, 0.3], [0.1, 0.6]], _HAWKES_ADJ, 1.0),
      duration=[1.5, 2.5], temperature=0.5, bound=4.0, batch=(2,)),
    # linear Hawkes, sum-of-exponentials and power-law kernels
    T("sumexp-exact-ogata", sumexp([0.4, 0.3], _SUMEXP_ADJ, [1.0, 4.0])),
    T("sumexp-context-relaxed", sumexp([0.4, 0.3], _SUMEXP_ADJ_CTX, [1.0, 4.0]), context=CTX1, temperature=0.5,
      bound=5.0),
    T("sumexp-batched-relaxed-st", sumexp([[0.4, 0.3], [0.1, 0.6]], _SUMEXP_ADJ, [1.0, 4.0]), duration=[1.5, 2.5],
      temperature=0.5, bound=4.0, straight_through=True, batch=(2,)),
    T("powerlaw-exact-ogata", powerlaw([0.4, 0.3], _HAWKES_ADJ, 0.5, 1.5)),
    T("powerlaw-per-pair-context-relaxed", powerlaw([0.4, 0.3], _HAWKES_ADJ_CTX, _DECAY_MATRIX_CTX, _DECAY_MATRIX_CTX),
      context=CTX1, temperature=0.5, bound=6.0),
    T("powerlaw-batched-exact-bound", powerlaw([[0.4, 0.3], [0.1, 0.6]], _HAWKES_ADJ, 1.0, 1.5), duration=[1.5, 2.5],
      bound=6.0, batch=(2,)),
    # inhomogeneous Poisson: piecewise-constant and callable rates
    T("piecewise-exact", piecewise(_PIECEWISE_RATES)),
    T("piecewise-relaxed", piecewise(_PIECEWISE_RATES), temperature=0.5),
    T("piecewise-batched-relaxed-st", piecewise([_PIECEWISE_RATES, _PIECEWISE_RATES[::-1]]), duration=[1.0, 2.0],
      temperature=0.5, straight_through=True, batch=(2,)),
    T("inhomogeneous-exact", sine_poisson([0.6, 1.0], 0.5)),
    T("inhomogeneous-relaxed-exact-score", sine_poisson([0.6, 1.0], 0.5), temperature=0.5, relaxed_log_prob="exact"),
    # GLM / SNN
    T("glm-exp-sigmoid-exact", glm([0.0, -1.0, 0.5], _W3, _exp_basis)),
    T("glm-exp-sigmoid-relaxed", glm([0.0, -1.0, 0.5], _W3, _exp_basis), temperature=0.3),
    T("glm-exp-sigmoid-relaxed-st", glm([0.0, -1.0, 0.5], _W3, _exp_basis), temperature=0.3, straight_through=True),
    # hardtanh rates are exactly 0 below u = -1: small weights keep the potential away from there
    T("glm-exp-hardtanh-relaxed", glm([0.2, 0.0, 0.3], _W3_SMALL, _exp_basis, "hardtanh"), temperature=0.5),
    T("glm-exp2-context-batched-exact", glm(_B_CTX, _W_CTX, _exp_basis2, amplitude=1.5), context=CTX2, batch=(2,)),
    T("glm-exp2-context-batched-relaxed", glm(_B_CTX, _W_CTX, _exp_basis2, amplitude=1.5), context=CTX2,
      temperature=0.5, batch=(2,)),
    T("glm-epan-sigmoid-exact", glm([0.2, -0.2], _W_EPAN, _epan_basis)),
    T("glm-epan-sigmoid-relaxed", glm([0.2, -0.2], _W_EPAN, _epan_basis), temperature=0.3),
    T("glm-epan-sigmoid-relaxed-exact-score", glm([0.2, -0.2], _W_EPAN, _epan_basis), temperature=0.3,
      relaxed_log_prob="exact"),
    T("glm-epan-sigmoid-batched-st", glm([[0.2, -0.2], [0.0, 0.4]], _W_EPAN, _epan_basis), duration=[1.0, 2.0],
      temperature=0.3, straight_through=True, batch=(2,)),
    T("glm-raisedcos-softplus-exact", glm([0.0, -0.5], _W_INHIB, _rc_basis, "softplus", 1.0), bound=2.0),
    T("glm-raisedcos-softplus-relaxed", glm([0.0, -0.5], _W_INHIB, _rc_basis, "softplus", 1.0), bound=2.0,
      temperature=0.5),
    T("glm-raisedcos-sigmoid-batched-amplitude-relaxed",
      glm([0.0, -0.5], _W_INHIB, _rc_basis, "sigmoid", [1.0, 2.0]), temperature=0.5, batch=(2,)),
]


def make(case: Case, dtype: torch.dtype = torch.float32, param: Callable | None = None, **overrides: Any):
    """Build ``(PointProcess, params)``; ``param(name, tensor, positive)`` turns initial values into
    parameters (default: the plain tensors)."""
    params: dict[str, torch.Tensor] = {}

    def p(name: str, value: Any, positive: bool = False) -> torch.Tensor:
        init = torch.as_tensor(value, dtype=dtype)
        params[name] = init if param is None else param(name, init, positive)
        return params[name]

    intensity = case.intensity(p)
    kwargs = {**case.kwargs, **overrides}
    if case.context is not None:
        kwargs["context"] = case.context
    return PointProcess(intensity, **kwargs), params


def leaf_param(name, init, positive):
    return init.clone().requires_grad_()


def pyro_param(name, init, positive):
    return pyro.param(name, init, constraint=constraints.positive if positive else constraints.real)


@pytest.fixture(autouse=True)
def _validation():
    pyro.clear_param_store()
    with pyro.validation_enabled(True):
        yield
    pyro.clear_param_store()


def draw(d: PointProcess, sample_shape=()):
    return d.rsample(sample_shape) if d.has_rsample else d.sample(sample_shape)


def check_realization(x: torch.Tensor, d: PointProcess, exact: bool, hard: bool | None = None) -> None:
    """Independent check of the realization layout (not via pyro_dpp's own validator): ``exact``
    values hold one-hot events only; ``hard`` values (exact or straight-through) one-hot rows."""
    k = d.num_marks
    assert x.shape[-1] == k + 2
    times, weights = x[..., 0], x[..., 1:]
    total = weights.sum(-1)
    real = total > 0.5
    tol = 1e-4 if x.dtype == torch.float32 else 1e-9
    assert torch.all(weights >= -tol)
    assert torch.all(torch.where(real, (total - 1).abs(), total.abs()) <= tol)
    # real rows first
    assert not torch.any(real[..., 1:] & ~real[..., :-1])
    duration = d.duration.expand(x.shape[:-2])
    assert torch.all(times >= 0)
    assert torch.all(times <= duration.unsqueeze(-1) * (1 + tol))
    # padding rows hold the duration, so times are sorted over all rows
    assert torch.all(torch.where(real, torch.zeros_like(times), (times - duration.unsqueeze(-1)).abs()) <= tol)
    assert torch.all(times[..., 1:] >= times[..., :-1])
    if exact:
        assert torch.all(weights[..., k].abs() <= tol)
    if exact or hard:
        assert torch.all(torch.where(real.unsqueeze(-1), (weights - weights.round()).abs(), weights.abs()) <= tol)
    elif real.any():
        assert torch.any((weights[real] > tol) & (weights[real] < 1 - tol)), "relaxed values should be soft"


# --------------------------------------------------------------------------------------------
# Generic tests over the table
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_has_rsample(case):
    d, _ = make(case)
    assert d.has_rsample is case.relaxed
    assert d.expand((2,) + d.batch_shape).has_rsample is case.relaxed
    if not case.relaxed:
        with pytest.raises(ValueError, match="rsample needs temperature > 0"):
            d.rsample()


@pytest.mark.parametrize("sample_shape", [(), (3,)], ids=["scalar", "vector"])
@pytest.mark.parametrize("case", CASES)
def test_sample_shape(case, sample_shape):
    torch.manual_seed(0)
    d, _ = make(case)
    expected = torch.Size(sample_shape) + d.batch_shape + d.event_shape
    assert d.event_shape == (d.max_events, d.num_marks + 2)
    x = d.sample(sample_shape)
    assert x.shape == expected
    assert not x.requires_grad
    check_realization(x, d, exact=not case.relaxed, hard=case.straight_through)
    if case.relaxed:
        y = d.rsample(sample_shape)
        assert y.shape == expected
        check_realization(y, d, exact=False, hard=case.straight_through)
        logs = getattr(y, LOG_WEIGHTS_ATTR)
        assert logs.shape == expected[:-1] + (d.num_marks + 1,)
        # relaxed draws keep every candidate: real rows carry soft weights, padding rows none
        real = event_mask(y)
        if not case.straight_through:
            assert torch.allclose(torch.where(real.unsqueeze(-1), logs.exp(), torch.zeros_like(logs)), y[..., 1:],
                                  atol=1e-6)


@pytest.mark.parametrize("case", CASES)
def test_batch_shape(case):
    d, _ = make(case)
    assert d.batch_shape == case.batch_shape
    assert make(case, torch.float64)[0].batch_shape == case.batch_shape


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("case", CASES)
def test_log_prob(case, dtype):
    torch.manual_seed(1)
    d, _ = make(case, dtype)
    x = draw(d, (2,))
    assert x.dtype == dtype
    lp = d.log_prob(x)
    assert lp.dtype == dtype
    assert lp.shape == (2,) + d.batch_shape
    assert torch.isfinite(lp).all()
    # one sample scored against the batch broadcasts to the batch shape
    assert d.log_prob(draw(d)).shape == d.batch_shape
    # a value that is not padded to max_events is accepted (observed data)
    if not case.relaxed:
        rows = int(event_mask(x).sum(-1).max()) + 1
        assert torch.allclose(d.log_prob(x[..., :rows, :]), lp)


@pytest.mark.parametrize("case", [c for c in CASES if not c.values[0].straight_through])
def test_log_prob_float32_matches_float64(case):
    torch.manual_seed(2)
    d64, _ = make(case, torch.float64)
    d32, _ = make(case, torch.float32)
    x = plain(draw(d64, (2,)).detach())  # no carried log-weights: scored from the weights
    lp64 = d64.log_prob(x)
    lp32 = d32.log_prob(x.float())
    assert torch.allclose(lp32.double(), lp64, rtol=1e-3, atol=1e-3), (lp32, lp64)


@pytest.mark.parametrize("case", [c for c in CASES if c.values[0].relaxed and not c.values[0].straight_through])
def test_carried_log_weights_match_weights(case):
    torch.manual_seed(3)
    d, _ = make(case, torch.float64)
    x = d.rsample((2,))
    assert torch.allclose(d.log_prob(x), d.log_prob(plain(x.detach())), rtol=1e-6)


@pytest.mark.parametrize("case", CASES)
def test_expand(case):
    torch.manual_seed(4)
    d, _ = make(case)
    shape = (4,) + d.batch_shape
    e = d.expand(shape)
    assert e.batch_shape == shape
    assert e.event_shape == d.event_shape
    assert e.temperature == d.temperature and e.straight_through == d.straight_through
    assert e.relaxed_log_prob == d.relaxed_log_prob
    x = draw(e)
    assert x.shape == shape + d.event_shape
    check_realization(x, e, exact=not case.relaxed, hard=case.straight_through)
    lp = e.log_prob(x)
    assert lp.shape == shape and torch.isfinite(lp).all()
    # the expanded process scores like the original
    assert torch.allclose(lp, d.log_prob(x))
    e2 = d.expand((2, 3) + d.batch_shape)
    assert draw(e2, (2,)).shape == (2, 2, 3) + d.batch_shape + d.event_shape


@pytest.mark.parametrize("case", CASES)
def test_mask(case):
    torch.manual_seed(5)
    d, _ = make(case)
    x = draw(d)
    assert torch.equal(d.mask(False).log_prob(x), torch.zeros(d.batch_shape))
    e = d.expand((3,) + d.batch_shape)
    y = draw(e)
    keep = torch.tensor([True, False, True]).reshape((3,) + (1,) * len(d.batch_shape))
    masked = e.mask(keep).log_prob(y)
    full = e.log_prob(y)
    assert masked.shape == full.shape == e.batch_shape
    assert torch.equal(masked[1], torch.zeros_like(masked[1]))
    assert torch.allclose(masked[0::2], full[0::2])
    assert (full[1] != 0).all()


@pytest.mark.parametrize("case", CASES)
def test_support(case):
    torch.manual_seed(6)
    d, _ = make(case)
    x = draw(d, (2,))
    ok = d.support.check(x)
    assert ok.shape == (2,) + d.batch_shape
    assert ok.all()
    assert d.support.event_dim == 2
    assert not event_mask(x)[..., -1].any()  # the last row is padding
    bad = x.detach().clone()
    bad[..., 0, 1:] = 0.4  # weights of the first row no longer sum to 0 or 1
    assert not d.support.check(bad).any()
    bad = x.detach().clone()
    bad[..., -1, 0] = float("nan")  # a padding row with a NaN time
    assert not d.support.check(bad).any()
    bad = x.detach().clone()
    bad[..., -1, 1], bad[..., -1, 2] = 0.5, -0.5  # negative weights summing to 0
    assert not d.support.check(bad).any()


@pytest.mark.parametrize("case", CASES)
def test_plate(case):
    torch.manual_seed(7)
    d, _ = make(case)
    batch = d.batch_shape

    def model():
        with pyro.plate("n", 3, dim=-len(batch) - 1):
            return pyro.sample("x", d)

    trace = poutine.trace(model).get_trace()
    x = trace.nodes["x"]["value"]
    assert x.shape == (3,) + batch + d.event_shape
    assert trace.nodes["x"]["fn"].batch_shape == (3,) + batch
    trace.compute_log_prob()
    lp = trace.nodes["x"]["log_prob"]
    assert lp.shape == (3,) + batch and torch.isfinite(lp).all()


def _event_model(case, batch_ndims):
    def model():
        d, _ = make(case)
        with pyro.plate("n", 2, dim=-1):
            return pyro.sample("x", d.to_event(batch_ndims))

    return model


@pytest.mark.parametrize("parallel", [False, True], ids=["sequential", "parallel"])
@pytest.mark.parametrize("case", CASES)
def test_predictive(case, parallel):
    torch.manual_seed(8)
    d, _ = make(case)
    model = _event_model(case, len(d.batch_shape))
    samples = Predictive(model, num_samples=2, parallel=parallel)()
    x = samples["x"]
    assert x.shape == (2, 2) + d.batch_shape + d.event_shape
    assert not torch.equal(x[0], x[1])  # independent draws
    check_realization(x, d, exact=not case.relaxed, hard=case.straight_through)


@pytest.mark.parametrize("elbo", [Trace_ELBO, TraceGraph_ELBO], ids=["Trace_ELBO", "TraceGraph_ELBO"])
@pytest.mark.parametrize("case", CASES)
def test_svi_step(case, elbo):
    torch.manual_seed(9)
    d0, init = make(case)
    n = len(d0.batch_shape)

    main = next(iter(init))

    def shifted(name, value, positive):  # the model differs from the guide's initial value
        if name != main:
            return value
        return value * 0.8 if positive else value - 0.3

    def model():
        # Pyro requires equal value shapes in model and guide: fix max_events to the guide's
        d, _ = make(case, param=shifted, max_events=d0.max_events)
        with pyro.plate("n", 2, dim=-1):
            pyro.sample("x", d.to_event(n))

    def guide():
        d, _ = make(case, param=pyro_param)
        with pyro.plate("n", 2, dim=-1):
            pyro.sample("x", d.to_event(n))

    svi = SVI(model, guide, Adam({"lr": 0.05}), elbo())
    loss = svi.step()
    assert math.isfinite(loss)
    store = pyro.get_param_store()
    assert set(store.keys()) == set(init)
    changed = False
    for name, value in init.items():
        new = store[name].detach()
        assert torch.isfinite(new).all()
        changed |= not torch.allclose(new, value)
    assert changed


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("case", CASES)
def test_gradients_reach_parameters(case, dtype):
    torch.manual_seed(10)
    d, params = make(case, dtype, param=leaf_param)
    names, tensors = list(params), list(params.values())  # names[0]: rates / baseline / bias
    if case.relaxed:
        x = d.rsample((2,))
        assert x.requires_grad
        # random coefficients: weights and "no event" together sum to one in every row, and a plain
        # sum of the mark weights is constant where "no event" has probability 0 (Poisson, default bound)
        coef = torch.rand(x[..., 1:].shape, dtype=dtype)
        grads = torch.autograd.grad((x[..., 1:] * coef).sum(), tensors, retain_graph=True, allow_unused=True)
        assert grads[0] is not None and (grads[0] != 0).any(), "rsample gives no gradient to " + names[0]
        assert all(g is None or torch.isfinite(g).all() for g in grads)
        assert not d.sample().requires_grad
    else:
        x = d.sample((2,))
        assert not x.requires_grad
    # random coefficients: a plain sum can have a zero gradient at its maximum (e.g. Poisson with n = rate T)
    coef = torch.rand(torch.broadcast_shapes(x.shape[:-2], d.batch_shape), dtype=dtype)
    grads = torch.autograd.grad((d.log_prob(x) * coef).sum(), tensors, allow_unused=True)
    for name, g in zip(names, grads, strict=True):
        assert g is not None, f"log_prob gives no gradient to {name}"
        assert torch.isfinite(g).all()
        assert g.dtype == dtype
    assert (grads[0] != 0).any()


@pytest.mark.parametrize("case", [c for c in CASES if c.values[0].relaxed])
def test_temperature_zero_is_exact(case):
    """The same configuration at temperature 0: exact samples scored by the exact likelihood."""
    torch.manual_seed(11)
    exact = Case(case.intensity, {k: v for k, v in case.kwargs.items()
                                  if k not in ("temperature", "straight_through")}, case.context)
    d, _ = make(exact)
    assert not d.has_rsample
    x = d.sample((2,))
    check_realization(x, d, exact=True)
    assert torch.isfinite(d.log_prob(x)).all()
    if not case.straight_through:
        relaxed, _ = make(case)
        soft = relaxed.sample((4,))
        assert event_mask(soft).any()
        with pytest.raises(ValueError, match="soft or 'no event' marks"):
            d.log_prob(soft)


# --------------------------------------------------------------------------------------------
# Bad inputs
# --------------------------------------------------------------------------------------------


def _poisson(**kwargs):
    kwargs.setdefault("duration", 2.0)
    return PointProcess(Poisson([0.5, 1.0]), validate_args=True, **kwargs)


def _value(rows, duration=2.0):
    """An exact realization with K = 2 from ``(time, mark)`` rows, plus one padding row."""
    x = torch.zeros(len(rows) + 1, 4)
    for e, (t, m) in enumerate(rows):
        x[e, 0] = t
        x[e, 1 + m] = 1.0
    x[-1, 0] = duration
    return x


def test_valid_value_is_accepted():
    lp = _poisson().log_prob(_value([(0.2, 0), (0.5, 1), (1.5, 0)]))
    expected = 2 * math.log(0.5) + math.log(1.0) - 1.5 * 2.0
    assert lp.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    "value, match",
    [
        (_value([(0.5, 0), (0.2, 1)]), "unsorted event times"),
        (_value([(0.5, 0), (2.5, 1)]), "outside the window"),
        (_value([(-0.1, 0), (0.5, 1)]), "outside the window"),
        (_value([(float("nan"), 0)]), "NaN or inf"),
        (_value([(float("inf"), 0)]), "NaN or inf"),
        (torch.tensor([[0.3, 0.7, 0.7, 0.0], [2.0, 0.0, 0.0, 0.0]]), "simplex"),
        (torch.tensor([[0.3, 1.5, -0.5, 0.0], [2.0, 0.0, 0.0, 0.0]]), "negative mark weights"),
        (torch.tensor([[0.3, 0.2, 0.2, 0.0], [2.0, 0.0, 0.0, 0.0]]), "simplex"),
        (torch.tensor([[0.3, 0.6, 0.3, 0.1], [2.0, 0.0, 0.0, 0.0]]), "soft or 'no event' marks"),
        (torch.tensor([[0.3, 0.0, 0.0, 1.0], [2.0, 0.0, 0.0, 0.0]]), "soft or 'no event' marks"),
        (torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.3, 1.0, 0.0, 0.0]]), "after padding"),
        (torch.zeros(3, 3), "batch x events x 4"),
        (torch.zeros(3, 5), "batch x events x 4"),
        (torch.zeros(4), "batch x events x 4"),
    ],
    ids=["unsorted", "after-window", "negative-time", "nan", "inf", "not-simplex", "negative-weight",
         "sum-below-one", "soft-exact", "no-event-exact", "event-after-padding", "too-few-marks",
         "too-many-marks", "no-event-dim"],
)
def test_log_prob_rejects_bad_values(value, match):
    with pytest.raises(ValueError, match=match):
        _poisson().log_prob(value)


def test_log_prob_rejects_per_sequence_out_of_window():
    d = PointProcess(Poisson([0.5, 1.0]), [1.0, 3.0], validate_args=True)
    x = torch.stack([_value([(0.5, 0)], 3.0), _value([(2.5, 1)], 3.0)])
    assert torch.isfinite(d.log_prob(x)).all()
    with pytest.raises(ValueError, match="outside the window"):
        d.log_prob(x.flip(0))  # 2.5 lies outside the first window [0, 1]


def test_relaxed_process_rejects_bad_values():
    d = _poisson(temperature=0.5)
    with pytest.raises(ValueError, match="unsorted"):
        d.log_prob(torch.tensor([[0.5, 0.2, 0.3, 0.5], [0.2, 0.2, 0.3, 0.5], [2.0, 0, 0, 0]]))
    with pytest.raises(ValueError, match="simplex"):
        d.log_prob(torch.tensor([[0.5, 0.2, 0.3, 0.4], [2.0, 0, 0, 0]]))
    with pytest.raises(ValueError, match="batch x events x 4"):
        d.log_prob(torch.zeros(2, 5))


def test_log_prob_rejects_non_broadcastable_value():
    d = PointProcess(Poisson([[0.5, 1.0]] * 3), 2.0, validate_args=True)
    x = _value([(0.5, 0)]).expand(2, -1, -1)
    with pytest.raises(ValueError, match="does not broadcast with batch_shape"):
        d.log_prob(x)


@pytest.mark.parametrize(
    "make_process",
    [
        lambda: PointProcess(Poisson([[0.5, 1.0]] * 3), [1.0, 2.0]),
        lambda: PointProcess(Poisson([[0.5, 1.0]] * 3), 2.0, bound=torch.full((2,), 3.0)),
        lambda: PointProcess(ExpHawkes([0.4, 0.3], _HAWKES_ADJ_CTX, 1.0), [1.0, 2.0, 3.0], context=CTX2),
    ],
    ids=["duration", "bound", "context"],
)
def test_non_broadcastable_batch_shapes(make_process):
    with pytest.raises(ValueError, match="do not broadcast|does not broadcast"):
        make_process()


@pytest.mark.parametrize("temperature", [-0.1, float("nan"), float("inf"), "hot"])
def test_bad_temperature(temperature):
    with pytest.raises(ValueError, match="temperature must be"):
        _poisson(temperature=temperature)


def test_straight_through_needs_temperature():
    with pytest.raises(ValueError, match="straight_through=True needs temperature > 0"):
        _poisson(straight_through=True)


def test_bad_relaxed_log_prob():
    with pytest.raises(ValueError, match="relaxed_log_prob must be one of"):
        _poisson(temperature=0.5, relaxed_log_prob="concrete")


def test_rsample_needs_temperature():
    with pytest.raises(ValueError, match="rsample needs temperature > 0"):
        _poisson().rsample()


@pytest.mark.parametrize("temperature", [0.0, 0.5], ids=["exact", "relaxed"])
def test_bound_exceeded_when_sampling(temperature):
    torch.manual_seed(12)
    d = PointProcess(Poisson([1.0, 2.0]), 2.0, bound=2.0, temperature=temperature)
    with pytest.raises(ValueError, match="times the bound.*pass a larger bound"):
        d.sample((4,))


@pytest.mark.parametrize("temperature", [0.0, 0.5], ids=["exact", "relaxed"])
def test_bound_exceeded_by_glm_softplus(temperature):
    torch.manual_seed(13)
    intensity = GLM([1.0, 1.0], [[[0.5, 0.5], [0.5, 0.5]]], ExponentialBasis([1.0]), "softplus")
    d = PointProcess(intensity, 2.0, bound=2.0, temperature=temperature)  # softplus(1) * 2 = 2.63 > 2
    with pytest.raises(ValueError, match="times the bound"):
        d.sample((2,))


def test_bound_exceeded_in_log_prob():
    torch.manual_seed(14)
    ok = PointProcess(Poisson([1.0, 2.0]), 2.0, bound=4.0, temperature=0.5)
    x = ok.rsample((2,))
    assert torch.isfinite(ok.log_prob(x)).all()
    tight = PointProcess(Poisson([1.0, 2.0]), 2.0, bound=2.5, temperature=0.5, validate_args=True)
    with pytest.raises(ValueError, match="times the bound.*pass a larger bound"):
        tight.log_prob(x)


@pytest.mark.parametrize("temperature", [0.0, 0.5], ids=["exact", "relaxed"])
def test_max_events_overflow_when_sampling(temperature):
    torch.manual_seed(15)
    d = PointProcess(Poisson([5.0, 5.0]), 2.0, temperature=temperature, max_events=3)
    with pytest.raises(ValueError, match="max_events=3.*pass a larger max_events"):
        d.sample((4,))


def test_max_events_overflow_ogata():
    torch.manual_seed(16)
    d = PointProcess(ExpHawkes([5.0, 5.0], _HAWKES_ADJ, 1.0), 2.0, max_events=3)
    with pytest.raises(ValueError, match="max_events=3"):
        d.sample((2,))


@pytest.mark.parametrize("max_events", [0, -2, 2.5])
def test_bad_max_events(max_events):
    with pytest.raises(ValueError, match="max_events must be a positive integer"):
        _poisson(max_events=max_events)


def test_relaxed_softplus_glm_needs_bound():
    intensity = GLM([0.0, 0.0], [[[0.1, 0.1], [0.1, 0.1]]], ExponentialBasis([1.0]), "softplus")
    with pytest.raises(ValueError, match="needs a constant bound.*pass bound="):
        PointProcess(intensity, 2.0, temperature=0.5)


def test_exact_softplus_glm_needs_bound():
    intensity = GLM([0.0, 0.0], [[[0.1, 0.1], [0.1, 0.1]]], ExponentialBasis([1.0]), "softplus")
    with pytest.raises(ValueError, match="bound="):
        PointProcess(intensity, 2.0).sample()


@pytest.mark.parametrize(
    "baseline, adjacency, decay, match",
    [
        ([-0.1, 0.3], _HAWKES_ADJ, 1.0, "nonnegative"),
        ([0.1, 0.3], [[0.2, -0.1], [0.1, 0.2]], 1.0, "nonnegative"),
        ([0.1, 0.3], _HAWKES_ADJ, 0.0, "decay must be positive"),
        ([0.1, 0.3], _HAWKES_ADJ, [[1.0, -1.0], [1.0, 1.0]], "decay must be positive"),
        ([0.1, float("nan")], _HAWKES_ADJ, 1.0, "NaN or inf"),
        ([0.1, 0.3], [[0.2, 0.1]], 1.0, "adjacency must have shape"),
    ],
    ids=["baseline", "adjacency", "decay", "decay-matrix", "nan", "shape"],
)
def test_bad_hawkes_parameters(baseline, adjacency, decay, match):
    with pytest.raises(ValueError, match=match):
        ExpHawkes(baseline, adjacency, decay)


@pytest.mark.parametrize("name", ["duration", "bound"])
@pytest.mark.parametrize("value", [0.0, -1.0, float("nan"), float("inf"), [1.0, 0.0]])
def test_nonpositive_duration_and_bound(name, value):
    kwargs = {"duration": 2.0, name: value}
    with pytest.raises(ValueError, match=f"{name} must be positive and finite"):
        PointProcess(Poisson([0.5, 1.0]), **kwargs)


def test_not_an_intensity():
    with pytest.raises(ValueError, match="intensity must be a pyro_dpp.intensity.Intensity"):
        PointProcess(lambda t: t, 2.0)


@pytest.mark.parametrize(
    "context, match",
    [
        (_ctx([0.3], [1], num_marks=2), "context must have shape batch x events x 3"),
        (torch.zeros(3, 4), "context must have shape batch x events x 3"),
        ([[0.3, 1.0, 0.0]], "context must be a realization tensor or SpikeTrains"),
        (torch.tensor([[0.9, 1.0, 0.0], [0.3, 1.0, 0.0], [2.0, 0.0, 0.0]]), "context has unsorted"),
        (torch.tensor([[2.5, 1.0, 0.0], [3.0, 0.0, 0.0]]), "context has event times outside"),
    ],
    ids=["two-context-marks", "width", "not-a-tensor", "unsorted", "out-of-window"],
)
def test_bad_context(context, match):
    with pytest.raises(ValueError, match=match):
        PointProcess(ExpHawkes([0.4, 0.3], _HAWKES_ADJ_CTX, 1.0), 2.0, context=context)


def test_context_as_spike_trains():
    torch.manual_seed(17)
    trains = SpikeTrains.from_events(torch.tensor([0.3, 0.9, 1.4]), torch.tensor([0, 0, 0]), 1, 2.0)
    a = PointProcess(ExpHawkes([0.4, 0.3], _HAWKES_ADJ_CTX, 1.0), 2.0, context=trains)
    b = PointProcess(ExpHawkes([0.4, 0.3], _HAWKES_ADJ_CTX, 1.0), 2.0, context=CTX1)
    c = PointProcess(ExpHawkes([0.4, 0.3], _HAWKES_ADJ_CTX, 1.0), 2.0)
    x = a.sample((2,))
    assert torch.allclose(a.log_prob(x), b.log_prob(x))
    # the context excites: it changes the likelihood
    assert not torch.allclose(a.log_prob(x), c.log_prob(x))


def test_underflowed_relaxed_value_needs_carried_log_weights():
    torch.manual_seed(18)
    d = PointProcess(Poisson([0.5, 1.0]), 2.0, bound=3.0, temperature=0.01, validate_args=True)
    x = d.rsample((4,))
    real = event_mask(x)
    assert (real.unsqueeze(-1) & (x[..., 1:] == 0)).any(), "expected float32 underflow at temperature 0.01"
    assert torch.isfinite(d.log_prob(x)).all()  # carried log-weights
    # (before: a detached clone lost them; now only a plain tensor has none)
    assert torch.equal(d.log_prob(x.detach().clone()), d.log_prob(x).detach())
    with pytest.raises(ValueError, match="exactly zero.*score the tensor returned by rsample"):
        d.log_prob(plain(x.detach()))


def test_straight_through_value_needs_carried_log_weights():
    torch.manual_seed(19)
    d = PointProcess(Poisson([0.5, 1.0]), 2.0, temperature=0.5, straight_through=True, validate_args=True)
    x = d.rsample((2,))
    assert torch.isfinite(d.log_prob(x)).all()
    with pytest.raises(ValueError, match="exactly zero"):
        d.log_prob(plain(x.detach()))


# --------------------------------------------------------------------------------------------
# Sample size: what the caller fixes, never parameter values (DESIGN §4)
# --------------------------------------------------------------------------------------------

_SUPERCRITICAL = dict(baseline=[1.0, 3.0], adjacency=[[2.0, 3.0], [4.0, 1.0]], decay=2.0)
_ISSUE_EVENTS = [[0.31, 0.93, 1.29, 2.32, 4.25], [0.12, 1.19, 2.12, 2.41, 3.35, 4.21]]


def _np_hawkes_loglik(times, marks, mu, alpha, beta, duration):
    """Exact log-likelihood of an exponential Hawkes process by a plain loop over events."""
    import numpy as np

    mu, alpha = np.asarray(mu, float), np.asarray(alpha, float)
    total = 0.0
    for e, (t, k) in enumerate(zip(times, marks)):
        rate = mu[k] + sum(alpha[k, marks[n]] * beta * math.exp(-beta * (t - times[n])) for n in range(e)
                           if times[n] < t)
        total += math.log(rate)
    compensator = mu.sum() * duration
    for t, j in zip(times, marks):
        compensator += alpha[:, j].sum() * (1 - math.exp(-beta * (duration - t)))
    return total - compensator


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_supercritical_hawkes_is_scored_without_max_events(dtype):
    """Issue 12's reproducer: sizing a sample from the parameters made this observed site fail."""
    x = SpikeTrains.from_lists([_ISSUE_EVENTS], duration=4.25, dtype=dtype).to_tensor()
    h = ExpHawkes(torch.tensor(_SUPERCRITICAL["baseline"], dtype=dtype),
                  torch.tensor(_SUPERCRITICAL["adjacency"], dtype=dtype), _SUPERCRITICAL["decay"])
    d = PointProcess(h, duration=4.25, validate_args=True)
    times = [t for k in range(2) for t in _ISSUE_EVENTS[k]]
    marks = [k for k in range(2) for _ in _ISSUE_EVENTS[k]]
    order = sorted(range(len(times)), key=times.__getitem__)
    ref = _np_hawkes_loglik([times[i] for i in order], [marks[i] for i in order], _SUPERCRITICAL["baseline"],
                            _SUPERCRITICAL["adjacency"], _SUPERCRITICAL["decay"], 4.25)
    assert float(d.log_prob(x)) == pytest.approx(ref, rel=1e-5 if dtype == torch.float32 else 1e-12)
    # sampling it is what cannot work: the error names max_events and the sizing rule
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="max_events=1000.*default sample size.*pass max_events="):
        d.sample()


def _hawkes(baseline, adjacency, decay=1.0):
    return ExpHawkes(torch.tensor(baseline), torch.tensor(adjacency), decay)


@pytest.mark.parametrize(
    "make_process",
    [
        lambda p: PointProcess(Poisson([p, 2 * p]), 3.0),
        lambda p: PointProcess(Poisson([p, 2 * p]), 3.0, temperature=0.5),
        lambda p: PointProcess(_hawkes([p, 0.1], [[0.3 * p, 0.2], [0.1, 0.4]]), 3.0),
        lambda p: PointProcess(_hawkes([p, 0.1], [[0.3 * p, 0.2], [0.1, 0.4]]), 3.0, bound=20.0, temperature=0.5),
        lambda p: PointProcess(_hawkes([p, 0.1], _HAWKES_ADJ_CTX), 3.0, context=CTX1),
        lambda p: PointProcess(GLM(torch.tensor([p, -p]), torch.zeros(1, 2, 2), ExponentialBasis([1.0]),
                                   amplitude=p), 3.0, temperature=0.3),
    ],
    ids=["poisson", "poisson-relaxed", "hawkes", "hawkes-bound-relaxed", "hawkes-context", "glm-relaxed"],
)
def test_event_shape_does_not_depend_on_parameters(make_process):
    shapes = {make_process(p).event_shape for p in (0.1, 1.0, 3.0, 10.0)}  # 10: a supercritical Hawkes
    assert len(shapes) == 1


def test_sample_size_rule():
    poisson = Poisson([1.0, 2.0])
    assert PointProcess(poisson, 3.0, max_events=7).max_events == 7
    # a bound: a Poisson tail bound of bound * duration candidates
    mean = 5.0 * 3.0
    assert PointProcess(poisson, 3.0, bound=5.0).max_events == math.ceil(mean + 10 * math.sqrt(mean)) + 10
    assert PointProcess(poisson, [3.0, 1.0], bound=5.0).max_events == math.ceil(mean + 10 * math.sqrt(mean)) + 10
    # neither: the documented default, plus one row per context row
    assert PointProcess(poisson, 3.0).max_events == DEFAULT_MAX_EVENTS
    hawkes = ExpHawkes([0.4, 0.3], _HAWKES_ADJ_CTX, 1.0)
    assert PointProcess(hawkes, 2.0, context=CTX1).max_events == DEFAULT_MAX_EVENTS + CTX1.shape[-2]


def test_default_size_accounts_for_context_events():
    """Issue 12: a Hawkes process driven by ~50 context events was sized for 29 events."""
    torch.manual_seed(3)
    ctx_times = torch.sort(torch.rand(50) * 5.0).values
    context = SpikeTrains.from_events(ctx_times, torch.zeros(50, dtype=torch.long), 1, 5.0).to_tensor()
    hawkes = ExpHawkes(torch.tensor([0.2, 0.2]), torch.tensor([[0.1, 0.1, 0.9], [0.1, 0.1, 0.9]]), 2.0)
    d = PointProcess(hawkes, 5.0, context=context)
    x = d.sample((20,))
    assert x.shape == (20, DEFAULT_MAX_EVENTS + context.shape[-2], 4)
    counts = event_mask(x).sum(-1).double()
    # each context event triggers 0.9 events of each mark (plus cascades): far above the 29 of before
    assert counts.mean() > 2 * 0.9 * 50 * 0.8
    assert torch.isfinite(d.log_prob(x)).all()


# --------------------------------------------------------------------------------------------
# expand and dtypes
# --------------------------------------------------------------------------------------------

def test_expand_validates_like_torch():
    d = PointProcess(Poisson([[0.5, 1.0], [1.0, 2.0]]), 2.0)
    assert d.batch_shape == (2,)
    assert d.expand((4, 2)).batch_shape == (4, 2)
    for shape in [(3,), (2, 3), ()]:
        with pytest.raises(ValueError, match="cannot expand batch_shape"):
            d.expand(shape)
    # the same rule as torch's distributions
    with pytest.raises((ValueError, RuntimeError)):
        torch.distributions.Normal(torch.zeros(2), 1.0).expand((3,))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_intensity_raises(dtype):
    with pytest.raises(ValueError, match="float32 or float64"):
        PointProcess(ExpHawkes(torch.tensor([1.0, 3.0], dtype=dtype), torch.tensor(_HAWKES_ADJ, dtype=dtype), 2.0),
                     4.0)


def test_mixed_dtype_intensity_raises():
    with pytest.raises(ValueError, match="mixes torch.float32 and torch.float64"):
        PointProcess(ExpHawkes(torch.tensor([1.0, 3.0]), torch.tensor(_HAWKES_ADJ, dtype=torch.float64), 2.0), 4.0)


def test_mixed_device_intensity_raises():
    """A tensor on another device among the intensity's own (a CPU scalar among CUDA parameters;
    here a meta tensor among CPU ones) is refused with what to change, before any scan runs."""
    from user_intensities import UserPowerLaw

    intensity = UserPowerLaw(torch.tensor([0.5, 0.3]), torch.tensor(_HAWKES_ADJ), torch.tensor(1.0, device="meta"))
    with pytest.raises(ValueError, match="holds tensors on cpu and meta; build all its parameters on one device"):
        PointProcess(intensity, 4.0)


@pytest.mark.parametrize("value_dtype", [torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_inputs_are_converted_to_the_intensity_dtype(dtype, value_dtype):
    events = SpikeTrains.from_lists([_ISSUE_EVENTS], duration=4.25, dtype=torch.float64).to_tensor()
    context = CTX1.to(value_dtype)
    hawkes = ExpHawkes(torch.tensor([0.4, 0.3], dtype=dtype), torch.tensor(_HAWKES_ADJ_CTX, dtype=dtype), 1.0)
    d = PointProcess(hawkes, torch.tensor(4.25, dtype=value_dtype), context=context)
    lp = d.log_prob(events.to(value_dtype))
    assert lp.dtype == dtype
    ref = PointProcess(hawkes, 4.25, context=context.to(dtype)).log_prob(events.to(value_dtype).to(dtype))
    assert torch.equal(lp, ref)


# --------------------------------------------------------------------------------------------
# A relaxed value stays exactly scoreable through what Pyro and users do to tensors
# --------------------------------------------------------------------------------------------

def _round_trips(x):
    buffer = io.BytesIO()
    torch.save({"x": x.detach()}, buffer)
    buffer.seek(0)
    return {
        "clone": x.clone(),
        "detach": x.detach(),
        "index": x[1],
        "slice": x[1:3, :-1],
        "stack": torch.stack([x, x])[1],
        "cat": torch.cat([x, x])[x.shape[0]:],
        "deepcopy": copy.deepcopy(x.detach()),
        "torch.save": torch.load(buffer)["x"],  # weights_only loading (the default)
        "to": x.to(torch.float64).to(torch.float32),
    }


@pytest.mark.parametrize("straight_through", [False, True], ids=["soft", "straight-through"])
def test_relaxed_value_round_trips_keep_exact_log_prob(straight_through):
    torch.manual_seed(20)
    hawkes = ExpHawkes(torch.tensor([0.6, 0.4]), torch.tensor(_HAWKES_ADJ), 1.5)
    d = PointProcess(hawkes, 4.0, bound=6.0, temperature=0.01, straight_through=straight_through)
    x = d.rsample((4,))
    real = event_mask(x)
    assert x.dtype == torch.float32
    if not straight_through:
        assert (real.unsqueeze(-1) & (x[..., 1:] == 0)).any(), "expected float32 underflow at temperature 0.01"
    lp = d.log_prob(x).detach()
    assert torch.isfinite(lp).all()
    for name, y in _round_trips(x).items():
        expected = {"index": lp[1], "slice": lp[1:3]}.get(name, lp)
        got = d.log_prob(y)
        assert torch.equal(got.detach(), expected), name
    # an operation that changes entries drops them (and scoring then raises on the underflow, or on
    # the one-hot rows of a straight-through draw)
    with pytest.raises(ValueError, match=r"exactly zero|exact \(one-hot\) events"):
        d.log_prob(x * 1.0)


def test_relaxed_value_edited_in_place_raises():
    torch.manual_seed(21)
    d = PointProcess(Poisson([0.5, 1.0]), 4.0, bound=3.0, temperature=0.5)
    x = d.rsample((2,)).detach().clone()
    x[0, 0, 1:] = torch.tensor([0.2, 0.3, 0.5])
    with pytest.raises(ValueError, match="no longer match its weights"):
        d.log_prob(x)


@pytest.mark.parametrize("edit", ["value", "value-through-detach", "log-weights", "clone-then-value"])
def test_matched_draws_skip_the_consistency_check_until_edited(edit):
    """A draw as rsample made it (and its structural copies) is known to match its log-weights, so
    scoring skips the check; any in-place edit of the value or of the log-weights (through a view,
    ``detach``, a clone) brings the check back; a pair built by ``with_log_weights`` is checked."""
    from pyro_dpp.relaxed import _still_matched, with_log_weights

    torch.manual_seed(23)
    d = PointProcess(Poisson([0.5, 1.0]), 4.0, bound=3.0, temperature=0.5)
    x = d.rsample((2,))
    assert event_mask(x).any(-1).all()
    for y in (x, x.clone(), x[1:], torch.stack([x, x]), x.detach(), x.to(torch.float64)):
        assert _still_matched(y)
    assert not _still_matched(with_log_weights(plain(x), getattr(x, LOG_WEIGHTS_ATTR)))
    target = x.clone() if edit == "clone-then-value" else x
    row = event_mask(target)[0].nonzero()[0, 0]
    with torch.no_grad():
        if edit == "log-weights":
            getattr(target, LOG_WEIGHTS_ATTR)[0, row] += 0.1
        else:
            edited = target.detach() if edit == "value-through-detach" else target
            edited[0, row, 1:] = torch.tensor([0.2, 0.3, 0.5])
    assert not _still_matched(target)
    with pytest.raises(ValueError, match="no longer match its weights"):
        d.log_prob(target)


def test_relaxed_value_keeps_gradients_of_its_log_weights():
    rates = torch.tensor([0.5, 1.0], dtype=torch.float64, requires_grad=True)
    d = PointProcess(Poisson(rates), 4.0, bound=3.0, temperature=0.3)
    torch.manual_seed(22)
    x = d.rsample((3,))
    grads = [torch.autograd.grad(d.log_prob(y).sum(), rates, retain_graph=True)[0]
             for y in (x, x.clone(), torch.stack([x])[0])]
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=0)
    torch.testing.assert_close(grads[2], grads[0], rtol=0, atol=0)


# --------------------------------------------------------------------------------------------
# Tracing and compiling
# --------------------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("temperature", [0.0, 0.5], ids=["exact", "relaxed"])
def test_sampling_under_jit_trace_raises(temperature):
    d = PointProcess(Poisson([0.5, 1.0]), 4.0, temperature=temperature)
    with pytest.raises(ValueError, match="torch.jit.trace.*freeze"):
        torch.jit.trace(lambda r: d.sample() * r, torch.ones(()), check_trace=False)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_traced_log_prob_scores_data_with_more_events():
    """A trace of log_prob must not freeze the number of rows of the traced data."""
    torch.manual_seed(23)
    hawkes = ExpHawkes(torch.tensor([0.5, 0.3]), torch.tensor(_HAWKES_ADJ), 1.0)
    small = PointProcess(hawkes, 2.0, max_events=40).sample()
    large = PointProcess(hawkes, 2.0, max_events=40).sample()
    while event_mask(large).sum() <= event_mask(small).sum():
        large = PointProcess(hawkes, 2.0, max_events=40).sample()

    def log_prob(baseline, value):
        return PointProcess(ExpHawkes(baseline, torch.tensor(_HAWKES_ADJ), 1.0), 2.0).log_prob(value)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(log_prob, (torch.tensor([0.5, 0.3]), small), check_trace=False)
    torch.testing.assert_close(traced(torch.tensor([0.5, 0.3]), large), log_prob(torch.tensor([0.5, 0.3]), large))


def test_compiled_relaxed_sampling_matches_eager():
    """torch.compile turns the data-dependent candidate count into a graph break: same draws."""
    rate = torch.tensor([0.5, 1.0])

    def draw_and_score(seed):
        torch.manual_seed(seed)
        d = PointProcess(Poisson(rate), 4.0, bound=3.0, temperature=0.5)
        x = d.rsample((3,))
        return x, d.log_prob(x)

    compiled = torch.compile(draw_and_score, backend="eager")
    for seed in range(3):
        x, lp = draw_and_score(seed)
        cx, clp = compiled(seed)
        assert torch.equal(x, cx) and torch.equal(lp, clp)


# --------------------------------------------------------------------------------------------
# Index values (time, mark id): the compact exact layout
# --------------------------------------------------------------------------------------------

EXACT_CASES = [c for c in CASES if not c.values[0].relaxed]


def _case(case_id: str) -> Case:
    return next(c.values[0] for c in CASES if c.id == case_id)


def _as_index(x: torch.Tensor) -> torch.Tensor:
    """The index value of a dense exact draw, built here independently of pyro_dpp's converters."""
    real = x[..., 1:-1].sum(-1) > 0.5
    ids = torch.where(real, x[..., 1:-1].argmax(-1).to(x.dtype), torch.full_like(x[..., 0], -1.0))
    return torch.stack([x[..., 0], ids], -1)


@pytest.fixture(params=["dense-fallback", "chunked"])
def index_path(request, monkeypatch):
    """Score index values through the dense fallback (small data) or the chunked path (forced)."""
    import pyro_dpp.index_likelihood as likelihood

    if request.param == "chunked":
        monkeypatch.setattr(likelihood, "INDEX_DENSE_ENTRIES", 0)
        monkeypatch.setattr(likelihood, "INDEX_CHUNK", 3)  # several chunks even for short draws
    return request.param


@pytest.mark.parametrize("case", EXACT_CASES)
def test_index_log_prob_equals_dense(case, index_path):
    torch.manual_seed(3)
    d, params = make(case, torch.float64, leaf_param)
    x = d.sample((2,))
    xi = _as_index(x)
    assert xi.shape == x.shape[:-1] + (2,)
    dense, index = d.log_prob(x), d.log_prob(xi)
    assert index.shape == dense.shape
    assert torch.allclose(index, dense, rtol=1e-10, atol=1e-10)
    leaves = [p for p in params.values() if p.requires_grad]
    g_dense = torch.autograd.grad(dense.sum(), leaves, allow_unused=True)
    g_index = torch.autograd.grad(index.sum(), leaves, allow_unused=True)
    for a, b in zip(g_dense, g_index, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.allclose(a, b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", ["user-exphawkes", "user-exphawkes-additive", "powerlaw", "neural"])
def test_index_log_prob_of_user_intensities(name, index_path):
    from test_scan_generic import make as make_user  # user intensities as a user writes them

    intensity, leaves, bound, build = make_user(name.replace("-additive", ""))
    ctx = _ctx([0.4, 1.5, 3.0], [0, 0, 0], duration=5.0).double() if intensity.num_context_marks else None

    def process():
        intensity = build(*leaves)
        if name.endswith("additive"):
            intensity.additive_compensator = True  # its closed compensator is a sum over events
        return PointProcess(intensity, 5.0, bound=bound, context=ctx)

    torch.manual_seed(4)
    with torch.no_grad():
        x = process().sample((2,))
    dense, index = process().log_prob(x), process().log_prob(_as_index(x))
    assert torch.allclose(index, dense, rtol=1e-10, atol=1e-10)
    g_dense = torch.autograd.grad(dense.sum(), leaves)
    g_index = torch.autograd.grad(index.sum(), leaves)
    for a, b in zip(g_dense, g_index, strict=True):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-10)


def test_index_log_prob_gradcheck():
    import pyro_dpp.index_likelihood as likelihood

    torch.manual_seed(5)
    d, _ = make(_case("hawkes-context-exact"), torch.float64)
    xi = _as_index(d.sample())
    old = likelihood.INDEX_DENSE_ENTRIES
    likelihood.INDEX_DENSE_ENTRIES = 0
    try:
        def f(baseline, adjacency):
            return PointProcess(ExpHawkes(baseline, adjacency, torch.tensor(1.0, dtype=torch.float64)), 2.0,
                                context=CTX1.double()).log_prob(xi)

        base = torch.tensor([0.4, 0.3], dtype=torch.float64, requires_grad=True)
        adj = torch.tensor(_HAWKES_ADJ_CTX, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(f, (base, adj))
    finally:
        likelihood.INDEX_DENSE_ENTRIES = old


def test_index_log_prob_with_soft_context_equals_dense(index_path):
    """A GLM scored given soft (relaxed) context events, as the SNN's observed process is."""
    torch.manual_seed(6)
    d, params = make(_case("glm-exp2-context-batched-exact"), torch.float64, leaf_param)
    soft = PointProcess(Poisson(torch.tensor([1.5], dtype=torch.float64)), 2.0, temperature=0.5).rsample((2,))
    d = PointProcess(d.intensity, 2.0, context=soft.detach())
    x = d.sample()
    dense, index = d.log_prob(x), d.log_prob(_as_index(x))
    assert torch.allclose(index, dense, rtol=1e-10, atol=1e-10)
    leaves = [p for p in params.values() if p.requires_grad]
    for a, b in zip(torch.autograd.grad(dense.sum(), leaves), torch.autograd.grad(index.sum(), leaves), strict=True):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-10)


class _LargestTensor(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the most elements of any tensor an operation returns (factories included)."""

    def __init__(self):
        super().__init__()
        self.most = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.most = max(self.most, t.numel())
        return out


def _largest(fn):
    mode = _LargestTensor()
    with mode:
        fn()
    return mode.most


def test_index_log_prob_never_builds_the_one_hot_history():
    """300 marks x 50,000 events: the dense layout would hold 15.1 million numbers, the index value
    holds 100,000; no tensor of the chunked scoring comes near the dense size."""
    k, events = 300, 50_000
    gen = torch.Generator().manual_seed(7)
    times = torch.rand(events, generator=gen, dtype=torch.float64).sort().values * 100.0
    ids = torch.randint(k, (events,), generator=gen).to(torch.float64)
    xi = torch.cat([torch.stack([times, ids], -1), torch.tensor([[100.0, -1.0]], dtype=torch.float64)])
    rates = torch.rand(k, generator=gen, dtype=torch.float64) + 0.5
    d = PointProcess(Poisson(rates), 100.0)
    got = torch.tensor(0.0)

    def score():
        nonlocal got
        got = d.log_prob(xi)

    most = _largest(score)
    assert most < events * (k + 2) / 10
    want = torch.log(rates)[ids.long()].sum() - rates.sum() * 100.0
    assert torch.allclose(got, want, rtol=1e-12)


def _big_exphawkes(k, matrix_decay, gen):
    decay = (torch.rand(k, k, generator=gen, dtype=torch.float64) + 1.0 if matrix_decay
             else torch.tensor(2.0, dtype=torch.float64))
    adjacency = (torch.rand(k, k, generator=gen, dtype=torch.float64) * 1e-3).requires_grad_()
    return ExpHawkes(torch.rand(k, generator=gen, dtype=torch.float64) + 0.1, adjacency, decay)


def _big_glm(k, gen):
    weight = (torch.randn(2, k, k, generator=gen, dtype=torch.float64) * 0.1).requires_grad_()
    basis = EpanechnikovBasis(2, 0.0, 2.0, 1.0).double()
    return GLM(torch.zeros(k, dtype=torch.float64), weight, basis, "sigmoid", torch.tensor(2.0, dtype=torch.float64))


@pytest.mark.parametrize("name, k, events", [
    ("uniform-decay", 300, (400, 1_600)), ("matrix-decay-scan", 60, (400, 1_600)),
    ("glm-windows", 100, (8_000, 32_000)),
])
def test_index_scoring_memory_does_not_grow_with_events(monkeypatch, name, k, events):
    """The chunked path (an ExpHawkes with one decay: its integer-mark recursion; with a decay
    matrix: the generic scan; a finite-support GLM: windows of the history) at a fixed event rate:
    the largest tensor of log_prob and its backward pass is the same for 4 times the events and
    within the documented budget (``INDEX_WORK`` numbers), while the dense layout grows as events x
    marks."""
    import pyro_dpp.index_likelihood as likelihood

    monkeypatch.setattr(likelihood, "INDEX_DENSE_ENTRIES", 0)
    gen = torch.Generator().manual_seed(8)
    intensity = _big_glm(k, gen) if name == "glm-windows" else _big_exphawkes(k, name == "matrix-decay-scan", gen)
    most = []
    for n in events:
        duration = n / 20.0  # 20 events per unit time
        times = torch.rand(n, generator=gen, dtype=torch.float64).sort().values * duration
        ids = torch.randint(k, (n,), generator=gen).to(torch.float64)
        xi = torch.stack([times, ids], -1)
        d = PointProcess(intensity, duration)
        most.append(_largest(lambda d=d, xi=xi: d.log_prob(xi).backward()))
    assert most[1] <= most[0] * 1.1
    if name == "glm-windows":  # both sizes fill whole chunks of the GLM's interval kernels (2048 intervals x 3 x K)
        assert most[1] < events[1] * (k + 2)  # below the dense layout
    else:
        assert most[1] <= likelihood.INDEX_WORK * 1.1


def test_index_exphawkes_recursion_with_ties(monkeypatch):
    """Events at equal times, across chunk boundaries: only strictly earlier events excite."""
    import pyro_dpp.index_likelihood as likelihood

    d, params = make(_case("hawkes-exact-bound"), torch.float64, leaf_param)
    value = torch.tensor([[0.5, 0], [0.5, 1], [0.5, 0], [0.5, 1], [1.0, 1], [1.0, 0], [1.5, 0], [2.0, -1]],
                         dtype=torch.float64)
    dense = d.log_prob(likelihood.index_to_dense(value, 2))
    for chunk in (1, 2, 3, 64):
        monkeypatch.setattr(likelihood, "INDEX_DENSE_ENTRIES", 0)
        monkeypatch.setattr(likelihood, "INDEX_SEGMENT", chunk)
        assert torch.allclose(d.log_prob(value), dense, rtol=1e-12)


@pytest.mark.parametrize(
    "rows, match",
    [
        ([(0.5, 0), (0.2, 1)], "unsorted event times"),
        ([(0.5, 0), (2.5, 1)], "outside the window"),
        ([(-0.1, 0), (0.5, 1)], "outside the window"),
        ([(float("nan"), 0)], "NaN or inf"),
        ([(0.5, 0.5)], "not whole numbers"),
        ([(0.5, 2)], r"mark ids outside 0\.\.1"),
        ([(0.5, -3)], r"mark ids outside 0\.\.1"),
        ([(2.0, -1), (0.5, 1)], "real events after padding"),
    ],
)
def test_index_value_errors_say_what_to_change(rows, match):
    value = torch.tensor(rows, dtype=torch.float32)
    with pytest.raises(ValueError, match=match):
        _poisson().log_prob(value)


def test_index_value_is_refused_by_a_relaxed_process():
    d = PointProcess(Poisson(torch.tensor([0.6, 1.2])), 2.0, temperature=0.5)
    with pytest.raises(ValueError, match="relaxed"):
        d.log_prob(torch.tensor([[0.5, 0.0], [2.0, -1.0]]))
    with pytest.raises(ValueError, match="value_format='index' holds exact events"):
        PointProcess(Poisson(torch.tensor([0.6, 1.2])), 2.0, temperature=0.5, value_format="index")
    with pytest.raises(ValueError, match="value_format must be one of"):
        PointProcess(Poisson(torch.tensor([0.6, 1.2])), 2.0, value_format="sparse")


@pytest.mark.parametrize("case", [c for c in EXACT_CASES if c.values[0].context is None][:6])
def test_value_format_index_samples_the_same_events(case):
    d, _ = make(case, torch.float64)
    di, _ = make(case, torch.float64, value_format="index")
    assert di.event_shape == (d.max_events, 2)
    torch.manual_seed(9)
    x = d.sample((3,))
    torch.manual_seed(9)
    xi = di.sample((3,))
    assert xi.shape == (3,) + di.batch_shape + di.event_shape
    assert torch.equal(xi, _as_index(x))
    assert di.support.check(xi).all()
    assert torch.allclose(di.log_prob(xi), d.log_prob(x), rtol=1e-10)
    # expand keeps the format
    assert di.expand((4,) + di.batch_shape).sample().shape[-1] == 2


def test_small_index_values_reuse_exphawkes_statistics():
    """MCMC-style loops over a small index value take ExpHawkes's cached statistics through one
    dense twin of the value (built once while the value is unchanged)."""
    from pyro_dpp.dense_twin import dense_twin
    from pyro_dpp.intensity.hawkes_stats import _CACHE

    torch.manual_seed(10)
    d, _ = make(_case("hawkes-exact-bound"), torch.float64)
    x = d.sample((3,))
    xi = _as_index(x)
    twin = dense_twin(xi, d.intensity)
    assert twin is dense_twin(xi, d.intensity)
    assert torch.allclose(d.log_prob(xi), d.log_prob(x), rtol=1e-12)
    assert any(entry.value() is twin for entry in _CACHE)
    xi[0, 0, 0] = xi[0, 0, 0] * 0.5  # an in-place change: a new twin
    assert dense_twin(xi, d.intensity) is not twin
