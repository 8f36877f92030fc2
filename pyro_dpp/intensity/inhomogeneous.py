"""Inhomogeneous Poisson intensities: rates that depend on time but not on the history.

Two classes, for the two ways users hold a time-varying rate:

- :class:`PiecewisePoisson`: rates on a grid of bins (a PSTH, a binned stimulus): closed-form
  compensator, a constant bound (the largest bin) and exact Ogata sampling bin by bin;
- :class:`InhomogeneousPoisson`: any callable ``rate_fn(t)`` with a user-given bound: compensator
  by composite Gauss-Legendre quadrature, and a bound that is checked wherever the rates are
  evaluated while sampling (a violation raises, it is never clipped).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..scan.filter import ScanFilter
from .base import Intensity, State, as_param, check_finite, keeps_math


def _absolute_time_error(intensity: Intensity) -> ValueError:
    """The refusal of :meth:`Intensity.history_reach` for rates of absolute time."""
    return ValueError(
        f"{type(intensity).__name__} depends on absolute time, and windows shift every window to start at 0, "
        "which would change its rates: score the recording whole, or model the time dependence in a way "
        "that moves with the window"
    )


class PiecewisePoisson(Intensity):
    r"""Poisson process with piecewise-constant rates on a grid:

    .. math::
        \lambda_k(t) = r_{bk} \quad \text{for } e_b \le t < e_{b+1}, \qquad
        \int_0^T \sum_k \lambda_k\,dt = \sum_b \sum_k r_{bk}\,|[e_b, e_{b+1}) \cap [0, T]|

    (the last bin is closed on the right). The grid must cover the observation window
    (``edges[0] <= 0`` and ``edges[-1] >= duration``): a time outside it raises a ``ValueError``.
    :meth:`max_rate` is the largest summed rate over the bins; :meth:`local_bound` gives Ogata
    sampling the larger rate of the current and the next bin, up to the middle of the next bin;
    :meth:`breakpoints` returns the edges, where the rates jump.

    **References**

    [1] D. R. Cox, V. Isham, "Point Processes", Chapman & Hall, 1980 (inhomogeneous Poisson
        processes).
    [2] P. A. W. Lewis, G. S. Shedler, "Simulation of nonhomogeneous Poisson processes by
        thinning", Naval Research Logistics Quarterly, 1979.

    :param edges: ``B + 1`` strictly increasing bin edges (1-D, shared by the batch).
    :param rates: ``batch x B x K`` nonnegative rates, one per bin and mark.
    :param int num_context_marks: width of context histories this intensity accepts (ignored).
    """

    parallel_scoring = True  # no history: the rates at all queries in one call

    def __init__(self, edges: Any, rates: Any, num_context_marks: int = 0) -> None:
        super().__init__()
        rates = as_param(rates)
        # the grid is a constant of the rates' dtype (computations run in it)
        edges = as_param(edges, rates).to(dtype=rates.dtype, device=rates.device)
        check_finite("edges", edges)
        check_finite("rates", rates)
        if edges.dim() != 1 or edges.shape[0] < 2:
            raise ValueError(f"edges must be a 1-D tensor of B + 1 >= 2 bin edges, got shape {tuple(edges.shape)}")
        if not bool((edges[1:] > edges[:-1]).all()):
            raise ValueError("edges must be strictly increasing (sorted, no repeated edge)")
        bins = edges.shape[0] - 1
        if rates.dim() < 2 or rates.shape[-2] != bins:
            raise ValueError(
                f"rates must have shape (..., {bins}, K) for {bins} bins (edges has {bins + 1} entries), "
                f"got {tuple(rates.shape)}"
            )
        if (rates < 0).any():
            raise ValueError("PiecewisePoisson rates must be nonnegative")
        if int(num_context_marks) != num_context_marks or num_context_marks < 0:
            raise ValueError(f"num_context_marks must be a nonnegative integer, got {num_context_marks!r}")
        self.edges, self.rates_param = edges.detach(), rates
        self.num_marks = rates.shape[-1]
        self.num_context_marks = int(num_context_marks)

    def like(self) -> torch.Tensor:
        return self.rates_param

    @property
    def batch_shape(self) -> torch.Size:
        return self.rates_param.shape[:-2]

    @property
    def num_bins(self) -> int:
        return self.edges.shape[0] - 1

    def _bin(self, time: torch.Tensor) -> torch.Tensor:
        """Bin index of each time (``...``), raising for times outside the grid."""
        edges = self.edges.to(time)
        t = time.detach()
        outside = (t < edges[0]) | (t > edges[-1])
        if bool(outside.any()):
            raise ValueError(
                f"PiecewisePoisson evaluated at t = {float(t[outside].flatten()[0]):.6g}, outside its grid "
                f"[{float(edges[0]):.6g}, {float(edges[-1]):.6g}]; the edges must cover the window [0, duration]"
            )
        index = torch.searchsorted(edges, t.contiguous(), right=True) - 1
        return index.clamp(0, self.num_bins - 1)  # t = edges[-1] belongs to the last bin

    def _gather(self, index: torch.Tensor) -> torch.Tensor:
        """``index.shape + (K,)`` rates of the bins ``index`` (broadcast with the batch)."""
        # rates: batch x B x K; index: batch' x Q -> broadcast batch x Q x K
        lead = index.shape[:-1]
        batch = torch.broadcast_shapes(self.batch_shape, lead)
        rates = self.rates_param.expand(batch + self.rates_param.shape[-2:])
        index = index.expand(batch + index.shape[-1:])
        return rates.gather(-2, index.unsqueeze(-1).expand(index.shape + (self.num_marks,)))

    # ---- scan: no state --------------------------------------------------------------------------
    def initial_state(self, batch_shape: torch.Size, like: torch.Tensor, num_steps: int) -> State:
        return ()

    def rates(self, state: State, time: torch.Tensor) -> torch.Tensor:
        return self._gather(self._bin(time).unsqueeze(-1)).squeeze(-2)

    def update(self, state: State, time: torch.Tensor, weights: torch.Tensor) -> State:
        return state

    def scan_filter(self, keys: torch.Tensor, batch: torch.Size) -> HistoryFreeFilter | None:
        return HistoryFreeFilter(self, keys, batch) if keeps_math(self, PiecewisePoisson) else None

    def forward(self, times: torch.Tensor, weights: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        return self._gather(self._bin(query))

    def compensator(self, times: torch.Tensor, weights: torch.Tensor, duration: torch.Tensor) -> torch.Tensor:
        edges = self.edges.to(duration)
        if bool((duration > edges[-1]).any()) or float(edges[0]) > 0:
            raise ValueError(
                f"the grid [{float(edges[0]):.6g}, {float(edges[-1]):.6g}] of PiecewisePoisson does not cover the "
                f"window [0, {float(duration.max()):.6g}]; the edges must cover [0, duration]"
            )
        end = duration.unsqueeze(-1)
        overlap = (torch.minimum(edges[1:], end) - edges[:-1].clamp(min=0)).clamp(min=0)  # batch x B
        return (self.rates_param.sum(-1) * overlap).sum(-1)

    def breakpoints(self, times: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return self.edges.to(times).expand(times.shape[:-1] + self.edges.shape)

    # ---- sampling helpers ------------------------------------------------------------------
    def history_reach(self, dtype: torch.dtype | None = None) -> float:
        """Refuses: the rates depend on absolute time, which windows shift (see
        :meth:`Intensity.history_reach`).

        :raises ValueError: always.
        """
        raise _absolute_time_error(self)

    def max_rate(self) -> torch.Tensor:
        return self.rates_param.sum(-1).amax(-1)

    def local_bound(self, state: State, time: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The larger of this bin's and the next bin's rate holds until the middle of the next bin,
        # so a time rounded to just below an edge never stalls the sampler; in the last bin nothing
        # ends it (after the last edge the rates raise).
        index = self._bin(time)
        after = (index + 1).clamp(max=self.num_bins - 1)
        totals = self.rates_param.sum(-1)  # batch x B
        batch = torch.broadcast_shapes(totals.shape[:-1], index.shape)
        totals = totals.expand(batch + totals.shape[-1:])
        here = totals.gather(-1, index.expand(batch).unsqueeze(-1)).squeeze(-1)
        there = totals.gather(-1, after.expand(batch).unsqueeze(-1)).squeeze(-1)
        edges = self.edges.to(time)
        last = index + 1 >= self.num_bins
        middle = (edges[after] + edges[(index + 2).clamp(max=self.num_bins)]) / 2
        horizon = torch.where(last, torch.full_like(time, torch.inf), middle - time)
        return torch.maximum(here, there), horizon.expand(batch)

    def mean_count(self, duration: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.compensator(duration.new_zeros(duration.shape + (0,)),
                                duration.new_zeros(duration.shape + (0, self.num_history_marks)), duration)
        return mean, mean.sqrt()


class InhomogeneousPoisson(Intensity):
    r"""Poisson process with a time-varying rate given by a callable, and a user-given bound:

    .. math::
        \lambda_k(t) = f_k(t), \qquad \bar\lambda \ge \sum_k f_k(t) \text{ on the window},
        \qquad \int_0^T \sum_k f_k(t)\,dt \approx \sum_p \sum_l h_p w_l \sum_k f_k(c_p + h_p x_l)

    with a composite Gauss-Legendre rule (``nodes`` nodes on each of ``pieces`` equal pieces of
    ``[0, T]``, further cut at ``knots``). The rule converges exponentially fast for analytic
    rates; give the times where ``rate_fn`` has kinks or jumps as ``knots``, and more ``pieces``
    for rates that vary on scales shorter than ``T / pieces``.

    ``bound`` is required: it is the thinning bound of every sampler (:meth:`max_rate`) and Ogata's
    local bound. Samplers raise a ``ValueError`` where the summed rates exceed it, and any
    evaluation raises where ``rate_fn`` returns a negative or non-finite rate.

    ``rate_fn`` maps a tensor of times of any shape ``S`` to rates of shape ``S + (K,)``. The
    dtype and device of the process are those of ``rate_fn``'s parameters if it is an
    ``nn.Module``, else those of ``bound`` if it is a tensor, else the dtype a plain function's
    tensors give its rates (the default dtype if it holds none), on the CPU. Its
    parameters (as an ``nn.Module``, or tensors it closes over) carry gradients into
    ``log_prob`` and ``rsample``; they must not carry batch dimensions of their own (batch the
    :class:`~pyro_dpp.PointProcess` through ``duration`` or ``bound`` instead).

    **References**

    [1] P. A. W. Lewis, G. S. Shedler, "Simulation of nonhomogeneous Poisson processes by
        thinning", Naval Research Logistics Quarterly, 1979.
    [2] D. R. Cox, V. Isham, "Point Processes", Chapman & Hall, 1980.

    :param rate_fn: callable ``t -> rates`` as above.
    :param bound: positive constant :math:`\bar\lambda` (scalar or batch shape).
    :param int num_marks: ``K``, checked against ``rate_fn`` at ``t = 0`` (optional).
    :param int num_context_marks: width of context histories this intensity accepts (ignored).
    :param knots: optional 1-D times where ``rate_fn`` is not smooth (quadrature breaks there).
    :param int pieces: equal pieces of ``[0, T]`` for the compensator's quadrature.
    :param int nodes: Gauss-Legendre nodes per piece.
    """

    parallel_scoring = True  # no history: rate_fn at all queries in one call

    def __init__(self, rate_fn: Callable[[torch.Tensor], torch.Tensor], bound: Any = None,
                 num_marks: int | None = None, num_context_marks: int = 0, knots: Any = None, pieces: int = 16,
                 nodes: int = 8) -> None:
        super().__init__()
        if not callable(rate_fn):
            raise ValueError(f"rate_fn must be callable (times -> rates), got {type(rate_fn).__name__}")
        if bound is None:
            raise ValueError(
                "InhomogeneousPoisson needs bound=: a constant >= the summed rate_fn(t) over the window, used by "
                "every sampler (a bound that is exceeded raises)"
            )
        self.rate_fn = rate_fn  # registered as a submodule if it is an nn.Module
        like = self._like_of(rate_fn, bound)
        try:
            probe = rate_fn(torch.zeros(1, dtype=like.dtype, device=like.device))
        except RuntimeError as err:
            raise ValueError(
                f"rate_fn failed at t = 0 ({err}); if it holds tensors on another device, make it an nn.Module or "
                "pass bound as a tensor on that device"
            ) from err
        if not isinstance(probe, torch.Tensor) or probe.dim() != 2 or probe.shape[0] != 1:
            raise ValueError(
                "rate_fn must map times of shape S to rates of shape S + (K,); for times of shape (1,) it returned "
                f"{tuple(probe.shape) if isinstance(probe, torch.Tensor) else type(probe).__name__}"
            )
        if num_marks is not None and probe.shape[-1] != num_marks:
            raise ValueError(f"rate_fn returns {probe.shape[-1]} marks but num_marks={num_marks}")
        self.num_marks = probe.shape[-1]
        self._like = probe.detach().new_zeros(())
        bound = as_param(bound, self._like)
        check_finite("bound", bound)
        if (bound <= 0).any():
            raise ValueError(f"bound must be positive, got {bound}")
        self.bound = bound.detach().to(self._like)
        for name, value in (("pieces", pieces), ("nodes", nodes)):
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.pieces, self.nodes = int(pieces), int(nodes)
        if int(num_context_marks) != num_context_marks or num_context_marks < 0:
            raise ValueError(f"num_context_marks must be a nonnegative integer, got {num_context_marks!r}")
        self.num_context_marks = int(num_context_marks)
        if knots is not None:
            knots = as_param(knots, self._like).detach().reshape(-1)
            check_finite("knots", knots)
        self.knots = knots

    @staticmethod
    def _like_of(rate_fn: Callable[[torch.Tensor], torch.Tensor], bound: Any) -> torch.Tensor:
        """A tensor with the dtype and device of the rates: the parameters of an ``nn.Module``, else a
        floating tensor ``bound``, else the dtype of the tensors a plain function holds (what its
        rates are at half-precision times; the default dtype if they stay half), on the CPU."""
        if isinstance(rate_fn, torch.nn.Module):
            for t in list(rate_fn.parameters()) + list(rate_fn.buffers()):
                if t.is_floating_point():
                    return t.detach()
        if isinstance(bound, torch.Tensor) and bound.is_floating_point():
            return bound.detach()
        try:  # half-precision times: the output's dtype is that of the tensors rate_fn holds, if any
            held = rate_fn(torch.zeros(1, dtype=torch.float16)).dtype
        except (RuntimeError, AttributeError, TypeError):
            held = torch.float16  # (the caller's own probe reports a failure)
        return torch.zeros((), dtype=torch.get_default_dtype() if held == torch.float16 else held)

    def like(self) -> torch.Tensor:
        return self._like

    @property
    def batch_shape(self) -> torch.Size:
        return self.bound.shape

    def _evaluate(self, time: torch.Tensor) -> torch.Tensor:
        rates = self.rate_fn(time)
        if not isinstance(rates, torch.Tensor) or rates.shape[-1:] != (self.num_marks,):
            raise ValueError(
                f"rate_fn must return rates of shape S + ({self.num_marks},) for times of shape S = "
                f"{tuple(time.shape)}, got {tuple(rates.shape) if isinstance(rates, torch.Tensor) else rates!r}"
            )
        bad = ~torch.isfinite(rates) | (rates < 0)
        if bool(bad.any()):
            at = time.expand(rates.shape[:-1])[bad.any(-1)].flatten()[0]
            raise ValueError(
                f"rate_fn returned a negative or non-finite rate at t = {float(at):.6g}; rates must be finite and "
                "nonnegative"
            )
        return rates.expand(torch.broadcast_shapes(rates.shape, time.shape + (self.num_marks,)))

    # ---- scan: no state --------------------------------------------------------------------------
    def initial_state(self, batch_shape: torch.Size, like: torch.Tensor, num_steps: int) -> State:
        return ()

    def rates(self, state: State, time: torch.Tensor) -> torch.Tensor:
        return self._evaluate(time)

    def update(self, state: State, time: torch.Tensor, weights: torch.Tensor) -> State:
        return state

    def scan_filter(self, keys: torch.Tensor, batch: torch.Size) -> HistoryFreeFilter | None:
        # the engine's history-free path evaluates rate_fn under autograd, so parameters that
        # rate_fn closes over (which the intensity does not hold) keep their gradients
        return HistoryFreeFilter(self, keys, batch) if keeps_math(self, InhomogeneousPoisson) else None

    def forward(self, times: torch.Tensor, weights: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        return self._evaluate(query)

    def compensator(self, times: torch.Tensor, weights: torch.Tensor, duration: torch.Tensor) -> torch.Tensor:
        # the rates do not depend on the history: integrate over [0, T] once, on a fixed composite rule
        like = duration
        end = duration.unsqueeze(-1)
        grid = torch.linspace(0, 1, self.pieces + 1, dtype=like.dtype, device=like.device) * end
        if self.knots is not None:
            knots = self.knots.to(like).expand(duration.shape + self.knots.shape)
            grid = torch.cat([grid, torch.minimum(knots.clamp(min=0), end)], -1).sort(-1).values
        x, w = np.polynomial.legendre.leggauss(self.nodes)
        x = torch.as_tensor(x, dtype=like.dtype, device=like.device)
        w = torch.as_tensor(w, dtype=like.dtype, device=like.device)
        half = (grid[..., 1:] - grid[..., :-1]) / 2  # batch x P
        centre = (grid[..., 1:] + grid[..., :-1]) / 2
        query = centre.unsqueeze(-1) + half.unsqueeze(-1) * x  # batch x P x nodes
        rates = self._evaluate(query).sum(-1)
        return (rates * half.unsqueeze(-1) * w).sum((-1, -2))

    def breakpoints(self, times: torch.Tensor, weights: torch.Tensor) -> torch.Tensor | None:
        if self.knots is None:
            return None
        return self.knots.to(times).expand(times.shape[:-1] + self.knots.shape)

    # ---- sampling helpers ------------------------------------------------------------------
    def history_reach(self, dtype: torch.dtype | None = None) -> float:
        """Refuses: the rates depend on absolute time, which windows shift (see
        :meth:`Intensity.history_reach`).

        :raises ValueError: always.
        """
        raise _absolute_time_error(self)

    def max_rate(self) -> torch.Tensor:
        return self.bound

    def local_bound(self, state: State, time: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bound = self.bound.to(time).expand(torch.broadcast_shapes(self.bound.shape, time.shape))
        return bound, torch.full_like(bound, torch.inf)


class HistoryFreeFilter(ScanFilter):
    """Rates that depend on the time alone: the engine takes the log-rates of every step at once (no
    loop), from the intensity's parallel evaluation at the step times with an empty history."""

    def history_free_log_rates(self, times: torch.Tensor) -> torch.Tensor:
        empty = times[..., :0]
        return self.intensity.log_forward(empty, empty.unsqueeze(-1).expand(empty.shape + (self.D,)), times)
