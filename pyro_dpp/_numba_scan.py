"""numba kernels of the fast thinning scan (CPU): one fused loop per sequence, parallel over the
batch (see :mod:`pyro_dpp.fastscan` for the math). Optional: without numba the torch engines run.

Arrays are batch-major numpy views of torch tensors (``B x S x ...``); kernels write their outputs
in place. Conventions match the torch engines and the reference scan: the history weights of step
``s`` enter the drive of later steps only; finite-support filters sum the events whose lag lies in
``(low_i, high_i)`` (exclusive), exponential traces every earlier step (as the reference state).

Forward kernels write, per step: ``log_pi`` (``K+1``: log-rates minus log-bound, and the "no event"
log-probability), ``log_y`` (relaxed: the Concrete log-weights), ``marks`` (soft weights, or the
one-hot argmax for exact and straight-through scans), the history weights of the step's marks, and,
when ``store``, the drive and the features (or traces) the parameter surrogate needs.
Reverse kernels take the output cotangents and return the log-rate cotangents of every step.
"""

from __future__ import annotations

import math
import os

import numba as nb
import numpy as np

if "NUMBA_THREADING_LAYER" not in os.environ:
    # the kernels run one parallel loop per call; OpenMP's idle workers spin between calls, which
    # burns a core that torch (or a neighbour) needs. The work queue has no spinning workers.
    nb.config.THREADING_LAYER = "workqueue"

_OPTS = dict(cache=True, nogil=True, error_model="numpy")

# activation codes (GLM)
SIGMOID, EXP, SOFTPLUS, HARDTANH = 0, 1, 2, 3
# basis codes (GLM)
EXPONENTIAL, EPANECHNIKOV, RAISED_COSINE = 0, 1, 2


@nb.njit(inline="always", **_OPTS)
def _log_act(u, act, log_amp, amp):
    """``log(a g(u))`` as :func:`pyro_dpp.intensity.glm.log_activate`."""
    if act == SIGMOID:
        if u >= 0:
            return log_amp - math.log1p(math.exp(-u))
        return log_amp + u - math.log1p(math.exp(u))
    if act == EXP:
        return log_amp + u
    if act == SOFTPLUS:
        if u < -20:
            return log_amp + u
        if u > 20:  # torch's softplus threshold
            return log_amp + math.log(u)
        return log_amp + math.log(max(u, 0.0) + math.log1p(math.exp(-abs(u))))
    v = amp * 0.5 * (min(max(u, -1.0), 1.0) + 1.0)  # hardtanh
    if v > 0:
        return math.log(v)
    return -math.inf


@nb.njit(inline="always", **_OPTS)
def _dlog_act(u, act):
    """``d log(a g(u)) / du`` (zero where the rate is zero, as ``safe_log``'s gradient)."""
    if act == SIGMOID:
        if u >= 0:
            e = math.exp(-u)
            return e / (1 + e)
        return 1 / (1 + math.exp(u))
    if act == EXP:
        return 1.0
    if act == SOFTPLUS:
        if u < -20:
            return 1.0
        if u > 20:
            return 1 / u
        sig = 1 / (1 + math.exp(-u))
        return sig / (max(u, 0.0) + math.log1p(math.exp(-abs(u))))
    if -1 < u < 1:
        return 1 / (u + 1)
    return 0.0


@nb.njit(inline="always", **_OPTS)
def _phi(kind, lag, c, width, scale, offset):
    """Basis value at a lag; ``c`` the bump's centre (Epanechnikov) or peak (raised cosine)."""
    if lag <= 0:
        return 0.0
    if kind == EPANECHNIKOV:
        z = (lag - c) / width
        if z * z < 1:
            return 0.75 * (1 - z * z)
        return 0.0
    arg = scale * math.log(lag + offset) - c
    if abs(arg) < math.pi:
        return 0.5 * (1 + math.cos(arg))
    return 0.0


@nb.njit(inline="always", **_OPTS)
def _step(b, s, k_marks, log_pi, log_y, marks, noise, inv_t, relaxed, hard, cand, hist, ratio_out, z):
    """The thinning step, given the log-rates minus log-bound in ``log_pi[b, s, :K]``."""
    ratio = 0.0
    for k in range(k_marks):
        ratio += math.exp(log_pi[b, s, k])
    ratio_out[b, s] = ratio
    rest = 1.0 - ratio
    log_pi[b, s, k_marks] = math.log(rest) if rest > 0 else -math.inf
    top = -math.inf
    arg = 0
    for i in range(k_marks + 1):
        z[i] = log_pi[b, s, i] * inv_t + noise[b, s, i]
        if z[i] > top:
            top = z[i]
            arg = i
    c = cand[b, s]
    if relaxed:
        total = 0.0
        for i in range(k_marks + 1):
            total += math.exp(z[i] - top)
        log_total = math.log(total)
        for i in range(k_marks + 1):
            ly = z[i] - top - log_total
            log_y[b, s, i] = ly
            if not hard:
                marks[b, s, i] = math.exp(ly)
    if hard:
        for i in range(k_marks + 1):
            marks[b, s, i] = 1.0 if i == arg else 0.0
    for k in range(k_marks):
        hist[b, s, k] = marks[b, s, k] * c


@nb.njit(inline="always", **_OPTS)
def _adjoint(b, s, k_marks, log_pi, log_y, cand, grad_marks, grad_logs, inv_t, direct, jac, y):
    """What the outputs of step ``s`` alone ask of its log-rates (``direct``, K) and how the
    cotangent of its history weights adds to it (``jac``, K x K):
    ``jac[i, j] = cand / tau * y_j (delta_ij - y_i + qr_i y_K)``, ``qr_i = (r_i / bound) / rest``.
    ``y`` (K + 1) is scratch space for the step's weights."""
    kk = k_marks
    rest_log = log_pi[b, s, kk]
    total = 0.0
    for i in range(kk + 1):
        y[i] = math.exp(log_y[b, s, i])
        total += grad_logs[b, s, i] + grad_marks[b, s, i] * y[i]
    y_rest = y[kk]
    g_rest = grad_logs[b, s, kk] + grad_marks[b, s, kk] * y_rest
    gz_rest = (g_rest - y_rest * total) * inv_t
    c = cand[b, s] * inv_t
    for i in range(kk):
        yi = y[i]
        qr = math.exp(log_pi[b, s, i] - rest_log) if rest_log > -math.inf else 0.0
        gi = grad_logs[b, s, i] + grad_marks[b, s, i] * yi
        direct[i] = (gi - yi * total) * inv_t - qr * gz_rest
        for j in range(kk):
            jac[i, j] = c * y[j] * ((1.0 if i == j else 0.0) - yi + qr * y_rest)


#: Steps between recomputations of the Epanechnikov window sums from scratch (bounds the float
#: error that adding and removing events accumulates).
_REBASE = 32


@nb.njit(inline="always", **_OPTS)
def _add_moments(sums, q, u, w, sign):
    """``sums[q] += sign * (w, w u, w u^2)`` (the window moments of one event)."""
    for d in range(w.shape[0]):
        x = sign * w[d]
        sums[q, 0, d] += x
        sums[q, 1, d] += x * u
        sums[q, 2, d] += x * u * u


@nb.njit(inline="always", **_OPTS)
def _recentre(sums, ref, q, t, s, keys, lo, hi, weights):
    """Move window ``q``'s moments to the origin ``t`` where that is cheap or due: an empty window
    gets exact zeros; every ``_REBASE`` steps the moments of events ``lo .. hi - 1`` (``weights``:
    steps x sources) are recomputed from scratch, so that adding and removing events does not
    accumulate float error. The reverse pass starts with an empty window, so both passes start
    centred on their first time."""
    if lo == hi:
        ref[q] = t
        sums[q] = 0.0
    elif s % _REBASE == 0:
        ref[q] = t
        sums[q] = 0.0
        for n in range(lo, hi):
            _add_moments(sums, q, keys[n] - t, weights[n], 1.0)


@nb.njit(inline="always", **_OPTS)
def _epan_from_moments(sums, q, v, width, d):
    """``sum_n w_n 0.75 (1 - ((v - u_n) / width)^2)`` from the window moments of ``u_n``."""
    s0, s1, s2 = sums[q, 0, d], sums[q, 1, d], sums[q, 2, d]
    return 0.75 * (s0 - (v * v * s0 - 2.0 * v * s1 + s2) / (width * width))


@nb.njit(parallel=True, **_OPTS)
def glm_forward(keys, cand, hist, noise, log_bound, inv_t, relaxed, hard, const, weight, log_amp, amp, act,
                kind, decay, centres, width, scale, offset, low, high,
                log_pi, log_y, marks, ratio, drive, feats, store):
    bsz, steps = keys.shape
    k_marks = noise.shape[2] - 1
    num, sources = weight.shape[2], weight.shape[3]
    for b in nb.prange(bsz):
        lo = np.zeros(num, np.int64)
        hi = np.zeros(num, np.int64)
        f = np.zeros((num, sources), keys.dtype)
        z = np.empty(k_marks + 1, keys.dtype)
        # Epanechnikov: moments of the window's events about ref, in float64 (O(1) per step)
        sums = np.zeros((num, 3, sources), np.float64)
        ref = np.zeros(num, np.float64)
        la, a = log_amp[b], amp[b]
        for s in range(steps):
            t = keys[b, s]
            if kind == EXPONENTIAL:
                for q in range(num):
                    g = decay[b, s, q]
                    for d in range(sources):
                        if s > 0:
                            f[q, d] += hist[b, s - 1, d]
                        f[q, d] *= g
            elif kind == EPANECHNIKOV:
                for q in range(num):
                    while hi[q] < s and keys[b, hi[q]] < t - low[q]:
                        _add_moments(sums, q, keys[b, hi[q]] - ref[q], hist[b, hi[q]], 1.0)
                        hi[q] += 1
                    while lo[q] < hi[q] and keys[b, lo[q]] <= t - high[q]:
                        _add_moments(sums, q, keys[b, lo[q]] - ref[q], hist[b, lo[q]], -1.0)
                        lo[q] += 1
                    _recentre(sums, ref, q, t, s, keys[b], lo[q], hi[q], hist[b])
                    v = t - centres[q] - ref[q]
                    for d in range(sources):
                        f[q, d] = _epan_from_moments(sums, q, v, width, d)
            else:
                for q in range(num):
                    while hi[q] < s and keys[b, hi[q]] < t - low[q]:
                        hi[q] += 1
                    while lo[q] < hi[q] and keys[b, lo[q]] <= t - high[q]:
                        lo[q] += 1
                    for d in range(sources):
                        f[q, d] = 0.0
                    for n in range(lo[q], hi[q]):
                        ph = _phi(kind, t - keys[b, n], centres[q], width, scale, offset)
                        if ph != 0.0:
                            for d in range(sources):
                                f[q, d] += ph * hist[b, n, d]
            if store:
                for q in range(num):
                    for d in range(sources):
                        feats[b, s, q, d] = f[q, d]
            for k in range(k_marks):
                u = const[b, s, k]
                for q in range(num):
                    for d in range(sources):
                        u += weight[b, k, q, d] * f[q, d]
                if store:
                    drive[b, s, k] = u
                log_pi[b, s, k] = _log_act(u, act, la, a) - log_bound[b]
            _step(b, s, k_marks, log_pi, log_y, marks, noise, inv_t, relaxed, hard, cand, hist, ratio, z)


@nb.njit(parallel=True, **_OPTS)
def glm_reverse(keys, kind, decay, centres, width, scale, offset, low, high, weight, act,
                log_pi, log_y, cand, drive, grad_marks, grad_logs, inv_t, glr):
    """Adjoint scan; writes the log-rate cotangents ``glr`` (``B x S x K``)."""
    bsz, steps = keys.shape
    k_marks = drive.shape[2]
    num, sources = weight.shape[2], weight.shape[3]
    for b in nb.prange(bsz):
        lo = np.full(num, steps, np.int64)
        hi = np.full(num, steps, np.int64)
        back = np.zeros((num, steps if kind != EXPONENTIAL else 1, sources), keys.dtype)
        sums = np.zeros((num, 3, sources), np.float64)
        ref = np.zeros(num, np.float64)
        r = np.zeros((num, sources), keys.dtype)
        gw = np.empty(sources, keys.dtype)
        g = np.empty(k_marks, keys.dtype)
        direct = np.empty(k_marks, keys.dtype)
        jac = np.empty((k_marks, k_marks), keys.dtype)
        ys = np.empty(k_marks + 1, keys.dtype)
        for s in range(steps - 1, -1, -1):
            t = keys[b, s]
            for d in range(sources):
                gw[d] = 0.0
            if kind == EXPONENTIAL:
                if s + 1 < steps:
                    for q in range(num):
                        dq = decay[b, s + 1, q]
                        for d in range(sources):
                            r[q, d] *= dq
                for q in range(num):
                    for d in range(sources):
                        gw[d] += r[q, d]
            elif kind == EPANECHNIKOV:
                for q in range(num):
                    # add the events that enter at the near end before removing those that leave
                    # at the far end: after a long gap one event can do both in this step
                    while lo[q] > s + 1 and keys[b, lo[q] - 1] > t + low[q]:
                        lo[q] -= 1
                        _add_moments(sums, q, keys[b, lo[q]] - ref[q], back[q, lo[q]], 1.0)
                    while hi[q] > lo[q] and keys[b, hi[q] - 1] >= t + high[q]:
                        hi[q] -= 1
                        _add_moments(sums, q, keys[b, hi[q]] - ref[q], back[q, hi[q]], -1.0)
                    _recentre(sums, ref, q, t, s, keys[b], lo[q], hi[q], back[q])
                    v = t + centres[q] - ref[q]
                    for d in range(sources):
                        gw[d] += _epan_from_moments(sums, q, v, width, d)
            else:
                for q in range(num):
                    while hi[q] > s + 1 and keys[b, hi[q] - 1] >= t + high[q]:
                        hi[q] -= 1
                    while lo[q] > s + 1 and keys[b, lo[q] - 1] > t + low[q]:
                        lo[q] -= 1
                    for n in range(lo[q], hi[q]):
                        ph = _phi(kind, keys[b, n] - t, centres[q], width, scale, offset)
                        if ph != 0.0:
                            for d in range(sources):
                                gw[d] += ph * back[q, n, d]
            _adjoint(b, s, k_marks, log_pi, log_y, cand, grad_marks, grad_logs, inv_t, direct, jac, ys)
            for k in range(k_marks):
                acc = direct[k]
                for j in range(k_marks):
                    acc += jac[k, j] * gw[j]
                glr[b, s, k] = acc
                g[k] = acc * _dlog_act(drive[b, s, k], act)
            for q in range(num):
                for d in range(sources):
                    v = 0.0
                    for k in range(k_marks):
                        v += weight[b, k, q, d] * g[k]
                    if kind == EXPONENTIAL:
                        r[q, d] += v
                    else:
                        back[q, s, d] = v


@nb.njit(parallel=True, **_OPTS)
def hawkes_forward(keys, cand, hist, noise, log_bound, inv_t, relaxed, hard, base, gain, beta, uniform,
                   log_pi, log_y, marks, ratio, drive, traces, store):
    bsz, steps = keys.shape
    k_marks = noise.shape[2] - 1
    sources = gain.shape[2]
    rows = 1 if uniform else k_marks
    for b in nb.prange(bsz):
        x = np.zeros((rows, sources), keys.dtype)
        y = np.zeros((rows, sources), keys.dtype)  # lag-weighted traces: -dx / d(decay)
        z = np.empty(k_marks + 1, keys.dtype)
        prev = 0.0
        for s in range(steps):
            t = keys[b, s]
            gap = t - prev
            prev = t
            q = math.exp(-beta[b, 0, 0] * gap)
            for k in range(rows):
                for d in range(sources):
                    if s > 0:
                        x[k, d] += hist[b, s - 1, d]
                    qq = q if uniform else math.exp(-beta[b, k, d] * gap)
                    y[k, d] = (y[k, d] + gap * x[k, d]) * qq
                    x[k, d] *= qq
            if store:
                for k in range(rows):
                    for d in range(sources):
                        traces[b, s, 0, k, d] = x[k, d]
                        traces[b, s, 1, k, d] = y[k, d]
            for k in range(k_marks):
                u = base[b, k]
                row = 0 if uniform else k
                for d in range(sources):
                    u += gain[b, k, d] * x[row, d]
                if store:
                    drive[b, s, k] = u
                log_pi[b, s, k] = (math.log(u) if u > 0 else -math.inf) - log_bound[b]
            _step(b, s, k_marks, log_pi, log_y, marks, noise, inv_t, relaxed, hard, cand, hist, ratio, z)


@nb.njit(parallel=True, **_OPTS)
def hawkes_reverse(keys, gain, beta, uniform, log_pi, log_y, cand, drive, grad_marks, grad_logs, inv_t, glr):
    bsz, steps = keys.shape
    k_marks = drive.shape[2]
    sources = gain.shape[2]
    for b in nb.prange(bsz):
        r = np.zeros((k_marks, sources), keys.dtype)
        g = np.empty(k_marks, keys.dtype)
        gw = np.empty(sources, keys.dtype)
        direct = np.empty(k_marks, keys.dtype)
        jac = np.empty((k_marks, k_marks), keys.dtype)
        ys = np.empty(k_marks + 1, keys.dtype)
        for s in range(steps - 1, -1, -1):
            if s + 1 < steps:
                gap = keys[b, s + 1] - keys[b, s]
                if uniform:
                    q = math.exp(-beta[b, 0, 0] * gap)
                    for k in range(k_marks):
                        for d in range(sources):
                            r[k, d] *= q
                else:
                    for k in range(k_marks):
                        for d in range(sources):
                            r[k, d] *= math.exp(-beta[b, k, d] * gap)
            for d in range(sources):
                acc = 0.0
                for k in range(k_marks):
                    acc += gain[b, k, d] * r[k, d]
                gw[d] = acc
            _adjoint(b, s, k_marks, log_pi, log_y, cand, grad_marks, grad_logs, inv_t, direct, jac, ys)
            for k in range(k_marks):
                acc = direct[k]
                for j in range(k_marks):
                    acc += jac[k, j] * gw[j]
                glr[b, s, k] = acc
                u = drive[b, s, k]
                g[k] = acc / u if u > 0 else 0.0
            for k in range(k_marks):
                for d in range(sources):
                    r[k, d] += g[k]


# ---- scoring: Epanechnikov features from block-relative prefix sums -----------------------------------------
@nb.njit(inline="always", **_OPTS)
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


@nb.njit(inline="always", **_OPTS)
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


@nb.njit(inline="always", **_OPTS)
def _is_sorted(x):
    for j in range(1, x.shape[0]):
        if x[j] < x[j - 1]:
            return False
    return True


@nb.njit(inline="always", **_OPTS)
def _blocks(tb, block, bid, local):
    origin = tb[0]
    for n in range(tb.shape[0]):
        bid[n] = np.int64(math.floor((tb[n] - origin) / block))
        local[n] = tb[n] - (origin + (bid[n] + 0.5) * block)
    return origin


@nb.njit(inline="always", **_OPTS)
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


@nb.njit(inline="always", **_OPTS)
def _window_moments(prefix, start, stop, d):
    """The moments of events ``start .. stop - 1`` of source ``d``."""
    return (prefix[stop, 0, d] - prefix[start, 0, d], prefix[stop, 1, d] - prefix[start, 1, d],
            prefix[stop, 2, d] - prefix[start, 2, d])


@nb.njit(inline="always", **_OPTS)
def _scatter_window(gp, start, stop, d, a0, a1, a2):
    """Adjoint of :func:`_window_moments`: cotangents ``a`` of the moments onto the prefix sums."""
    gp[stop, 0, d] += a0
    gp[start, 0, d] -= a0
    gp[stop, 1, d] += a1
    gp[start, 1, d] -= a1
    gp[stop, 2, d] += a2
    gp[start, 2, d] -= a2


@nb.njit(inline="always", **_OPTS)
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


@nb.njit(parallel=True, **_OPTS)
def epan_features(t, w, q, centres, width, block, order, out):
    """``out[b, j, m, l, d]``: coefficient of ``s^m`` in ``F_ld(q_j + s)`` (``order`` 0 or 2)."""
    bsz, n_events = t.shape
    n_query = q.shape[1]
    sources = w.shape[2]
    num = centres.shape[0]
    h2 = width * width
    for b in nb.prange(bsz):
        tb = t[b]
        bid = np.empty(n_events, np.int64)
        local = np.empty(n_events)
        origin = _blocks(tb, block, bid, local)
        prefix = _prefix_moments(w[b], local)
        ptr = np.zeros((num, 3), np.int64)
        sorted_queries = _is_sorted(q[b])
        k = np.empty((3, 3))
        for j in range(n_query):
            qj = q[b, j]
            for i in range(num):
                for m in range(order + 1):
                    for d in range(sources):
                        out[b, j, m, i, d] = 0.0
                lo, mid, hi, first = _epan_ranges(tb, bid, n_events, qj, centres[i], width, ptr, i, sorted_queries)
                for p in range(2):
                    start, stop = (lo, mid) if p == 0 else (mid, hi)
                    if stop <= start:
                        continue
                    _epan_matrix(qj - centres[i] - (origin + (first + p + 0.5) * block), h2, k)
                    for d in range(sources):
                        s0, s1, s2 = _window_moments(prefix, start, stop, d)
                        for m in range(order + 1):
                            out[b, j, m, i, d] += k[m, 0] * s0 + k[m, 1] * s1 + k[m, 2] * s2


@nb.njit(parallel=True, **_OPTS)
def epan_features_grad(t, q, centres, width, block, order, grad_out, grad_w):
    """Adjoint of :func:`epan_features` with respect to the event weights."""
    bsz, n_events = t.shape
    n_query = q.shape[1]
    sources = grad_w.shape[2]
    num = centres.shape[0]
    h2 = width * width
    for b in nb.prange(bsz):
        tb = t[b]
        bid = np.empty(n_events, np.int64)
        local = np.empty(n_events)
        origin = _blocks(tb, block, bid, local)
        gp = np.zeros((n_events + 1, 3, sources))
        ptr = np.zeros((num, 3), np.int64)
        sorted_queries = _is_sorted(q[b])
        k = np.empty((3, 3))
        for j in range(n_query):
            qj = q[b, j]
            for i in range(num):
                lo, mid, hi, first = _epan_ranges(tb, bid, n_events, qj, centres[i], width, ptr, i, sorted_queries)
                for p in range(2):
                    start, stop = (lo, mid) if p == 0 else (mid, hi)
                    if stop <= start:
                        continue
                    _epan_matrix(qj - centres[i] - (origin + (first + p + 0.5) * block), h2, k)
                    for d in range(sources):
                        g0 = grad_out[b, j, 0, i, d]
                        if order == 0:
                            a0, a1, a2 = k[0, 0] * g0, k[0, 1] * g0, k[0, 2] * g0
                        else:
                            g1, g2 = grad_out[b, j, 1, i, d], grad_out[b, j, 2, i, d]
                            a0 = k[0, 0] * g0 + k[1, 0] * g1 + k[2, 0] * g2
                            a1 = k[0, 1] * g0 + k[1, 1] * g1
                            a2 = k[0, 2] * g0
                        _scatter_window(gp, start, stop, d, a0, a1, a2)
        _prefix_moments_adjoint(gp, local, grad_w[b])


@nb.njit(parallel=True, **_OPTS)
def epan_potential(t, w, q, centres, width, block, weight, out):
    """``out[b, j, m, k] = sum_{l, d} weight[b, k, l, d] F^(m)_ld(q_j)``: the potential's quadratic
    coefficients (bias excluded) without materialising the features."""
    bsz, n_events = t.shape
    n_query = q.shape[1]
    sources = w.shape[2]
    num = centres.shape[0]
    k_marks = weight.shape[1]
    h2 = width * width
    for b in nb.prange(bsz):
        tb = t[b]
        bid = np.empty(n_events, np.int64)
        local = np.empty(n_events)
        origin = _blocks(tb, block, bid, local)
        prefix = _prefix_moments(w[b], local)
        ptr = np.zeros((num, 3), np.int64)
        sorted_queries = _is_sorted(q[b])
        k = np.empty((3, 3))
        for j in range(n_query):
            qj = q[b, j]
            for m in range(3):
                for kk in range(k_marks):
                    out[b, j, m, kk] = 0.0
            for i in range(num):
                lo, mid, hi, first = _epan_ranges(tb, bid, n_events, qj, centres[i], width, ptr, i, sorted_queries)
                for p in range(2):
                    start, stop = (lo, mid) if p == 0 else (mid, hi)
                    if stop <= start:
                        continue
                    _epan_matrix(qj - centres[i] - (origin + (first + p + 0.5) * block), h2, k)
                    for d in range(sources):
                        s0, s1, s2 = _window_moments(prefix, start, stop, d)
                        f0 = k[0, 0] * s0 + k[0, 1] * s1 + k[0, 2] * s2
                        f1 = k[1, 0] * s0 + k[1, 1] * s1
                        f2 = k[2, 0] * s0
                        for kk in range(k_marks):
                            wk = weight[b, kk, i, d]
                            out[b, j, 0, kk] += wk * f0
                            out[b, j, 1, kk] += wk * f1
                            out[b, j, 2, kk] += wk * f2


@nb.njit(parallel=True, **_OPTS)
def epan_potential_grad(t, w, q, centres, width, block, weight, grad_out, grad_w, grad_weight):
    """Adjoint of :func:`epan_potential` with respect to the event weights and the filter weights."""
    bsz, n_events = t.shape
    n_query = q.shape[1]
    sources = w.shape[2]
    num = centres.shape[0]
    k_marks = weight.shape[1]
    h2 = width * width
    for b in nb.prange(bsz):
        tb = t[b]
        bid = np.empty(n_events, np.int64)
        local = np.empty(n_events)
        origin = _blocks(tb, block, bid, local)
        prefix = _prefix_moments(w[b], local)
        gp = np.zeros((n_events + 1, 3, sources))
        gweight = np.zeros((k_marks, num, sources))
        ptr = np.zeros((num, 3), np.int64)
        sorted_queries = _is_sorted(q[b])
        k = np.empty((3, 3))
        for j in range(n_query):
            qj = q[b, j]
            for i in range(num):
                lo, mid, hi, first = _epan_ranges(tb, bid, n_events, qj, centres[i], width, ptr, i, sorted_queries)
                for p in range(2):
                    start, stop = (lo, mid) if p == 0 else (mid, hi)
                    if stop <= start:
                        continue
                    _epan_matrix(qj - centres[i] - (origin + (first + p + 0.5) * block), h2, k)
                    for d in range(sources):
                        s0, s1, s2 = _window_moments(prefix, start, stop, d)
                        f0 = k[0, 0] * s0 + k[0, 1] * s1 + k[0, 2] * s2
                        f1 = k[1, 0] * s0 + k[1, 1] * s1
                        f2 = k[2, 0] * s0
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
                        a0 = k[0, 0] * g0 + k[1, 0] * g1 + k[2, 0] * g2
                        a1 = k[0, 1] * g0 + k[1, 1] * g1
                        a2 = k[0, 2] * g0
                        _scatter_window(gp, start, stop, d, a0, a1, a2)
        for kk in range(k_marks):
            for i in range(num):
                for d in range(sources):
                    grad_weight[b, kk, i, d] = gweight[kk, i, d]
        _prefix_moments_adjoint(gp, local, grad_w[b])


# ---- scoring: the compensator's nodes ------------------------------------------------------------------------
@nb.njit(parallel=True, **_OPTS)
def interval_integrals(coef, half, amp, act, nodes, x_table, w_table, adaptive, tol, total, grad_coef, grad_amp):
    """Gauss-Legendre integrals of ``sum_k a g(u_k(c + s))`` over ``s in [-half, half]`` for every
    interval, ``u_k(c + s) = coef[.., 0, k] + coef[.., 1, k] s + coef[.., 2, k] s^2``; ``total[b]``
    sums them, ``grad_coef`` and ``grad_amp`` are its derivatives. With ``adaptive`` (sigmoid only)
    an interval uses the fewest nodes (at most ``nodes``) whose Bernstein-ellipse error bound,
    relative to ``a * length``, is below ``tol``: the integrand is analytic while
    ``|Im u| < pi``, so on the ellipse where ``|Im u| <= pi / 2`` it is bounded by ``a``."""
    bsz, n_int, _, k_marks = coef.shape
    for b in nb.prange(bsz):
        acc = 0.0
        ga = 0.0
        for p in range(n_int):
            h = half[b, p]
            n = nodes
            if adaptive and h > 0:
                c1 = 0.0
                c2 = 0.0
                for k in range(k_marks):
                    c1 = max(c1, abs(coef[b, p, 1, k]) * h)
                    c2 = max(c2, 2 * abs(coef[b, p, 2, k]) * h * h)
                s12 = c1 + c2
                if c2 > 0:
                    semi = (-s12 + math.sqrt(s12 * s12 + 2 * math.pi * c2)) / (2 * c2)
                elif c1 > 0:
                    semi = math.pi / (2 * c1)
                else:
                    semi = 1e30
                rho = semi + math.sqrt(semi * semi + 1)
                if rho > 1.0001:
                    n = 1
                    factor = 32.0 / 15.0 / (rho * rho - 1)
                    while n < nodes and factor * rho ** (-2 * n) > tol:
                        n += 1
            for i in range(n):
                s = h * x_table[n, i]
                wt = h * w_table[n, i]
                for k in range(k_marks):
                    u = coef[b, p, 0, k] + s * (coef[b, p, 1, k] + s * coef[b, p, 2, k])
                    if act == SIGMOID:
                        if u >= 0:
                            e = math.exp(-u)
                            g = 1 / (1 + e)
                        else:
                            e = math.exp(u)
                            g = e / (1 + e)
                        dg = g * (1 - g)
                    elif act == EXP:
                        g = math.exp(u)
                        dg = g
                    elif act == SOFTPLUS:
                        if u > 20:
                            g = u
                            dg = 1.0
                        else:
                            g = max(u, 0.0) + math.log1p(math.exp(-abs(u)))
                            dg = 1 / (1 + math.exp(-u))
                    else:
                        g = 0.5 * (min(max(u, -1.0), 1.0) + 1.0)
                        dg = 0.5 if -1 < u < 1 else 0.0
                    acc += wt * amp[b] * g
                    ga += wt * g
                    gu = wt * amp[b] * dg
                    grad_coef[b, p, 0, k] += gu
                    grad_coef[b, p, 1, k] += gu * s
                    grad_coef[b, p, 2, k] += gu * s * s
        total[b] = acc
        grad_amp[b] = ga


# ---- exact sampling of linear Hawkes processes (Ogata) --------------------------------------------------
@nb.njit(parallel=True, **_OPTS)
def hawkes_ogata(seeds, duration, base, gain, beta, uniform, ctx_t, ctx_w, ctx_n, out_t, out_k, count):
    """Ogata's thinning with the current summed rate as the bound (nonnegative kernels only decay
    between events), lockstep-free: one loop per sequence. Context events (``ctx_t``, sorted, first
    ``ctx_n[b]`` real) enter the traces at their times. ``count[b]`` is set to -1 on overflow of
    ``out_t``'s width."""
    bsz, k_marks, sources = gain.shape
    cap = out_t.shape[1]
    n_ctx_cols = ctx_w.shape[2]
    for b in nb.prange(bsz):
        np.random.seed(seeds[b])
        rows = 1 if uniform else k_marks
        x = np.zeros((rows, sources))
        rates = np.empty(k_marks)
        now = 0.0
        j = 0
        n = 0
        end = duration[b]
        while True:
            total = 0.0
            for k in range(k_marks):
                r = base[b, k]
                row = 0 if uniform else k
                for d in range(sources):
                    r += gain[b, k, d] * x[row, d]
                total += r
            next_ctx = ctx_t[b, j] if j < ctx_n[b] else math.inf
            limit = min(next_ctx, end)
            if total > 0:
                proposal = now + np.random.exponential(1.0) / total
            else:
                proposal = math.inf
            if proposal > limit:
                gap = limit - now
                for k in range(rows):
                    for d in range(sources):
                        x[k, d] *= math.exp(-beta[b, k if not uniform else 0, d] * gap)
                now = limit
                if next_ctx <= end and j < ctx_n[b]:
                    for k in range(rows):
                        for c in range(n_ctx_cols):
                            x[k, k_marks + c] += ctx_w[b, j, c]
                    j += 1
                    continue
                break
            gap = proposal - now
            for k in range(rows):
                for d in range(sources):
                    x[k, d] *= math.exp(-beta[b, k if not uniform else 0, d] * gap)
            now = proposal
            new_total = 0.0
            for k in range(k_marks):
                r = base[b, k]
                row = 0 if uniform else k
                for d in range(sources):
                    r += gain[b, k, d] * x[row, d]
                rates[k] = r
                new_total += r
            u = np.random.random() * total
            if u < new_total:
                mark = 0
                acc = rates[0]
                while mark < k_marks - 1 and u >= acc:
                    mark += 1
                    acc += rates[mark]
                if n >= cap:
                    n = -1
                    break
                out_t[b, n] = now
                out_k[b, n] = mark
                n += 1
                for k in range(rows):
                    x[k, mark] += 1.0
        count[b] = n
