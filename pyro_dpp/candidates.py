"""Thinning candidates: the bounding Poisson process's draw, its size, and the time line it makes
with the fixed events.

A thinning scan steps through the candidates of a homogeneous Poisson process of rate ``bound``
(:func:`draw_candidates`, sized by :func:`default_max_events`) merged in time order with the fixed
(context and past) events (:func:`merge_timeline`); :func:`bound_tolerance` is the rounding slack
allowed when a sampler checks that the summed intensity stays under a bound. The samplers that scan
this time line are in :mod:`pyro_dpp.thinning`, which re-exports these names.
"""

from __future__ import annotations

import math

import torch

# Relative slack on the bound check: rounding in the summed rates is not a violation.
_BOUND_RTOL = {torch.float16: 1e-2, torch.bfloat16: 1e-2, torch.float32: 1e-5, torch.float64: 1e-10}


def bound_tolerance(dtype: torch.dtype) -> float:
    """The relative slack of a bound check at ``dtype``: a summed intensity up to ``1 + tolerance``
    times the bound passes."""
    return _BOUND_RTOL.get(dtype, 1e-5)


def default_max_events(mean: torch.Tensor, std: torch.Tensor | None = None) -> int:
    """A count that a Poisson(mean) (or a count with the given std) exceeds with negligible probability
    (about 10 standard deviations above the mean)."""
    mean = mean.detach()
    std = mean.sqrt() if std is None else std.detach()
    return int(math.ceil(float((mean + 10 * std).max()))) + 10


def draw_candidates(
    bound: torch.Tensor, duration: torch.Tensor, max_events: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidates of a homogeneous Poisson process of rate ``bound`` on ``[0, duration]``.

    :returns: sorted ``times`` (batch x N, padding holds the duration) and their ``mask``.
    :raises ValueError: if a sequence draws more than ``max_events`` candidates.
    """
    with torch.no_grad():
        counts = torch.poisson(bound * duration)
        most = int(counts.max()) if counts.numel() else 0
        if most > max_events:
            raise ValueError(
                f"a sequence drew {most} thinning candidates but max_events={max_events}; "
                "pass a larger max_events (or a tighter bound)"
            )
        width = max(most, 1)
        index = torch.arange(width, device=duration.device)
        mask = index < counts.unsqueeze(-1)
        # n sorted uniforms without a sort: S_i / S_(n+1), i = 1..n, with S the partial sums of n + 1
        # standard exponential spacings -log(1 - U) (the uniform order statistics; U in [0, 1), so the
        # spacings are finite, and cheaper than exponential_); in at least float32, so that the partial
        # sums of a low-precision dtype keep the spacings
        work = torch.promote_types(duration.dtype, torch.float32)
        spacings = torch.rand(duration.shape + (width + 1,), dtype=work, device=duration.device).neg_().log1p_().neg_()
        sums = spacings.cumsum(-1)
        u = sums[..., :width] / sums.gather(-1, counts.long().unsqueeze(-1))
        u = torch.where(mask, u, torch.ones_like(u)).to(duration.dtype)
        return (u * duration.unsqueeze(-1)).detach(), mask


def merge_timeline(
    cand_times: torch.Tensor, cand_mask: torch.Tensor, context: torch.Tensor | None, num_context_marks: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge candidates with context events in time order.

    :returns: ``times`` (batch x S), ``is_candidate`` and ``is_context`` (batch x S), the context
        weights on the time line (batch x S x C) and ``candidate_step`` (batch x N): the step of
        each candidate.
    """
    batch = cand_times.shape[:-1]
    n = cand_times.shape[-1]
    if context is None or context.shape[-2] == 0:
        steps = torch.arange(n, device=cand_times.device).expand(batch + (n,))
        zeros = cand_times.new_zeros(batch + (n, num_context_marks))
        return cand_times, cand_mask, torch.zeros_like(cand_mask), zeros, steps
    context = context.expand(batch + context.shape[-2:])
    ctx_weights = context[..., 1 : 1 + num_context_marks]
    ctx_mask = context[..., 1:].sum(-1) > 0.5
    inf = torch.full_like(cand_times[..., :1], torch.inf)
    cand_keys = torch.where(cand_mask, cand_times, inf).contiguous()
    ctx_keys = torch.where(ctx_mask, context[..., 0], inf).contiguous()
    m = ctx_keys.shape[-1]
    sorted_ctx = bool((ctx_keys[..., 1:] >= ctx_keys[..., :-1]).all())
    if sorted_ctx and bool((cand_keys[..., 1:] >= cand_keys[..., :-1]).all()):
        # both sorted: merge by counting (the permutation of a stable argsort of the concatenation,
        # candidates first among equal times)
        pos_cand = torch.searchsorted(ctx_keys, cand_keys, right=False) + torch.arange(n, device=cand_times.device)
        pos_ctx = torch.searchsorted(cand_keys, ctx_keys, right=True) + torch.arange(m, device=cand_times.device)
        order = torch.empty(batch + (n + m,), dtype=torch.long, device=cand_times.device)
        order.scatter_(-1, pos_cand, torch.arange(n, device=cand_times.device).expand(batch + (n,)))
        order.scatter_(-1, pos_ctx, torch.arange(n, n + m, device=cand_times.device).expand(batch + (m,)))
    else:
        order = torch.cat([cand_keys, ctx_keys], -1).argsort(dim=-1, stable=True)
        pos_cand = None
    times = torch.cat([cand_times, context[..., 0]], -1).gather(-1, order)
    is_candidate = torch.cat([cand_mask, torch.zeros_like(ctx_mask)], -1).gather(-1, order)
    is_context = torch.cat([torch.zeros_like(cand_mask), ctx_mask], -1).gather(-1, order)
    weights = torch.cat([cand_times.new_zeros(batch + (n, num_context_marks)), ctx_weights], -2)
    weights = weights.gather(-2, order.unsqueeze(-1).expand(order.shape + (num_context_marks,)))
    candidate_step = order.argsort(-1)[..., :n] if pos_cand is None else pos_cand
    return times, is_candidate, is_context, weights, candidate_step
