"""Windows of long recordings (pyro_dpp.windows) and history before the window (pyro_dpp.past)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp
from user_intensities import UserPowerLaw

import pyro_dpp
from pyro_dpp import PointProcess, SpikeTrains
from pyro_dpp.distribution import DEFAULT_MAX_EVENTS
from pyro_dpp.intensity import (
    GLM,
    Basis,
    EpanechnikovBasis,
    ExpHawkes,
    ExponentialBasis,
    PiecewisePoisson,
    Poisson,
    PowerLawHawkes,
    RaisedCosineBasis,
    SumExpHawkes,
)
from pyro_dpp.windows import Windows, history_reach, prepend_past

DT = torch.float64


def _leaf(x):
    return torch.tensor(x, dtype=DT, requires_grad=True)


def _intensities():
    g = torch.Generator().manual_seed(3)
    w2 = (torch.randn(2, 2, 2, generator=g, dtype=DT) * 0.4).tolist()
    w3 = (torch.randn(3, 2, 2, generator=g, dtype=DT) * 0.4).tolist()
    return {
        "exp_hawkes": lambda: ExpHawkes(_leaf([0.5, 0.3]), _leaf([[0.3, 0.1], [0.2, 0.2]]), _leaf(2.0)),
        "sumexp_hawkes": lambda: SumExpHawkes(_leaf([0.5, 0.3]), _leaf(np.full((2, 2, 2), 0.1).tolist()),
                                              _leaf([1.0, 3.0])),
        "powerlaw_support": lambda: PowerLawHawkes(_leaf([0.5, 0.3]), _leaf([[0.2, 0.1], [0.1, 0.2]]), _leaf(1.0),
                                                   _leaf(2.5), support=5.0),
        "powerlaw_infinite": lambda: PowerLawHawkes(_leaf([0.5, 0.3]), _leaf([[0.2, 0.1], [0.1, 0.2]]), _leaf(1.0),
                                                    _leaf(2.5)),
        "poisson": lambda: Poisson(_leaf([0.5, 0.3])),
        "glm_epanechnikov": lambda: GLM(_leaf([0.0, -0.2]), _leaf(w2), EpanechnikovBasis(2, 0.0, 3.0, 1.0),
                                        "sigmoid", 2.0),
        "glm_exponential": lambda: GLM(_leaf([0.0, -0.2]), _leaf(w2), ExponentialBasis([0.5, 1.5]), "sigmoid", 2.0),
        "glm_raised_cosine": lambda: GLM(_leaf([0.0, -0.2]), _leaf(w3), RaisedCosineBasis(3, last_peak=3.0),
                                         "sigmoid", 2.0),
    }


INTENSITIES = _intensities()
T, LENGTH = 40.0, 7.0


def _recording(intensity, seed=0):
    """A sampled recording, edited so that it has events exactly at window edges and at the end, and
    an empty window ([14, 21)); the last window ([35, 40]) is shorter."""
    torch.manual_seed(seed)
    with torch.no_grad():
        value = PointProcess(intensity, T, bound=8.0).sample()
    trains = SpikeTrains.from_tensor(value, torch.tensor(T, dtype=DT))
    lists = trains.to_lists()[0]
    lists = [x[(x < 14.0) | (x >= 21.0)] for x in lists]  # an empty window
    lists[0] = np.sort(np.concatenate([lists[0], [7.0, 28.0, T]]))  # at edges, at the end
    lists[1] = np.sort(np.concatenate([lists[1], [35.0]]))
    return SpikeTrains.from_lists([lists], T, dtype=DT)


@pytest.mark.parametrize("name", sorted(INTENSITIES))
@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_windows_sum_to_the_whole_recording(name, backend):
    intensity = INTENSITIES[name]()
    trains = _recording(intensity)
    # GLM compensators are Gauss-Legendre quadratures between breakpoints, and a window edge is one
    # more breakpoint: with the default 8 nodes the whole recording's quadrature over the empty
    # 7 s stretch errs by ~1e-8 relative, so compare at a node count where both are exact
    nodes = 48 if name.startswith("glm") else 8
    with pyro_dpp.backend(backend):
        whole = PointProcess(intensity, trains.duration, quadrature_nodes=nodes).log_prob(trains.to_tensor()).sum()
        windows = trains.windows(LENGTH, model=intensity)
        assert len(windows) == 6
        assert torch.equal(windows.duration, torch.tensor([7.0] * 5 + [5.0], dtype=DT))
        assert int(windows.trains.num_events[2]) == 0  # the empty window
        parts = PointProcess(intensity, windows.duration, past=windows.past, quadrature_nodes=nodes).log_prob(
            windows.value())
    assert torch.isfinite(parts).all()
    torch.testing.assert_close(parts.sum(), whole, rtol=1e-12, atol=0)
    params = [p for p in intensity.parameters()] + [v for v in vars(intensity).values()
                                                  if isinstance(v, torch.Tensor) and v.requires_grad]
    params = list({id(p): p for p in params}.values())
    g_whole = torch.autograd.grad(whole, params, allow_unused=True)
    g_parts = torch.autograd.grad(parts.sum(), params, allow_unused=True)
    for a, b in zip(g_whole, g_parts):
        if a is None:
            assert b is None or not b.any()
            continue
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


class _ScanScoredHawkes(ExpHawkes):
    """A user intensity: overrides the math, so it samples through the generic scan and scores
    through the generic scoring scan."""

    parallel_scoring = False

    def update(self, state, time, weights):
        return super().update(state, time, weights)


def test_windows_sum_through_the_generic_scoring_scan():
    base = INTENSITIES["exp_hawkes"]()
    intensity = _ScanScoredHawkes(base.baseline, base.adjacency, base.decay)
    trains = _recording(intensity, seed=1)
    whole = PointProcess(intensity, trains.duration).log_prob(trains.to_tensor()).sum()
    windows = trains.windows(LENGTH, model=intensity)
    parts = PointProcess(intensity, windows.duration, past=windows.past).log_prob(windows.value())
    torch.testing.assert_close(parts.sum(), whole, rtol=1e-12, atol=0)
    reference = PointProcess(base, windows.duration, past=windows.past).log_prob(windows.value())
    torch.testing.assert_close(parts, reference, rtol=1e-12, atol=1e-12)


def test_history_reach():
    eps = torch.finfo(DT).eps
    assert history_reach(INTENSITIES["exp_hawkes"]()) == pytest.approx(math.log(1 / eps) / 2.0)
    assert history_reach(INTENSITIES["sumexp_hawkes"]()) == pytest.approx(math.log(1 / eps) / 1.0)
    assert history_reach(INTENSITIES["powerlaw_support"]()) == 5.0
    assert history_reach(INTENSITIES["poisson"]()) == 0.0
    assert history_reach(INTENSITIES["glm_epanechnikov"]()) == 4.0
    assert history_reach(INTENSITIES["glm_exponential"]()) == pytest.approx(1.5 * math.log(1 / eps))
    assert history_reach(ExponentialBasis([0.5, 1.5]), torch.float32) == pytest.approx(
        1.5 * math.log(1 / torch.finfo(torch.float32).eps))
    # (c + d)^-b = eps c^-b at the reach
    c, b = 1.0, 2.5
    d = history_reach(INTENSITIES["powerlaw_infinite"]())
    assert ((c + d) / c) ** (-b) == pytest.approx(eps, rel=1e-6)
    with pytest.raises(ValueError, match="history="):
        history_reach(object())
    with pytest.raises(ValueError, match="absolute time"):
        history_reach(PiecewisePoisson(torch.tensor([0.0, 1.0, 2.0], dtype=DT), torch.tensor([[0.5], [1.0]], dtype=DT)))


class _ReachedPowerLaw(UserPowerLaw):
    """A user's own intensity (no stock class) that states its reach: its kernel is cut off at
    ``support``."""

    def history_reach(self, dtype=None):
        return float(self.support)


def _user_power_law(cls, support=3.0):
    return cls(_leaf([0.5, 0.3]), _leaf([[0.3, 0.1], [0.2, 0.2]]), delta=1.0, beta=1.5, support=support)


def test_windows_of_a_user_intensity_that_states_its_reach():
    intensity = _user_power_law(_ReachedPowerLaw)
    trains = _recording(intensity, seed=2)
    # a quadrature compensator (no closed form), and a window edge is one more breakpoint: compare
    # at a node count where both quadratures are exact to float precision (as for the GLMs above)
    nodes = 48
    whole = PointProcess(intensity, trains.duration, quadrature_nodes=nodes).log_prob(trains.to_tensor()).sum()
    windows = trains.windows(LENGTH, model=intensity)
    assert windows.history == 3.0
    assert int(windows.past[..., 1:].sum()) > 0  # the windows do carry past events
    parts = PointProcess(intensity, windows.duration, past=windows.past, quadrature_nodes=nodes).log_prob(
        windows.value())
    torch.testing.assert_close(parts.sum(), whole, rtol=1e-12, atol=0)
    # the reach is what makes them agree: a third of it leaves the windows' first seconds short
    short = trains.windows(LENGTH, history=1.0)
    cut = PointProcess(intensity, short.duration, past=short.past, quadrature_nodes=nodes).log_prob(short.value())
    assert abs((cut.sum() - whole).item()) > 1e-6 * abs(whole.item())


def test_a_user_intensity_without_a_reach_asks_for_history():
    intensity = _user_power_law(UserPowerLaw)
    trains = _recording(_user_power_law(_ReachedPowerLaw), seed=2)
    with pytest.raises(ValueError, match="history reach of UserPowerLaw is not known: pass history="):
        trains.windows(LENGTH, model=intensity)
    with pytest.raises(ValueError, match="pass history="):
        history_reach([INTENSITIES["poisson"](), intensity])
    # given history=, the same windows serve it
    windows = trains.windows(LENGTH, history=3.0)
    whole = PointProcess(intensity, trains.duration, quadrature_nodes=48).log_prob(trains.to_tensor()).sum()
    parts = PointProcess(intensity, windows.duration, past=windows.past, quadrature_nodes=48).log_prob(
        windows.value())
    torch.testing.assert_close(parts.sum(), whole, rtol=1e-12, atol=0)


def test_history_reach_protocol_defaults():
    # a user's intensity that states a finite history_support (for scoring) gets it as its reach
    class Supported(UserPowerLaw):
        def history_support(self):
            return float(self.support)

    assert history_reach(_user_power_law(Supported, support=2.5)) == 2.5
    assert _user_power_law(Supported).history_reach() == 3.0
    # a subclass of a stock intensity that overrides the math keeps its parent's reach (documented:
    # the kernels' shape is the parent's) while scoring stops trusting the parent's support
    base = INTENSITIES["exp_hawkes"]()
    derived = _ScanScoredHawkes(base.baseline, base.adjacency, base.decay)
    assert history_reach(derived) == history_reach(base)
    assert derived.history_support() == math.inf and base.history_support() == history_reach(base)

    # ... unless it states its own
    class Longer(_ScanScoredHawkes):
        def history_reach(self, dtype=None):
            return 2 * super().history_reach(dtype)

    assert history_reach(Longer(base.baseline, base.adjacency, base.decay)) == 2 * history_reach(base)
    # the reach follows the data's dtype, the support the model's
    eps32 = torch.finfo(torch.float32).eps
    assert history_reach(base, torch.float32) == pytest.approx(math.log(1 / eps32) / 2.0)
    assert base.history_reach() == history_reach(base, DT)
    # lists: the longest; a basis of a user's own with a finite support; one without
    models = [INTENSITIES[name]() for name in ("poisson", "glm_epanechnikov", "powerlaw_support")]
    assert history_reach(models) == 5.0

    class Bumps(Basis):
        num_basis = 1
        support = 1.5

    class Open(Basis):
        num_basis = 1

    assert history_reach(Bumps()) == 1.5
    with pytest.raises(ValueError, match="history reach of Open is not known"):
        history_reach(Open())


def test_snn_reach_is_its_basis_reach():
    from pyro_dpp.snn import SNN

    for basis in (EpanechnikovBasis(2, 0.0, 3.0, 1.0), ExponentialBasis([0.5, 1.5])):
        net = SNN(2, 1, basis=basis)
        assert history_reach(net, torch.float32) == history_reach(basis, torch.float32)
        assert net.history_reach() == basis.history_reach(net.weight.dtype)


def test_windows_of_several_sequences_and_indexing():
    trains = SpikeTrains.from_events([np.array([0.5, 2.0, 2.5, 4.0]), np.array([1.0, 3.0])],
                                     [np.array([0, 1, 0, 1]), np.array([1, 0])], 2, torch.tensor([4.0, 3.0]),
                                     dtype=DT)
    windows = trains.windows(2.0, history=1.6)
    assert isinstance(windows, Windows)
    assert windows.sequence.tolist() == [0, 0, 1, 1]
    assert windows.offsets.tolist() == [0.0, 2.0, 0.0, 2.0]
    assert windows.duration.tolist() == [2.0, 2.0, 2.0, 1.0]
    lists = windows.trains.to_lists()
    assert [x.tolist() for x in lists[1]] == [[0.5], [0.0, 2.0]]  # the end event, in the last window
    assert [x.tolist() for x in lists[3]] == [[1.0], []]
    past = windows.past[1]
    real = past[..., 1:].sum(-1) > 0.5
    assert past[real, 0].tolist() == [-1.5]  # 0.5 is 1.5 before t = 2
    assert not (windows.past[2, :, 1:].sum(-1) > 0.5).any()  # a first window has no past
    assert windows.past[3, :, 0][windows.past[3, :, 1:].sum(-1) > 0.5].tolist() == [-1.0]  # 1.0 in seq 1
    assert trains.windows(2.0, history=1.0).past[1, :, 1:].sum() == 0  # 0.5 is beyond a 1 s reach
    sub = windows[[1, 3]]
    assert len(sub) == 2 and sub.sequence.tolist() == [0, 1]
    # a subset builds its own dense tensors, equal to the rows of the whole set's
    for index in ([1, 3], torch.tensor([2, 0]), slice(1, 3), np.array([True, False, True, True])):
        part, rows = windows[index], np.arange(4)[index.numpy() if isinstance(index, torch.Tensor) else index]
        assert torch.equal(part.duration, windows.duration[rows])
        for got, full in ((part.past, windows.past), (part.value(), windows.value()),
                          (part.with_past(), windows.with_past())):
            width = got.shape[-2]
            assert torch.equal(got, full[rows][..., :width, :])
            assert not (full[rows][..., width:, 1:] != 0).any()  # the rest is padding
    both = windows.with_past()
    assert both[1, :4, 0].tolist() == [-1.5, 0.0, 0.5, 2.0]
    assert (both[1, :4, 1:].sum(-1) == 1).all()
    assert repr(windows).startswith("Windows(4 windows")


def test_prepend_past_orders_rows():
    past = torch.tensor([[[-1.0, 1, 0, 0], [0.0, 0, 0, 0]]], dtype=DT)
    value = torch.tensor([[[0.5, 0, 1, 0], [2.0, 0, 0, 0]]], dtype=DT)
    both = prepend_past(past, value, torch.tensor([2.0], dtype=DT))
    assert both[0, :, 0].tolist() == [-1.0, 0.5, 2.0]
    assert both[0, :, 1:].sum(-1).tolist() == [1.0, 1.0, 0.0]


def test_windows_with_context_sum_to_the_whole():
    g = torch.Generator().manual_seed(5)
    glm = GLM(_leaf([0.0, -0.2]), (torch.randn(2, 2, 3, generator=g, dtype=DT) * 0.4).requires_grad_(),
              EpanechnikovBasis(2, 0.0, 3.0, 1.0), "sigmoid", 2.0)
    torch.manual_seed(0)
    ctx_value = PointProcess(Poisson(torch.tensor([0.7], dtype=DT)), T).sample()
    context = SpikeTrains.from_tensor(ctx_value, torch.tensor(T, dtype=DT))
    with torch.no_grad():
        value = PointProcess(glm, T, context=ctx_value).sample()
    trains = SpikeTrains.from_tensor(value, torch.tensor(T, dtype=DT))
    whole = PointProcess(glm, T, context=ctx_value).log_prob(value)
    windows = trains.windows(LENGTH, model=glm, context=context)
    assert (windows.context[..., 0] < 0).any()  # context before the window travels as context
    parts = PointProcess(glm, windows.duration, context=windows.context, past=windows.past).log_prob(windows.value())
    torch.testing.assert_close(parts.sum(), whole, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="same recording"):
        trains.windows(LENGTH, model=glm, context=SpikeTrains.from_tensor(ctx_value, torch.tensor(T + 1, dtype=DT)))


# ---- sampling with a past ------------------------------------------------------------------------

PAST = torch.tensor([[[-1.0, 1, 0, 0], [-0.5, 0, 1, 0], [-0.1, 1, 0, 0], [0.0, 0, 0, 0]]], dtype=DT)


@pytest.mark.parametrize("temperature", [0.0, 0.5])
def test_sampling_with_past_agrees_across_scan_paths(temperature):
    base = ExpHawkes(torch.tensor([0.5, 0.3], dtype=DT), torch.tensor([[0.3, 0.1], [0.2, 0.2]], dtype=DT),
                     torch.tensor(2.0, dtype=DT))
    user = _ScanScoredHawkes(base.baseline, base.adjacency, base.decay)
    draws = []
    for backend, intensity in (("reference", base), ("auto", base), ("torch", base), ("auto", user)):
        with pyro_dpp.backend(backend):
            torch.manual_seed(1)
            process = PointProcess(intensity, 3.0, bound=8.0, past=PAST, temperature=temperature)
            draws.append(process.sample((3,)))
    for d in draws[1:]:
        torch.testing.assert_close(d, draws[0], rtol=1e-10, atol=1e-12)
    torch.manual_seed(1)
    without = PointProcess(base, 3.0, bound=8.0, temperature=temperature).sample((3,))
    assert not torch.equal(without, draws[0])  # the past changes the draw


def test_relaxed_draw_with_past_has_gradients_and_density():
    adjacency = torch.tensor([[0.3, 0.1], [0.2, 0.2]], dtype=DT, requires_grad=True)
    intensity = ExpHawkes(torch.tensor([0.5, 0.3], dtype=DT), adjacency, torch.tensor(2.0, dtype=DT))
    torch.manual_seed(0)
    for scoring in ("dpp", "exact"):
        process = PointProcess(intensity, 3.0, bound=8.0, past=PAST, temperature=0.5, relaxed_log_prob=scoring)
        draw = process.rsample()
        log_q = process.log_prob(draw)
        assert torch.isfinite(log_q).all()
        (grad,) = torch.autograd.grad(log_q.sum() + draw[..., 1].sum(), adjacency)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def _hawkes_mean_count(mu, alpha, beta, past_times, duration):
    """E N(0, T) of a one-mark exponential Hawkes process given past events: m = mu + h + I with
    h(t) = alpha beta sum_p exp(-beta (t - t_p)) and I' = alpha beta m - beta I (an ODE, solved by scipy)."""
    c = alpha * beta * sum(math.exp(beta * t) for t in past_times)

    def rhs(t, y):
        i, _ = y
        m = mu + c * math.exp(-beta * t) + i
        return [alpha * beta * m - beta * i, m]

    sol = solve_ivp(rhs, (0.0, duration), [0.0, 0.0], rtol=1e-10, atol=1e-12)
    return sol.y[1, -1]


@pytest.mark.parametrize("sampler", ["thinning", "ogata"])
def test_exact_sampling_with_past_has_the_right_mean_count(sampler):
    mu, alpha, beta, duration = 0.3, 0.5, 1.5, 2.0
    past_times = [-0.6, -0.3, -0.05]
    past = torch.tensor([[[t, 1.0, 0.0] for t in past_times]], dtype=DT)
    intensity = ExpHawkes(torch.tensor([mu], dtype=DT), torch.tensor([[alpha]], dtype=DT),
                          torch.tensor(beta, dtype=DT))
    bound = 12.0 if sampler == "thinning" else None
    torch.manual_seed(7)
    n = 4000
    draw = PointProcess(intensity, duration, bound=bound, past=past, max_events=100).sample((n,))
    counts = (draw[..., 1:].sum(-1) > 0.5).sum(-1).to(DT)
    expected = _hawkes_mean_count(mu, alpha, beta, past_times, duration)
    no_past = _hawkes_mean_count(mu, alpha, beta, [], duration)
    se = float(counts.std()) / math.sqrt(n)
    assert abs(float(counts.mean()) - expected) < 4 * se
    assert abs(no_past - expected) > 10 * se  # the test can tell a sampler that ignores the past


def _one_glm(gain):
    """One neuron driven by one context neuron through a unit Epanechnikov bump at lag 0."""
    return GLM(torch.tensor([0.0], dtype=DT), torch.tensor([[[0.0, gain]]], dtype=DT),
               EpanechnikovBasis(1, 0.0, 0.0, 1.0), "sigmoid", 4.0)


def test_context_before_the_window_in_ogata_and_thinning():
    glm = _one_glm(3.0)
    context = torch.tensor([[[-0.5, 1.0, 0.0], [0.0, 0.0, 0.0]]], dtype=DT)
    torch.manual_seed(0)
    process = PointProcess(glm, 1.0, bound=4.0, context=context, max_events=50)
    counts = (process.sample((3000,))[..., 1] > 0.5).sum(-1).to(DT)
    # rate a sigmoid(3 phi(t + 0.5)) on [0, 0.5], a / 2 after: the expectation by quadrature
    t = torch.linspace(0, 1, 200001, dtype=DT)
    lag = t + 0.5
    phi = torch.where(lag < 1, 0.75 * (1 - lag**2), torch.zeros_like(lag))
    expected = float(torch.trapezoid(4.0 * torch.sigmoid(3 * phi), t))
    se = float(counts.std()) / math.sqrt(3000)
    assert abs(float(counts.mean()) - expected) < 4 * se
    assert abs(2.0 - expected) > 10 * se


def test_past_rows_are_not_sample_rows():
    intensity = ExpHawkes(torch.tensor([0.5, 0.3], dtype=DT), torch.tensor([[0.3, 0.1], [0.2, 0.2]], dtype=DT),
                          torch.tensor(2.0, dtype=DT))
    long_past = torch.zeros(1, 50, 4, dtype=DT)
    long_past[0, :, 0] = torch.linspace(-5, -0.1, 50, dtype=DT)
    long_past[0, :, 1] = 1.0
    assert PointProcess(intensity, 3.0, past=long_past).max_events == DEFAULT_MAX_EVENTS
    glm = _one_glm(1.0)
    context = torch.tensor([[[-0.5, 1.0, 0.0], [0.2, 1.0, 0.0], [1.0, 0.0, 0.0]]], dtype=DT)
    assert PointProcess(glm, 1.0, context=context).max_events == DEFAULT_MAX_EVENTS + 2


# ---- bad inputs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("past, match", [
    (torch.tensor([[[0.5, 1.0, 0.0, 0.0]]], dtype=DT), "before the window"),
    (torch.tensor([[[0.0, 1.0, 0.0, 0.0]]], dtype=DT), "times < 0"),
    (torch.tensor([[[math.nan, 1.0, 0.0, 0.0]]], dtype=DT), "NaN"),
    (torch.tensor([[[-math.inf, 1.0, 0.0, 0.0]]], dtype=DT), "NaN or inf"),
    (torch.tensor([[[-1.0, 1.0, 0.0]]], dtype=DT), "batch x events x 4"),
    (torch.tensor([[[-0.5, 1.0, 0.0, 0.0], [-1.0, 1.0, 0.0, 0.0]]], dtype=DT), "unsorted"),
    (torch.tensor([[[-1.0, 0.7, 0.0, 0.0]]], dtype=DT), "simplex"),
    (torch.tensor([[[0.0, 0.0, 0.0, 0.0], [-1.0, 1.0, 0.0, 0.0]]], dtype=DT), "padding rows last"),
    ([[-1.0, 1.0, 0.0, 0.0]], "realization tensor"),
])
def test_bad_past_raises(past, match):
    intensity = Poisson(torch.tensor([0.5, 0.3], dtype=DT))
    with pytest.raises(ValueError, match=match):
        PointProcess(intensity, 3.0, past=past)


@pytest.mark.parametrize("kwargs, match", [
    (dict(length=0.0), "positive"),
    (dict(length=-1.0), "positive"),
    (dict(length=math.nan), "positive"),
    (dict(length=math.inf), "positive"),
    (dict(length="a"), "positive number"),
    (dict(length=1.0, history=-1.0), "history must be"),
    (dict(length=1.0, history=math.nan), "history must be"),
    (dict(length=1.0), "pass history="),
])
def test_bad_windows_raise(kwargs, match):
    trains = SpikeTrains.from_lists([[[0.5], [1.5]]], 3.0, dtype=DT)
    with pytest.raises(ValueError, match=match):
        trains.windows(**kwargs)


def test_context_after_the_window_end_raises():
    glm = _one_glm(1.0)
    context = torch.tensor([[[-0.5, 1.0, 0.0], [2.0, 1.0, 0.0]]], dtype=DT)
    with pytest.raises(ValueError, match="after the window's end"):
        PointProcess(glm, 1.0, context=context)


@pytest.mark.parametrize("name", ["exp_hawkes", "glm_epanechnikov", "glm_exponential"])
def test_relaxed_gradients_with_past_agree_across_scan_paths(name):
    """The engine's adjoint (and the generic scan's recomputation) with past steps on the time line
    give the reference loop's gradients."""
    past = torch.tensor([[[-2.0, 1, 0, 0], [-0.7, 0, 1, 0], [-0.1, 1, 0, 0], [0.0, 0, 0, 0]]], dtype=DT)
    grads = []
    for backend in ("reference", "auto", "torch"):
        intensity = INTENSITIES[name]()
        params = [p for p in vars(intensity).values() if isinstance(p, torch.Tensor) and p.requires_grad]
        params += [p for p in intensity.parameters() if p.requires_grad]
        params = list({id(p): p for p in params}.values())
        with pyro_dpp.backend(backend):
            torch.manual_seed(2)
            draw = PointProcess(intensity, 3.0, bound=8.0, past=past, temperature=0.5).rsample((2,))
        loss = (draw[..., 1] * torch.arange(draw.shape[-2], dtype=DT)).sum() + draw[..., 2].pow(2).sum()
        grads.append([g for g in torch.autograd.grad(loss, params, allow_unused=True)])
    for other in grads[1:]:
        for a, b in zip(grads[0], other):
            if a is None:
                assert b is None or not b.any()
            else:
                assert a.abs().sum() > 0
                torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-11)


def test_index_value_with_past_equals_dense():
    """A window scored as an index value with its past gives the dense value's log-likelihood."""
    from pyro_dpp.events import dense_to_index

    torch.manual_seed(0)
    hawkes = ExpHawkes(torch.tensor([0.5, 0.3]), torch.tensor([[0.3, 0.1], [0.2, 0.2]]), 1.5).double()
    trains = PointProcess(hawkes, torch.tensor(30.0, dtype=torch.float64)).sample((2,))
    windows = SpikeTrains.from_tensor(trains, torch.full((2,), 30.0, dtype=torch.float64)).windows(10.0, model=hawkes)
    dense = PointProcess(hawkes, windows.duration, past=windows.past).log_prob(windows.value())
    index = PointProcess(hawkes, windows.duration, past=windows.past).log_prob(dense_to_index(windows.value()))
    torch.testing.assert_close(index, dense, rtol=1e-12, atol=1e-12)
