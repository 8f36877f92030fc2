"""numba twin of :class:`~pyro_dpp.intensity.hawkes.ExpTraceFilter` (CPU), the exponential traces
with a decay axis of :class:`~pyro_dpp.intensity.ExpHawkes` and :class:`~pyro_dpp.intensity.SumExpHawkes`:
the scan forward and reverse in one fused loop per sequence, parallel over the batch, and Ogata's
exact sampler. Registered as accelerators of that filter class (see :mod:`pyro_dpp.scan.accelerators`).

Arrays are batch-major: ``base`` ``B x K``, ``gain`` ``B x K x D x U``, ``beta`` ``B x R x D' x U``
(``R`` 1 or ``K``, ``D'`` 1 or ``D``); the traces ``x`` are ``R x D x U`` per sequence, the adjoint
traces ``K x D' x U``. The decay factors of a gap are computed once per distinct decay (``R x D' x U``
of them) and looked up along the broadcast axes.
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
    """``rates[k] = mu_k + sum_{d,u} gain[k, d, u] x[row, d, u]`` (``row`` 0 for traces shared by all
    targets, else ``k``); returns their sum."""
    shared = x.shape[0] == 1
    total = 0.0
    for k in range(base.shape[1]):
        r = base[b, k]
        row = 0 if shared else k
        for d in range(gain.shape[2]):
            for u in range(gain.shape[3]):
                r += gain[b, k, d, u] * x[row, d, u]
        rates[k] = r
        total += r
    return total


@nb.njit(inline="always", **OPTS)
def _factors(b, beta, gap, q):
    """``q = exp(-beta[b] gap)`` (``R x D' x U``): one exponential per distinct decay."""
    for r in range(q.shape[0]):
        for d in range(q.shape[1]):
            for u in range(q.shape[2]):
                q[r, d, u] = math.exp(-beta[b, r, d, u] * gap)


@nb.njit(inline="always", **OPTS)
def _scale(x, q):
    """``x *= q`` with ``q``'s axes of length 1 broadcast."""
    rows, cols = q.shape[0] > 1, q.shape[1] > 1
    for r in range(x.shape[0]):
        for d in range(x.shape[1]):
            for u in range(x.shape[2]):
                x[r, d, u] *= q[r if rows else 0, d if cols else 0, u]


@nb.njit(parallel=True, **OPTS)
def trace_forward(keys, cand, hist, noise, log_bound, inv_t, relaxed, hard, base, gain, beta,
                  log_pi, log_y, marks, ratio, drive, traces, store):
    bsz, steps = keys.shape
    k_marks = noise.shape[2] - 1
    rows, sources, n_decays = beta.shape[1], gain.shape[2], gain.shape[3]
    cols = beta.shape[2] > 1
    for b in nb.prange(bsz):
        x = np.zeros((rows, sources, n_decays), keys.dtype)
        y = np.zeros((rows, sources, n_decays), keys.dtype)  # lag-weighted traces: -dx / d(beta)
        q = np.empty(beta.shape[1:])  # float64 (the gaps are), also for float32 traces
        z = np.empty(k_marks + 1, keys.dtype)
        rates = np.empty(k_marks, keys.dtype)
        prev = min(keys[b, 0], 0.0) if steps else 0.0  # a time line may start before 0 (past events)
        for s in range(steps):
            t = keys[b, s]
            gap = t - prev
            prev = t
            _factors(b, beta, gap, q)
            for r in range(rows):
                for d in range(sources):
                    h = hist[b, s - 1, d] if s > 0 else 0.0
                    for u in range(n_decays):
                        qq = q[r, d if cols else 0, u]
                        x[r, d, u] += h
                        y[r, d, u] = (y[r, d, u] + gap * x[r, d, u]) * qq
                        x[r, d, u] *= qq
            if store:
                for r in range(rows):
                    for d in range(sources):
                        for u in range(n_decays):
                            traces[b, s, 0, r, d, u] = x[r, d, u]
                            traces[b, s, 1, r, d, u] = y[r, d, u]
            _rates(b, base, gain, x, rates)
            for k in range(k_marks):
                u_k = rates[k]
                if store:
                    drive[b, s, k] = u_k
                log_pi[b, s, k] = (math.log(u_k) if u_k > 0 else -math.inf) - log_bound[b]
            step(b, s, k_marks, log_pi, log_y, marks, noise, inv_t, relaxed, hard, cand, hist, ratio, z)


@nb.njit(parallel=True, **OPTS)
def trace_reverse(keys, gain, beta, log_pi, log_y, cand, drive, grad_marks, grad_logs, inv_t, glr):
    bsz, steps = keys.shape
    k_marks, sources, n_decays = gain.shape[1], gain.shape[2], gain.shape[3]
    cols = beta.shape[2]
    for b in nb.prange(bsz):
        r = np.zeros((k_marks, cols, n_decays), keys.dtype)  # one adjoint trace per (target, D', decay)
        q = np.empty(beta.shape[1:], keys.dtype)
        gw = np.empty(sources, keys.dtype)
        ys = np.empty(k_marks + 1, keys.dtype)
        for s in range(steps - 1, -1, -1):
            if s + 1 < steps:
                _factors(b, beta, keys[b, s + 1] - keys[b, s], q)
                _scale(r, q)
            for d in range(sources):
                dc = d if cols > 1 else 0
                acc = 0.0
                for k in range(k_marks):
                    for u in range(n_decays):
                        acc += gain[b, k, d, u] * r[k, dc, u]
                gw[d] = acc
            adjoint(b, s, k_marks, log_pi, log_y, cand, grad_marks, grad_logs, inv_t, gw, glr, ys)
            for k in range(k_marks):
                u_k = drive[b, s, k]
                g = glr[b, s, k] / u_k if u_k > 0 else 0.0
                for d in range(cols):
                    for u in range(n_decays):
                        r[k, d, u] += g


@nb.njit(parallel=True, **OPTS)
def trace_ogata(seeds, duration, base, gain, beta, ctx_t, ctx_w, ctx_n, out_t, out_k, count):
    """Ogata's thinning with the current summed rate as the bound (nonnegative kernels only decay
    between events), one loop per sequence. Context events (``ctx_t``, sorted, first ``ctx_n[b]``
    real) enter the traces at their times. ``count[b]`` is set to -1 on overflow of ``out_t``'s width."""
    bsz, k_marks, sources, n_decays = gain.shape
    rows = beta.shape[1]
    cap = out_t.shape[1]
    n_ctx_cols = ctx_w.shape[2]
    for b in nb.prange(bsz):
        np.random.seed(seeds[b])
        x = np.zeros((rows, sources, n_decays))
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
                _factors(b, beta, limit - now, q)
                _scale(x, q)
                now = limit
                if next_ctx <= end and j < ctx_n[b]:
                    for r in range(rows):
                        for c in range(n_ctx_cols):
                            for u in range(n_decays):
                                x[r, k_marks + c, u] += ctx_w[b, j, c]
                    j += 1
                    continue
                break
            _factors(b, beta, proposal - now, q)
            _scale(x, q)
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
                        x[r, mark, u] += 1.0
        count[b] = n


def _np(x: torch.Tensor):
    return x.detach().numpy()


def _arrays(filt, batch: torch.Size, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """``base`` (``B x K``), ``gain`` (``B x K x D x U``) and ``beta`` (``B x R x D' x U``) of an
    :class:`~pyro_dpp.intensity.hawkes.ExpTraceFilter`, batch-major, contiguous."""
    bsz = max(1, math.prod(batch))
    return tuple(x.expand(batch + x.shape[x.dim() - n:]).reshape((bsz,) + x.shape[x.dim() - n:]).contiguous()
                 for x, n in zip(filt.trace_parameters(dtype), (1, 3, 3)))


class ExpTraceKernels:
    """Arguments of the numba exponential-trace kernels (batch-major), from an ``ExpTraceFilter``."""

    def __init__(self, filt) -> None:
        self.base, self.gain, self.beta = _arrays(filt, filt.batch, filt.keys.dtype)
        #: traces and lag-weighted traces (the layout of ExpTraceFilter.stored)
        self.store_shape = (2, self.beta.shape[1]) + tuple(self.gain.shape[2:])

    def forward(self, keys, cand, hist, noise, log_bound, inv_t, relaxed, hard, out, stored, store):
        trace_forward(_np(keys), _np(cand), _np(hist), _np(noise), _np(log_bound), inv_t, relaxed, hard,
                      _np(self.base), _np(self.gain), _np(self.beta), *[_np(x) for x in out], _np(stored), store)

    def reverse(self, keys, log_pi, log_y, cand, drive, grad_marks, grad_logs, inv_t, glr):
        trace_reverse(_np(keys), _np(self.gain), _np(self.beta), _np(log_pi), _np(log_y), _np(cand), _np(drive),
                      _np(grad_marks), _np(grad_logs), inv_t, _np(glr))


def sample_ogata(intensity, duration: torch.Tensor, context: torch.Tensor | None,
                 max_events: int) -> torch.Tensor:
    """:func:`pyro_dpp.thinning.sample_ogata` for :class:`~pyro_dpp.intensity.ExpHawkes` and
    :class:`~pyro_dpp.intensity.SumExpHawkes` by the numba kernel :func:`trace_ogata` (seeded from
    torch's generator)."""
    filt = intensity.scan_filter(duration.new_zeros(1, 0), duration.shape)
    base, gain, beta = _arrays(filt, duration.shape, torch.float64)
    buf = ogata_buffers(duration, context, intensity.num_context_marks, max_events)
    numba_threads()
    trace_ogata(*(buf[name].numpy() for name in ("seeds", "duration")), base.numpy(), gain.numpy(), beta.numpy(),
                *(buf[name].numpy() for name in ("ctx_t", "ctx_w", "ctx_n", "out_t", "out_k", "count")))
    return ogata_realization(buf, intensity.num_marks, duration, max_events)
