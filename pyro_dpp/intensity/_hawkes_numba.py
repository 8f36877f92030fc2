"""numba twin of :class:`~pyro_dpp.intensity.hawkes.ExpTraceFilter` (CPU), the exponential traces
with a decay axis of :class:`~pyro_dpp.intensity.ExpHawkes` and :class:`~pyro_dpp.intensity.SumExpHawkes`:
the scan forward and reverse in one fused loop per sequence, parallel over the batch, and Ogata's
exact sampler. Registered as accelerators of that filter class (see :mod:`pyro_dpp.scan.accelerators`).

Arrays are batch-major, with the (source, decay) axes flattened to ``J = D x U`` columns
(column ``j = d U + u``): ``base`` ``B x K``, ``gain`` ``B x K x J``, ``beta`` ``B x R x J'`` with
``R`` 1 or ``K`` and ``J'`` either ``J`` (a decay per entry, with ``U = 1`` or ``D = 1``:
:class:`ExpHawkes` with a decay per pair) or ``U`` (decays shared by all sources: a scalar decay,
or :class:`SumExpHawkes`). The traces ``x`` are ``R x J`` per sequence, the adjoint traces
``K x J'``. Shared decays cost one exponential per decay and gap; the loops visit the columns decay
by decay so that the factor stays in a register. Sums, and the forward's decay factors, run in
float64, also for float32 traces.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np
import torch

from ..scan._numba_step import OPTS, adjoint, ogata_mark, step
from ..scan.backend import numba_threads
from ..scan.ogata import ogata_buffers, ogata_realization


@nb.njit(inline="always", **OPTS)
def _rates(b, base, gain, x, rates):
    """``rates[k] = mu_k + sum_j gain[k, j] x[row, j]`` (``row`` 0 for traces shared by all targets,
    else ``k``); returns their sum."""
    shared = x.shape[0] == 1
    total = 0.0
    for k in range(base.shape[1]):
        r = base[b, k]
        row = 0 if shared else k
        for j in range(gain.shape[2]):
            r += gain[b, k, j] * x[row, j]
        rates[k] = r
        total += r
    return total


@nb.njit(inline="always", **OPTS)
def _sources(cols, n_decays):
    """``src[j]``: the source of column ``j``."""
    src = np.empty(cols, np.int64)
    for j in range(cols):
        src[j] = j // n_decays
    return src


@nb.njit(inline="always", **OPTS)
def _factors(b, beta, gap, q):
    """``q = exp(-beta[b] gap)`` (``R x U``): one exponential per shared decay."""
    for r in range(q.shape[0]):
        for u in range(q.shape[1]):
            q[r, u] = math.exp(-beta[b, r, u] * gap)


@nb.njit(inline="always", **OPTS)
def _decay(b, x, beta, gap, q):
    """``x *= exp(-beta[b] gap)`` over traces ``x`` (``R x J``, or ``K x J'`` adjoint traces);
    ``q`` is scratch space for shared decays."""
    if beta.shape[1] == x.shape[0] and beta.shape[2] == x.shape[1]:  # a decay per entry
        for r in range(x.shape[0]):
            for j in range(x.shape[1]):
                x[r, j] *= math.exp(-beta[b, r, j] * gap)
        return
    _factors(b, beta, gap, q)
    n_decays = q.shape[1]
    if x.shape[1] == n_decays:  # a column per decay (the adjoint traces)
        for r in range(x.shape[0]):
            rq = 0 if q.shape[0] == 1 else r
            for u in range(n_decays):
                x[r, u] *= q[rq, u]
        return
    sources = x.shape[1] // n_decays
    for r in range(x.shape[0]):
        rq = 0 if q.shape[0] == 1 else r
        for u in range(n_decays):
            qq = q[rq, u]
            for d in range(sources):
                x[r, d * n_decays + u] *= qq


@nb.njit(inline="always", **OPTS)
def _advance(x, y, r, j, h, qq, gap):
    """Fold in the history weight ``h`` and decay over ``gap`` by ``qq``; ``y = -dx / d(beta)``."""
    x[r, j] += h
    y[r, j] = (y[r, j] + gap * x[r, j]) * qq
    x[r, j] *= qq


@nb.njit(parallel=True, **OPTS)
def trace_forward(keys, cand, hist, noise, log_bound, inv_t, relaxed, hard, base, gain, beta, n_decays,
                  log_pi, log_y, marks, ratio, drive, traces, store):
    bsz, steps = keys.shape
    k_marks = noise.shape[2] - 1
    rows, cols = beta.shape[1], gain.shape[2]
    sources = cols // n_decays
    per_entry = beta.shape[2] == cols
    for b in nb.prange(bsz):
        src = _sources(cols, n_decays)
        x = np.zeros((rows, cols), keys.dtype)
        y = np.zeros((rows, cols), keys.dtype)  # lag-weighted traces: -dx / d(beta)
        q = np.empty(beta.shape[1:])  # float64 (the gaps are), also for float32 traces
        z = np.empty(k_marks + 1, keys.dtype)
        rates = np.empty(k_marks, keys.dtype)
        prev = min(keys[b, 0], 0.0) if steps else 0.0  # a time line may start before 0 (past events)
        for s in range(steps):
            t = keys[b, s]
            gap = t - prev
            prev = t
            if per_entry:
                for r in range(rows):
                    for j in range(cols):
                        h = hist[b, s - 1, src[j]] if s > 0 else 0.0
                        _advance(x, y, r, j, h, math.exp(-beta[b, r, j] * gap), gap)
            else:
                _factors(b, beta, gap, q)
                for r in range(rows):
                    rq = 0 if rows == 1 else r
                    for u in range(n_decays):
                        qq = q[rq, u]
                        for d in range(sources):
                            h = hist[b, s - 1, d] if s > 0 else 0.0
                            _advance(x, y, r, d * n_decays + u, h, qq, gap)
            if store:
                for r in range(rows):
                    for j in range(cols):
                        traces[b, s, 0, r, j] = x[r, j]
                        traces[b, s, 1, r, j] = y[r, j]
            _rates(b, base, gain, x, rates)
            for k in range(k_marks):
                u_k = rates[k]
                if store:
                    drive[b, s, k] = u_k
                log_pi[b, s, k] = (math.log(u_k) if u_k > 0 else -math.inf) - log_bound[b]
            step(b, s, k_marks, log_pi, log_y, marks, noise, inv_t, relaxed, hard, cand, hist, ratio, z)


@nb.njit(parallel=True, **OPTS)
def trace_reverse(keys, gain, beta, n_decays, log_pi, log_y, cand, drive, grad_marks, grad_logs, inv_t, glr):
    bsz, steps = keys.shape
    k_marks, cols = gain.shape[1], gain.shape[2]
    r_cols = beta.shape[2]
    sources = cols // n_decays
    for b in nb.prange(bsz):
        r = np.zeros((k_marks, r_cols), keys.dtype)  # one adjoint trace per (target, column of beta)
        q = np.empty(beta.shape[1:], keys.dtype)
        acc = np.empty(sources)  # float64 sums, also for float32 traces
        gw = np.empty(sources, keys.dtype)
        ys = np.empty(k_marks + 1, keys.dtype)
        for s in range(steps - 1, -1, -1):
            if s + 1 < steps:
                _decay(b, r, beta, keys[b, s + 1] - keys[b, s], q)
            # per source, summed over (target, decay) in that order, in float64
            if n_decays == 1:
                for d in range(sources):
                    dc = d if r_cols == cols else 0
                    total = 0.0
                    for k in range(k_marks):
                        total += gain[b, k, d] * r[k, dc]
                    gw[d] = total
            else:
                for d in range(sources):
                    acc[d] = 0.0
                for k in range(k_marks):
                    for u in range(n_decays):
                        rv = r[k, u]
                        for d in range(sources):
                            acc[d] += gain[b, k, d * n_decays + u] * rv
                for d in range(sources):
                    gw[d] = acc[d]
            adjoint(b, s, k_marks, log_pi, log_y, cand, grad_marks, grad_logs, inv_t, gw, glr, ys)
            for k in range(k_marks):
                u_k = drive[b, s, k]
                g = glr[b, s, k] / u_k if u_k > 0 else 0.0
                for c in range(r_cols):
                    r[k, c] += g


@nb.njit(parallel=True, **OPTS)
def trace_ogata(seeds, duration, base, gain, beta, n_decays, ctx_t, ctx_w, ctx_n, out_t, out_k, count):
    """Ogata's thinning with the current summed rate as the bound (nonnegative kernels only decay
    between events), one loop per sequence. Context events (``ctx_t``, sorted, first ``ctx_n[b]``
    real) enter the traces at their times. ``count[b]`` is set to -1 on overflow of ``out_t``'s width."""
    bsz, k_marks, cols = gain.shape
    rows = beta.shape[1]
    cap = out_t.shape[1]
    n_ctx_cols = ctx_w.shape[2]
    for b in nb.prange(bsz):
        np.random.seed(seeds[b])
        x = np.zeros((rows, cols))
        q = np.empty(beta.shape[1:])
        rates = np.empty(k_marks)
        now = 0.0
        j = 0
        n = 0
        end = duration[b]
        while True:
            total = _rates(b, base, gain, x, rates)
            next_ctx = ctx_t[b, j] if j < ctx_n[b] else math.inf
            limit = min(next_ctx, end)
            proposal = now + np.random.exponential(1.0) / total if total > 0 else math.inf
            if proposal > limit:
                _decay(b, x, beta, limit - now, q)
                now = limit
                if next_ctx <= end and j < ctx_n[b]:
                    for r in range(rows):
                        for c in range(n_ctx_cols):
                            for u in range(n_decays):
                                x[r, (k_marks + c) * n_decays + u] += ctx_w[b, j, c]
                    j += 1
                    continue
                break
            _decay(b, x, beta, proposal - now, q)
            now = proposal
            mark = ogata_mark(rates, total, _rates(b, base, gain, x, rates))
            if mark >= 0:
                if n >= cap:
                    n = -1
                    break
                out_t[b, n] = now
                out_k[b, n] = mark
                n += 1
                for r in range(rows):
                    for u in range(n_decays):
                        x[r, mark * n_decays + u] += 1.0
        count[b] = n


def _np(x: torch.Tensor):
    return x.detach().numpy()


def _arrays(filt, batch: torch.Size, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """``base`` (``B x K``), ``gain`` (``B x K x J``), ``beta`` (``B x R x J'``), batch-major and
    contiguous, and ``U``, from an :class:`~pyro_dpp.intensity.hawkes.ExpTraceFilter`'s parameters."""
    bsz = max(1, math.prod(batch))
    base, gain, beta = filt.trace_parameters(dtype)
    k, d, u = gain.shape[-3:]
    rows, cols = beta.shape[-3], beta.shape[-2] * u
    base = base.expand(batch + (k,)).reshape(bsz, k).contiguous()
    gain = gain.expand(batch + (k, d, u)).reshape(bsz, k, d * u).contiguous()
    beta = beta.expand(batch + beta.shape[-3:]).reshape(bsz, rows, cols).contiguous()
    return base, gain, beta, u


class ExpTraceKernels:
    """Arguments of the numba exponential-trace kernels (batch-major), from an ``ExpTraceFilter``."""

    def __init__(self, filt) -> None:
        self.base, self.gain, self.beta, self.n_decays = _arrays(filt, filt.batch, filt.keys.dtype)
        #: traces and lag-weighted traces (the layout of ExpTraceFilter.stored)
        self.store_shape = (2, self.beta.shape[1], filt.D, self.n_decays)

    def forward(self, keys, cand, hist, noise, log_bound, inv_t, relaxed, hard, out, stored, store):
        flat = stored.reshape(stored.shape[:4] + (-1,))  # the (source, decay) columns: a view
        trace_forward(_np(keys), _np(cand), _np(hist), _np(noise), _np(log_bound), inv_t, relaxed, hard,
                      _np(self.base), _np(self.gain), _np(self.beta), self.n_decays, *[_np(x) for x in out],
                      _np(flat), store)

    def reverse(self, keys, log_pi, log_y, cand, drive, grad_marks, grad_logs, inv_t, glr):
        trace_reverse(_np(keys), _np(self.gain), _np(self.beta), self.n_decays, _np(log_pi), _np(log_y), _np(cand),
                      _np(drive), _np(grad_marks), _np(grad_logs), inv_t, _np(glr))


def sample_ogata(intensity, duration: torch.Tensor, context: torch.Tensor | None,
                 max_events: int) -> torch.Tensor:
    """:func:`pyro_dpp.thinning.sample_ogata` for :class:`~pyro_dpp.intensity.ExpHawkes` and
    :class:`~pyro_dpp.intensity.SumExpHawkes` by the numba kernel :func:`trace_ogata` (seeded from
    torch's generator)."""
    filt = intensity.scan_filter(duration.new_zeros(1, 0), duration.shape)
    base, gain, beta, n_decays = _arrays(filt, duration.shape, torch.float64)
    buf = ogata_buffers(duration, context, intensity.num_context_marks, max_events)
    numba_threads()
    trace_ogata(*(buf[name].numpy() for name in ("seeds", "duration")), base.numpy(), gain.numpy(), beta.numpy(),
                n_decays, *(buf[name].numpy() for name in ("ctx_t", "ctx_w", "ctx_n", "out_t", "out_k", "count")))
    return ogata_realization(buf, intensity.num_marks, duration, max_events)
