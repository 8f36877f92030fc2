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
def _epan_matrix(a, h2, k):
    """``k[m, m']`` = d(coefficient of ``s^m`` of ``F(q + s)``) / d(``S_m' = sum w d^m'``); ``a`` is
    the query relative to the block centre minus the bump centre."""
    k[0, 0] = 0.75 * (1 - a * a / h2)
    k[0, 1] = 1.5 * a / h2
    k[0, 2] = -0.75 / h2
    k[1, 0] = -1.5 * a / h2
    k[1, 1] = 1.5 / h2
    k[1, 2] = 0.0
    k[2, 0] = -0.75 / h2
    k[2, 1] = 0.0
    k[2, 2] = 0.0


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
    pointers of the sorted-query walk, and whether the queries are sorted."""
    n_events = tb.shape[0]
    bid = np.empty(n_events, np.int64)
    local = np.empty(n_events)
    origin = _blocks(tb, block, bid, local)
    return bid, local, origin, np.zeros((num, 3), np.int64), _is_sorted(qb)


@nb.njit(inline="always", **OPTS)
def _pieces(tb, bid, origin, ptr, sorted_queries, qj, c, width, block, i, bounds, shifts):
    """The nonempty index pieces of the bump centred at lag ``c`` (number ``i``) at query ``qj``:
    ``bounds[p]`` = (start, stop), ``shifts[p]`` the query relative to the piece's block centre minus
    the bump centre. Returns how many (0 to 2)."""
    lo, mid, hi, first = _epan_ranges(tb, bid, tb.shape[0], qj, c, width, ptr, i, sorted_queries)
    n = 0
    for p in range(2):
        start, stop = (lo, mid) if p == 0 else (mid, hi)
        if stop > start:
            bounds[n, 0], bounds[n, 1] = start, stop
            shifts[n] = qj - c - (origin + (first + p + 0.5) * block)
            n += 1
    return n


@nb.njit(inline="always", **OPTS)
def _query_features(tb, bid, origin, prefix, ptr, sorted_queries, qj, centres, width, block, order, k, f):
    """``f[m, l, d]``: coefficient of ``s^m`` in ``F_ld(qj + s)`` for ``m <= order`` (``k``: 3 x 3 scratch)."""
    bounds = np.empty((2, 2), np.int64)
    shifts = np.empty(2)
    for i in range(centres.shape[0]):
        for m in range(order + 1):
            for d in range(f.shape[2]):
                f[m, i, d] = 0.0
        for p in range(_pieces(tb, bid, origin, ptr, sorted_queries, qj, centres[i], width, block, i, bounds, shifts)):
            _epan_matrix(shifts[p], width * width, k)
            for d in range(f.shape[2]):
                s0, s1, s2 = _window_moments(prefix, bounds[p, 0], bounds[p, 1], d)
                for m in range(order + 1):
                    f[m, i, d] += k[m, 0] * s0 + k[m, 1] * s1 + k[m, 2] * s2


@nb.njit(inline="always", **OPTS)
def _query_scatter(tb, bid, origin, ptr, sorted_queries, qj, centres, width, block, order, k, g, gp):
    """Adjoint of :func:`_query_features`: the cotangents ``g[m, l, d]`` onto the prefix sums ``gp``."""
    bounds = np.empty((2, 2), np.int64)
    shifts = np.empty(2)
    for i in range(centres.shape[0]):
        for p in range(_pieces(tb, bid, origin, ptr, sorted_queries, qj, centres[i], width, block, i, bounds, shifts)):
            _epan_matrix(shifts[p], width * width, k)
            for d in range(g.shape[2]):
                a0 = 0.0
                a1 = 0.0
                a2 = 0.0
                for m in range(order + 1):
                    a0 += k[m, 0] * g[m, i, d]
                    a1 += k[m, 1] * g[m, i, d]
                    a2 += k[m, 2] * g[m, i, d]
                _scatter_window(gp, bounds[p, 0], bounds[p, 1], d, a0, a1, a2)


@nb.njit(parallel=True, **OPTS)
def epan_features(t, w, q, centres, width, block, order, out):
    """``out[b, j, m, l, d]``: coefficient of ``s^m`` in ``F_ld(q_j + s)`` (``order`` 0 or 2)."""
    for b in nb.prange(t.shape[0]):
        bid, local, origin, ptr, sorted_queries = _sequence(t[b], q[b], centres.shape[0], block)
        prefix = _prefix_moments(w[b], local)
        k = np.empty((3, 3))
        for j in range(q.shape[1]):
            _query_features(t[b], bid, origin, prefix, ptr, sorted_queries, q[b, j], centres, width, block, order,
                            k, out[b, j])


@nb.njit(parallel=True, **OPTS)
def epan_features_grad(t, q, centres, width, block, order, grad_out, grad_w):
    """Adjoint of :func:`epan_features` with respect to the event weights."""
    for b in nb.prange(t.shape[0]):
        bid, local, origin, ptr, sorted_queries = _sequence(t[b], q[b], centres.shape[0], block)
        gp = np.zeros((t.shape[1] + 1, 3, grad_w.shape[2]))
        k = np.empty((3, 3))
        for j in range(q.shape[1]):
            _query_scatter(t[b], bid, origin, ptr, sorted_queries, q[b, j], centres, width, block, order, k,
                           grad_out[b, j], gp)
        _prefix_moments_adjoint(gp, local, grad_w[b])


@nb.njit(parallel=True, **OPTS)
def epan_potential(t, w, q, centres, width, block, weight, out):
    """``out[b, j, m, k] = sum_{l, d} weight[b, k, l, d] F^(m)_ld(q_j)``: the potential's quadratic
    coefficients (bias excluded) without materialising the features of all queries."""
    num, sources = centres.shape[0], w.shape[2]
    for b in nb.prange(t.shape[0]):
        bid, local, origin, ptr, sorted_queries = _sequence(t[b], q[b], num, block)
        prefix = _prefix_moments(w[b], local)
        k = np.empty((3, 3))
        f = np.empty((3, num, sources))
        for j in range(q.shape[1]):
            _query_features(t[b], bid, origin, prefix, ptr, sorted_queries, q[b, j], centres, width, block, 2, k, f)
            for m in range(3):
                for kk in range(weight.shape[1]):
                    acc = 0.0
                    for i in range(num):
                        for d in range(sources):
                            acc += weight[b, kk, i, d] * f[m, i, d]
                    out[b, j, m, kk] = acc


@nb.njit(parallel=True, **OPTS)
def epan_potential_grad(t, w, q, centres, width, block, weight, grad_out, grad_w, grad_weight):
    """Adjoint of :func:`epan_potential` with respect to the event weights and the filter weights."""
    num, sources = centres.shape[0], w.shape[2]
    for b in nb.prange(t.shape[0]):
        bid, local, origin, ptr, sorted_queries = _sequence(t[b], q[b], num, block)
        prefix = _prefix_moments(w[b], local)
        gp = np.zeros((t.shape[1] + 1, 3, sources))
        k = np.empty((3, 3))
        f = np.empty((3, num, sources))
        g = np.empty((3, num, sources))
        for kk in range(weight.shape[1]):
            for i in range(num):
                for d in range(sources):
                    grad_weight[b, kk, i, d] = 0.0
        for j in range(q.shape[1]):
            _query_features(t[b], bid, origin, prefix, ptr, sorted_queries, q[b, j], centres, width, block, 2, k, f)
            for m in range(3):
                for i in range(num):
                    for d in range(sources):
                        acc = 0.0
                        for kk in range(weight.shape[1]):
                            c = grad_out[b, j, m, kk]
                            grad_weight[b, kk, i, d] += c * f[m, i, d]
                            acc += weight[b, kk, i, d] * c
                        g[m, i, d] = acc
            _query_scatter(t[b], bid, origin, ptr, sorted_queries, q[b, j], centres, width, block, 2, k, g, gp)
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
