"""Filter bases for GLM/SNN intensities: ``f_ij(d) = sum_l W[l, i, j] phi_l(d)``.

A basis evaluates ``phi_l(d)`` for lags ``d > 0`` (zero for ``d <= 0``) and keeps a scan state of
the per-source history features ``F_lj(t) = sum_{n: t_n < t} w_nj phi_l(t - t_n)``:

- :class:`ExponentialBasis` is recursive: one trace per (time constant, source), constant size;
- finite-support bases (:class:`EpanechnikovBasis`, :class:`RaisedCosineBasis`) keep a rolling
  window of recent events; an event that would leave the window while still inside the support
  raises, never truncating the history silently.

Each basis hands the scan engine its filter (:meth:`Basis.scan_filter`, the filters live in
:mod:`pyro_dpp.intensity.basis_filters`); a subclass keeps its parent's filter unless it overrides
one of :data:`BASIS_MATH`. The base class :class:`Basis` (the interface, the generic band features
and window state) lives in :mod:`pyro_dpp.intensity.basis_base` and is re-exported here.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..scan.backend import numba_usable
from ._decay import decayed_sums
from .base import Intensity, State, as_param, keeps_math
from .basis_base import BASIS_MATH, Basis, _rows

__all__ = [
    "BASIS_MATH",
    "Basis",
    "EpanechnikovBasis",
    "ExponentialBasis",
    "RaisedCosineBasis",
    "epanechnikov_moments",
]


def _kernel_inputs(times: torch.Tensor, weights: torch.Tensor, query: torch.Tensor, batch: torch.Size,
                   weight: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """Flattened float64 inputs of the numba kernels: ``weights`` (rows x E x D) and ``times``
    (rows x E) sorted by time (no copy when already sorted, e.g. by the compensator), and ``query``
    (rows x Q), with the batch broadcast and flattened into rows; then the filter weights
    ``weight`` (``batch x L x K x D``) as rows x K x L x D, if given. Times carry no gradient."""
    n, d = times.shape[-1], weights.shape[-1]
    flat = times.detach().expand(batch + (n,)).reshape(-1, n)
    rows = flat.shape[0]
    w = weights.expand(batch + (n, d)).reshape(rows, n, d)
    if bool((flat[:, 1:] >= flat[:, :-1]).all()):
        t = flat.to(torch.float64).contiguous()
    else:
        order = flat.argsort(dim=-1)
        t = flat.gather(-1, order).to(torch.float64).contiguous()
        w = w.gather(-2, order.unsqueeze(-1).expand(rows, n, d))
    out = w.to(torch.float64).contiguous(), t, _rows(query.detach(), batch, 1)
    if weight is not None:  # rows x K x L x D
        out += (_rows(weight, batch, 3).permute(0, 2, 1, 3).contiguous(),)
    return out


class ExponentialBasis(Basis):
    r"""Exponential decays :math:`\phi_l(d) = e^{-d / \tau_l}` for :math:`d > 0`, with a recursive,
    constant-size scan state (one trace per time constant and source).

    :param time_constants: ``L`` positive time constants :math:`\tau_l`.
    """

    def __init__(self, time_constants: Any) -> None:
        super().__init__()
        tau = as_param(time_constants).reshape(-1)
        if not torch.isfinite(tau).all() or (tau <= 0).any():
            raise ValueError("time_constants must be positive and finite")
        self.register_buffer("time_constants", tau)
        self.num_basis = tau.numel()

    def history_reach(self, dtype: torch.dtype | None = None) -> float:
        """``log(1 / eps)`` of the largest time constant: the slowest trace has fallen below
        ``dtype``'s epsilon (default: the time constants' dtype) relative to its value at lag 0
        (:meth:`~pyro_dpp.intensity.Intensity.negligible_lag`)."""
        tau = self.time_constants
        return Intensity.negligible_lag(1 / tau.max(), tau.dtype if dtype is None else dtype)

    def forward(self, lag: torch.Tensor) -> torch.Tensor:
        lag = lag.unsqueeze(-1)
        before = lag > 0
        tau = self.time_constants.to(lag)
        decayed = torch.exp(-torch.where(before, lag, torch.zeros_like(lag)) / tau)
        return torch.where(before, decayed, torch.zeros_like(lag))

    def features(self, times: torch.Tensor, weights: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        if times.shape[-1] <= 64 or query.shape[-1] <= 64:
            return super().features(times, weights, query)
        rates = (1 / self.time_constants.to(weights)).unsqueeze(-1)  # L x 1
        return decayed_sums(times, weights, query, rates)  # linear cost (see intensity._decay)

    def initial_state(self, batch_shape: torch.Size, num_sources: int, like: torch.Tensor, num_steps: int,
                      window: int | None = None) -> State:
        return like.new_zeros(batch_shape + (self.num_basis, num_sources)), like.new_zeros(batch_shape)

    def state_features(self, state: State, time: torch.Tensor) -> torch.Tensor:
        traces, last = state
        lag = (time - last).clamp(min=0)  # the empty start state may follow a past event
        return traces * torch.exp(-lag.unsqueeze(-1) / self.time_constants.to(traces)).unsqueeze(-1)

    def update(self, state: State, time: torch.Tensor, weights: torch.Tensor) -> State:
        return self.state_features(state, time) + weights.unsqueeze(-2), time

    def scan_filter(self, glm: Any, keys: torch.Tensor, batch: torch.Size) -> Any:
        from .basis_filters import ExponentialFilter

        return ExponentialFilter(glm, keys, batch) if keeps_math(self, ExponentialBasis, BASIS_MATH) else None


def epanechnikov_moments(a: torch.Tensor, width: float, order: int = 2) -> torch.Tensor:
    r"""``... x (order + 1) x 3``: the Epanechnikov bump summed over events from their moments.

    With events at ``d_n`` (relative to a reference point) and weights ``w_n`` inside a bump's
    support, ``sum_n w_n 0.75 (1 - ((a + s - d_n) / h)^2)`` is a quadratic in the offset ``s``;
    entry ``[m, j]`` is the coefficient of the moment ``S_j = sum_n w_n d_n^j`` in its ``s^m``
    coefficient (``a``: the query minus the bump's centre minus the reference point).
    numba twin: ``_epan_matrix`` in :mod:`pyro_dpp.intensity._basis_numba`."""
    h2 = width * width
    zero = torch.zeros_like(a)
    rows = [torch.stack([0.75 * (1 - a * a / h2), 1.5 * a / h2, zero - 0.75 / h2], -1),
            torch.stack([-1.5 * a / h2, zero + 1.5 / h2, zero], -1),
            torch.stack([zero - 0.75 / h2, zero, zero], -1)]
    return torch.stack(rows[:order + 1], -2)


class EpanechnikovBasis(Basis):
    r"""The paper's inducing-point bumps
    :math:`\phi_l(d) = \tfrac34 \max(0, 1 - ((d - c_l)/h)^2)` with centres
    ``c = linspace(low, high, L)`` and width ``h`` (finite support: a history window).

    **References**

    [1] H. Kajino, "A Differentiable Point Process with Its Application to Spiking Neural
        Networks", ICML 2021.

    :param int num_basis: ``L``, number of bumps (2 in the paper).
    :param float low: first centre (paper: 0).
    :param float high: last centre (paper: 10).
    :param float width: ``h`` (paper: 1).
    :param int window: events kept by the scan (None: the whole history).
    """

    def __init__(self, num_basis: int = 2, low: float = 0.0, high: float = 10.0, width: float = 1.0,
                 window: int | None = None) -> None:
        super().__init__()
        if num_basis < 1 or width <= 0 or high < low:
            raise ValueError("EpanechnikovBasis needs num_basis >= 1, width > 0 and high >= low")
        self.register_buffer("centres", torch.linspace(low, high, num_basis, dtype=torch.get_default_dtype()))
        self.width, self.num_basis, self.window = float(width), num_basis, window
        self.support = float(high + width)

    def forward(self, lag: torch.Tensor) -> torch.Tensor:
        lag = lag.unsqueeze(-1)
        z = (lag - self.centres.to(lag)) / self.width
        return torch.where(lag > 0, 0.75 * (1 - z * z).clamp(min=0), torch.zeros_like(z))

    def kinks(self) -> torch.Tensor:
        return torch.cat([self.centres - self.width, self.centres + self.width])

    def scan_filter(self, glm: Any, keys: torch.Tensor, batch: torch.Size) -> Any:
        from .basis_filters import EpanechnikovFilter

        if keeps_math(self, EpanechnikovBasis, BASIS_MATH):
            return EpanechnikovFilter(glm, keys, batch)
        return super().scan_filter(glm, keys, batch)

    def features(self, times: torch.Tensor, weights: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """Linear-cost evaluation: on its support each bump is a quadratic in the event time, so
        the sum over the events inside it follows from prefix sums of ``w``, ``w t`` and ``w t^2`` at
        ``searchsorted`` positions. To keep float64 round-off at the level of one bump, times are
        taken relative to the centre of their block (blocks of 2.5 widths, so a bump's support
        meets at most two blocks, summed separately)."""
        return self._polynomial(times, weights, query, 0)[0]

    def polynomial_features(self, times: torch.Tensor, weights: torch.Tensor, query: torch.Tensor
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(F0, F1, F2)``, each ``batch x Q x L x D``: the history features near ``query`` as a
        quadratic in the offset, ``F(query + s) = F0 + F1 s + F2 s^2``, exact as long as no event
        enters or leaves a bump's support between ``query`` and ``query + s`` (no event time or
        event time plus a :meth:`kink` strictly between them)."""
        return self._polynomial(times, weights, query, 2)

    def polynomial_coefficients(self, times: torch.Tensor, weights: torch.Tensor, query: torch.Tensor
                                ) -> torch.Tensor:
        """:meth:`polynomial_features` stacked, ``batch x Q x 3 x L x D`` (float64 on the kernel path,
        where no copies are made)."""
        batch = torch.broadcast_shapes(times.shape[:-1], weights.shape[:-2], query.shape[:-1])
        if times.shape[-1] and numba_usable(times, weights, query):
            out_shape = batch + (query.shape[-1], self.num_basis, weights.shape[-1])
            return self._polynomial_kernel(times, weights, query, 2, batch, out_shape, stacked=True)
        return torch.stack(self._polynomial(times, weights, query, 2), -3)

    def polynomial_potential(self, times: torch.Tensor, weights: torch.Tensor, query: torch.Tensor,
                             weight: torch.Tensor) -> torch.Tensor | None:
        """``batch x Q x 3 x K``: ``einsum(polynomial_coefficients, weight)`` (filter weights
        ``batch x L x K x D``) fused in one kernel pass (float64), or None off the kernel path."""
        batch = torch.broadcast_shapes(times.shape[:-1], weights.shape[:-2], query.shape[:-1], weight.shape[:-3])
        if times.shape[-1] == 0 or not numba_usable(times, weights, query, weight):
            return None
        w, t, q, filt = _kernel_inputs(times, weights, query, batch, weight)
        from ._basis_numba import EpanechnikovSums

        out = EpanechnikovSums.apply(w, filt, t, q, *self._kernel_basis(), 2)
        return out.reshape(batch + out.shape[1:])

    def polynomial_compensator(self, times: torch.Tensor, weights: torch.Tensor, centre: torch.Tensor,
                               half: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, amplitude: torch.Tensor,
                               activation: str, nodes: int) -> torch.Tensor | None:
        """``batch``: a GLM's compensator over the intervals ``[centre - half, centre + half]``
        (``batch x P``, no event or kink inside) with filter weights ``weight``
        (``batch x L x K x D``), ``bias`` (``batch x K``) and ``amplitude`` (``batch``), fused in one
        kernel pass (float64) that never holds a per-interval tensor; None off the kernel path."""
        batch = torch.broadcast_shapes(times.shape[:-1], weights.shape[:-2], centre.shape[:-1], half.shape[:-1],
                                       weight.shape[:-3], bias.shape[:-1], amplitude.shape)
        if times.shape[-1] == 0 or half.requires_grad or not numba_usable(times, weights, centre, weight, bias,
                                                                          amplitude):
            return None
        w, t, q, filt = _kernel_inputs(times, weights, centre, batch, weight)
        b, amp, h = _rows(bias, batch, 1), _rows(amplitude, batch, 0), _rows(half.detach(), batch, 1)
        from ._basis_numba import EpanechnikovCompensator

        total = EpanechnikovCompensator.apply(w, filt, b, amp, t, q, h, *self._kernel_basis(), activation, nodes)
        return total.reshape(batch).to(times.dtype)

    def _polynomial(self, times: torch.Tensor, weights: torch.Tensor, query: torch.Tensor, order: int
                    ) -> tuple[torch.Tensor, ...]:
        batch = torch.broadcast_shapes(times.shape[:-1], weights.shape[:-2], query.shape[:-1])
        n, q_len, d = times.shape[-1], query.shape[-1], weights.shape[-1]
        out_shape = batch + (q_len, self.num_basis, d)
        if n == 0:
            zero = weights.new_zeros(out_shape)
            return (zero,) * (order + 1)
        if numba_usable(times, weights, query):
            return self._polynomial_kernel(times, weights, query, order, batch, out_shape)
        wide = torch.float64
        flat = times.expand(batch + (n,)).reshape(-1, n)
        rows = flat.shape[0]
        order_ = flat.detach().argsort(dim=-1)
        t = flat.gather(-1, order_).to(wide)
        t_sorted = t.detach().contiguous()
        w = weights.expand(batch + (n, d)).reshape(rows, n, d)
        w = w.gather(-2, order_.unsqueeze(-1).expand(rows, n, d)).to(wide)
        q = query.expand(batch + (q_len,)).reshape(rows, q_len).to(wide)
        q_det = q.detach()
        block = 2.5 * self.width
        origin = t_sorted[:, :1]
        block_id = torch.floor((t_sorted - origin) / block).long().contiguous()
        local = t - (origin + (block_id + 0.5) * block)  # |local| <= block / 2
        moments = torch.stack([w, w * local.unsqueeze(-1), w * (local * local).unsqueeze(-1)], -2)  # rows x n x 3 x d
        prefix = torch.cat([moments.new_zeros(rows, 1, 3, d), torch.cumsum(moments, 1)], 1)
        prefix = prefix.reshape(rows * (n + 1), 3 * d)
        base = (torch.arange(rows, device=t.device) * (n + 1)).view(rows, 1, 1)
        out: list[list[torch.Tensor]] = [[] for _ in range(order + 1)]
        for centre in self.centres.to(wide):
            a = q - centre  # the bump is 0.75 (1 - ((a - t) / h)^2) for |a - t| < h and t < q
            a_det = a.detach()
            lo = torch.searchsorted(t_sorted, (a_det - self.width).contiguous(), right=True)
            upper = torch.minimum(a_det + self.width, q_det).contiguous()
            hi = torch.maximum(torch.searchsorted(t_sorted, upper, right=False), lo)
            first = block_id.gather(-1, lo.clamp(max=n - 1))
            mid = torch.searchsorted(block_id, (first + 1).contiguous())
            mid = torch.minimum(torch.maximum(mid, lo), hi)
            index = (torch.stack([lo, mid, hi], -1) + base).reshape(-1)
            sums = prefix.index_select(0, index).view(rows, q_len, 3, 3, d)
            terms = 0.0
            for piece, bid in ((sums[:, :, 1] - sums[:, :, 0], first), (sums[:, :, 2] - sums[:, :, 1], first + 1)):
                shift = a - (origin + (bid.to(wide) + 0.5) * block)  # a relative to the block
                matrix = epanechnikov_moments(shift, self.width, order)  # rows x Q x (order+1) x 3
                terms = terms + torch.einsum("...mj,...jd->...md", matrix, piece)
            for k in range(order + 1):
                out[k].append(terms[..., k, :])
        return tuple(torch.stack(o, -2).to(times.dtype).reshape(out_shape) for o in out)

    def _kernel_basis(self) -> tuple[torch.Tensor, float, float]:
        """The numba kernels' basis arguments: float64 centres, the width and the block length
        (blocks of 2.5 widths, see :meth:`features`)."""
        return self.centres.detach().to(torch.float64).contiguous(), self.width, 2.5 * self.width

    def _polynomial_kernel(self, times: torch.Tensor, weights: torch.Tensor, query: torch.Tensor, order: int,
                           batch: torch.Size, out_shape: torch.Size, stacked: bool = False
                           ) -> tuple[torch.Tensor, ...] | torch.Tensor:
        """:meth:`_polynomial` by the numba kernels (CPU): same block-relative prefix sums, one fused
        pass per sequence, gradients with respect to the weights by the adjoint kernel. Event and
        query times are constants here (no gradient), as everywhere in the package: candidate times
        carry no gradient and observed times are data (backend ``"torch"`` restores the
        torch path, which also differentiates the times)."""
        w, t, q = _kernel_inputs(times, weights, query, batch)
        from ._basis_numba import EpanechnikovSums

        out = EpanechnikovSums.apply(w, None, t, q, *self._kernel_basis(), order)
        if stacked:
            return out.reshape(batch + out.shape[1:])
        if order == 0:
            return (out.squeeze(2).to(times.dtype).reshape(out_shape),)
        return tuple(o.to(times.dtype).reshape(out_shape) for o in out.unbind(2))


class RaisedCosineBasis(Basis):
    r"""Raised cosines on a log-time axis (Pillow et al., 2008), standard in neuroscience GLMs:
    :math:`\phi_l(d) = \tfrac12 (1 + \cos(\mathrm{clip}(a \log(d + c) - \varphi_l, -\pi, \pi)))`, with
    peaks :math:`\varphi_l` spaced by :math:`\pi/2` so that the bumps tile ``[0, last_peak]``.

    **References**

    [1] J. W. Pillow et al., "Spatio-temporal correlations and visual signalling in a complete
        neuronal population", Nature, 2008.

    :param int num_basis: ``L`` bumps.
    :param float last_peak: lag of the last bump's peak.
    :param float offset: ``c > 0``, the log-axis offset (smaller: finer near zero lag).
    :param int window: events kept by the scan (None: the whole history).
    """

    def __init__(self, num_basis: int = 4, last_peak: float = 10.0, offset: float = 1.0,
                 window: int | None = None) -> None:
        super().__init__()
        if num_basis < 1 or last_peak <= 0 or offset <= 0:
            raise ValueError("RaisedCosineBasis needs num_basis >= 1, last_peak > 0 and offset > 0")
        lo, hi = math.log(offset), math.log(last_peak + offset)
        spacing = (hi - lo) / max(num_basis - 1, 1)
        self.scale = math.pi / 2 / spacing  # a: neighbouring peaks pi/2 apart on the cosine axis
        # one bump: its peak at last_peak (linspace would put it at lag 0)
        peaks = torch.linspace(lo if num_basis > 1 else hi, hi, num_basis, dtype=torch.get_default_dtype()) * self.scale
        self.register_buffer("peaks", peaks)
        self.offset, self.num_basis, self.window = float(offset), num_basis, window
        self.support = float(math.exp((float(peaks[-1]) + math.pi) / self.scale) - offset)

    def forward(self, lag: torch.Tensor) -> torch.Tensor:
        lag = lag.unsqueeze(-1)
        positive = lag > 0
        safe = torch.where(positive, lag, torch.zeros_like(lag))
        arg = self.scale * torch.log(safe + self.offset) - self.peaks.to(lag)
        value = 0.5 * (1 + torch.cos(arg.clamp(-math.pi, math.pi)))
        return torch.where(positive & (arg.abs() < math.pi), value, torch.zeros_like(value))

    def kinks(self) -> torch.Tensor:
        edges = torch.cat([self.peaks - math.pi, self.peaks + math.pi]) / self.scale
        # Also geometric grading points c (2^j - 1): log(lag + c) is singular at lag = -c, which slows
        # Gauss-Legendre down on intervals much longer than their distance to it (errors ~1e-2 at 8 nodes).
        grade = self.offset * (2.0 ** torch.arange(1, 64, dtype=edges.dtype, device=edges.device) - 1)
        return torch.cat([(torch.exp(edges) - self.offset).clamp(min=0), grade[grade < self.support]])

    def scan_filter(self, glm: Any, keys: torch.Tensor, batch: torch.Size) -> Any:
        from .basis_filters import RaisedCosineFilter

        if keeps_math(self, RaisedCosineBasis, BASIS_MATH):
            return RaisedCosineFilter(glm, keys, batch)
        return super().scan_filter(glm, keys, batch)
