"""The conformance suite (:mod:`pyro_dpp.testing`): it passes on every stock intensity, and each
deliberately broken user intensity of the table raises a ``ConformanceError`` (a ``ValueError``)
naming the broken rule. Its Kolmogorov-Smirnov p-value is checked against scipy's."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F
from _helpers import in_float64

from pyro_dpp.intensity import (
    GLM,
    EpanechnikovBasis,
    ExpHawkes,
    ExponentialBasis,
    Intensity,
    PiecewisePoisson,
    Poisson,
    RaisedCosineBasis,
)
from pyro_dpp.testing import ConformanceError, check_intensity, ks_pvalue, rescaled_gaps

DT = torch.float64


# ---- stock intensities -----------------------------------------------------------------------------
def _basis(name, dtype):
    make = {"exponential": lambda: ExponentialBasis([0.7, 3.0]),
            "epanechnikov": lambda: EpanechnikovBasis(2, 0.0, 3.0, 1.0),
            "raised-cosine": lambda: RaisedCosineBasis(3, 4.0, 0.5)}[name]
    return in_float64(make) if dtype == DT else make()


def _glm(basis_name, activation, dtype):
    """A GLM with 2 modelled marks and 1 context mark; unbounded activations get inhibitory filters
    (the bases are nonnegative), so that ``amplitude * g(bias)`` bounds each rate."""
    g = torch.Generator().manual_seed(3)
    basis = _basis(basis_name, dtype)
    weight = torch.randn(basis.num_basis, 2, 3, generator=g, dtype=dtype)
    bias = torch.tensor([0.2, -0.3], dtype=dtype)
    bound = None
    if activation in ("softplus", "exp"):
        weight = -weight.abs()
        g_bias = F.softplus(bias) if activation == "softplus" else bias.exp()
        bound = float(1.5 * g_bias.sum()) * (1 + 1e-6)
    return GLM(bias, weight, basis, activation, 1.5), bound


@pytest.mark.parametrize("dtype", [DT, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("activation", ["sigmoid", "hardtanh", "softplus", "exp"])
@pytest.mark.parametrize("basis_name", ["exponential", "epanechnikov", "raised-cosine"])
def test_glm_passes(basis_name, activation, dtype):
    glm, bound = _glm(basis_name, activation, dtype)
    report = check_intensity(glm, duration=6.0, bound=bound, num_samples=50, seed=1)
    assert not report["skipped"], report["skipped"]
    assert set(report["gradients"]) == {"bias", "weight", "amplitude"}  # basis buffers are constants
    assert report["statistics"]["num_intervals"] > 150


def test_poisson_with_batched_rates_passes():
    poisson = Poisson(torch.tensor([[0.5, 1.5], [1.0, 0.2]], dtype=DT), num_context_marks=1)
    report = check_intensity(poisson, duration=8.0, bound=4.0, num_samples=60)
    assert report["batch_shape"] == (2,) and report["gradients"] == {"rates_param": "ok"}


@pytest.mark.parametrize("dtype", [DT, torch.float32], ids=["float64", "float32"])
def test_hawkes_with_context_and_matrix_decay_passes(dtype):
    adjacency = torch.tensor([[0.3, 0.1, 0.4], [0.2, 0.2, 0.3]], dtype=dtype)
    decay = torch.tensor([[1.0, 2.0, 0.5], [3.0, 0.7, 1.2]], dtype=dtype)
    hawkes = ExpHawkes(torch.tensor([0.4, 0.3], dtype=dtype), adjacency, decay)
    # no bound: exact sampling by Ogata's local bounds; the relaxed check needs one
    report = check_intensity(hawkes, duration=10.0, num_samples=60)
    assert "relaxed" in report["skipped"] and report["statistics"]["num_intervals"] > 500
    assert report["scan_parallel_max_error"] < (1e-12 if dtype == DT else 1e-5)
    report = check_intensity(hawkes, duration=10.0, bound=15.0, statistics=False, gradients=False)
    assert report["relaxed"]["gradients"] == {"baseline": "finite", "adjacency": "finite", "decay": "finite"}


def test_batched_hawkes_passes_with_given_context():
    hawkes = ExpHawkes(torch.tensor([[0.4], [0.8]], dtype=DT), torch.tensor([[[0.5, 0.4]], [[0.2, 0.1]]], dtype=DT),
                       torch.tensor(1.5, dtype=DT))
    context = torch.tensor([[1.0, 1.0, 0.0], [4.0, 1.0, 0.0], [8.0, 0.0, 0.0]], dtype=DT)  # 2 events, 1 padding
    report = check_intensity(hawkes, duration=8.0, bound=12.0, context=context, num_samples=80, params=["adjacency"])
    assert report["batch_shape"] == (2,) and report["gradients"] == {"adjacency": "ok"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_hawkes_on_cuda_passes():
    hawkes = ExpHawkes(torch.tensor([0.4, 0.3], device="cuda"), torch.tensor([[0.3, 0.1], [0.2, 0.2]], device="cuda"),
                       torch.tensor(1.5, device="cuda"))
    check_intensity(hawkes, duration=8.0, bound=10.0, num_samples=60)


# ---- a user intensity, and ways to break it --------------------------------------------------------
class UserHawkes(Intensity):
    """What a user might write: ``lambda_k(t) = mu_k + sum_j a_kj sum_{t_n < t} w_nj exp(-b (t - t_n))``."""

    def __init__(self, mu=(0.5, 0.3), a=((0.4, 0.2), (0.1, 0.3)), b=1.5, num_context_marks=0):
        super().__init__()
        self.mu = torch.tensor(mu, dtype=DT)
        self.a = torch.tensor(a, dtype=DT)  # K x (K + C)
        self.b = torch.tensor(b, dtype=DT)
        self.num_marks, self.num_context_marks = len(mu), num_context_marks

    @property
    def batch_shape(self):
        return self.mu.shape[:-1]

    def like(self):
        return self.mu  # the default looks for registered parameters and buffers

    def initial_state(self, batch_shape, like, num_steps):
        return like.new_zeros(batch_shape + (self.a.shape[-1],)), like.new_zeros(batch_shape)

    def _decayed(self, state, time):
        trace, last = state
        return trace * torch.exp(-self.b * (time - last)).unsqueeze(-1)

    def rates(self, state, time):
        return self.mu + self._decayed(state, time) @ self.a.T

    def update(self, state, time, weights):
        return self._decayed(state, time) + weights, time

    def kernel(self, times, query):
        lag = query.unsqueeze(-1) - times.unsqueeze(-2)
        return torch.where(lag > 0, torch.exp(-self.b * lag.clamp(min=0)), torch.zeros_like(lag))

    def forward(self, times, weights, query):
        return self.mu.unsqueeze(-2) + (self.kernel(times, query) @ weights) @ self.a.T

    def local_bound(self, state, time):
        bound = self.rates(state, time).sum(-1)
        return bound, torch.full_like(bound, math.inf)


def test_user_intensity_passes_and_make_gives_the_float64_copy():
    report = check_intensity(UserHawkes(), duration=10.0, bound=10.0, num_samples=80)
    assert report["gradients"] == {"mu": "ok", "a": "ok", "b": "ok"}
    calls = []

    def make(dtype):
        calls.append(dtype)
        return UserHawkes()

    check_intensity(UserHawkes(), duration=5.0, make=make, statistics=False, relaxed=False)
    assert calls == [DT]


class NegativeRates(UserHawkes):
    def __init__(self):
        super().__init__(mu=(-0.2, 0.3))


class GrowingState(UserHawkes):
    def initial_state(self, batch_shape, like, num_steps):
        return like.new_zeros(batch_shape + (0,)), like.new_zeros(batch_shape + (0, self.a.shape[-1]))

    def rates(self, state, time):
        return self(state[0], state[1], time.unsqueeze(-1)).squeeze(-2)

    def update(self, state, time, weights):
        return torch.cat([state[0], time.unsqueeze(-1)], -1), torch.cat([state[1], weights.unsqueeze(-2)], -2)


class StateNotTuple(UserHawkes):
    def initial_state(self, batch_shape, like, num_steps):
        return like.new_zeros(batch_shape + (2,))


class SeesEventAtQuery(UserHawkes):
    def kernel(self, times, query):
        lag = query.unsqueeze(-1) - times.unsqueeze(-2)
        return torch.where(lag >= 0, torch.exp(-self.b * lag.clamp(min=0)), torch.zeros_like(lag))


class SeesFuture(UserHawkes):
    def kernel(self, times, query):
        return torch.exp(-self.b * (query.unsqueeze(-1) - times.unsqueeze(-2)).abs())


class SlowerParallelDecay(UserHawkes):
    def kernel(self, times, query):
        lag = query.unsqueeze(-1) - times.unsqueeze(-2)
        return torch.where(lag > 0, torch.exp(-0.9 * self.b * lag.clamp(min=0)), torch.zeros_like(lag))


class NaNRates(UserHawkes):
    def rates(self, state, time):
        trace = self._decayed(state, time)
        return self.mu + (trace @ self.a.T) * trace.sum(-1, keepdim=True) / trace.sum(-1, keepdim=True)


class TooManyMarks(UserHawkes):
    def __init__(self):
        super().__init__()
        self.num_marks = 3


class UndeclaredContext(UserHawkes):
    def __init__(self):
        super().__init__(a=((0.4, 0.2, 0.3), (0.1, 0.3, 0.2)), num_context_marks=0)


class LogRatesOff(UserHawkes):
    def log_rates(self, state, time):
        return torch.log(self.rates(state, time)) + 0.1


class LogForwardOff(UserHawkes):
    def log_forward(self, times, weights, query):
        return 1.01 * torch.log(self(times, weights, query))


class CountsEveryStep(UserHawkes):
    def update(self, state, time, weights):
        return self._decayed(state, time) + weights + 0.1, time


class CountsRows(UserHawkes):
    """The parallel form counts history rows (padding included) instead of summing their weights."""

    def forward(self, times, weights, query):
        rows_before = (query.unsqueeze(-1) > times.unsqueeze(-2)).sum(-1, keepdim=True)
        return super().forward(times, weights, query) + 0.01 * rows_before


class AssumesSorted(UserHawkes):
    """The parallel form takes the events before a query to be a prefix of the rows."""

    def kernel(self, times, query):
        before = torch.searchsorted(times.contiguous(), query.contiguous())
        rows = torch.arange(times.shape[-1])
        lag = query.unsqueeze(-1) - times.unsqueeze(-2)
        return torch.where(rows < before.unsqueeze(-1), torch.exp(-self.b * lag.clamp(min=0)), torch.zeros_like(lag))


class InPlaceUpdate(UserHawkes):
    def update(self, state, time, weights):
        trace, last = state
        trace.mul_(torch.exp(-self.b * (time - last)).unsqueeze(-1)).add_(weights)
        return trace, time


class LowMaxRate(UserHawkes):
    def max_rate(self):
        return self.mu.sum(-1)


class LowLocalBound(UserHawkes):
    def local_bound(self, state, time):
        bound = self.mu.sum(-1).expand(time.shape)
        return bound, torch.full_like(bound, math.inf)


class NoExcitationCompensator(UserHawkes):
    def compensator(self, times, weights, duration):
        return self.mu.sum(-1) * duration


class ClaimsBatch(UserHawkes):
    @property
    def batch_shape(self):
        return torch.Size([2])


class NeedsBatchDim(UserHawkes):
    def forward(self, times, weights, query):
        lag = query[:, :, None] - times[:, None, :]
        kernel = torch.where(lag > 0, torch.exp(-self.b * lag.clamp(min=0)), torch.zeros_like(lag))
        return self.mu + (kernel @ weights) @ self.a.T


class _DoubleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return 2 * grad


class WrongBackward(UserHawkes):
    def rates(self, state, time):
        return _DoubleGrad.apply(self.mu) + self._decayed(state, time) @ self.a.T

    def forward(self, times, weights, query):
        return _DoubleGrad.apply(self.mu).unsqueeze(-2) + (self.kernel(times, query) @ weights) @ self.a.T


class ScanOnlyExcites(UserHawkes):
    """The scan (what the sampler runs) excites strongly, the parallel form not at all."""

    def __init__(self):
        super().__init__(a=((0.6, 0.0), (0.0, 0.6)))

    def forward(self, times, weights, query):
        return self.mu.expand(torch.broadcast_shapes(query.shape[:-1], self.batch_shape) + query.shape[-1:] + (2,))


class SqrtTrace(UserHawkes):
    """sqrt at a zero trace: finite values, NaN gradients with respect to the decay."""

    def rates(self, state, time):
        return self.mu + torch.sqrt(self._decayed(state, time)) @ self.a.T

    def forward(self, times, weights, query):
        return self.mu.unsqueeze(-2) + torch.sqrt(self.kernel(times, query) @ weights) @ self.a.T


class ShortReach(UserHawkes):
    """Declares a reach shorter than its exponential kernel's."""

    def history_reach(self, dtype=None):
        return 0.5


class NegativeReach(UserHawkes):
    def history_reach(self, dtype=None):
        return -1.0


BROKEN = [
    (NegativeRates(), {}, "negative rates"),
    (GrowingState(), {}, "'state'.*fixed shape"),
    (StateNotTuple(), {}, "'state'.*tuple"),
    (SeesEventAtQuery(), {}, "'causality'.*sees events at"),
    (SeesFuture(), {}, "'causality'.*sees events after"),
    (SlowerParallelDecay(), {}, "'scan/parallel'"),
    (NaNRates(), {}, "'finite'"),
    (TooManyMarks(), {}, "'num_marks'"),
    (UndeclaredContext(), {}, "'num_context_marks'.*accepts width 3"),
    (LogRatesOff(), {}, "'log_rates'"),
    (LogForwardOff(), {}, "'log_forward'"),
    (CountsEveryStep(), {}, "'padding'.*all-zero weights"),
    (CountsRows(), {}, "'padding'"),
    (AssumesSorted(), {}, "'row order'"),
    (InPlaceUpdate(), {}, "'in-place update'"),
    (LowMaxRate(), {}, "'max_rate'"),
    (LowLocalBound(), {}, "'local_bound'"),
    (NoExcitationCompensator(), {}, "'compensator'.*closed form"),
    (ClaimsBatch(), {}, "'batch shape'"),
    (NeedsBatchDim(), {}, "'batch shape'"),
    (WrongBackward(), {}, "'gradients'.*'mu'"),
    (ScanOnlyExcites(), {"structure": False, "gradients": False}, "'statistics'"),
    (SqrtTrace(), {"gradients": False, "statistics": False}, "'relaxed'.*not finite"),
    (ShortReach(), {}, "'history reach'.*history_reach\\(\\) = 0.5 s"),
    (NegativeReach(), {}, "'history reach'.*returned -1.0"),
]


@pytest.mark.parametrize("intensity,options,match", BROKEN, ids=[type(b[0]).__name__ for b in BROKEN])
def test_broken_intensity_raises_naming_the_rule(intensity, options, match):
    with pytest.raises(ValueError, match=match) as info:
        check_intensity(intensity, duration=8.0, bound=10.0, num_samples=100, **options)
    assert isinstance(info.value, ConformanceError)


def test_not_an_intensity():
    with pytest.raises(ValueError, match="'interface'"):
        check_intensity(lambda t: t, duration=1.0)


def test_unknown_param_name():
    with pytest.raises(ValueError, match="not tensors of the intensity"):
        check_intensity(UserHawkes(), duration=5.0, params=["nope"], structure=False, statistics=False)


# ---- the statistics helpers ----------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [20, 200, 3000])
def test_ks_pvalue_matches_scipy(n):
    rng = np.random.default_rng(n)
    for scale in (1.0, 1.1, 1.3):
        x = rng.exponential(scale, n)
        ours, ref = ks_pvalue(x), scipy.stats.kstest(x, "expon").pvalue
        if ref > 1e-6:
            assert ours == pytest.approx(ref, rel=0.1, abs=2e-3), (n, scale)
        else:
            assert ours < 1e-5


def test_rescaled_gaps_are_exp1_for_poisson_and_not_for_a_wrong_rate():
    torch.manual_seed(0)
    from pyro_dpp import PointProcess

    rates = torch.tensor([0.5, 2.0], dtype=DT)
    value = PointProcess(Poisson(rates), 10.0, bound=3.0).sample((100,))
    gaps = rescaled_gaps(Poisson(rates), value, 10.0)
    # one interval per event, plus the one the window cuts off per sequence and mark
    assert len(gaps) == int(value[..., 1:3].sum()) + 200
    assert ks_pvalue(gaps) > 1e-3 and abs(gaps.mean() - 1) < 4 / math.sqrt(len(gaps))
    assert ks_pvalue(rescaled_gaps(Poisson(rates * 1.15), value, 10.0)) < 1e-6


def test_leaves_the_intensity_and_the_global_rng_alone():
    hawkes = UserHawkes()
    before = [t.clone() for t in (hawkes.mu, hawkes.a, hawkes.b)]
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    check_intensity(hawkes, duration=5.0, bound=10.0, num_samples=20)
    assert torch.equal(torch.rand(3), expected)
    for old, new in zip(before, (hawkes.mu, hawkes.a, hawkes.b)):
        assert torch.equal(old, new) and not new.requires_grad


class _PastBlindHawkes(ExpHawkes):
    """A closed-form compensator that counts a past event's whole kernel mass after it, also the
    part before the window (what ExpHawkes had before windows existed)."""

    def compensator(self, times, weights, duration):
        remaining = (duration.unsqueeze(-1) - times).clamp(min=0)
        inside = -torch.expm1(-self._decay_matrix().unsqueeze(-3) * remaining[..., None, None])
        triggered = (self.adjacency.unsqueeze(-3) * inside * weights.unsqueeze(-2)).sum((-3, -2, -1))
        return self.baseline.sum(-1) * duration + triggered


def test_history_before_the_window_rule():
    args = (torch.tensor([0.5, 0.3], dtype=torch.float64), torch.tensor([[0.3, 0.1], [0.2, 0.2]], dtype=torch.float64),
            torch.tensor(1.5, dtype=torch.float64))
    report = check_intensity(ExpHawkes(*args), duration=5.0, gradients=False, statistics=False, relaxed=False)
    assert "past" in report["passed"] and report["past_error"] < 1e-6
    with pytest.raises(ConformanceError, match="rule 'past' broken"):
        check_intensity(_PastBlindHawkes(*args), duration=5.0, gradients=False, statistics=False, relaxed=False)


class _ReachedUserHawkes(UserHawkes):
    """States its reach: where its kernel exp(-b lag) has fallen below the dtype's epsilon."""

    def history_reach(self, dtype=None):
        return self.negligible_lag(self.b, self.mu.dtype if dtype is None else dtype)


def test_history_reach_rule():
    only = {"gradients": False, "statistics": False, "relaxed": False}
    report = check_intensity(_ReachedUserHawkes(), duration=5.0, **only)
    assert "history reach" in report["passed"]
    assert report["history_reach"] == pytest.approx(math.log(1 / torch.finfo(DT).eps) / 1.5)
    assert report["history_reach_max_error"] < 1e-12
    # undeclared (unknown) and refused reaches are not checked
    assert check_intensity(UserHawkes(), duration=5.0, **only)["history_reach"] is None
    piecewise = PiecewisePoisson(torch.tensor([0.0, 2.0, 5.0], dtype=DT), torch.tensor([[0.5], [1.0]], dtype=DT))
    assert check_intensity(piecewise, duration=5.0, **only)["history_reach"] is None
