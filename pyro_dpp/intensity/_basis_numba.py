"""numba twins of the Epanechnikov scoring features (:meth:`pyro_dpp.intensity.basis.EpanechnikovBasis.
polynomial_features` and its fused potential), CPU: block-relative prefix sums of ``w``, ``w t`` and
``w t^2``, one pass per sequence, with autograd wrappers (gradients with respect to the weights by
adjoint kernels). The potential and the compensator (:func:`epan_compensator`, the GLM's
Gauss-Legendre integrals fused with the potential) take the prefix sums of the event weights
projected onto the targets, so a query costs O(L K) whatever the number of sources. One loop over
a query's pieces (:func:`_piece_sums`, forward and adjoint) serves the features, the potential and the
compensator.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np
import torch

from ..scan._numba_step import OPTS
from ..scan.backend import numba_threads
from ._glm_numba import ADAPTIVE_TOL, CODES, _gauss_tables, integrate_interval


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
def _sequence(tb, qb, num, block):
    """Per-sequence tables: block ids and block-relative times of the events, the origin, the
    pointers of the sorted-query walk, whether the queries are sorted, and scratch space for
    :func:`_query_pieces` (bounds, shifts, counts)."""
    n_events = tb.shape[0]
    bid = np.empty(n_events, np.int64)
    local = np.empty(n_events)
    origin = tb[0]
    for n in range(n_events):
        bid[n] = np.int64(math.floor((tb[n] - origin) / block))
        local[n] = tb[n] - (origin + (bid[n] + 0.5) * block)
    sorted_queries = True
    for j in range(1, qb.shape[0]):
        if qb[j] < qb[j - 1]:
            sorted_queries = False
            break
    pieces = (np.empty((num, 2, 2), np.int64), np.empty((num, 2)), np.empty(num, np.int64))
    return bid, local, origin, np.zeros((num, 3), np.int64), sorted_queries, pieces


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
def _epan_matrix(a, h2):
    """``(m00, m01, m02, m10, m11)``: the nonzero entries of
    :func:`pyro_dpp.intensity.basis.epanechnikov_moments` (its twin) at ``a`` (query minus bump
    centre minus block centre), ``h2`` the squared width; ``m20 = m02``."""
    return 0.75 * (1 - a * a / h2), 1.5 * a / h2, -0.75 / h2, -1.5 * a / h2, 1.5 / h2


@nb.njit(inline="always", **OPTS)
def _piece_sums(prefix, pieces, h2, cols, stride_in, stride_out, coef, adjoint):
    """``coef[m, l stride_out + c] +=`` the ``s^m`` coefficients (``m < coef.shape[0]``) of bump
    ``l`` at one query, summed over its pieces (:func:`_query_pieces`), from the moments of the
    events of each piece in prefix column ``l stride_in + c`` (``c < cols``): the features (prefix
    one column per source, shared by the bumps; coef one per bump and source) and the projected
    potential (prefix one column per bump and target, :func:`_projected_prefix`; coef one per
    target). With ``adjoint`` the reverse: the cotangents ``coef`` onto the prefix cotangents."""
    bounds, shifts, counts = pieces
    for i in range(counts.shape[0]):
        for p in range(counts[i]):
            start, stop = bounds[i, p, 0], bounds[i, p, 1]
            m00, m01, m02, m10, m11 = _epan_matrix(shifts[i, p], h2)
            for c in range(cols):
                col, d = i * stride_out + c, i * stride_in + c
                if adjoint:
                    c0 = coef[0, col]
                    c1, c2 = (coef[1, col], coef[2, col]) if coef.shape[0] > 1 else (0.0, 0.0)
                    a0, a1, a2 = m00 * c0 + m10 * c1 + m02 * c2, m01 * c0 + m11 * c1, m02 * c0
                    prefix[stop, 0, d] += a0
                    prefix[start, 0, d] -= a0
                    prefix[stop, 1, d] += a1
                    prefix[start, 1, d] -= a1
                    prefix[stop, 2, d] += a2
                    prefix[start, 2, d] -= a2
                    continue
                s0 = prefix[stop, 0, d] - prefix[start, 0, d]
                s1 = prefix[stop, 1, d] - prefix[start, 1, d]
                s2 = prefix[stop, 2, d] - prefix[start, 2, d]
                coef[0, col] += m00 * s0 + m01 * s1 + m02 * s2
                if coef.shape[0] > 1:
                    coef[1, col] += m10 * s0 + m11 * s1
                    coef[2, col] += m02 * s0


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
def _projected_prefix(w, local, weight):
    """``prefix[n, m, l K + k] = sum_{e < n} v_elk u_e^m`` of the event weights projected onto the
    targets, ``v_elk = sum_d weight[k, l, d] w_ed`` (``u = local``): O(L K) per nonzero weight, so a
    one-hot event costs a gather, and a query then costs O(L K), not O(L K D)."""
    n_events, sources = w.shape
    k_marks, num = weight.shape[0], weight.shape[1]
    prefix = np.zeros((n_events + 1, 3, num * k_marks))
    for n in range(n_events):
        u = local[n]
        prefix[n + 1] = prefix[n]
        for d in range(sources):
            x = w[n, d]
            if x != 0:
                for i in range(num):
                    for kk in range(k_marks):
                        v = weight[kk, i, d] * x
                        prefix[n + 1, 0, i * k_marks + kk] += v
                        prefix[n + 1, 1, i * k_marks + kk] += v * u
                        prefix[n + 1, 2, i * k_marks + kk] += v * u * u
    return prefix


@nb.njit(inline="always", **OPTS)
def _projected_adjoint(gp, local, w, weight, want_w, grad_w, grad_weight):
    """Adjoint of :func:`_projected_prefix`: from the prefix cotangents ``gp`` the cotangent of
    ``v_e`` is ``sum_{n > e} gp[n] . (1, u_e, u_e^2)``; then ``grad_w`` (if ``want_w``, written)
    and ``grad_weight`` (written) through the projection."""
    n_events, sources = w.shape
    k_marks, num = weight.shape[0], weight.shape[1]
    acc = np.zeros((3, num * k_marks))
    gv = np.empty((num, k_marks))
    grad_weight[:] = 0.0
    for e in range(n_events - 1, -1, -1):
        u = local[e]
        acc += gp[e + 1]
        for i in range(num):
            for kk in range(k_marks):
                col = i * k_marks + kk
                gv[i, kk] = acc[0, col] + u * (acc[1, col] + u * acc[2, col])
        for d in range(sources):
            x = w[e, d]
            if want_w:
                g = 0.0
                for i in range(num):
                    for kk in range(k_marks):
                        g += gv[i, kk] * weight[kk, i, d]
                grad_w[e, d] = g
            if x != 0:
                for i in range(num):
                    for kk in range(k_marks):
                        grad_weight[kk, i, d] += gv[i, kk] * x


@nb.njit(parallel=True, **OPTS)
def epan_sums(t, w, q, centres, width, block, project, weight, out):
    """``out[b, j, m]``: the ``s^m`` coefficients (``m`` up to 0 or 2) at ``q_j + s`` of the
    features ``F_ld`` (columns ``l D + d``) or, if ``project``, of the potential
    ``sum_{l, d} weight[b, k, l, d] F_ld`` (columns ``k``, bias excluded), which never materialises
    the features: it sums the prefix moments of the event weights projected onto the targets
    (:func:`_projected_prefix`)."""
    num, sources, k_marks = centres.shape[0], w.shape[2], weight.shape[1]
    cols, stride_in, stride_out = (k_marks, k_marks, 0) if project else (sources, 0, sources)
    for b in nb.prange(t.shape[0]):
        bid, local, origin, ptr, sorted_queries, pieces = _sequence(t[b], q[b], num, block)
        prefix = _projected_prefix(w[b], local, weight[b]) if project else _prefix_moments(w[b], local)
        for j in range(q.shape[1]):
            _query_pieces(t[b], bid, origin, ptr, sorted_queries, q[b, j], centres, width, block, pieces)
            out[b, j] = 0.0
            _piece_sums(prefix, pieces, width * width, cols, stride_in, stride_out, out[b, j], False)


@nb.njit(parallel=True, **OPTS)
def epan_sums_grad(t, w, q, centres, width, block, project, weight, grad_out, want_w, grad_w, grad_weight):
    """Adjoint of :func:`epan_sums` with respect to the event weights (if ``want_w``; always for
    the features) and, if ``project``, the filter weights: the cotangents of the prefix moments,
    then of the projection."""
    num, sources, k_marks = centres.shape[0], w.shape[2], weight.shape[1]
    cols, stride_in, stride_out = (k_marks, k_marks, 0) if project else (sources, 0, sources)
    for b in nb.prange(t.shape[0]):
        bid, local, origin, ptr, sorted_queries, pieces = _sequence(t[b], q[b], num, block)
        gp = np.zeros((t.shape[1] + 1, 3, num * k_marks if project else sources))
        for j in range(q.shape[1]):
            _query_pieces(t[b], bid, origin, ptr, sorted_queries, q[b, j], centres, width, block, pieces)
            _piece_sums(gp, pieces, width * width, cols, stride_in, stride_out, grad_out[b, j], True)
        if project:
            _projected_adjoint(gp, local, w[b], weight[b], want_w, grad_w[b], grad_weight[b])
        else:
            _prefix_moments_adjoint(gp, local, grad_w[b])


@nb.njit(parallel=True, **OPTS)
def epan_compensator(t, w, q, half, centres, width, block, weight, bias, amp, act, nodes, x_table, w_table,
                     adaptive, tol, want_grad, want_w, total, grad_w, grad_weight, grad_bias, grad_amp):
    """``total[b]``: the Gauss-Legendre integrals of the GLM's summed intensity over the intervals
    ``[q_j - half_j, q_j + half_j]`` (no event or kink inside), the potential a quadratic on each
    (:func:`epan_sums` plus ``bias``), integrated by
    :func:`pyro_dpp.intensity._glm_numba.integrate_interval` without materialising the
    coefficients; with ``want_grad`` also its derivatives in the event weights (if ``want_w``), the
    filter weights ``weight`` (``rows x K x L x D``), ``bias`` (``rows x K``) and ``amp`` (``rows``),
    computed in the same pass (the adjoint needs only each interval's coefficient cotangents)."""
    num, k_marks = centres.shape[0], weight.shape[1]
    for b in nb.prange(t.shape[0]):
        bid, local, origin, ptr, sorted_queries, pieces = _sequence(t[b], q[b], num, block)
        prefix = _projected_prefix(w[b], local, weight[b])
        gp = np.zeros((t.shape[1] + 1 if want_grad else 1, 3, num * k_marks))
        coef = np.empty((3, k_marks))
        gcoef = np.empty((3, k_marks))
        gbias = np.zeros(k_marks)
        acc = 0.0
        ga = 0.0
        for j in range(q.shape[1]):
            _query_pieces(t[b], bid, origin, ptr, sorted_queries, q[b, j], centres, width, block, pieces)
            coef[0] = bias[b]
            coef[1:] = 0.0
            _piece_sums(prefix, pieces, width * width, k_marks, k_marks, 0, coef, False)
            part, dpart = integrate_interval(coef, half[b, j], amp[b], act, nodes, x_table, w_table, adaptive, tol,
                                             gcoef)
            acc += part
            ga += dpart
            if want_grad:
                gbias += gcoef[0]
                _piece_sums(gp, pieces, width * width, k_marks, k_marks, 0, gcoef, True)
        total[b] = acc
        if want_grad:
            grad_amp[b] = ga
            grad_bias[b] = gbias
            _projected_adjoint(gp, local, w[b], weight[b], want_w, grad_w[b], grad_weight[b])


class EpanechnikovSums(torch.autograd.Function):
    """``rows x Q x (order+1) x L x D`` Epanechnikov features of sorted events (or their quadratic
    coefficients in the offset from each query), or, given the filter weights ``weight``
    (``rows x K x L x D``), ``rows x Q x (order+1) x K``: those of ``sum_{l, d} W[k, l, d] F_ld``
    without materialising the features. Differentiable in the event weights ``w`` and ``weight``."""

    @staticmethod
    def forward(ctx, w, weight, t, q, centres, width, block, order):  # noqa: D102
        rows, q_len = q.shape
        project = weight is not None
        shape = (weight.shape[1],) if project else (centres.numel(), w.shape[-1])
        out = torch.empty((rows, q_len, order + 1) + shape, dtype=torch.float64)
        weight = weight.detach() if project else t.new_zeros(rows, 0, 0, 0)
        numba_threads()
        epan_sums(t.numpy(), w.detach().numpy(), q.numpy(), centres.numpy(), float(width), float(block), project,
                  weight.numpy(), out.view(rows, q_len, order + 1, -1).numpy())
        ctx.save_for_backward(w, weight, t, q, centres)
        ctx.params = (float(width), float(block), project)
        return out

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        w, weight, t, q, centres = ctx.saved_tensors
        width, block, project = ctx.params
        want_w = ctx.needs_input_grad[0] or not project
        grad_w = torch.zeros(w.shape if want_w else (1, 1, 1), dtype=torch.float64)
        grad_weight = torch.empty(weight.shape, dtype=torch.float64)
        numba_threads()
        epan_sums_grad(t.numpy(), w.detach().numpy(), q.numpy(), centres.numpy(), width, block, project,
                       weight.numpy(), grad.reshape(grad.shape[:3] + (-1,)).contiguous().numpy(), want_w,
                       grad_w.numpy(), grad_weight.numpy())
        return (grad_w if ctx.needs_input_grad[0] else None, grad_weight if project else None) + (None,) * 6


class EpanechnikovCompensator(torch.autograd.Function):
    """``rows``: the GLM's compensator over the intervals ``[q - half, q + half]`` (``rows x P``)
    for sorted events, by :func:`epan_compensator`; differentiable in the event weights ``w``
    (``rows x E x D``), the filter weights ``weight`` (``rows x K x L x D``), ``bias``
    (``rows x K``) and ``amplitude`` (``rows``). The derivatives are computed in the forward pass
    (when any is needed) and kept, so no per-interval tensor outlives the call."""

    @staticmethod
    def forward(ctx, w, weight, bias, amplitude, t, q, half, centres, width, block, activation, nodes):  # noqa: D102
        rows = q.shape[0]
        want_w = ctx.needs_input_grad[0]
        want = any(ctx.needs_input_grad[:4])
        total = torch.empty(rows, dtype=torch.float64)
        grad_w = torch.empty(w.shape if want and want_w else (rows, 1, 1), dtype=torch.float64)
        grad_weight = torch.empty(weight.shape if want else (rows, 1, 1, 1), dtype=torch.float64)
        grad_bias = torch.empty(bias.shape if want else (rows, 1), dtype=torch.float64)
        grad_amp = torch.empty(rows, dtype=torch.float64)
        x, wt = _gauss_tables(nodes)
        code = CODES[activation]
        numba_threads()
        epan_compensator(t.numpy(), w.detach().numpy(), q.numpy(), half.numpy(), centres.numpy(), float(width),
                         float(block), weight.detach().numpy(), bias.detach().numpy(), amplitude.detach().numpy(),
                         code, nodes, x, wt, code == 0, ADAPTIVE_TOL, want, want_w, total.numpy(), grad_w.numpy(),
                         grad_weight.numpy(), grad_bias.numpy(), grad_amp.numpy())
        ctx.save_for_backward(grad_w, grad_weight, grad_bias, grad_amp)
        return total

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        grad_w, grad_weight, grad_bias, grad_amp = ctx.saved_tensors
        need = ctx.needs_input_grad
        return (grad_w * grad[:, None, None] if need[0] else None,
                grad_weight * grad[:, None, None, None] if need[1] else None,
                grad_bias * grad[:, None] if need[2] else None,
                grad_amp * grad if need[3] else None) + (None,) * 8
