"""The exact log-likelihood of exact data in the index layout (``batch x events x 2``: time, mark id;
see :mod:`pyro_dpp.events`), without the one-hot weights of all events.

The first sum of the exact log-likelihood (:mod:`pyro_dpp.likelihood`) needs the log-intensity of
each event at its own mark only, and the compensator can be computed a chunk of events (or of
quadrature intervals) at a time, so the working memory is bounded whatever the number of events
and marks: see :func:`index_log_likelihood`. The results equal those of the dense layout (the same
formulas and quadrature nodes) to float rounding.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .events import dense_to_index, index_marks, index_to_dense
from .intensity.base import Intensity, keeps_math
from .likelihood import (
    _QUERY_CHUNK,
    DEFAULT_QUADRATURE_NODES,
    evaluate,
    exact_log_likelihood,
    gauss_legendre,
    trim_padding,
)
from .scan.generic_scoring import _one_hot, has_scan, scan_score

#: An index value whose dense scoring would hold at most this many numbers (its one-hot history,
#: ``events x (K + C)``; times ``K`` for an intensity with a closed-form compensator, whose stock
#: forms evaluate ``events x K x (K + C)`` terms) is scored by the dense path: the same values,
#: through the intensity's fastest kernels, with working memory of this bound (32 MiB in float64).
#: Larger data take the chunked path of :func:`index_log_likelihood`. Set it to 0 to always take
#: the chunked path.
INDEX_DENSE_ENTRIES = 1 << 22

#: Most history rows per chunk of the chunked compensator and of history-free log-rates, and per
#: checkpointed segment of the scan (:data:`INDEX_SEGMENT`).
INDEX_CHUNK = 1 << 12
INDEX_SEGMENT = 64

#: The working-memory budget of the chunked path, in numbers: a chunk or segment of ``r`` rows of a
#: batch of ``B`` sequences is capped at ``r * B * K * (K + C) <= INDEX_WORK`` (the size of an
#: evaluation of all ``K`` rates from ``K + C`` traces per row, as Hawkes intensities do).
INDEX_WORK = 1 << 20


def _index_rows(most: int, batch: torch.Size, k: int, d: int) -> int:
    return max(1, min(most, INDEX_WORK // max(1, batch.numel() * k * d)))


def _trim_index(value: torch.Tensor) -> torch.Tensor:
    """An index value without the padding rows that every sequence has (all rows under tracing)."""
    if torch.jit.is_tracing() or not value.numel():
        return value
    rows = int((value[..., 1] >= 0).sum(-1).max())
    return value[..., :rows, :] if rows < value.shape[-2] else value


def _history_free(intensity: Intensity) -> bool:
    """Stock intensities whose rates ignore the history (their log-rates need no scan)."""
    from .intensity.inhomogeneous import InhomogeneousPoisson, PiecewisePoisson
    from .intensity.poisson import Poisson

    return any(isinstance(intensity, kind) and keeps_math(intensity, kind)
               for kind in (Poisson, PiecewisePoisson, InhomogeneousPoisson))


def additive_compensator(intensity: Intensity) -> bool:
    """Whether the intensity's closed-form :meth:`~pyro_dpp.intensity.base.Intensity.compensator` is a
    history-free term plus one term per history event (linear in the weights), so that it can be
    summed over chunks of events: the stock Poisson, inhomogeneous Poisson and Hawkes compensators,
    or any intensity with the attribute ``additive_compensator = True`` (a user's declaration)."""
    declared = getattr(intensity, "additive_compensator", None)
    if declared is not None:
        return bool(declared)
    from .intensity.hawkes import ExpHawkes
    from .intensity.inhomogeneous import InhomogeneousPoisson, PiecewisePoisson
    from .intensity.poisson import Poisson
    from .intensity.powerlaw import PowerLawHawkes
    from .intensity.sumexp import SumExpHawkes

    method = type(intensity).compensator
    return any(method is kind.compensator
               for kind in (ExpHawkes, SumExpHawkes, PowerLawHawkes, Poisson, PiecewisePoisson, InhomogeneousPoisson))


def _index_history(value: torch.Tensor, num_marks: int, context: torch.Tensor | None, num_context_marks: int
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The history of an index value and a dense context as ``times`` (batch x H), integer ``marks``
    (batch x H: modelled marks 0..K-1, exact context events K..K+C-1, -1 otherwise) and ``soft``
    (batch x H x c: the weights of a soft context in its C columns, c = 0 for an exact one)."""
    times, marks = value[..., 0], index_marks(value)
    soft = times.new_zeros(times.shape + (0,))
    if context is None or context.shape[-2] == 0:
        return times, marks, soft
    batch = torch.broadcast_shapes(value.shape[:-2], context.shape[:-2])
    ctx = context.expand(batch + context.shape[-2:])
    times = torch.cat([times.expand(batch + times.shape[-1:]), ctx[..., 0]], -1)
    marks = marks.expand(batch + marks.shape[-1:])
    ctx_w = ctx[..., 1 : 1 + num_context_marks]
    hard = not ctx_w.requires_grad and bool(((ctx_w == 0) | (ctx_w == 1)).all()) and not bool(ctx[..., -1].any())
    if hard:
        ctx_marks = index_marks(dense_to_index(ctx))
        ctx_marks = torch.where(ctx_marks >= 0, ctx_marks + num_marks, ctx_marks)
        return times, torch.cat([marks, ctx_marks], -1), times.new_zeros(times.shape + (0,))
    none = marks.new_full(ctx.shape[:-1], -1)
    soft = torch.cat([ctx_w.new_zeros(marks.shape + (num_context_marks,)), ctx_w], -2)
    return times, torch.cat([marks, none], -1), soft


def index_log_likelihood(
    intensity: Intensity, value: torch.Tensor, duration: torch.Tensor, context: torch.Tensor | None = None,
    nodes: int = DEFAULT_QUADRATURE_NODES,
) -> torch.Tensor:
    """``batch`` exact log-likelihood of an index value (``batch x events x 2``: time, mark id; see
    :mod:`pyro_dpp.events`), equal to :func:`exact_log_likelihood` of its dense realization.

    Small data (see :data:`INDEX_DENSE_ENTRIES`) take the dense path. Larger data never hold the
    one-hot weights of all events:

    - the log-intensity of each event at its own mark: for history-free stock intensities (Poisson,
      inhomogeneous Poisson) from the rates at the event times, a chunk at a time; for an
      :class:`~pyro_dpp.intensity.ExpHawkes` with one decay (and an exact context) by a chunked
      recursion on integer marks (:func:`_exphawkes_log_rates`, O(events x (chunk + K)) work); otherwise by the
      scan over the events (:func:`~pyro_dpp.scan.generic_scoring.scan_score` with integer marks:
      one checkpointed segment's one-hot rows at a time, ``batch x events`` out);
    - a stock :class:`~pyro_dpp.intensity.GLM` with a finite-support basis (the SNN's Epanechnikov
      and raised-cosine bases): its own parallel kernels (``log_forward``, ``integrate_intervals``)
      on chunks of queries, each given only the history within one support length before it
      (:func:`_windowed_log_likelihood`; memory set by the events within one support length);
    - the compensator: one decay's ExpHawkes compensator from per-source masses (O(events)); another
      closed form that is additive over events (:func:`additive_compensator`) summed over chunks of
      at most :data:`INDEX_CHUNK` events; without a closed form, Gauss-Legendre
      quadrature on the scan (the intervals and nodes of :func:`quadrature_compensator`).

    Two cases fall back to the dense layout (built under the memory check of
    :mod:`pyro_dpp.memory`): an intensity with a closed-form compensator not declared additive (set
    ``additive_compensator = True`` on it if it is a sum over events) or without the scan interface,
    and a ``duration`` that requires a gradient (the scan's intervals carry none).
    """
    k, c = intensity.num_marks, intensity.num_context_marks
    value, context = _trim_index(value), trim_padding(context)
    batch = torch.broadcast_shapes(value.shape[:-2], duration.shape, () if context is None else context.shape[:-2])
    rows = value.shape[-2] + (0 if context is None else context.shape[-2])
    closed = type(intensity).compensator is not Intensity.compensator
    # the dense path's own working memory: the one-hot history, and with a closed-form compensator
    # (the Hawkes family's) an events x K x (K + C) temporary
    small = batch.numel() * rows * (k + c) * (k if closed else 1) <= INDEX_DENSE_ENTRIES
    dense = (small or duration.requires_grad
             or (closed and not additive_compensator(intensity))
             or not (_history_free(intensity) or has_scan(intensity)))
    if dense:
        return exact_log_likelihood(intensity, index_to_dense(value, k), duration, context, nodes)
    times, marks, soft = _index_history(value, k, context, c)
    events = value.shape[-2]
    duration = duration.expand(batch)
    if _history_free(intensity):
        own = _history_free_log_rates(intensity, value, _index_rows(INDEX_CHUNK, batch, k, 1))
    elif _uniform_exphawkes(intensity) and _stock_exphawkes_rates(intensity) and not soft.shape[-1]:
        own = _exphawkes_log_rates(intensity, times, marks, events, _index_rows(INDEX_SEGMENT, batch, 1, k + c))
    elif _finite_support(intensity) is not None and not closed:
        return _windowed_log_likelihood(intensity, times, marks, soft, duration, events, nodes,
                                        _index_rows(INDEX_CHUNK, batch, k, k + c))
    else:
        grid = None if closed else torch.stack(gauss_legendre(nodes, times))
        every = _index_rows(INDEX_SEGMENT, batch, k, k + c)
        own, comp = scan_score(intensity, times, soft, duration, grid, checkpoint_every=every, marks=marks)
        own = own[..., :events]
    total = own.sum(-1)
    if closed and _uniform_exphawkes(intensity):
        comp = _exphawkes_compensator(intensity, times, marks, soft, duration)
    elif closed:
        comp = _chunked_compensator(intensity, times, marks, soft, duration, _index_rows(INDEX_CHUNK, batch, k, k + c))
    return total - comp


def _exphawkes_log_rates(intensity: Intensity, times: torch.Tensor, marks: torch.Tensor, events: int,
                         chunk: int) -> torch.Tensor:
    r"""``batch x events``: the log-intensity of each of the first ``events`` history rows at its own
    mark for an :class:`~pyro_dpp.intensity.ExpHawkes` with one decay, from integer marks, in chunks
    of sorted rows: :math:`\lambda_{k_e}(t_e) = \mu_{k_e} + \beta \sum_n \alpha_{k_e k_n}
    e^{-\beta (t_e - t_n)} [t_n < t_e]`, with the rows of earlier chunks folded into one trace per
    source (``batch x (K + C)``) and those of the chunk paired directly. Each chunk is recomputed in
    the backward pass (:func:`torch.utils.checkpoint.checkpoint`), so the saved memory is O(rows)."""
    from torch.utils.checkpoint import checkpoint

    k, d = intensity.num_marks, intensity.num_history_marks
    order = times.detach().argsort(dim=-1, stable=True)
    sorted_t, sorted_m = times.gather(-1, order), marks.gather(-1, order)
    batch = sorted_t.shape[:-1]
    trace = sorted_t.new_zeros(batch + (d,))  # rows of earlier chunks, decayed to ``last``
    tie = sorted_t.new_zeros(batch + (d,))  # those of them at time ``last`` (not strictly before it)
    last = sorted_t.new_zeros(batch)
    parts = []
    for lo in range(0, sorted_t.shape[-1], chunk):
        t, m = sorted_t[..., lo: lo + chunk], sorted_m[..., lo: lo + chunk]
        if torch.is_grad_enabled():
            rates, trace, tie, last = checkpoint(_exphawkes_chunk, intensity.baseline, intensity.adjacency,
                                                 intensity.decay, t, m, trace, tie, last, use_reentrant=False)
        else:
            rates, trace, tie, last = _exphawkes_chunk(intensity.baseline, intensity.adjacency, intensity.decay,
                                                       t, m, trace, tie, last)
        parts.append(rates)
    rates = torch.cat(parts, -1)  # batch x H, sorted rows
    own = torch.where((sorted_m >= 0) & (sorted_m < k), torch.log(rates), torch.zeros_like(rates))
    return own.gather(-1, order.argsort(-1))[..., :events]


def _exphawkes_chunk(baseline: torch.Tensor, adjacency: torch.Tensor, decay: torch.Tensor, t: torch.Tensor,
                     m: torch.Tensor, trace: torch.Tensor, tie: torch.Tensor, last: torch.Tensor
                     ) -> tuple[torch.Tensor, ...]:
    """One chunk of :func:`_exphawkes_log_rates`: the rates at its rows' own marks (1 where a row has
    no modelled mark) and the folded trace, tie trace and time after it."""
    k, d = adjacency.shape[-2], adjacency.shape[-1]
    beta = decay.reshape(())
    own = m.clamp(0, k - 1)
    gain = beta * adjacency  # batch x K x D
    # earlier chunks: (trace e^{-beta (t - last)} - tie [t == last]) . alpha_{k_e, :}
    drive = (gain @ trace.unsqueeze(-1)).squeeze(-1)  # batch x K
    drive_tie = (gain @ tie.unsqueeze(-1)).squeeze(-1)
    past = drive.gather(-1, own) * torch.exp(-beta * (t - last.unsqueeze(-1)))
    past = past - torch.where(t == last.unsqueeze(-1), drive_tie.gather(-1, own), torch.zeros_like(past))
    # this chunk's rows, pairwise: alpha_{k_e k_n} e^{-beta (t_e - t_n)} [t_n < t_e]
    lag = t.unsqueeze(-1) - t.unsqueeze(-2)  # batch x c (e) x c (n)
    source = m.clamp(min=0)
    pair = gain.expand(t.shape[:-1] + gain.shape[-2:])
    pair = pair.gather(-2, own.unsqueeze(-1).expand(own.shape + (d,)))  # batch x c x D: rows alpha_{k_e}
    pair = pair.gather(-1, source.unsqueeze(-2).expand(own.shape + source.shape[-1:]))  # batch x c x c
    before = (lag > 0) & (m >= 0).unsqueeze(-2)
    within = torch.where(before, pair * torch.exp(-beta * lag.clamp(min=0)), torch.zeros_like(pair)).sum(-1)
    base = baseline.expand(t.shape[:-1] + baseline.shape[-1:]).gather(-1, own)
    rates = torch.where((m >= 0) & (m < k), base + past + within, torch.ones_like(past))
    # fold the chunk: decay the trace to the chunk's last time, add its rows
    end = t[..., -1]
    real = (m >= 0).to(t.dtype)
    trace = trace * torch.exp(-beta * (end - last)).unsqueeze(-1)
    trace = trace.scatter_add(-1, source, real * torch.exp(-beta * (end.unsqueeze(-1) - t)))
    at_end = real * (t == end.unsqueeze(-1)).to(t.dtype)
    tie = torch.where((end == last).unsqueeze(-1), tie, torch.zeros_like(tie)).scatter_add(-1, source, at_end)
    return rates, trace, tie, end


def _stock_exphawkes_rates(intensity: Intensity) -> bool:
    from .intensity.hawkes import ExpHawkes

    return keeps_math(intensity, ExpHawkes)


def _uniform_exphawkes(intensity: Intensity) -> bool:
    from .intensity.hawkes import ExpHawkes

    return (isinstance(intensity, ExpHawkes) and type(intensity).compensator is ExpHawkes.compensator
            and intensity.decay.numel() == 1)


def _exphawkes_compensator(intensity: Intensity, times: torch.Tensor, marks: torch.Tensor, soft: torch.Tensor,
                           duration: torch.Tensor) -> torch.Tensor:
    """The :class:`~pyro_dpp.intensity.ExpHawkes` compensator with one decay ``beta`` from integer
    marks, in O(history) memory: ``T sum_i mu_i + sum_j (sum_i alpha_ij) s_j`` with the per-source
    masses ``s_j = sum_{n: k_n = j} (1 - exp(-beta (T - t_n)))`` (soft context rows by weight)."""
    d = intensity.num_history_marks
    remaining = (duration.unsqueeze(-1) - times).clamp(min=0)  # batch x H
    inside = -torch.expm1(-intensity.decay.reshape(()) * remaining)
    per_source = inside.new_zeros(inside.shape[:-1] + (d + 1,)).scatter_add(-1, marks + 1, inside)[..., 1:]
    if soft.shape[-1]:  # soft context marks fill the last columns
        extra = (inside.unsqueeze(-1) * soft).sum(-2)
        split = d - soft.shape[-1]
        per_source = torch.cat([per_source[..., :split], per_source[..., split:] + extra], -1)
    triggered = (per_source * intensity.adjacency.sum(-2)).sum(-1)
    return intensity.baseline.sum(-1) * duration + triggered


def _history_free_log_rates(intensity: Intensity, value: torch.Tensor, chunk: int) -> torch.Tensor:
    """``batch x events``: the log-rate of each event at its own mark (0 on padding), for an intensity
    that ignores the history (an empty history is passed), a chunk of events at a time."""
    k = intensity.num_marks
    empty_t = value.new_zeros(value.shape[:-2] + (0,))
    empty_w = value.new_zeros(value.shape[:-2] + (0, intensity.num_history_marks))
    parts = []
    for rows in value.split(chunk, -2):
        marks = index_marks(rows)
        log_rates = intensity.log_forward(empty_t, empty_w, rows[..., 0])  # batch x chunk x K
        log_rates = log_rates.expand(torch.broadcast_shapes(log_rates.shape[:-1], marks.shape) + (k,))
        picked = log_rates.gather(-1, marks.expand(log_rates.shape[:-1]).clamp(min=0).unsqueeze(-1)).squeeze(-1)
        parts.append(torch.where(marks >= 0, picked, torch.zeros_like(picked)))
    return torch.cat(parts, -1)


def _chunked_compensator(intensity: Intensity, times: torch.Tensor, marks: torch.Tensor, soft: torch.Tensor,
                         duration: torch.Tensor, chunk: int) -> torch.Tensor:
    """An additive closed-form compensator (:func:`additive_compensator`) summed over chunks of the
    history, each with its one-hot rows: the history-free term once, each chunk's events' terms."""
    width = intensity.num_history_marks
    empty = intensity.compensator(times[..., :0], times.new_zeros(times.shape[:-1] + (0, width)), duration)
    total = empty
    for t, m, w in zip(times.split(chunk, -1), marks.split(chunk, -1), soft.split(chunk, -2)):
        total = total + (intensity.compensator(t, _one_hot(m, width, w), duration) - empty)
    return total


# ---- stock GLMs with a finite-support basis: windows of the history -----------------------------
def _finite_support(intensity: Intensity) -> float | None:
    """The support of a stock :class:`~pyro_dpp.intensity.GLM`'s basis when finite (no anticausal
    drive): events older than it change no rate, so a chunk of queries needs only the history
    within one support length before it."""
    from .intensity.glm import GLM

    if not (isinstance(intensity, GLM) and keeps_math(intensity, GLM)):
        return None
    if getattr(intensity, "future", None) is not None:
        return None
    support = float(getattr(intensity.basis, "support", math.inf))
    return support if math.isfinite(support) else None


def _window_rows(keys: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, support: float) -> tuple[int, int]:
    """Rows ``start:end`` of the sorted history ``keys`` (batch x H) that hold, for every sequence,
    the events within ``[lo - support, hi]`` (``lo``, ``hi``: batch)."""
    flat = keys.reshape(-1, keys.shape[-1])
    start = torch.searchsorted(flat, (lo.reshape(-1, 1) - support).contiguous(), side="left")
    end = torch.searchsorted(flat, hi.reshape(-1, 1).contiguous(), side="right")
    return int(start.min()), int(end.max())


def _windowed_log_likelihood(intensity: Intensity, times: torch.Tensor, marks: torch.Tensor, soft: torch.Tensor,
                             duration: torch.Tensor, events: int, nodes: int, chunk: int) -> torch.Tensor:
    """The exact log-likelihood of a finite-support GLM (:func:`_finite_support`) from integer marks:
    its own ``log_forward`` and ``integrate_intervals`` on chunks of queries (the value's events; the
    quadrature intervals of :func:`quadrature_compensator`, the same nodes), each given the one-hot
    rows of the history within one support length before the chunk only."""
    support = _finite_support(intensity)
    k, width = intensity.num_marks, intensity.num_history_marks
    batch = times.shape[:-1]
    order = times.detach().argsort(dim=-1, stable=True)
    hist_t, hist_m = times.gather(-1, order), marks.gather(-1, order)
    hist_w = soft.gather(-2, order.unsqueeze(-1).expand(order.shape + soft.shape[-1:]))
    keys = hist_t.detach().contiguous()

    def window(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        start, end = _window_rows(keys, lo, hi, support)
        return hist_t[..., start:end], hist_m[..., start:end], hist_w[..., start:end, :]

    def events_part(q: torch.Tensor, m: torch.Tensor, t: torch.Tensor, hm: torch.Tensor,
                    hw: torch.Tensor) -> torch.Tensor:
        log_rates = intensity.log_forward(t, _one_hot(hm, width, hw), q)  # batch x chunk x K
        picked = log_rates.gather(-1, m.clamp(0, k - 1).unsqueeze(-1)).squeeze(-1)
        return torch.where(m >= 0, picked, torch.zeros_like(picked)).sum(-1)

    def compensator_part(c: torch.Tensor, h: torch.Tensor, t: torch.Tensor, hm: torch.Tensor,
                         hw: torch.Tensor) -> torch.Tensor:
        w = _one_hot(hm, width, hw)
        part = intensity.integrate_intervals(t, w, c, h, nodes)
        if part is None:
            query = c.unsqueeze(-1) + h.unsqueeze(-1) * x  # batch x P x nodes
            rates = evaluate(intensity, t, w, query.flatten(-2)).sum(-1).reshape(query.shape)
            part = (rates * h.unsqueeze(-1) * w_nodes).sum((-1, -2))
        return part

    # the events at their own marks (the value's rows come first and are sorted)
    total = 0.0
    for q, m in zip(times[..., :events].split(chunk, -1), marks[..., :events].split(chunk, -1)):
        total = total + _recomputed(events_part, q, m, *window(q[..., 0].detach(), q[..., -1].detach()))
    # the compensator: quadrature_compensator's intervals and chunks, with windows of the history
    points = [keys.new_zeros(batch + (1,)), keys]
    for t, m, w in zip(hist_t.detach().split(INDEX_CHUNK, -1), hist_m.split(INDEX_CHUNK, -1),
                       hist_w.detach().split(INDEX_CHUNK, -2)):
        extra = intensity.breakpoints(t, _one_hot(m, width, w))
        if extra is not None:
            points.append(extra.expand(batch + extra.shape[-1:]))
    end = duration.unsqueeze(-1)
    points = torch.cat(points + [end.expand(batch + (1,))], -1)
    points = torch.minimum(points.clamp(min=0), end).sort(-1).values
    if not torch.jit.is_tracing():
        inside = int((points < end).sum(-1).max()) + 1
        points = torch.cat([points[..., :inside], end.expand(batch + (1,))], -1)
    left, right = points[..., :-1], points[..., 1:]
    x, w_nodes = gauss_legendre(nodes, times)
    half, centre = (right - left) / 2, (left + right) / 2
    comp = 0.0
    size = max(1, _QUERY_CHUNK // nodes)
    for c, h in zip(centre.split(size, -1), half.split(size, -1)):
        comp = comp + _recomputed(compensator_part, c, h, *window((c - h)[..., 0].detach(), (c + h)[..., -1].detach()))
    return total - comp


def _recomputed(fn: Any, *args: torch.Tensor) -> torch.Tensor:
    """``fn(*args)``, recomputed in the backward pass (:func:`torch.utils.checkpoint.checkpoint`)
    when a gradient may be needed: a chunk's intermediate tensors (``chunk x K`` rates, the one-hot
    rows of its window) are not kept for the backward pass, only its inputs."""
    if not torch.is_grad_enabled():
        return fn(*args)
    from torch.utils.checkpoint import checkpoint

    return checkpoint(fn, *args, use_reentrant=False)
