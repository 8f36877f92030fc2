"""Linear Hawkes process with power-law kernels cut off at a support."""

from __future__ import annotations

import math
from typing import Any

import torch

from ._branching import stationary_count
from ._window import empty_window, push_event
from .base import Intensity, State, as_param, check_finite, keeps_math

#: Elements of the ``queries x window x K x D`` kernel tensor one chunk of the parallel evaluation may build.
_CHUNK_ELEMENTS = 1 << 22


def power_integral(x: torch.Tensor, cutoff: torch.Tensor, exponent: torch.Tensor) -> torch.Tensor:
    r""":math:`\int_0^x (c + s)^{-b}\,ds = c^{1-b}\,\mathrm{expm1}((1-b)\log(1 + x/c)) / (1-b)` for
    finite ``x >= 0``, with its limit :math:`\log(1 + x/c)` at ``b = 1`` (a series where
    ``(1 - b) log(1 + x/c)`` is tiny, so values and gradients stay accurate across ``b = 1``)."""
    a = 1 - exponent
    log_ratio = torch.log1p(x / cutoff)
    z = a * log_ratio
    small = z.abs() < 1e-4
    safe_a = torch.where(small, torch.ones_like(a), a)
    exact = torch.expm1(torch.where(small, torch.zeros_like(z), z)) / safe_a
    series = log_ratio * (1 + z / 2 + z * z / 6)
    return torch.exp(a * torch.log(cutoff)) * torch.where(small, series, exact)


class PowerLawHawkes(Intensity):
    r"""Linear (mutually exciting) Hawkes process with power-law kernels, cut off at a support:

    .. math::
        \lambda_i(t) = \mu_i + \sum_j \sum_{t_n^{(j)} < t} \phi_{ij}(t - t_n^{(j)}), \qquad
        \phi_{ij}(s) = m_{ij}\,(c_{ij} + s)^{-b_{ij}}\; \mathbb{1}[0 < s < S]

    the convention of tick's ``HawkesKernelPowerLaw(multiplier, cutoff, exponent, support)`` (tick's
    default ``support=-1`` cuts the kernel where it falls below ``error``: pass
    ``kernel.get_support()`` here to match it). The kernel of pair ``(i, j)`` integrates to the branching ratio
    :math:`m_{ij} G_{ij}(S)` with :math:`G(x) = \int_0^x (c + s)^{-b}\,ds =
    \frac{(c + x)^{1-b} - c^{1-b}}{1 - b}` (:math:`\log(1 + x/c)` at ``b = 1``), and the compensator
    has the closed form

    .. math::
        \int_0^T \sum_i \lambda_i\,dt = T \sum_i \mu_i
        + \sum_n \sum_{i,j} w_{nj}\, m_{ij}\, G_{ij}(\min(T - t_n, S)).

    The kernel is decreasing on its support and zero beyond it, so between events the intensity
    never rises: the current intensity is an Ogata bound until the next event
    (:meth:`local_bound`). The kernel drops to zero at lag ``S``: :meth:`breakpoints` places
    quadrature breaks there. A power law has no recursive state: the scan keeps a window of the
    recent events (at most ``window``; an event that would leave it while still inside the support
    raises), and the parallel evaluation looks back one support length from each query (all the
    history when ``support`` is infinite), in chunks of bounded memory.

    Columns of ``multiplier`` beyond ``K`` are *context* marks: events that excite the modelled
    marks but are not modelled themselves.

    **References**

    [1] A. G. Hawkes, "Spectra of some self-exciting and mutually exciting point processes",
        Biometrika, 1971.
    [2] Y. Ogata, "Statistical models for earthquake occurrences and residual analysis for point
        processes", JASA, 1988 (the power-law, Omori-Utsu, kernel).
    [3] E. Bacry, M. Bompaire, S. Gaiffas, J.-F. Muzy, "tick: a Python library for statistical
        learning, with an emphasis on Hawkes processes and time-dependent models", JMLR, 2018.

    :param baseline: ``batch x K`` nonnegative baseline rates :math:`\mu`.
    :param multiplier: ``batch x K x (K + C)`` nonnegative multipliers :math:`m`.
    :param cutoff: positive cutoffs :math:`c`, a scalar or broadcastable to ``multiplier``.
    :param exponent: positive exponents :math:`b`, a scalar or broadcastable to ``multiplier``.
    :param float support: positive support :math:`S` shared by all kernels (``math.inf``: the
        whole history, then the parallel evaluation is quadratic in the number of events).
    :param int window: events the scan keeps (default: every event of the scan).
    """

    # the parallel path is banded (one support length before each query) and chunked; with infinite
    # support it is quadratic, but so is the scan (its window then holds every event), and slower
    parallel_scoring = True

    def __init__(self, baseline: Any, multiplier: Any, cutoff: Any, exponent: Any, support: float = math.inf,
                 window: int | None = None) -> None:
        super().__init__()
        baseline = as_param(baseline)
        multiplier = as_param(multiplier, baseline)
        cutoff = as_param(cutoff, baseline)
        exponent = as_param(exponent, baseline)
        for name, x in (("baseline", baseline), ("multiplier", multiplier), ("cutoff", cutoff),
                        ("exponent", exponent)):
            check_finite(name, x)
        if baseline.dim() < 1 or multiplier.dim() < 2:
            raise ValueError("PowerLawHawkes needs baseline of shape (..., K) and multiplier (..., K, K + C)")
        k = baseline.shape[-1]
        if multiplier.shape[-2] != k or multiplier.shape[-1] < k:
            raise ValueError(
                f"multiplier must have shape (..., {k}, {k} + C) for {k} marks, got {tuple(multiplier.shape)}"
            )
        if (baseline < 0).any() or (multiplier < 0).any():
            raise ValueError("PowerLawHawkes baseline and multiplier must be nonnegative (a linear Hawkes process)")
        if (cutoff <= 0).any():
            raise ValueError("PowerLawHawkes cutoff must be positive (the kernel is infinite at lag 0 otherwise)")
        if (exponent <= 0).any():
            raise ValueError("PowerLawHawkes exponent must be positive (a decreasing kernel)")
        try:
            support = float(support)
        except (TypeError, ValueError) as err:
            raise ValueError(f"support must be a positive number (or math.inf), got {support!r}") from err
        if math.isnan(support) or support <= 0:
            raise ValueError(f"support must be positive (or math.inf), got {support}")
        if window is not None and (int(window) != window or window < 1):
            raise ValueError(f"window must be a positive integer or None, got {window!r}")
        for name, x in (("cutoff", cutoff), ("exponent", exponent)):
            try:
                torch.broadcast_shapes(x.shape, multiplier.shape)
            except RuntimeError as err:
                raise ValueError(f"{name} of shape {tuple(x.shape)} does not broadcast to multiplier") from err
        try:
            torch.broadcast_shapes(baseline.shape[:-1], multiplier.shape[:-2], cutoff.shape[:-2], exponent.shape[:-2])
        except RuntimeError as err:
            raise ValueError("the batch shapes of baseline and multiplier do not broadcast") from err
        self.baseline, self.multiplier, self.cutoff, self.exponent = baseline, multiplier, cutoff, exponent
        self.support, self.window = support, window
        self.num_marks = k
        self.num_context_marks = multiplier.shape[-1] - k
        # one cutoff and exponent for all pairs: the kernel factors as m_ij psi(lag)
        self._shared = cutoff.numel() == 1 and exponent.numel() == 1

    def like(self) -> torch.Tensor:
        return self.baseline

    @property
    def batch_shape(self) -> torch.Size:
        shapes = [self.baseline.shape[:-1], self.multiplier.shape[:-2]]
        shapes += [x.shape[:-2] for x in (self.cutoff, self.exponent) if x.dim() >= 2]
        return torch.broadcast_shapes(*shapes)

    @staticmethod
    def _pair(x: torch.Tensor, extra: int) -> torch.Tensor:
        """A pair parameter (``batch x K x D`` or broadcastable) with ``extra`` singleton dimensions
        between its batch and ``K x D``, to line up with data dimensions (queries, events)."""
        x = x.reshape((1,) * max(0, 2 - x.dim()) + x.shape)
        return x.reshape(x.shape[:-2] + (1,) * extra + x.shape[-2:])

    def _excitation(self, lag: torch.Tensor, inside: torch.Tensor, weights: torch.Tensor, queries: int) -> torch.Tensor:
        """``batch x [Q] x K``: :math:`\\sum_e \\sum_j \\phi_{ij}(lag_e) w_{ej}` over the events with
        ``inside`` true, for lags ``batch x [Q] x E`` and weights ``batch x [Q] x E x D`` (``queries``:
        0 or 1, whether the query dimension is there)."""
        lag = torch.where(inside, lag, torch.zeros_like(lag))
        multiplier = self._pair(self.multiplier, queries)
        if self._shared:  # one power law for all pairs: sum the history per source first
            c, b = self.cutoff.reshape(()), self.exponent.reshape(())
            kernel = torch.exp(-b * torch.log(c + lag)) * inside
            summed = torch.einsum("...e,...ed->...d", kernel, weights)
            return torch.einsum("...d,...kd->...k", summed, multiplier)
        c, b = self._pair(self.cutoff, queries + 1), self._pair(self.exponent, queries + 1)
        kernel = torch.exp(-b * torch.log(c + lag[..., None, None])) * inside[..., None, None]
        return torch.einsum("...ekd,...ed,...kd->...k", kernel, weights, multiplier)

    # ---- scan: a window of recent events ---------------------------------------------------------
    def initial_state(self, batch_shape: torch.Size, like: torch.Tensor, num_steps: int) -> State:
        return empty_window(batch_shape, min(num_steps, self.window or num_steps), self.num_history_marks, like)

    def rates(self, state: State, time: torch.Tensor) -> torch.Tensor:
        times, weights = state
        lag = time.unsqueeze(-1) - times  # batch x W; -inf slots give +inf lags
        inside = (lag >= 0) & (lag < self.support)  # lag 0: an event folded in at `time` (right limit)
        return self.baseline + self._excitation(lag, inside, weights, 0)

    def update(self, state: State, time: torch.Tensor, weights: torch.Tensor) -> State:
        return push_event(state, time, weights, self.support, "PowerLawHawkes")

    # ---- parallel: the events within one support length before each query, in chunks ------------
    def forward(self, times: torch.Tensor, weights: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        batch = torch.broadcast_shapes(times.shape[:-1], weights.shape[:-2], query.shape[:-1])
        n, d, q_len = times.shape[-1], weights.shape[-1], query.shape[-1]
        out_batch = torch.broadcast_shapes(batch, self.batch_shape)
        base = self.baseline.unsqueeze(-2).expand(out_batch + (q_len, self.num_marks))
        if n == 0 or q_len == 0:
            return base
        order = times.detach().expand(batch + (n,)).argsort(-1)
        t = times.expand(batch + (n,)).gather(-1, order)
        w = weights.expand(batch + (n, d)).gather(-2, order.unsqueeze(-1).expand(batch + (n, d)))
        query = query.expand(batch + (q_len,))
        t_key = t.detach().contiguous()
        hi = torch.searchsorted(t_key, query.detach().contiguous())  # events before hi: strictly earlier
        if math.isinf(self.support):
            lo = torch.zeros_like(hi)
        else:
            lo = torch.searchsorted(t_key, (query.detach() - self.support).contiguous(), right=True)  # lag < support
        width = int((hi - lo).max())  # the widest band: events one support length before a query
        if width == 0:
            return base
        per_query = width * (1 if self._shared else self.num_marks * d) * max(1, math.prod(out_batch))
        rows = max(1, _CHUNK_ELEMENTS // per_query)
        parts = []
        for h, lw, qc in zip(hi.split(rows, -1), lo.split(rows, -1), query.split(rows, -1)):
            index = h.unsqueeze(-1) - width + torch.arange(width, device=h.device)  # batch x Qc x W
            valid = index >= lw.unsqueeze(-1)
            index = index.clamp(min=0)
            flat = index.flatten(-2)
            near = t.gather(-1, flat).reshape(index.shape)
            near_w = w.gather(-2, flat.unsqueeze(-1).expand(flat.shape + (d,))).reshape(index.shape + (d,))
            lag = qc.unsqueeze(-1) - near
            part = self._excitation(lag, valid & (lag > 0), near_w, 1)
            parts.append(part.expand(out_batch + part.shape[-2:]))
        return base + torch.cat(parts, -2)

    def compensator(self, times: torch.Tensor, weights: torch.Tensor, duration: torch.Tensor) -> torch.Tensor:
        remaining = (duration.unsqueeze(-1) - times).clamp(min=0).clamp(max=self.support)  # batch x E
        # events before the window (past): their kernel's mass before time 0 is not in the window
        elapsed = (-times).clamp(min=0).clamp(max=self.support) if bool((times < 0).any()) else None
        if self._shared:
            mass = power_integral(remaining, self.cutoff.reshape(()), self.exponent.reshape(()))  # batch x E
            if elapsed is not None:
                mass = mass - power_integral(elapsed, self.cutoff.reshape(()), self.exponent.reshape(()))
            per_source = torch.einsum("...e,...ed->...d", mass, weights)
            triggered = torch.einsum("...d,...kd->...", per_source, self.multiplier)
        else:
            triggered = 0.0
            # batch x E x K x D per chunk of events: memory bounded
            batch = torch.broadcast_shapes(remaining.shape[:-1], self.batch_shape)
            chunk = max(1, _CHUNK_ELEMENTS // max(1, math.prod(batch) * self.multiplier.shape[-2:].numel()))
            before = remaining if elapsed is None else elapsed
            for r, e, wc in zip(remaining.split(chunk, -1), before.split(chunk, -1), weights.split(chunk, -2)):
                mass = power_integral(r[..., None, None], self._pair(self.cutoff, 1), self._pair(self.exponent, 1))
                if elapsed is not None:
                    mass = mass - power_integral(e[..., None, None], self._pair(self.cutoff, 1),
                                                 self._pair(self.exponent, 1))
                triggered = triggered + torch.einsum("...ekd,...ed,...kd->...", mass, wc, self.multiplier)
        return self.baseline.sum(-1) * duration + triggered

    def history_reach(self, dtype: torch.dtype | None = None) -> float:
        r"""The ``support`` where finite, else the lag :math:`d` at which the slowest-falling
        kernel has dropped to ``dtype``'s epsilon of its value at lag 0,
        :math:`(c + d)^{-b} = \epsilon\, c^{-b}`, that is :math:`d = c\,(\epsilon^{-1/b} - 1)`
        (largest cutoff, smallest exponent), which can be very long: windows then do better with
        a shorter ``history=`` (see :meth:`Intensity.history_reach`)."""
        if math.isfinite(self.support):
            return float(self.support)
        dtype = self.baseline.dtype if dtype is None else dtype
        c, b = float(self.cutoff.detach().max()), float(self.exponent.detach().min())
        return c * math.expm1(math.log(1 / torch.finfo(dtype).eps) / b)

    def history_support(self) -> float:
        # only a true support: without one, the events beyond the reach each change the intensity
        # below precision, but their heavy tail can sum above it; a subclass that changes the math
        # may look further back
        return float(self.support) if keeps_math(self, PowerLawHawkes) else math.inf

    def breakpoints(self, times: torch.Tensor, weights: torch.Tensor) -> torch.Tensor | None:
        # the kernel drops to zero one support length after each event
        return None if math.isinf(self.support) else times + self.support

    # ---- sampling helpers ------------------------------------------------------------------
    def local_bound(self, state: State, time: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Decreasing kernels cut off to zero: the intensity now bounds it until the next event.
        bound = self.rates(state, time).sum(-1)
        return bound, torch.full_like(bound, torch.inf)

    def branching_matrix(self) -> torch.Tensor:
        """``batch x K x K``: :math:`m_{ij} G_{ij}(S)`, the mean number of mark-i events triggered
        by one mark-j event (``inf`` for an infinite support with ``exponent <= 1``)."""
        c, b = self.cutoff, self.exponent
        if math.isinf(self.support):  # c^(1-b) / (b - 1), infinite for b <= 1
            heavy = b <= 1
            mass = torch.where(heavy, torch.full_like(b, math.inf),
                               torch.exp((1 - b) * torch.log(c)) / torch.where(heavy, torch.ones_like(b), b - 1))
        else:
            mass = power_integral(torch.full_like(b, self.support), c, b)
        mass = mass.expand(torch.broadcast_shapes(mass.shape, self.multiplier.shape))
        return (self.multiplier * mass)[..., : self.num_marks]

    def mean_count(self, duration: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        return stationary_count(self.branching_matrix(), self.baseline, duration)
