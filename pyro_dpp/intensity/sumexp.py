"""Linear Hawkes process with sum-of-exponentials kernels over a fixed set of decays."""

from __future__ import annotations

import math
from typing import Any

import torch

from ._decay import decayed_sums
from .base import State, as_param, check_finite, keeps_math, pairwise_lags
from .hawkes import ExpTraceFilter, _ExpKernelHawkes

#: Histories and query sets both longer than this are evaluated by chunked exponential sums (linear
#: cost, bounded memory) instead of the ``Q x E x U`` pairwise kernel tensor.
_PAIRWISE_MAX = 64


class SumExpHawkes(_ExpKernelHawkes):
    r"""Linear (mutually exciting) Hawkes process whose kernels are sums of exponentials with ``U``
    fixed decays shared by all pairs of marks:

    .. math::
        \lambda_i(t) = \mu_i + \sum_j \sum_{t_n^{(j)} < t} \phi_{ij}(t - t_n^{(j)}), \qquad
        \phi_{ij}(s) = \sum_{u=1}^U \alpha_{iju}\, \beta_u\, e^{-\beta_u s}

    the convention of tick's ``HawkesKernelSumExp(intensities, decays)`` and
    ``SimuHawkesSumExpKernels(adjacency, decays, baseline)`` (``adjacency`` is ``K x K x U``): the
    kernel of pair ``(i, j)`` integrates to :math:`\sum_u \alpha_{iju}`, the mean number of mark-i
    events an event of mark j triggers. The compensator has the closed form

    .. math::
        \int_0^T \sum_i \lambda_i\,dt = T \sum_i \mu_i
        + \sum_n \sum_{i,j,u} w_{nj}\, \alpha_{iju} \left(1 - e^{-\beta_u (T - t_n)}\right).

    The scan keeps one trace per (source mark, decay), so a step costs ``O(K (K + C) U)``; the
    parallel evaluation sorts the history and runs the same recursion in chunks (linear in the
    number of events and queries, bounded memory). Between events the intensity only decays, so the
    current intensity is an Ogata bound until the next event (:meth:`local_bound`).

    Columns of ``adjacency`` beyond ``K`` are *context* marks: events that excite the modelled
    marks but are not modelled themselves.

    **References**

    [1] A. G. Hawkes, "Spectra of some self-exciting and mutually exciting point processes",
        Biometrika, 1971.
    [2] E. Bacry, M. Bompaire, S. Gaiffas, J.-F. Muzy, "tick: a Python library for statistical
        learning, with an emphasis on Hawkes processes and time-dependent models", JMLR, 2018.
    [3] Y. Ogata, "On Lewis' simulation method for point processes", IEEE Trans. Inf. Theory, 1981.

    :param baseline: ``batch x K`` nonnegative baseline rates :math:`\mu`.
    :param adjacency: ``batch x K x (K + C) x U`` nonnegative weights :math:`\alpha` (branching
        ratios per decay).
    :param decays: ``batch x U`` positive decays :math:`\beta` (a 1-D tensor of ``U`` decays for
        the usual unbatched case).
    """

    parallel_scoring = True  # chunked exponential recursion, linear in events; closed-form compensator

    def __init__(self, baseline: Any, adjacency: Any, decays: Any) -> None:
        super().__init__()
        baseline = as_param(baseline)
        adjacency = as_param(adjacency, baseline)
        decays = as_param(decays, baseline)
        for name, x in (("baseline", baseline), ("adjacency", adjacency), ("decays", decays)):
            check_finite(name, x)
        if baseline.dim() < 1 or adjacency.dim() < 3 or decays.dim() < 1:
            raise ValueError(
                "SumExpHawkes needs baseline of shape (..., K), adjacency (..., K, K + C, U) and decays (..., U); "
                f"got {tuple(baseline.shape)}, {tuple(adjacency.shape)}, {tuple(decays.shape)}"
            )
        k, u = baseline.shape[-1], decays.shape[-1]
        if adjacency.shape[-3] != k or adjacency.shape[-2] < k or adjacency.shape[-1] != u:
            raise ValueError(
                f"adjacency must have shape (..., {k}, {k} + C, {u}) for {k} marks and {u} decays, "
                f"got {tuple(adjacency.shape)}"
            )
        if (baseline < 0).any() or (adjacency < 0).any():
            raise ValueError("SumExpHawkes baseline and adjacency must be nonnegative (a linear Hawkes process)")
        if (decays <= 0).any():
            raise ValueError("SumExpHawkes decays must be positive")
        try:
            torch.broadcast_shapes(baseline.shape[:-1], adjacency.shape[:-3], decays.shape[:-1])
        except RuntimeError as err:
            raise ValueError(
                f"the batch shapes of baseline {tuple(baseline.shape)}, adjacency {tuple(adjacency.shape)} and "
                f"decays {tuple(decays.shape)} do not broadcast"
            ) from err
        self.baseline, self.adjacency, self.decays = baseline, adjacency, decays
        self.num_marks = k
        self.num_context_marks = adjacency.shape[-2] - k

    @property
    def batch_shape(self) -> torch.Size:
        return torch.broadcast_shapes(self.baseline.shape[:-1], self.adjacency.shape[:-3], self.decays.shape[:-1])

    @property
    def num_decays(self) -> int:
        return self.decays.shape[-1]

    def _gain(self) -> torch.Tensor:
        """``batch x K x D x U``: :math:`\\alpha_{iju} \\beta_u`, the kernel's value at lag 0+."""
        return self.adjacency * self.decays[..., None, None, :]

    # ---- scan: one trace per (source j, decay u) ----------------------------------------------
    def initial_state(self, batch_shape: torch.Size, like: torch.Tensor, num_steps: int) -> State:
        traces = like.new_zeros(batch_shape + (self.num_history_marks, self.num_decays))
        return traces, like.new_zeros(batch_shape)

    def _decayed(self, state: State, time: torch.Tensor) -> torch.Tensor:
        traces, last = state
        lag = (time - last).clamp(min=0)[..., None, None]  # batch x 1 x 1 (a start state may follow past events)
        return traces * torch.exp(-self.decays.unsqueeze(-2) * lag)

    def rates(self, state: State, time: torch.Tensor) -> torch.Tensor:
        traces = self._decayed(state, time)  # batch x D x U
        return self.baseline + torch.einsum("...du,...kdu->...k", traces, self._gain())

    def update(self, state: State, time: torch.Tensor, weights: torch.Tensor) -> State:
        return self._decayed(state, time) + weights.unsqueeze(-1), time

    def scan_filter(self, keys: torch.Tensor, batch: torch.Size) -> SumExpHawkesFilter | None:
        return SumExpHawkesFilter(self, keys, batch) if keeps_math(self, SumExpHawkes) else None

    # ---- parallel --------------------------------------------------------------------------
    def forward(self, times: torch.Tensor, weights: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        gain = self._gain()  # batch x K x D x U
        if times.shape[-1] > _PAIRWISE_MAX and query.shape[-1] > _PAIRWISE_MAX:
            # linear cost: the exponential recursion over sorted events, in chunks
            rates = self.decays.unsqueeze(-1).expand(self.decays.shape + (self.num_history_marks,))  # batch x U x D
            traces = decayed_sums(times, weights, query, rates)  # batch x Q x U x D
            excitation = torch.einsum("...qud,...kdu->...qk", traces, gain)
        else:
            lag, before = pairwise_lags(times, query)  # batch x Q x E
            decays = self.decays[..., None, None, :]  # batch x 1 x 1 x U
            kernel = torch.exp(-decays * lag.unsqueeze(-1)) * before.unsqueeze(-1)  # batch x Q x E x U
            traces = torch.einsum("...qeu,...ed->...qdu", kernel, weights)
            excitation = torch.einsum("...qdu,...kdu->...qk", traces, gain)
        return self.baseline.unsqueeze(-2) + excitation

    def compensator(self, times: torch.Tensor, weights: torch.Tensor, duration: torch.Tensor) -> torch.Tensor:
        remaining = (duration.unsqueeze(-1) - times).clamp(min=0)  # batch x E
        elapsed = (-times).clamp(min=0)  # batch x E: > 0 for events before the window (past)
        # batch x E x U: the mass each event's kernel puts inside the window, per decay
        inside = torch.expm1(-self.decays.unsqueeze(-2) * elapsed.unsqueeze(-1)) - torch.expm1(
            -self.decays.unsqueeze(-2) * remaining.unsqueeze(-1))
        per_source = self.adjacency.sum(-3)  # batch x D x U: summed over targets
        triggered = torch.einsum("...eu,...ed,...du->...", inside, weights, per_source)
        return self.baseline.sum(-1) * duration + triggered

    # ---- sampling helpers ------------------------------------------------------------------
    def history_reach(self, dtype: torch.dtype | None = None) -> float:
        """:meth:`negligible_lag` of the slowest of the decays: older events change the intensity
        below ``dtype``'s precision (see :meth:`Intensity.history_reach`)."""
        return self.negligible_lag(self.decays, self.baseline.dtype if dtype is None else dtype)

    def history_support(self) -> float:
        # the exponential tails of the events beyond the reach sum to below float precision too
        return self.history_reach() if keeps_math(self, SumExpHawkes) else math.inf

    def branching_matrix(self) -> torch.Tensor:
        return self.adjacency[..., : self.num_marks, :].sum(-1)


class SumExpHawkesFilter(ExpTraceFilter):
    """The scan filter of :class:`SumExpHawkes`: :class:`~pyro_dpp.intensity.hawkes.ExpTraceFilter`
    with ``U`` decays shared by all pairs (``R = D' = 1``): one trace ``X_ju`` per (source, decay),
    ``O(K D U)`` per step; the adjoint keeps one trace per (target, decay)."""

    @property
    def decay_parameter(self) -> torch.Tensor:
        return self.intensity.decays

    def trace_parameters(self, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        intensity = self.intensity
        baseline, gain, decays = intensity.baseline, intensity._gain(), intensity.decays
        if dtype is not None:
            baseline, gain, decays = (x.detach().to(dtype) for x in (baseline, gain, decays))
        return baseline, gain, decays[..., None, None, :]

    def excitation(self, traces: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
        return torch.einsum("...sdu,...kdu->...sk", traces[..., 0, :, :], gain)
