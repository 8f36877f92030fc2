"""Autograd wrappers of the optional numba scoring kernels (:mod:`pyro_dpp._numba_scan`).

They run on CPU tensors when numba is installed and :data:`ENABLED` is true; everything has a torch
implementation that runs otherwise (any device), and tests compare the two.
"""

from __future__ import annotations

import numpy as np
import torch

try:
    from .. import _numba_scan as _nb
except ImportError:  # pragma: no cover - numba not installed
    _nb = None

#: Use the numba scoring kernels where they apply (set False to force the torch implementations).
ENABLED = True

_ACTIVATION_CODES = {"sigmoid": 0, "exp": 1, "softplus": 2, "hardtanh": 3}


def usable(*tensors: torch.Tensor) -> bool:
    return ENABLED and _nb is not None and all(t.device.type == "cpu" for t in tensors)


def threads() -> None:
    import numba

    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


class EpanechnikovFeatures(torch.autograd.Function):
    """``rows x Q x (order+1) x L x D`` Epanechnikov features (or their quadratic coefficients in
    the offset from each query) of sorted events; differentiable in the weights only."""

    @staticmethod
    def forward(ctx, w, t, q, centres, width, block, order):  # noqa: D102
        rows, q_len = q.shape
        out = torch.empty(rows, q_len, order + 1, centres.numel(), w.shape[-1], dtype=torch.float64)
        threads()
        _nb.epan_features(t.numpy(), w.detach().numpy(), q.numpy(), centres.numpy(), float(width), float(block),
                          order, out.numpy())
        ctx.save_for_backward(t, q, centres)
        ctx.params = (float(width), float(block), order, w.shape)
        return out

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        t, q, centres = ctx.saved_tensors
        width, block, order, shape = ctx.params
        grad_w = torch.empty(shape, dtype=torch.float64)
        threads()
        _nb.epan_features_grad(t.numpy(), q.numpy(), centres.numpy(), width, block, order,
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
        threads()
        _nb.epan_potential(t.numpy(), w.detach().numpy(), q.numpy(), centres.numpy(), float(width), float(block),
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
        threads()
        _nb.epan_potential_grad(t.numpy(), w.detach().numpy(), q.numpy(), centres.numpy(), width, block,
                                weight.detach().numpy(), grad.contiguous().numpy(), grad_w.numpy(),
                                grad_weight.numpy())
        return grad_w, grad_weight, None, None, None, None, None


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
        code = _ACTIVATION_CODES[activation]
        threads()
        _nb.interval_integrals(coef.detach().numpy(), half.numpy(), amplitude.detach().numpy(), code, nodes, x, w,
                               code == 0, ADAPTIVE_TOL, total.numpy(), grad_coef.numpy(), grad_amp.numpy())
        ctx.save_for_backward(grad_coef, grad_amp)
        return total

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        grad_coef, grad_amp = ctx.saved_tensors
        return grad_coef * grad[:, None, None, None], None, grad_amp * grad, None, None
