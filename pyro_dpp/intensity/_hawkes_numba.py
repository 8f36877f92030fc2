"""numba twin of :class:`~pyro_dpp.intensity.hawkes.ExpHawkesFilter` (CPU): the exponential-Hawkes
scan forward and reverse in one fused loop per sequence, parallel over the batch, and Ogata's exact
sampler. Registered as accelerators of that filter class (see :mod:`pyro_dpp.scan.accelerators`).
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
def _rates(b, base, gain, x, uniform, rates):
    """``rates[k] = mu_k + sum_d gain[k, d] x[row, d]`` (``row`` 0 for a scalar decay); returns their sum."""
    total = 0.0
    for k in range(base.shape[1]):
        r = base[b, k]
        row = 0 if uniform else k
        for d in range(gain.shape[2]):
            r += gain[b, k, d] * x[row, d]
        rates[k] = r
        total += r
    return total


@nb.njit(inline="always", **OPTS)
def _decay(b, x, beta, uniform, gap):
    for k in range(x.shape[0]):
        for d in range(x.shape[1]):
            x[k, d] *= math.exp(-beta[b, k if not uniform else 0, d] * gap)


@nb.njit(parallel=True, **OPTS)
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
        rates = np.empty(k_marks, keys.dtype)
        prev = min(keys[b, 0], 0.0) if steps else 0.0  # a time line may start before 0 (past events)
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
            _rates(b, base, gain, x, uniform, rates)
            for k in range(k_marks):
                u = rates[k]
                if store:
                    drive[b, s, k] = u
                log_pi[b, s, k] = (math.log(u) if u > 0 else -math.inf) - log_bound[b]
            step(b, s, k_marks, log_pi, log_y, marks, noise, inv_t, relaxed, hard, cand, hist, ratio, z)


@nb.njit(parallel=True, **OPTS)
def hawkes_reverse(keys, gain, beta, uniform, log_pi, log_y, cand, drive, grad_marks, grad_logs, inv_t, glr):
    bsz, steps = keys.shape
    k_marks = drive.shape[2]
    sources = gain.shape[2]
    for b in nb.prange(bsz):
        r = np.zeros((k_marks, sources), keys.dtype)
        g = np.empty(k_marks, keys.dtype)
        gw = np.empty(sources, keys.dtype)
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
            adjoint(b, s, k_marks, log_pi, log_y, cand, grad_marks, grad_logs, inv_t, gw, glr, ys)
            for k in range(k_marks):
                u = drive[b, s, k]
                g[k] = glr[b, s, k] / u if u > 0 else 0.0
            for k in range(k_marks):
                for d in range(sources):
                    r[k, d] += g[k]


@nb.njit(parallel=True, **OPTS)
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
            total = _rates(b, base, gain, x, uniform, rates)
            next_ctx = ctx_t[b, j] if j < ctx_n[b] else math.inf
            limit = min(next_ctx, end)
            if total > 0:
                proposal = now + np.random.exponential(1.0) / total
            else:
                proposal = math.inf
            if proposal > limit:
                _decay(b, x, beta, uniform, limit - now)
                now = limit
                if next_ctx <= end and j < ctx_n[b]:
                    for k in range(rows):
                        for c in range(n_ctx_cols):
                            x[k, k_marks + c] += ctx_w[b, j, c]
                    j += 1
                    continue
                break
            _decay(b, x, beta, uniform, proposal - now)
            now = proposal
            mark = ogata_mark(rates, total, _rates(b, base, gain, x, uniform, rates))
            if mark >= 0:
                if n >= cap:
                    n = -1
                    break
                out_t[b, n] = now
                out_k[b, n] = mark
                n += 1
                for k in range(rows):
                    x[k, mark] += 1.0
        count[b] = n


def _np(x: torch.Tensor):
    return x.detach().numpy()


class HawkesKernels:
    """Arguments of the numba Hawkes kernels (batch-major), from an :class:`ExpHawkesFilter`."""

    def __init__(self, filt) -> None:
        intensity, keys, batch = filt.intensity, filt.keys, filt.batch
        bsz = keys.shape[0]
        self.K, self.D = intensity.num_marks, intensity.num_history_marks
        dtype = keys.dtype
        decay = intensity.decay.detach().to(dtype)
        adjacency = intensity.adjacency.detach().to(dtype)
        self.base = intensity.baseline.detach().to(dtype).expand(batch + (self.K,)).reshape(bsz, self.K).contiguous()
        self.gain = (adjacency * decay).expand(batch + (self.K, self.D)).reshape(bsz, self.K, self.D).contiguous()
        self.uniform = decay.numel() == 1
        beta = decay.reshape(1, 1) if self.uniform else decay.expand(torch.broadcast_shapes(decay.shape,
                                                                                               adjacency.shape))
        self.beta = beta.expand(batch + (self.K, self.D)).reshape(bsz, self.K, self.D).contiguous()
        #: traces and lag-weighted traces (the layout of ExpHawkesFilter.stored)
        self.store_shape = (2, 1 if self.uniform else self.K, self.D)

    def forward(self, keys, cand, hist, noise, log_bound, inv_t, relaxed, hard, out, stored, store):
        hawkes_forward(_np(keys), _np(cand), _np(hist), _np(noise), _np(log_bound), inv_t, relaxed, hard,
                       _np(self.base), _np(self.gain), _np(self.beta), self.uniform, *[_np(x) for x in out],
                       _np(stored), store)

    def reverse(self, keys, log_pi, log_y, cand, drive, grad_marks, grad_logs, inv_t, glr):
        hawkes_reverse(_np(keys), _np(self.gain), _np(self.beta), self.uniform, _np(log_pi), _np(log_y),
                       _np(cand), _np(drive), _np(grad_marks), _np(grad_logs), inv_t, _np(glr))


def sample_ogata(intensity, duration: torch.Tensor, context: torch.Tensor | None,
                 max_events: int) -> torch.Tensor:
    """:func:`pyro_dpp.thinning.sample_ogata` for :class:`ExpHawkes` by the numba kernel :func:`hawkes_ogata`."""
    batch = duration.shape
    bsz = max(1, math.prod(batch))
    k, d = intensity.num_marks, intensity.num_history_marks
    f64 = torch.float64
    base = intensity.baseline.detach().to(f64).expand(batch + (k,)).reshape(bsz, k).contiguous()
    decay = intensity.decay.detach().to(f64)
    adjacency = intensity.adjacency.detach().to(f64)
    gain = (adjacency * decay).expand(batch + (k, d)).reshape(bsz, k, d).contiguous()
    uniform = decay.numel() == 1
    beta = decay.reshape(1, 1) if uniform else decay.expand(torch.broadcast_shapes(decay.shape, adjacency.shape))
    beta = beta.expand(batch + (k, d)).reshape(bsz, k, d).contiguous()
    buf = ogata_buffers(duration, context, intensity.num_context_marks, max_events)
    numba_threads()
    hawkes_ogata(*(buf[name].numpy() for name in ("seeds", "duration")), base.numpy(), gain.numpy(), beta.numpy(),
                 uniform, *(buf[name].numpy() for name in ("ctx_t", "ctx_w", "ctx_n", "out_t", "out_k", "count")))
    return ogata_realization(buf, k, duration, max_events)
