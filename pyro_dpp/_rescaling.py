"""Time rescaling for :mod:`pyro_dpp.testing`: per-mark compensators by quadrature of ``forward``,
rescaled intervals, and the Kolmogorov-Smirnov p-value against Exp(1)."""

from __future__ import annotations

import math

import numpy as np
import torch

from .events import event_mask
from .intensity.base import Intensity
from .likelihood import history, trim_padding


def cumulative(intensity: Intensity, times: torch.Tensor, weights: torch.Tensor, query: torch.Tensor,
               duration: float, nodes: int = 8, add_query: bool = True) -> torch.Tensor:
    """``batch x Q x K`` compensators :math:`\\Lambda_k(q) = \\int_0^q \\lambda_k(t \\mid H_t)\\,dt` at
    ``query`` (``batch x Q``, in ``[0, duration]``), by Gauss-Legendre quadrature of ``forward`` with
    ``nodes`` nodes between consecutive history events, breakpoints and queries (``add_query=False``:
    the queries are among the history times, 0 and the duration already)."""
    batch = torch.broadcast_shapes(times.shape[:-1], weights.shape[:-2], query.shape[:-1], intensity.batch_shape)
    times = times.expand(batch + times.shape[-1:])
    weights = weights.expand(batch + weights.shape[-2:])
    query = query.expand(batch + query.shape[-1:])
    pieces = [times.new_zeros(batch + (1,)), times, times.new_full(batch + (1,), duration)]
    if add_query:
        pieces.append(query)
    extra = intensity.breakpoints(times, weights)
    if extra is not None:
        pieces.append(extra.to(times).expand(batch + extra.shape[-1:]))
    points = torch.cat(pieces, -1).clamp(0, duration).sort(-1).values
    x, w = (torch.as_tensor(a, dtype=times.dtype, device=times.device) for a in np.polynomial.legendre.leggauss(nodes))
    half = (points[..., 1:] - points[..., :-1]) / 2
    at = ((points[..., 1:] + points[..., :-1]) / 2).unsqueeze(-1) + half.unsqueeze(-1) * x  # batch x P x nodes
    rates = intensity(times, weights, at.flatten(-2)).reshape(at.shape + (-1,))
    parts = (rates * (half.unsqueeze(-1) * w).unsqueeze(-1)).sum(-2)  # batch x P x K
    total = torch.cat([parts.new_zeros(parts.shape[:-2] + (1, parts.shape[-1])), parts.cumsum(-2)], -2)
    index = torch.searchsorted(points.contiguous(), query.contiguous())
    return total.gather(-2, index.unsqueeze(-1).expand(index.shape + (total.shape[-1],)))


def rescaled_gaps(intensity: Intensity, value: torch.Tensor, duration: float, context: torch.Tensor | None = None,
                  seed: int = 0, nodes: int = 8, chunk: int = 16) -> np.ndarray:
    """Time-rescaled intervals of exact events: iid Exp(1) if ``value`` was drawn from ``intensity``.

    For each sequence and mark ``k``, the compensator :math:`\\Lambda_k` maps the mark's events to a
    unit-rate Poisson process on :math:`[0, \\Lambda_k(T)]` (time-rescaling theorem). The intervals
    are the gaps between consecutive rescaled events (the first from 0), plus the gap that the
    window cuts off: it starts at the last rescaled event and is completed past :math:`\\Lambda_k(T)`
    by an Exp(1) draw (seeded), as the rescaled process would continue (Brown et al., 2002), so that
    dropping it does not bias the sample towards short gaps.

    **References**

    [1] E. N. Brown, R. Barbieri, V. Ventura, R. E. Kass, L. M. Frank, "The time-rescaling theorem and
        its application to neural spike train data analysis", Neural Computation, 2002.

    :param value: exact realization tensor ``(S,) + batch x events x (K + 2)`` (``batch`` broadcasting
        with the intensity's batch shape); chunked along its first dimension.
    :param context: context realization, broadcastable to the batch of ``value``.
    """
    k = intensity.num_marks
    rng = np.random.default_rng(seed)
    if value.dim() == 2:
        value = value.unsqueeze(0)
    if context is not None:
        context = context.expand(value.shape[:-2] + context.shape[-2:])
    gaps: list[np.ndarray] = []
    with torch.no_grad():
        for lo in range(0, value.shape[0], chunk):
            v = trim_padding(value[lo : lo + chunk])
            ctx = None if context is None else trim_padding(context[lo : lo + chunk])
            times, weights = history(v, k, ctx, intensity.num_context_marks)
            query = torch.cat([v[..., 0], torch.full_like(v[..., :1, 0], duration)], -1)
            # the queries are history times (and the duration): no extra breakpoints
            lam = cumulative(intensity, times, weights, query, duration, nodes, add_query=False)
            lam = lam.cpu().double().numpy()
            lam = lam.reshape((-1,) + lam.shape[-2:])
            real = event_mask(v).reshape(-1, v.shape[-2]).cpu().numpy()
            marks = v[..., 1 : 1 + k].argmax(-1).reshape(-1, v.shape[-2]).cpu().numpy()
            for s in range(lam.shape[0]):
                for j in range(k):
                    r = lam[s, :-1, j][real[s] & (marks[s] == j)]
                    starts = np.concatenate([[0.0], r])
                    end = lam[s, -1, j]
                    if starts[-1] < end:
                        r = np.concatenate([r, [end + rng.exponential()]])
                    else:
                        starts = starts[:-1]
                    gaps.append(r - starts)
    return np.concatenate(gaps) if gaps else np.zeros(0)


def ks_pvalue(intervals: np.ndarray) -> float:
    """p-value of the one-sample Kolmogorov-Smirnov test of ``intervals`` against Exp(1): the
    asymptotic Kolmogorov distribution with Stephens' small-sample correction of the statistic
    (accurate to a few percent for 20 or more samples).

    **References**

    [1] M. A. Stephens, "Use of the Kolmogorov-Smirnov, Cramer-Von Mises and related statistics
        without extensive tables", JRSS B, 1970.
    """
    u = np.sort(-np.expm1(-np.asarray(intervals, dtype=np.float64)))
    n = len(u)
    if n == 0:
        return 1.0
    i = np.arange(1, n + 1)
    stat = max(float(np.max(i / n - u)), float(np.max(u - (i - 1) / n)))
    lam = (math.sqrt(n) + 0.12 + 0.11 / math.sqrt(n)) * stat
    if lam < 0.2:
        return 1.0
    j = np.arange(1, 101)
    return float(np.clip(2 * np.sum((-1.0) ** (j - 1) * np.exp(-2 * j**2 * lam**2)), 0.0, 1.0))
