"""Linear Hawkes process with exponential kernels."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..scan.accelerators import register_accelerator
from ..scan.filter import ScanFilter, batch_last
from ._branching import stationary_count
from ._decay import decayed_sums
from .base import (
    Intensity,
    State,
    as_param,
    broadcast_shapes,
    check_finite,
    keeps_math,
    pairwise_lags,
    safe_log,
    within,
)

#: Histories and query sets both longer than this are evaluated by chunked exponential sums (linear
#: cost) instead of the pairwise lag matrix.
_PAIRWISE_MAX = 64
#: Elements of the ``events x K x D`` tensor one chunk of the compensator (matrix decay) may build.
_COMPENSATOR_ELEMENTS = 1 << 22


class _ExpKernelHawkes(Intensity):
    """What :class:`ExpHawkes` and :class:`~pyro_dpp.intensity.SumExpHawkes` share: linear Hawkes
    processes with a baseline ``baseline`` and nonnegative exponential kernels, whose branching
    matrix a subclass gives (:meth:`branching_matrix`)."""

    def like(self) -> torch.Tensor:
        return self.baseline

    def local_bound(self, state: State, time: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Nonnegative kernels decay between events: the intensity now bounds it until the next event.
        bound = self.rates(state, time).sum(-1)
        return bound, torch.full_like(bound, torch.inf)

    def branching_matrix(self) -> torch.Tensor:
        """``batch x K x K``: mean number of mark-i events triggered by one mark-j event."""
        raise NotImplementedError

    def mean_count(self, duration: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        return stationary_count(self.branching_matrix(), self.baseline, duration)


class ExpHawkes(_ExpKernelHawkes):
    r"""Linear (mutually exciting) Hawkes process with exponential kernels.

    .. math::
        \lambda_i(t) = \mu_i + \sum_j \sum_{t_n^{(j)} < t} \alpha_{ij}\, \beta_{ij}\,
        e^{-\beta_{ij} (t - t_n^{(j)})}

    the kernel convention of tick's ``SimuHawkesExpKernels`` (``adjacency`` is the branching
    matrix: each event of mark ``j`` triggers on average ``alpha_ij`` events of mark ``i``). The
    compensator has the closed form
    :math:`\sum_i \mu_i T + \sum_{ij} \alpha_{ij} \sum_n w_{nj} (1 - e^{-\beta_{ij}(T - t_n)})`.

    Columns of ``adjacency`` beyond ``K`` are *context* marks: events that excite the modelled
    marks but are not modelled themselves.

    **References**

    [1] A. G. Hawkes, "Spectra of some self-exciting and mutually exciting point processes",
        Biometrika, 1971.
    [2] E. Bacry, M. Bompaire, S. Gaiffas, J.-F. Muzy, "tick: a Python library for statistical
        learning, with an emphasis on Hawkes processes and time-dependent models", JMLR, 2018.

    :param baseline: ``batch x K`` nonnegative baseline rates :math:`\mu`.
    :param adjacency: ``batch x K x (K + C)`` nonnegative branching ratios :math:`\alpha`.
    :param decay: positive decays :math:`\beta`, a scalar or broadcastable to ``adjacency``.
    """

    parallel_scoring = True  # chunked, linear-cost parallel paths

    def __init__(self, baseline: Any, adjacency: Any, decay: Any) -> None:
        super().__init__()
        baseline = as_param(baseline)
        adjacency = as_param(adjacency, baseline)
        # one synchronising check for all parameters (an ExpHawkes is built at every model step);
        # the detailed checks run only to say what is wrong
        if isinstance(decay, (int, float)) and not isinstance(decay, bool):
            valid = 0 < decay < math.inf  # a number (the usual fixed decay): no tensor reduction
        else:
            valid = within((as_param(decay, baseline),), 0.0, strict=True)
        decay = as_param(decay, baseline)
        valid = valid and within((baseline, adjacency), 0.0)
        if not valid:
            for name, x in (("baseline", baseline), ("adjacency", adjacency), ("decay", decay)):
                check_finite(name, x)
        if baseline.dim() < 1 or adjacency.dim() < 2:
            raise ValueError("baseline must have shape (..., K) and adjacency (..., K, K + C)")
        k = baseline.shape[-1]
        if adjacency.shape[-2] != k or adjacency.shape[-1] < k:
            raise ValueError(
                f"adjacency must have shape (..., {k}, {k} + C) for {k} marks, got {tuple(adjacency.shape)}"
            )
        if not valid:
            if (baseline < 0).any() or (adjacency < 0).any():
                raise ValueError("ExpHawkes baseline and adjacency must be nonnegative (a linear Hawkes process)")
            if (decay <= 0).any():
                raise ValueError("ExpHawkes decay must be positive")
        try:
            broadcast_shapes(decay.shape, adjacency.shape)
        except RuntimeError as err:
            raise ValueError(f"decay of shape {tuple(decay.shape)} does not broadcast to adjacency") from err
        attributes = {"num_marks": k, "num_context_marks": adjacency.shape[-1] - k,
                      "_uniform_decay": decay.numel() == 1}
        if all(type(x) is torch.Tensor for x in (baseline, adjacency, decay)):
            # plain tensors are plain attributes: skip nn.Module.__setattr__ (per model step)
            attributes.update(baseline=baseline, adjacency=adjacency, decay=decay)
        else:  # Parameters (and other subclasses) are registered as nn.Module does
            self.baseline, self.adjacency, self.decay = baseline, adjacency, decay
        vars(self).update(attributes)

    @property
    def batch_shape(self) -> torch.Size:
        return broadcast_shapes(
            self.baseline.shape[:-1], self.adjacency.shape[:-2], self.decay.shape[:-2] if self.decay.dim() >= 2 else ()
        )

    def _decay_matrix(self) -> torch.Tensor:
        return self.decay.expand(torch.broadcast_shapes(self.decay.shape, self.adjacency.shape))

    # ---- scan: one trace per (target i, source j) -----------------------------------------
    def initial_state(self, batch_shape: torch.Size, like: torch.Tensor, num_steps: int) -> State:
        k, d = self.num_marks, self.num_history_marks
        traces = like.new_zeros(batch_shape + (k, d))
        return traces, like.new_zeros(batch_shape)

    def _decayed(self, state: State, time: torch.Tensor) -> torch.Tensor:
        traces, last = state
        lag = (time - last).clamp(min=0)[..., None, None]  # the empty start state may follow a past event
        return traces * torch.exp(-self.decay * lag)

    def rates(self, state: State, time: torch.Tensor) -> torch.Tensor:
        traces = self._decayed(state, time)
        return self.baseline + (self.adjacency * self.decay * traces).sum(-1)

    def update(self, state: State, time: torch.Tensor, weights: torch.Tensor) -> State:
        return self._decayed(state, time) + weights.unsqueeze(-2), time

    def scan_filter(self, keys: torch.Tensor, batch: torch.Size) -> ExpHawkesFilter | None:
        return ExpHawkesFilter(self, keys, batch) if keeps_math(self, ExpHawkes) else None

    # ---- parallel --------------------------------------------------------------------------
    def forward(self, times: torch.Tensor, weights: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        if times.shape[-1] > _PAIRWISE_MAX and query.shape[-1] > _PAIRWISE_MAX:
            # linear cost: exponential sums by chunks (no Q x E matrix)
            gain = self.adjacency * self.decay  # batch x K x D
            rates = self.decay.reshape(1, 1) if self._uniform_decay else self._decay_matrix()
            traces = decayed_sums(times, weights, query, rates)  # batch x Q x (1 or K) x D
            excitation = (traces * gain.unsqueeze(-3)).sum(-1)
            return self.baseline.unsqueeze(-2) + excitation
        lag, before = pairwise_lags(times, query)  # batch x Q x E
        gain = self.adjacency * self.decay  # batch x K x D
        if self._uniform_decay:
            kernel = torch.where(before, torch.exp(-self.decay.reshape(()) * lag), torch.zeros_like(lag))
            traces = kernel @ weights  # batch x Q x D
            excitation = traces @ gain.transpose(-1, -2)
        else:
            decay = self._decay_matrix()
            excitation = 0.0
            for j in range(self.num_history_marks):
                # batch x Q x E x K
                kernel = torch.exp(-decay[..., None, None, :, j] * lag.unsqueeze(-1)) * before.unsqueeze(-1)
                traces = (kernel * weights[..., None, :, j, None]).sum(-2)
                excitation = excitation + gain[..., None, :, j] * traces
        return self.baseline.unsqueeze(-2) + excitation

    def compensator(self, times: torch.Tensor, weights: torch.Tensor, duration: torch.Tensor) -> torch.Tensor:
        remaining = (duration.unsqueeze(-1) - times).clamp(min=0)  # batch x E
        elapsed = (-times).clamp(min=0)  # batch x E: > 0 for events before the window (past)
        if self._uniform_decay:
            # batch x E: the mass each event's kernel puts inside the window, the same for every pair
            d = self.decay.reshape(())
            inside = torch.expm1(-d * elapsed) - torch.expm1(-d * remaining)
            triggered = torch.einsum("...e,...ed,...d->...", inside, weights, self.adjacency.sum(-2))
            return self.baseline.sum(-1) * duration + triggered
        decay = self._decay_matrix()
        # batch x E' x K x D per chunk of events (memory bounded, not events x K x D at once)
        batch = torch.broadcast_shapes(remaining.shape[:-1], decay.shape[:-2])
        chunk = max(1, _COMPENSATOR_ELEMENTS // max(1, math.prod(batch) * decay.shape[-2:].numel()))
        triggered = 0.0
        for r, e, wc in zip(remaining.split(chunk, -1), elapsed.split(chunk, -1), weights.split(chunk, -2)):
            inside = torch.expm1(-decay.unsqueeze(-3) * e[..., None, None]) - torch.expm1(
                -decay.unsqueeze(-3) * r[..., None, None])
            triggered = triggered + (self.adjacency.unsqueeze(-3) * inside * wc.unsqueeze(-2)).sum((-3, -2, -1))
        return self.baseline.sum(-1) * duration + triggered

    # ---- sampling helpers ------------------------------------------------------------------
    def history_reach(self, dtype: torch.dtype | None = None) -> float:
        """:meth:`negligible_lag` of the slowest decay: older events change the intensity below
        ``dtype``'s precision (see :meth:`Intensity.history_reach`)."""
        return self.negligible_lag(self.decay, self.baseline.dtype if dtype is None else dtype)

    def history_support(self) -> float:
        # the exponential tails of the events beyond the reach sum to below float precision too
        return self.history_reach() if keeps_math(self, ExpHawkes) else math.inf

    def branching_matrix(self) -> torch.Tensor:
        return self.adjacency[..., : self.num_marks]


class ExpTraceFilter(ScanFilter):
    r"""The scan filter of linear Hawkes processes with exponential kernels, on exponential traces
    with a decay axis: the drive is the rate itself,

    .. math::
        u_{is} = \mu_i + \sum_{j,u} g_{iju}\, X_{rju}(t_s), \qquad
        X_{rju}(t) = \sum_{t_n^{(j)} < t} w_{nj}\, e^{-\beta_{rju} (t - t_n)}

    with ``g`` the kernels' values at lag 0+ (``K x D x U``) and the decays :math:`\beta` laid out
    ``R x D' x U``: ``R`` is 1 (traces shared by all targets) or ``K`` (a trace per target), ``D'``
    is 1 or ``D``, ``U`` the number of decays. :class:`ExpHawkesFilter` is the case ``U = 1``
    (``R = D' = 1`` for a scalar decay, ``R = K, D' = D`` for a decay per pair),
    :class:`~pyro_dpp.intensity.sumexp.SumExpHawkesFilter` the case ``R = D' = 1`` with ``U``
    decays. The traces ``X`` (``R x D x U``) are decayed step to step and incremented by the pushed
    weights; the adjoint runs the same recursion backwards on one trace per (target, ``D'``,
    decay). With a decay that requires a gradient, the forward pass also keeps the lag-weighted
    traces ``Y = -dX / d(beta)`` for :meth:`surrogate`. numba twin:
    :mod:`pyro_dpp.intensity._hawkes_numba`.

    Subclasses supply :attr:`decay_parameter`, :meth:`trace_parameters` and :meth:`excitation`.
    """

    @property
    def decay_parameter(self) -> torch.Tensor:
        """The intensity's decay tensor (whether it requires a gradient decides what is stored)."""
        raise NotImplementedError

    def trace_parameters(self, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(baseline, gain, decay)``: ``batch x K``, ``batch x K x D x U`` and ``batch x R x D' x U``;
        differentiable, or detached and cast to ``dtype`` when one is given."""
        raise NotImplementedError

    def excitation(self, traces: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
        """``batch x S x K``: :math:`\\sum_{j,u} g_{iju} X_{rju}` from ``batch x S x R x D x U`` traces."""
        raise NotImplementedError

    def _setup(self) -> None:
        base, gain, decay = self.trace_parameters(self.keys.dtype)
        self.base = batch_last(base, self.batch, 1)  # K x B
        self.gain = batch_last(gain, self.batch, 3)  # K x D x U x B
        self.beta = batch_last(decay, self.batch, 3)  # R x D' x U x B
        self.step_gaps = self.gaps()  # S x B
        shared = self.beta.shape[0] * self.beta.shape[1] == 1
        # S x 1 x 1 x U x B when every trace of a decay shares it (S x K x D x B would be too large)
        self.decay_steps = torch.exp(-self.beta * self.step_gaps[:, None, None, None]) if shared else None

    def _dec(self, s: int) -> torch.Tensor:
        if self.decay_steps is not None:
            return self.decay_steps[s]
        return torch.exp(-self.beta * self.step_gaps[s])

    def log_rates(self, u: torch.Tensor) -> torch.Tensor:
        return safe_log(u)

    def log_rates_step(self, u: torch.Tensor) -> torch.Tensor:
        return torch.log(u)

    def start(self, store: bool) -> None:
        self._setup()
        rows, _, decays, _ = self.beta.shape
        self.x = self.keys.new_zeros((rows, self.D, decays, self.B))  # R x D x U x B
        self.x_by_decay = self.x.permute(0, 2, 1, 3)  # R x U x D x B: the pushed D x B broadcast (a view)
        self.lagged = store and self.decay_parameter.requires_grad
        self.traces = None
        if store:
            self.traces = self.keys.new_empty((self.S, 1 + self.lagged) + self.x.shape)
            if self.lagged:
                self.y = torch.zeros_like(self.x)

    def drive(self, s: int) -> torch.Tensor:
        q = self._dec(s)
        if self.lagged:
            self.y.add_(self.x * self.step_gaps[s]).mul_(q)
        x = self.x.mul_(q)
        if self.traces is not None:
            self.traces[s, 0] = x
            if self.lagged:
                self.traces[s, 1] = self.y
        return self.base + (self.gain * x).sum((1, 2))

    def push(self, s: int, h: torch.Tensor) -> None:
        self.x_by_decay.add_(h)

    def start_reverse(self) -> None:
        self.r = self.keys.new_zeros((self.K,) + self.beta.shape[1:])  # K x D' x U x B
        self.r_by_target = self.r.permute(1, 2, 0, 3)  # D' x U x K x B: the pushed K x B broadcast (a view)

    def pull(self, s: int) -> torch.Tensor:
        if s + 1 < self.S:
            self.r.mul_(self._dec(s + 1))
        return (self.gain * self.r).sum((0, 2))

    def push_reverse(self, s: int, g: torch.Tensor) -> None:
        self.r_by_target.add_(g)

    def stored(self) -> torch.Tensor | None:
        """``B x S x (1 or 2) x R x D x U``: the traces ``X`` (and ``Y``)."""
        return None if self.traces is None else self.traces.permute(5, 0, 1, 2, 3, 4)

    def surrogate(self, stored: torch.Tensor | None, times: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """Log-rates from the stored traces ``X``; with the lag-weighted traces ``Y``,
        ``X - (beta - beta_0) Y`` carries the decays' gradient (first order, exact at the scan's decays)."""
        if stored is None:
            return super().surrogate(stored, times, history)
        base, gain, decay = self.trace_parameters()
        traces = stored[..., 0, :, :, :]  # batch x S x R x D x U
        if stored.shape[-4] == 2 and self.decay_parameter.requires_grad:
            traces = traces - (decay - decay.detach()).unsqueeze(-4) * stored[..., 1, :, :, :]
        return safe_log(base.unsqueeze(-2) + self.excitation(traces, gain))


class ExpHawkesFilter(ExpTraceFilter):
    """The scan filter of :class:`ExpHawkes`: :class:`ExpTraceFilter` with one decay (``U = 1``),
    traces per source (``R = 1``) for a scalar decay, per (target, source) otherwise."""

    @property
    def decay_parameter(self) -> torch.Tensor:
        return self.intensity.decay

    def trace_parameters(self, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        intensity = self.intensity
        baseline, adjacency, decay = intensity.baseline, intensity.adjacency, intensity.decay
        if dtype is not None:
            baseline, adjacency, decay = (x.detach().to(dtype) for x in (baseline, adjacency, decay))
        gain = (adjacency * decay).unsqueeze(-1)
        if intensity._uniform_decay:
            return baseline, gain, decay.reshape(1, 1, 1)
        return baseline, gain, decay.expand(torch.broadcast_shapes(decay.shape, adjacency.shape)).unsqueeze(-1)

    def excitation(self, traces: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
        return (traces[..., 0] * gain[..., 0].unsqueeze(-3)).sum(-1)


register_accelerator(ExpTraceFilter, "pyro_dpp.intensity._hawkes_numba:ExpTraceKernels")
register_accelerator(ExpTraceFilter, "pyro_dpp.intensity._hawkes_numba:sample_ogata", kind="ogata")
