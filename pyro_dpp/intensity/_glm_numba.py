"""numba twins of the GLM's activations (:func:`pyro_dpp.intensity.glm.log_activate`) and of its
fused compensator (:meth:`pyro_dpp.intensity.glm.GLM.integrate_intervals`), CPU only.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np
import torch

from ..scan._numba_step import OPTS
from ..scan.backend import numba_threads

#: activation codes of the kernels (the names of :data:`pyro_dpp.intensity.glm.ACTIVATIONS`)
SIGMOID, EXP, SOFTPLUS, HARDTANH = 0, 1, 2, 3
CODES = {"sigmoid": SIGMOID, "exp": EXP, "softplus": SOFTPLUS, "hardtanh": HARDTANH}


@nb.njit(inline="always", **OPTS)
def log_act(u, act, log_amp, amp):
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


@nb.njit(inline="always", **OPTS)
def dlog_act(u, act):
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


@nb.njit(inline="always", **OPTS)
def act_and_grad(u, act):
    """``(g(u), g'(u))`` of the activation (amplitude excluded)."""
    if act == SIGMOID:
        if u >= 0:
            g = 1 / (1 + math.exp(-u))
        else:
            e = math.exp(u)
            g = e / (1 + e)
        return g, g * (1 - g)
    if act == EXP:
        g = math.exp(u)
        return g, g
    if act == SOFTPLUS:
        if u > 20:
            return u, 1.0
        return max(u, 0.0) + math.log1p(math.exp(-abs(u))), 1 / (1 + math.exp(-u))
    return 0.5 * (min(max(u, -1.0), 1.0) + 1.0), (0.5 if -1 < u < 1 else 0.0)


@nb.njit(inline="always", **OPTS)
def integrate_interval(coef, h, amp, act, nodes, x_table, w_table, adaptive, tol, gcoef):
    """The Gauss-Legendre integral over ``s in [-h, h]`` of ``sum_k amp g(u_k(s))`` with
    ``u_k(s) = coef[0, k] + coef[1, k] s + coef[2, k] s^2`` (``coef``: ``3 x K``); returns it and
    its derivative in ``amp``, and writes its derivatives in ``coef`` to ``gcoef``. With
    ``adaptive`` (sigmoid only) the fewest nodes (at most ``nodes``) whose Bernstein-ellipse error
    bound, relative to ``amp * length``, is below ``tol``: the integrand is analytic while
    ``|Im u| < pi``, so on the ellipse where ``|Im u| <= pi / 2`` it is bounded by ``amp``."""
    k_marks = coef.shape[1]
    n = nodes
    if adaptive and h > 0:
        c1 = 0.0
        c2 = 0.0
        for k in range(k_marks):
            c1 = max(c1, abs(coef[1, k]) * h)
            c2 = max(c2, 2 * abs(coef[2, k]) * h * h)
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
    acc = 0.0
    ga = 0.0
    gcoef[:] = 0.0
    for i in range(n):
        s = h * x_table[n, i]
        wt = h * w_table[n, i]
        for k in range(k_marks):
            u = coef[0, k] + s * (coef[1, k] + s * coef[2, k])
            g, dg = act_and_grad(u, act)
            acc += wt * amp * g
            ga += wt * g
            gu = wt * amp * dg
            gcoef[0, k] += gu
            gcoef[1, k] += gu * s
            gcoef[2, k] += gu * s * s
    return acc, ga


@nb.njit(parallel=True, **OPTS)
def interval_integrals(coef, half, amp, act, nodes, x_table, w_table, adaptive, tol, total, grad_coef, grad_amp):
    """:func:`integrate_interval` over every interval: ``total[b]`` sums the integrals of row ``b``
    (``coef``: ``rows x P x 3 x K``), ``grad_coef`` and ``grad_amp`` are its derivatives."""
    for b in nb.prange(coef.shape[0]):
        acc = 0.0
        ga = 0.0
        for p in range(coef.shape[1]):
            a, g = integrate_interval(coef[b, p], half[b, p], amp[b], act, nodes, x_table, w_table, adaptive, tol,
                                      grad_coef[b, p])
            acc += a
            ga += g
        total[b] = acc
        grad_amp[b] = ga


_TABLES: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _gauss_tables(nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes and weights for every rule of 1..nodes points (row n: the n-point rule)."""
    if nodes not in _TABLES:
        x = np.zeros((nodes + 1, nodes))
        w = np.zeros((nodes + 1, nodes))
        for n in range(1, nodes + 1):
            x[n, :n], w[n, :n] = np.polynomial.legendre.leggauss(n)
        _TABLES[nodes] = (x, w)
    return _TABLES[nodes]


#: Relative error bound per interval of the adaptive Gauss-Legendre rule (sigmoid intensities).
ADAPTIVE_TOL = 1e-14


class IntervalIntegrals(torch.autograd.Function):
    """``rows`` sums over intervals of the Gauss-Legendre integral of ``sum_k a g(u_k)`` with
    ``u_k`` a quadratic in the offset from each interval's centre (``coef``: ``rows x P x 3 x K``),
    over ``[-half, half]``. Differentiable in ``coef`` and ``amplitude``."""

    @staticmethod
    def forward(ctx, coef, half, amplitude, activation, nodes):  # noqa: D102
        rows = coef.shape[0]
        total = torch.empty(rows, dtype=torch.float64)
        grad_coef = torch.zeros(coef.shape, dtype=torch.float64)
        grad_amp = torch.empty(rows, dtype=torch.float64)
        x, w = _gauss_tables(nodes)
        code = CODES[activation]
        numba_threads()
        interval_integrals(coef.detach().numpy(), half.numpy(), amplitude.detach().numpy(), code, nodes, x, w,
                               code == 0, ADAPTIVE_TOL, total.numpy(), grad_coef.numpy(), grad_amp.numpy())
        ctx.save_for_backward(grad_coef, grad_amp)
        return total

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        grad_coef, grad_amp = ctx.saved_tensors
        return grad_coef * grad[:, None, None, None], None, grad_amp * grad, None, None
