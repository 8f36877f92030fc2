"""numba twins of the Epanechnikov scoring features (:meth:`pyro_dpp.intensity.basis.EpanechnikovBasis.
polynomial_features` and its fused potential), CPU: block-relative prefix sums of ``w``, ``w t`` and
``w t^2``, one pass per sequence, with autograd wrappers (gradients with respect to the weights by
adjoint kernels).
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np
import torch

from ..scan._numba_step import OPTS
from ..scan.backend import numba_threads


@nb.njit(inline="always", **OPTS)
def _epan_ranges(t, bid, n_events, q, c, width, ptr, i, sorted_queries):
    """Index pieces ``[lo, mid)`` (block ``first``) and ``[mid, hi)`` (block ``first + 1``) of the
    events strictly before ``q`` inside the bump centred at lag ``c``. With sorted queries the three
    boundaries only move forward: ``ptr[i]`` keeps them (amortized O(1)), else binary search."""
    a = q - c
    low = a - width
    upper = min(a + width, q)
    if sorted_queries:
        lo = ptr[i, 0]
        while lo < n_events and t[lo] <= low:
            lo += 1
        hi = max(ptr[i, 1], lo)
        while hi < n_events and t[hi] < upper:
            hi += 1
        ptr[i, 0], ptr[i, 1] = lo, hi
    else:
        lo = np.searchsorted(t, low, side="right")
        hi = max(np.searchsorted(t, upper, side="left"), lo)
    first = bid[min(lo, n_events - 1)]
    if sorted_queries:
        mid = max(ptr[i, 2], lo)
        while mid < n_events and bid[mid] < first + 1:
            mid += 1
        ptr[i, 2] = mid
    else:
        mid = np.searchsorted(bid, first + 1, side="left")
    mid = min(max(mid, lo), hi)
    return lo, mid, hi, first


@nb.njit(inline="always", **OPTS)
def _is_sorted(x):
    for j in range(1, x.shape[0]):
        if x[j] < x[j - 1]:
            return False
    return True


@nb.njit(inline="always", **OPTS)
def _blocks(tb, block, bid, local):
    origin = tb[0]
    for n in range(tb.shape[0]):
        bid[n] = np.int64(math.floor((tb[n] - origin) / block))
        local[n] = tb[n] - (origin + (bid[n] + 0.5) * block)
    return origin


@nb.njit(inline="always", **OPTS)
def _prefix_moments(w, local):
    """``prefix[n] = sum_{m < n} w_m (1, u_m, u_m^2)`` with ``u = local`` (``(E + 1) x 3 x D``)."""
    n_events, sources = w.shape
    prefix = np.zeros((n_events + 1, 3, sources))
    for n in range(n_events):
        d0 = local[n]
        for d in range(sources):
            x = w[n, d]
            prefix[n + 1, 0, d] = prefix[n, 0, d] + x
            prefix[n + 1, 1, d] = prefix[n, 1, d] + x * d0
            prefix[n + 1, 2, d] = prefix[n, 2, d] + x * d0 * d0
    return prefix


@nb.njit(inline="always", **OPTS)
def _window_moments(prefix, start, stop, d):
    """The moments of events ``start .. stop - 1`` of source ``d``."""
    return (prefix[stop, 0, d] - prefix[start, 0, d], prefix[stop, 1, d] - prefix[start, 1, d],
            prefix[stop, 2, d] - prefix[start, 2, d])


@nb.njit(inline="always", **OPTS)
def _scatter_window(gp, start, stop, d, a0, a1, a2):
    """Adjoint of :func:`_window_moments`: cotangents ``a`` of the moments onto the prefix sums."""
    gp[stop, 0, d] += a0
    gp[start, 0, d] -= a0
    gp[stop, 1, d] += a1
    gp[start, 1, d] -= a1
    gp[stop, 2, d] += a2
    gp[start, 2, d] -= a2


@nb.njit(inline="always", **OPTS)
def _prefix_moments_adjoint(gp, local, grad_w):
    """Adjoint of :func:`_prefix_moments`: ``grad_w[n] = sum_{j > n} gp[j] . (1, u_n, u_n^2)``."""
    n_events, sources = grad_w.shape
    acc = np.zeros((3, sources))
    for n in range(n_events - 1, -1, -1):
        for d in range(sources):
            acc[0, d] += gp[n + 1, 0, d]
            acc[1, d] += gp[n + 1, 1, d]
            acc[2, d] += gp[n + 1, 2, d]
            grad_w[n, d] = acc[0, d] + local[n] * (acc[1, d] + local[n] * acc[2, d])


@nb.njit(inline="always", **OPTS)
def _sequence(tb, qb, num, block):
    """Per-sequence tables: block ids and block-relative times of the events, the origin, the
    pointers of the sorted-query walk, whether the queries are sorted, and scratch space for
    :func:`_query_pieces` (bounds, shifts, counts)."""
    n_events = tb.shape[0]
    bid = np.empty(n_events, np.int64)
    local = np.empty(n_events)
    origin = _blocks(tb, block, bid, local)
    pieces = (np.empty((num, 2, 2), np.int64), np.empty((num, 2)), np.empty(num, np.int64))
    return bid, local, origin, np.zeros((num, 3), np.int64), _is_sorted(qb), pieces


@nb.njit(inline="always", **OPTS)
def _query_pieces(tb, bid, origin, ptr, sorted_queries, qj, centres, width, block, pieces):
    """For every bump ``i`` at query ``qj``: its nonempty index pieces ``bounds[i, p]`` = (start,
    stop), ``shifts[i, p]`` the query relative to the piece's block centre minus the bump centre,
    ``counts[i]`` how many (0 to 2)."""
    bounds, shifts, counts = pieces
    for i in range(centres.shape[0]):
        lo, mid, hi, first = _epan_ranges(tb, bid, tb.shape[0], qj, centres[i], width, ptr, i, sorted_queries)
        n = 0
        for p in range(2):
            start, stop = (lo, mid) if p == 0 else (mid, hi)
            if stop > start:
                bounds[i, n, 0], bounds[i, n, 1] = start, stop
                shifts[i, n] = qj - centres[i] - (origin + (first + p + 0.5) * block)
                n += 1
        counts[i] = n


@nb.njit(inline="always", **OPTS)
def _piece_features(prefix, start, stop, d, a, h2):
    """The ``s^0, s^1, s^2`` coefficients of one piece's contribution to a feature (source ``d``) at
    ``a`` (query minus bump centre minus block centre): the moments times the matrix of
    :func:`pyro_dpp.intensity.basis.epanechnikov_moments` (its twin)."""
    s0, s1, s2 = _window_moments(prefix, start, stop, d)
    return (0.75 * (1 - a * a / h2) * s0 + 1.5 * a / h2 * s1 - 0.75 / h2 * s2,
            -1.5 * a / h2 * s0 + 1.5 / h2 * s1, -0.75 / h2 * s0)


@nb.njit(inline="always", **OPTS)
def _piece_scatter(gp, start, stop, d, a, h2, g0, g1, g2):
    """Adjoint of :func:`_piece_features`: the coefficients' cotangents onto the prefix sums ``gp``."""
    _scatter_window(gp, start, stop, d, 0.75 * (1 - a * a / h2) * g0 - 1.5 * a / h2 * g1 - 0.75 / h2 * g2,
                    1.5 * a / h2 * g0 + 1.5 / h2 * g1, -0.75 / h2 * g0)


@nb.njit(parallel=True, **OPTS)
def epan_features(t, w, q, centres, width, block, order, out):
    """``out[b, j, m, l, d]``: coefficient of ``s^m`` in ``F_ld(q_j + s)`` (``order`` 0 or 2)."""
    for b in nb.prange(t.shape[0]):
        bid, local, origin, ptr, sorted_queries, pieces = _sequence(t[b], q[b], centres.shape[0], block)
        prefix = _prefix_moments(w[b], local)
        bounds, shifts, counts = pieces
        for j in range(q.shape[1]):
            _query_pieces(t[b], bid, origin, ptr, sorted_queries, q[b, j], centres, width, block, pieces)
            out[b, j] = 0.0
            for i in range(centres.shape[0]):
                for p in range(counts[i]):
                    for d in range(w.shape[2]):
                        f = _piece_features(prefix, bounds[i, p, 0], bounds[i, p, 1], d, shifts[i, p], width * width)
                        for m in range(order + 1):
                            out[b, j, m, i, d] += f[m]


@nb.njit(parallel=True, **OPTS)
def epan_features_grad(t, q, centres, width, block, order, grad_out, grad_w):
    """Adjoint of :func:`epan_features` with respect to the event weights."""
    for b in nb.prange(t.shape[0]):
        bid, local, origin, ptr, sorted_queries, pieces = _sequence(t[b], q[b], centres.shape[0], block)
        gp = np.zeros((t.shape[1] + 1, 3, grad_w.shape[2]))
        bounds, shifts, counts = pieces
        for j in range(q.shape[1]):
            _query_pieces(t[b], bid, origin, ptr, sorted_queries, q[b, j], centres, width, block, pieces)
            for i in range(centres.shape[0]):
                for p in range(counts[i]):
                    for d in range(grad_w.shape[2]):
                        g = grad_out[b, j, :, i, d]
                        _piece_scatter(gp, bounds[i, p, 0], bounds[i, p, 1], d, shifts[i, p], width * width, g[0],
                                       g[1] if order else 0.0, g[2] if order else 0.0)
        _prefix_moments_adjoint(gp, local, grad_w[b])


@nb.njit(parallel=True, **OPTS)
def epan_potential(t, w, q, centres, width, block, weight, out):
    """``out[b, j, m, k] = sum_{l, d} weight[b, k, l, d] F^(m)_ld(q_j)``: the potential's quadratic
    coefficients (bias excluded) without materialising the features of all queries."""
    num, sources = centres.shape[0], w.shape[2]
    for b in nb.prange(t.shape[0]):
        bid, local, origin, ptr, sorted_queries, pieces = _sequence(t[b], q[b], num, block)
        prefix = _prefix_moments(w[b], local)
        bounds, shifts, counts = pieces
        for j in range(q.shape[1]):
            _query_pieces(t[b], bid, origin, ptr, sorted_queries, q[b, j], centres, width, block, pieces)
            for m in range(3):
                for kk in range(weight.shape[1]):
                    out[b, j, m, kk] = 0.0
            for i in range(num):
                for p in range(counts[i]):
                    for d in range(sources):
                        f0, f1, f2 = _piece_features(prefix, bounds[i, p, 0], bounds[i, p, 1], d, shifts[i, p],
                                                     width * width)
                        for kk in range(weight.shape[1]):
                            wk = weight[b, kk, i, d]
                            out[b, j, 0, kk] += wk * f0
                            out[b, j, 1, kk] += wk * f1
                            out[b, j, 2, kk] += wk * f2


@nb.njit(parallel=True, **OPTS)
def epan_potential_grad(t, w, q, centres, width, block, weight, grad_out, grad_w, grad_weight):
    """Adjoint of :func:`epan_potential` with respect to the event weights and the filter weights."""
    num, sources, k_marks = centres.shape[0], w.shape[2], weight.shape[1]
    for b in nb.prange(t.shape[0]):
        bid, local, origin, ptr, sorted_queries, pieces = _sequence(t[b], q[b], num, block)
        prefix = _prefix_moments(w[b], local)
        gp = np.zeros((t.shape[1] + 1, 3, sources))
        gweight = np.zeros((k_marks, num, sources))
        bounds, shifts, counts = pieces
        for j in range(q.shape[1]):
            _query_pieces(t[b], bid, origin, ptr, sorted_queries, q[b, j], centres, width, block, pieces)
            for i in range(num):
                for p in range(counts[i]):
                    start, stop, a = bounds[i, p, 0], bounds[i, p, 1], shifts[i, p]
                    for d in range(sources):
                        f0, f1, f2 = _piece_features(prefix, start, stop, d, a, width * width)
                        g0 = 0.0
                        g1 = 0.0
                        g2 = 0.0
                        for kk in range(k_marks):
                            c0, c1, c2 = grad_out[b, j, 0, kk], grad_out[b, j, 1, kk], grad_out[b, j, 2, kk]
                            gweight[kk, i, d] += c0 * f0 + c1 * f1 + c2 * f2
                            wk = weight[b, kk, i, d]
                            g0 += wk * c0
                            g1 += wk * c1
                            g2 += wk * c2
                        _piece_scatter(gp, start, stop, d, a, width * width, g0, g1, g2)
        grad_weight[b] = gweight
        _prefix_moments_adjoint(gp, local, grad_w[b])


class EpanechnikovFeatures(torch.autograd.Function):
    """``rows x Q x (order+1) x L x D`` Epanechnikov features (or their quadratic coefficients in
    the offset from each query) of sorted events; differentiable in the weights only."""

    @staticmethod
    def forward(ctx, w, t, q, centres, width, block, order):  # noqa: D102
        rows, q_len = q.shape
        out = torch.empty(rows, q_len, order + 1, centres.numel(), w.shape[-1], dtype=torch.float64)
        numba_threads()
        epan_features(t.numpy(), w.detach().numpy(), q.numpy(), centres.numpy(), float(width), float(block),
                          order, out.numpy())
        ctx.save_for_backward(t, q, centres)
        ctx.params = (float(width), float(block), order, w.shape)
        return out

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        t, q, centres = ctx.saved_tensors
        width, block, order, shape = ctx.params
        grad_w = torch.empty(shape, dtype=torch.float64)
        numba_threads()
        epan_features_grad(t.numpy(), q.numpy(), centres.numpy(), width, block, order,
                               grad.contiguous().numpy(), grad_w.numpy())
        return grad_w, None, None, None, None, None, None


class EpanechnikovPotential(torch.autograd.Function):
    """``rows x Q x 3 x K``: quadratic coefficients (in the offset from each query) of
    ``sum_{l, d} W[k, l, d] F_ld`` for sorted events, without materialising the features;
    differentiable in the event weights ``w`` and the filter weights ``weight`` (``rows x K x L x D``)."""

    @staticmethod
    def forward(ctx, w, weight, t, q, centres, width, block):  # noqa: D102
        rows, q_len = q.shape
        out = torch.empty(rows, q_len, 3, weight.shape[1], dtype=torch.float64)
        numba_threads()
        epan_potential(t.numpy(), w.detach().numpy(), q.numpy(), centres.numpy(), float(width), float(block),
                           weight.detach().numpy(), out.numpy())
        ctx.save_for_backward(w, weight, t, q, centres)
        ctx.params = (float(width), float(block))
        return out

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        w, weight, t, q, centres = ctx.saved_tensors
        width, block = ctx.params
        grad_w = torch.empty(w.shape, dtype=torch.float64)
        grad_weight = torch.empty(weight.shape, dtype=torch.float64)
        numba_threads()
        epan_potential_grad(t.numpy(), w.detach().numpy(), q.numpy(), centres.numpy(), width, block,
                                weight.detach().numpy(), grad.contiguous().numpy(), grad_w.numpy(),
                                grad_weight.numpy())
        return grad_w, grad_weight, None, None, None, None, None
