"""numba twin of :mod:`pyro_dpp.scan.step`: the thinning step and the local parts of its adjoint,
inlined into every accelerator's fused loop (CPU; arrays are batch-major numpy views, ``B x S x ...``,
written in place).

Accelerators import ``OPTS`` (the common ``njit`` options) from here too.
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

#: ``njit`` options of every kernel of the package.
OPTS = dict(cache=True, nogil=True, error_model="numpy")


@nb.njit(inline="always", **OPTS)
def step(b, s, k_marks, log_pi, log_y, marks, noise, inv_t, relaxed, hard, cand, hist, ratio_out, z):
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
        hist[b, s, k] += marks[b, s, k] * c  # on top of a fixed (past) event's weights


@nb.njit(inline="always", **OPTS)
def adjoint(b, s, k_marks, log_pi, log_y, cand, grad_marks, grad_logs, inv_t, gw, glr, y):
    """The log-rate cotangent of step ``s`` (written to ``glr[b, s]``, K) from its outputs' cotangents
    and ``gw`` (K), the cotangent of its history weights pulled back from later steps:
    ``glr_i = direct_i + sum_j jac[i, j] gw_j`` with ``direct`` what the step's outputs alone ask and
    ``jac[i, j] = cand / tau * y_j (delta_ij - y_i + qr_i y_K)``, ``qr_i = (r_i / bound) / rest``
    (summed in O(K)). ``y`` (K + 1) is scratch space for the step's weights."""
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
    yw = 0.0
    for j in range(kk):
        yw += y[j] * gw[j]
    for i in range(kk):
        yi = y[i]
        qr = math.exp(log_pi[b, s, i] - rest_log) if rest_log > -math.inf else 0.0
        gi = grad_logs[b, s, i] + grad_marks[b, s, i] * yi
        direct = (gi - yi * total) * inv_t - qr * gz_rest
        glr[b, s, i] = direct + c * (yi * gw[i] + (qr * y_rest - yi) * yw)


@nb.njit(inline="always", **OPTS)
def ogata_mark(rates, total, new_total):
    """Ogata's acceptance at a proposal: with ``total`` the bound it was drawn from and ``new_total``
    (``rates``: K) the summed rates there, the accepted mark, drawn in proportion to the rates
    (one uniform number for both decisions), or -1 for a rejection."""
    v = np.random.random() * total
    if v >= new_total:
        return -1
    mark = 0
    acc = rates[0]
    while mark < rates.shape[0] - 1 and v >= acc:
        mark += 1
        acc += rates[mark]
    return mark
