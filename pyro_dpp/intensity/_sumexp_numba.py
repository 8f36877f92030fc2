"""numba twin of :class:`~pyro_dpp.intensity.sumexp.SumExpHawkesFilter` (CPU): the sum-of-exponentials
Hawkes scan forward and reverse in one fused loop per sequence, parallel over the batch, and Ogata's
exact sampler. Registered as accelerators of that filter class (see :mod:`pyro_dpp.scan.accelerators`).

Arrays are batch-major: ``base`` ``B x K``, ``gain`` ``B x K x D x U`` (``alpha_iju beta_u``),
``beta`` ``B x U``; the traces ``x`` are ``D x U`` per sequence.
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
    """``rates[k] = mu_k + sum_{d,u} gain[k, d, u] x[d, u]``; returns their sum."""
    total = 0.0
    for k in range(base.shape[1]):
        r = base[b, k]
        for d in range(gain.shape[2]):
            for u in range(gain.shape[3]):
                r += gain[b, k, d, u] * x[d, u]
        rates[k] = r
        total += r
    return total


@nb.njit(inline="always", **OPTS)
def _decay(b, x, beta, gap):
    for u in range(x.shape[1]):
        q = math.exp(-beta[b, u] * gap)
        for d in range(x.shape[0]):
            x[d, u] *= q


@nb.njit(parallel=True, **OPTS)
def sumexp_forward(keys, cand, hist, noise, log_bound, inv_t, relaxed, hard, base, gain, beta,
                   log_pi, log_y, marks, ratio, drive, traces, store):
    bsz, steps = keys.shape
    k_marks = noise.shape[2] - 1
    sources, n_decays = gain.shape[2], gain.shape[3]
    for b in nb.prange(bsz):
        x = np.zeros((sources, n_decays), keys.dtype)
        y = np.zeros((sources, n_decays), keys.dtype)  # lag-weighted traces: -dx / d(beta)
        q = np.empty(n_decays, keys.dtype)
        z = np.empty(k_marks + 1, keys.dtype)
        rates = np.empty(k_marks, keys.dtype)
        prev = 0.0
        for s in range(steps):
            t = keys[b, s]
            gap = t - prev
            prev = t
            for u in range(n_decays):
                q[u] = math.exp(-beta[b, u] * gap)
            for d in range(sources):
                h = hist[b, s - 1, d] if s > 0 else 0.0
                for u in range(n_decays):
                    x[d, u] += h
                    y[d, u] = (y[d, u] + gap * x[d, u]) * q[u]
                    x[d, u] *= q[u]
            if store:
                for d in range(sources):
                    for u in range(n_decays):
                        traces[b, s, 0, d, u] = x[d, u]
                        traces[b, s, 1, d, u] = y[d, u]
            _rates(b, base, gain, x, rates)
            for k in range(k_marks):
                r = rates[k]
                if store:
                    drive[b, s, k] = r
                log_pi[b, s, k] = (math.log(r) if r > 0 else -math.inf) - log_bound[b]
            step(b, s, k_marks, log_pi, log_y, marks, noise, inv_t, relaxed, hard, cand, hist, ratio, z)


@nb.njit(parallel=True, **OPTS)
def sumexp_reverse(keys, gain, beta, log_pi, log_y, cand, drive, grad_marks, grad_logs, inv_t, glr):
    bsz, steps = keys.shape
    k_marks, sources, n_decays = gain.shape[1], gain.shape[2], gain.shape[3]
    for b in nb.prange(bsz):
        r = np.zeros((k_marks, n_decays), keys.dtype)  # one adjoint trace per (target, decay)
        gw = np.empty(sources, keys.dtype)
        ys = np.empty(k_marks + 1, keys.dtype)
        for s in range(steps - 1, -1, -1):
            if s + 1 < steps:
                gap = keys[b, s + 1] - keys[b, s]
                for u in range(n_decays):
                    q = math.exp(-beta[b, u] * gap)
                    for k in range(k_marks):
                        r[k, u] *= q
            for d in range(sources):
                acc = 0.0
                for k in range(k_marks):
                    for u in range(n_decays):
                        acc += gain[b, k, d, u] * r[k, u]
                gw[d] = acc
            adjoint(b, s, k_marks, log_pi, log_y, cand, grad_marks, grad_logs, inv_t, gw, glr, ys)
            for k in range(k_marks):
                u_k = drive[b, s, k]
                g = glr[b, s, k] / u_k if u_k > 0 else 0.0
                for u in range(n_decays):
                    r[k, u] += g


@nb.njit(parallel=True, **OPTS)
def sumexp_ogata(seeds, duration, base, gain, beta, ctx_t, ctx_w, ctx_n, out_t, out_k, count):
    """Ogata's thinning with the current summed rate as the bound (nonnegative kernels only decay
    between events), one loop per sequence. Context events (``ctx_t``, sorted, first ``ctx_n[b]``
    real) enter the traces at their times. ``count[b]`` is set to -1 on overflow of ``out_t``'s width."""
    bsz, k_marks, sources, n_decays = gain.shape
    cap = out_t.shape[1]
    n_ctx_cols = ctx_w.shape[2]
    for b in nb.prange(bsz):
        np.random.seed(seeds[b])
        x = np.zeros((sources, n_decays))
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
                _decay(b, x, beta, limit - now)
                now = limit
                if next_ctx <= end and j < ctx_n[b]:
                    for c in range(n_ctx_cols):
                        for u in range(n_decays):
                            x[k_marks + c, u] += ctx_w[b, j, c]
                    j += 1
                    continue
                break
            _decay(b, x, beta, proposal - now)
            now = proposal
            mark = ogata_mark(rates, total, _rates(b, base, gain, x, rates))
            if mark >= 0:
                if n >= cap:
                    n = -1
                    break
                out_t[b, n] = now
                out_k[b, n] = mark
                n += 1
                for u in range(n_decays):
                    x[mark, u] += 1.0
        count[b] = n


def _np(x: torch.Tensor):
    return x.detach().numpy()


def _arrays(intensity, batch: torch.Size, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """``base`` (``B x K``), ``gain`` (``B x K x D x U``) and ``beta`` (``B x U``), batch-major, contiguous."""
    bsz = max(1, math.prod(batch))
    k, d, u = intensity.num_marks, intensity.num_history_marks, intensity.num_decays
    base = intensity.baseline.detach().to(dtype).expand(batch + (k,)).reshape(bsz, k).contiguous()
    gain = intensity._gain().detach().to(dtype).expand(batch + (k, d, u)).reshape(bsz, k, d, u).contiguous()
    beta = intensity.decays.detach().to(dtype).expand(batch + (u,)).reshape(bsz, u).contiguous()
    return base, gain, beta


class SumExpKernels:
    """Arguments of the numba sum-of-exponentials kernels (batch-major), from a ``SumExpHawkesFilter``."""

    def __init__(self, filt) -> None:
        intensity = filt.intensity
        self.base, self.gain, self.beta = _arrays(intensity, filt.batch, filt.keys.dtype)
        #: traces and lag-weighted traces (the layout of SumExpHawkesFilter.stored)
        self.store_shape = (2, intensity.num_history_marks, intensity.num_decays)

    def forward(self, keys, cand, hist, noise, log_bound, inv_t, relaxed, hard, out, stored, store):
        sumexp_forward(_np(keys), _np(cand), _np(hist), _np(noise), _np(log_bound), inv_t, relaxed, hard,
                       _np(self.base), _np(self.gain), _np(self.beta), *[_np(x) for x in out], _np(stored), store)

    def reverse(self, keys, log_pi, log_y, cand, drive, grad_marks, grad_logs, inv_t, glr):
        sumexp_reverse(_np(keys), _np(self.gain), _np(self.beta), _np(log_pi), _np(log_y), _np(cand), _np(drive),
                       _np(grad_marks), _np(grad_logs), inv_t, _np(glr))


def sample_ogata(intensity, duration: torch.Tensor, context: torch.Tensor | None,
                 max_events: int) -> torch.Tensor:
    """:func:`pyro_dpp.thinning.sample_ogata` for :class:`~pyro_dpp.intensity.SumExpHawkes` by the
    numba kernel :func:`sumexp_ogata` (seeded from torch's generator)."""
    base, gain, beta = _arrays(intensity, duration.shape, torch.float64)
    buf = ogata_buffers(duration, context, intensity.num_context_marks, max_events)
    numba_threads()
    sumexp_ogata(*(buf[name].numpy() for name in ("seeds", "duration")), base.numpy(), gain.numpy(), beta.numpy(),
                 *(buf[name].numpy() for name in ("ctx_t", "ctx_w", "ctx_n", "out_t", "out_k", "count")))
    return ogata_realization(buf, intensity.num_marks, duration, max_events)
