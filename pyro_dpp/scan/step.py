"""The thinning step and the local parts of its adjoint, written once (DESIGN §2, §5).

At a step with log-rates ``log r`` (``K`` marks) and a constant bound ``lambda_bar``, the mark
probabilities are ``pi = (r_1 / lambda_bar, ..., r_K / lambda_bar, 1 - sum_k r_k / lambda_bar)``; the
mark is the argmax of ``(log pi + g) / tau`` (exact thinning, ``g`` Gumbel noise) or its softmax (the
differentiable point process), optionally straight-through (hard forward, soft backward). The
reference loop, the history-free path and the torch engine all call these functions; the numba
twin is :mod:`pyro_dpp.scan._numba_step`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..intensity.base import safe_log


def log_probs(log_rates: torch.Tensor, log_bound: torch.Tensor, dim: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """``log pi`` (``K + 1`` along ``dim``: the marks, then "no event") and the summed rates over the
    bound (``dim`` removed), from ``log_rates`` (``K`` along ``dim``) and ``log_bound`` (broadcast)."""
    scaled = log_rates - log_bound
    ratio = scaled.exp().sum(dim, keepdim=True)
    rest = safe_log(torch.clamp(1 - ratio, min=0))
    return torch.cat([scaled, rest], dim), ratio.squeeze(dim)


def _hard(z: torch.Tensor, dim: int) -> torch.Tensor:
    return (z >= z.amax(dim, keepdim=True)).to(z.dtype)


def step_marks(log_pi: torch.Tensor, noise: torch.Tensor, inv_t: float, relaxed: bool, straight_through: bool,
               dim: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """``(marks, log_weights)`` of a step (or of many at once) from ``log pi`` and the Gumbel noise
    already divided by the temperature (``noise = g / tau``; ``inv_t = 1 / tau``, 1 for exact draws).

    Exact (``relaxed=False``): the one-hot argmax, and ``log pi`` as the log-weights. Relaxed: the
    Concrete weights ``softmax(log pi / tau + noise)`` and their logs; straight-through returns the
    one-hot argmax forward with the soft weights' gradient."""
    z = noise + log_pi * inv_t
    if not relaxed:
        return _hard(z, dim), log_pi
    log_y = torch.log_softmax(z, dim)
    y = log_y.exp()
    if straight_through:
        y = _hard(z, dim) + y - y.detach()
    return y, log_y


def adjoint_parts(log_pi: torch.Tensor, drive: torch.Tensor, log_rates: Callable[[torch.Tensor], torch.Tensor],
                  grad_marks: torch.Tensor | None, grad_logs: torch.Tensor | None, cand: torch.Tensor, inv_t: float,
                  noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Local pieces of the adjoint of relaxed steps (batch-major, ``B x S x ...``): ``direct``
    (``B x S x K``, what the outputs of a step alone ask of its log-rates), ``jac`` (``B x S x K x K``:
    how the cotangent of the step's history weights adds to it) and ``dl`` (d log-rate / d drive).

    With ``y`` the step's weights, ``q_i = (r_i / lambda_bar) / (1 - sum_k r_k / lambda_bar)`` and
    ``c`` the candidate flag: ``jac[i, j] = c / tau * y_j (delta_ij - y_i + q_i y_K)``."""
    k = drive.shape[-1]
    with torch.enable_grad():
        u = drive.detach().requires_grad_()
        dl = torch.autograd.grad(log_rates(u).sum(), u)[0]  # elementwise d log-rate / d drive
    y = torch.log_softmax(noise + log_pi * inv_t, -1).exp()
    scaled = log_pi[..., :k].exp()  # rates / bound
    rest = 1 - scaled.sum(-1, keepdim=True)
    qr = torch.where(rest > 0, scaled / torch.where(rest > 0, rest, torch.ones_like(rest)), torch.zeros_like(rest))
    gly = torch.zeros_like(y) if grad_logs is None else grad_logs.clone()
    if grad_marks is not None:
        gly += grad_marks * y
    gz = (gly - y * gly.sum(-1, keepdim=True)) * inv_t
    direct = gz[..., :k] - qr * gz[..., k:]  # d log(rest) / d log r = -qr
    yk = y[..., :k]
    jac = (qr * y[..., k:] - yk).unsqueeze(-1) * yk.unsqueeze(-2)
    jac.diagonal(dim1=-2, dim2=-1).add_(yk)
    jac.mul_((cand * inv_t)[..., None, None])
    return direct, jac, dl
