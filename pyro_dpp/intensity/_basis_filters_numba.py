"""numba twins of the basis filters (:mod:`pyro_dpp.intensity.basis_filters`), CPU: the GLM scan
forward and reverse in one fused loop per sequence, parallel over the batch, registered as
accelerators of :class:`ExponentialFilter`, :class:`EpanechnikovFilter` and :class:`RaisedCosineFilter`.

Conventions match the torch filters and the reference scan: the history weights of step ``s`` enter
the drive of later steps only; finite-support filters sum the events whose lag lies in
``(low_i, high_i)`` (exclusive), exponential traces every earlier step (as the reference state).
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np
import torch

from ..scan._numba_step import OPTS, adjoint, step
from ._glm_numba import CODES, dlog_act, log_act

# basis codes
EXPONENTIAL, EPANECHNIKOV, RAISED_COSINE = 0, 1, 2


@nb.njit(inline="always", **OPTS)
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


#: Least steps between recomputations of the Epanechnikov window sums from scratch (bounds the
#: float error that adding and removing events accumulates; see :func:`_due`).
_REBASE = 32


@nb.njit(inline="always", **OPTS)
def _add_event(sums, q, col, v, u):
    """``sums[q, :, col] += v (1, u, u^2)``: one event's window moments, weight ``v``, position ``u``."""
    sums[q, 0, col] += v
    sums[q, 1, col] += v * u
    sums[q, 2, col] += v * u * u


@nb.njit(inline="always", **OPTS)
def _add_moments(sums, q, u, w, sign):
    """``sums[q, :, d] += sign * w_d (1, u, u^2)`` (the window moments of one event, every column)."""
    for d in range(w.shape[0]):
        _add_event(sums, q, d, sign * w[d], u)


@nb.njit(inline="always", **OPTS)
def _add_projected(sums, q, u, w, weight, sign):
    """``sums[q, :, k] += sign * v_k (1, u, u^2)`` with ``v_k = sum_d weight[k, q, d] w_d``: the
    window moments of one event projected onto the targets, O(K) per nonzero weight (a one-hot
    event costs O(K), not O(K D))."""
    for d in range(w.shape[0]):
        x = w[d]
        if x != 0:
            x *= sign
            for k in range(weight.shape[0]):
                _add_event(sums, q, k, x * weight[k, q, d], u)


@nb.njit(inline="always", **OPTS)
def _due(s, last, q, count):
    """Whether window ``q`` is recomputed from scratch at step ``s``: every ``_REBASE`` steps, or
    every ``count`` steps for a window of ``count`` events, so that the recomputation costs O(1)
    per step amortized however many events the support holds."""
    return abs(s - last[q]) >= max(_REBASE, count)


@nb.njit(inline="always", **OPTS)
def _epan_from_moments(sums, q, v, width, d):
    """``sum_n w_n 0.75 (1 - ((v - u_n) / width)^2)`` from the window moments of ``u_n``."""
    s0, s1, s2 = sums[q, 0, d], sums[q, 1, d], sums[q, 2, d]
    return 0.75 * (s0 - (v * v * s0 - 2.0 * v * s1 + s2) / (width * width))


@nb.njit(parallel=True, **OPTS)
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
        sums = np.zeros((num, 3, sources if store else 1), np.float64)
        psums = np.zeros((num, 3, k_marks), np.float64)
        ptr = np.zeros((num, k_marks), keys.dtype)
        ref = np.zeros(num, np.float64)
        last = np.zeros(num, np.int64)
        vq = np.zeros(num, np.float64)
        wb = weight[b]
        la, a = log_amp[b], amp[b]
        for s in range(steps):
            t = keys[b, s]
            if kind == EXPONENTIAL:
                # per-target traces (O(K) per nonzero weight pushed, O(L K) per step); the
                # per-source traces only where the surrogate needs them (store)
                for q in range(num):
                    g = decay[b, s, q]
                    if s > 0:
                        for d in range(sources):
                            x = hist[b, s - 1, d]
                            if x != 0:
                                for k in range(k_marks):
                                    ptr[q, k] += wb[k, q, d] * x
                    for k in range(k_marks):
                        ptr[q, k] *= g
                    if store:
                        for d in range(sources):
                            if s > 0:
                                f[q, d] += hist[b, s - 1, d]
                            f[q, d] *= g
            elif kind == EPANECHNIKOV:
                # per-target drive state: the window moments of the events projected onto the
                # targets (O(K) per nonzero weight entering or leaving, O(L K) per step); the
                # per-source features only where the surrogate needs them (store)
                for q in range(num):
                    while hi[q] < s and keys[b, hi[q]] < t - low[q]:
                        n = hi[q]
                        _add_projected(psums, q, keys[b, n] - ref[q], hist[b, n], wb, 1.0)
                        if store:
                            _add_moments(sums, q, keys[b, n] - ref[q], hist[b, n], 1.0)
                        hi[q] += 1
                    while lo[q] < hi[q] and keys[b, lo[q]] <= t - high[q]:
                        n = lo[q]
                        _add_projected(psums, q, keys[b, n] - ref[q], hist[b, n], wb, -1.0)
                        if store:
                            _add_moments(sums, q, keys[b, n] - ref[q], hist[b, n], -1.0)
                        lo[q] += 1
                    if lo[q] == hi[q] or _due(s, last, q, hi[q] - lo[q]):
                        ref[q] = t
                        last[q] = s
                        psums[q] = 0.0
                        sums[q] = 0.0
                        for n in range(lo[q], hi[q]):
                            _add_projected(psums, q, keys[b, n] - t, hist[b, n], wb, 1.0)
                            if store:
                                _add_moments(sums, q, keys[b, n] - t, hist[b, n], 1.0)
                    vq[q] = t - centres[q] - ref[q]
                    if store:
                        for d in range(sources):
                            f[q, d] = _epan_from_moments(sums, q, vq[q], width, d)
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
                if kind == EPANECHNIKOV:
                    for q in range(num):
                        u += _epan_from_moments(psums, q, vq[q], width, k)
                elif kind == EXPONENTIAL:
                    for q in range(num):
                        u += ptr[q, k]
                else:
                    for q in range(num):
                        for d in range(sources):
                            u += weight[b, k, q, d] * f[q, d]
                if store:
                    drive[b, s, k] = u
                log_pi[b, s, k] = log_act(u, act, la, a) - log_bound[b]
            step(b, s, k_marks, log_pi, log_y, marks, noise, inv_t, relaxed, hard, cand, hist, ratio, z)


@nb.njit(parallel=True, **OPTS)
def glm_reverse(keys, kind, decay, centres, width, scale, offset, low, high, weight, act,
                log_pi, log_y, cand, drive, grad_marks, grad_logs, inv_t, glr):
    """Adjoint scan; writes the log-rate cotangents ``glr`` (``B x S x K``)."""
    bsz, steps = keys.shape
    k_marks = drive.shape[2]
    num, sources = weight.shape[2], weight.shape[3]
    for b in nb.prange(bsz):
        lo = np.full(num, steps, np.int64)
        hi = np.full(num, steps, np.int64)
        back = np.zeros((num, steps if kind == RAISED_COSINE else 1, sources), keys.dtype)
        # Epanechnikov: the drive cotangents of later steps (K per step) and their window moments
        gq = np.zeros((steps if kind == EPANECHNIKOV else 1, k_marks), keys.dtype)
        sums = np.zeros((num, 3, k_marks), np.float64)
        ref = np.zeros(num, np.float64)
        last = np.full(num, steps, np.int64)
        wb = weight[b]
        r = np.zeros((num, k_marks), keys.dtype)
        gw = np.empty(sources, keys.dtype)
        g = np.empty(k_marks, keys.dtype)
        ys = np.empty(k_marks + 1, keys.dtype)
        for s in range(steps - 1, -1, -1):
            t = keys[b, s]
            for d in range(sources):
                gw[d] = 0.0
            if kind == EXPONENTIAL:
                # per-target traces of the later drive cotangents (O(L K) per step); a candidate's
                # own weights take them through the filter weights (O(L K^2), K its marks)
                if s + 1 < steps:
                    for q in range(num):
                        dq = decay[b, s + 1, q]
                        for k in range(k_marks):
                            r[q, k] *= dq
                if cand[b, s] != 0:
                    for q in range(num):
                        for k in range(k_marks):
                            e = r[q, k]
                            if e != 0.0:
                                for d in range(k_marks):
                                    gw[d] += wb[k, q, d] * e
            elif kind == EPANECHNIKOV:
                for q in range(num):
                    # add the events that enter at the near end before removing those that leave
                    # at the far end: after a long gap one event can do both in this step
                    while lo[q] > s + 1 and keys[b, lo[q] - 1] > t + low[q]:
                        lo[q] -= 1
                        _add_moments(sums, q, keys[b, lo[q]] - ref[q], gq[lo[q]], 1.0)
                    while hi[q] > lo[q] and keys[b, hi[q] - 1] >= t + high[q]:
                        hi[q] -= 1
                        _add_moments(sums, q, keys[b, hi[q]] - ref[q], gq[hi[q]], -1.0)
                    if lo[q] == hi[q] or _due(s, last, q, hi[q] - lo[q]):
                        ref[q] = t
                        last[q] = s
                        sums[q] = 0.0
                        for n in range(lo[q], hi[q]):
                            _add_moments(sums, q, keys[b, n] - t, gq[n], 1.0)
                    if cand[b, s] != 0:  # only a candidate's own weights take this cotangent
                        v = t + centres[q] - ref[q]
                        for k in range(k_marks):
                            e = _epan_from_moments(sums, q, v, width, k)
                            if e != 0.0:
                                for d in range(k_marks):
                                    gw[d] += wb[k, q, d] * e
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
            adjoint(b, s, k_marks, log_pi, log_y, cand, grad_marks, grad_logs, inv_t, gw, glr, ys)
            for k in range(k_marks):
                g[k] = glr[b, s, k] * dlog_act(drive[b, s, k], act)
            if kind == EPANECHNIKOV:
                for k in range(k_marks):
                    gq[s, k] = g[k]
                continue
            if kind == EXPONENTIAL:
                for q in range(num):
                    for k in range(k_marks):
                        r[q, k] += g[k]
                continue
            for q in range(num):
                for d in range(sources):
                    v = 0.0
                    for k in range(k_marks):
                        v += weight[b, k, q, d] * g[k]
                    back[q, s, d] = v


def _np(x: torch.Tensor):
    return x.detach().numpy()


class _GLMKernels:
    """Arguments of the numba GLM kernels (batch-major), from a basis filter; subclasses set the
    basis code and its parameters (:meth:`_basis`)."""

    kind: int

    def __init__(self, filt) -> None:
        intensity, keys, batch = filt.intensity, filt.keys, filt.batch
        bsz, steps = keys.shape
        self.K, self.D, self.L = intensity.num_marks, intensity.num_history_marks, intensity.basis.num_basis
        dtype = keys.dtype
        weight = intensity.weight.detach().to(dtype).expand(batch + intensity.weight.shape[-3:])
        self.weight = weight.reshape(bsz, self.L, self.K, self.D).permute(0, 2, 1, 3).contiguous()
        bias = intensity.bias.detach().to(dtype).expand(batch + (self.K,)).reshape(bsz, 1, self.K)
        if intensity.future is not None:
            with torch.no_grad():
                ahead = intensity._anticausal(keys.reshape(batch + (steps,)))
            self.const = (ahead.reshape(bsz, steps, self.K) + bias).contiguous()
        else:
            self.const = bias.expand(bsz, steps, self.K)
        amplitude = intensity.amplitude.detach().to(dtype).expand(batch).reshape(bsz).contiguous()
        self.amp, self.log_amp = amplitude, torch.log(amplitude)
        self.act = CODES[intensity.activation]
        dummy = keys.new_zeros(1)
        self.decay = keys.new_zeros(1, 1, 1)
        self.width = self.scale = self.offset = 0.0
        self.centres, self.low, self.high = dummy, dummy, dummy
        self._basis(intensity.basis, keys)
        #: the features of every step (the layout of BasisFilter.stored)
        self.store_shape = (self.L, self.D)

    def _basis(self, basis, keys: torch.Tensor) -> None:
        raise NotImplementedError

    def forward(self, keys, cand, hist, noise, log_bound, inv_t, relaxed, hard, out, stored, store):
        glm_forward(_np(keys), _np(cand), _np(hist), _np(noise), _np(log_bound), inv_t, relaxed, hard,
                    _np(self.const), _np(self.weight), _np(self.log_amp), _np(self.amp), self.act, self.kind,
                    _np(self.decay), _np(self.centres), self.width, self.scale, self.offset, _np(self.low),
                    _np(self.high), *[_np(x) for x in out], _np(stored), store)

    def reverse(self, keys, log_pi, log_y, cand, drive, grad_marks, grad_logs, inv_t, glr):
        glm_reverse(_np(keys), self.kind, _np(self.decay), _np(self.centres), self.width, self.scale,
                    self.offset, _np(self.low), _np(self.high), _np(self.weight), self.act, _np(log_pi),
                    _np(log_y), _np(cand), _np(drive), _np(grad_marks), _np(grad_logs), inv_t, _np(glr))


class ExponentialKernels(_GLMKernels):
    kind = EXPONENTIAL

    def _basis(self, basis, keys: torch.Tensor) -> None:
        tau = basis.time_constants.to(keys)
        # the first gap since 0, or 0 for a time line that starts before the window (past events)
        gaps = torch.diff(keys, dim=-1, prepend=keys[:, :1].clamp(max=0))
        self.decay = torch.exp(-gaps.unsqueeze(-1) / tau).contiguous()  # B x S x L


class EpanechnikovKernels(_GLMKernels):
    kind = EPANECHNIKOV

    def _basis(self, basis, keys: torch.Tensor) -> None:
        self.centres = basis.centres.to(keys).contiguous()
        self.width = basis.width
        self.low = (self.centres - basis.width).clamp(min=0).contiguous()
        self.high = (self.centres + basis.width).contiguous()


class RaisedCosineKernels(_GLMKernels):
    kind = RAISED_COSINE

    def _basis(self, basis, keys: torch.Tensor) -> None:
        self.centres = basis.peaks.to(keys).contiguous()
        self.scale, self.offset = basis.scale, basis.offset
        self.low = (torch.exp((self.centres - math.pi) / self.scale) - self.offset).clamp(min=0).contiguous()
        self.high = (torch.exp((self.centres + math.pi) / self.scale) - self.offset).contiguous()
