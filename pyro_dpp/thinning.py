"""Samplers: candidates from a homogeneous Poisson process and the sequential scan over them.

Three flavours share one scan (DESIGN §2, §5):

- exact thinning (``temperature == 0``): hard marks ``m_n ~ Categorical(pi_n)``, accepted candidates
  kept (:func:`sample_exact`);
- the differentiable point process (``temperature > 0``): every candidate kept with a Concrete soft
  mark computed from the soft history (:func:`sample_relaxed`), optionally straight-through;
- Ogata-style exact sampling with the intensity's local bound when no constant bound is given
  (:func:`sample_ogata`).

Context events (marks that enter the history but are not modelled) and past events (modelled marks
before the window, :mod:`pyro_dpp.past`) are merged into the time line as *fixed* steps with their
weights over all ``K + C`` history marks, so a step is a candidate, a fixed event or padding. All
sequences of the batch advance in lockstep. The candidates and the time line they make with the
fixed events come from :mod:`pyro_dpp.candidates`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# re-exported: pyro_dpp.thinning.<name> stays the import path of the candidate helpers
from .candidates import bound_tolerance, default_max_events, draw_candidates, merge_timeline
from .events import pad_realization
from .intensity.base import Intensity
from .past import fixed_events, with_negative_fixed
from .relaxed import sampled
from .scan import engine
from .scan.backend import get_backend
from .scan.generic import generic_scan
from .scan.ogata import accelerated_ogata
from .scan.reuse import remember
from .scan.step import log_probs, step_marks


def _check_bound(worst: torch.Tensor, bound: torch.Tensor, at: torch.Tensor) -> None:
    ratio = float(worst.max()) if worst.numel() else 0.0
    if ratio > 1 + bound_tolerance(worst.dtype):
        flat = int(worst.argmax())
        raise ValueError(
            f"the summed intensity reached {ratio:.6g} times the bound (at t = {float(at.flatten()[flat]):.6g}); "
            "the bound must dominate the intensity everywhere: pass a larger bound"
        )


def _check_window(intensity: Intensity, times: torch.Tensor, history: torch.Tensor) -> None:
    """The reference scan's finite-support window check, after the fact: with an explicit window of
    ``W`` events, an incoming event (nonzero weights) must not push out one that is still inside
    the support (the reference scan would have to drop it)."""
    basis = getattr(intensity, "basis", None)
    if basis is None or not math.isfinite(basis.support):
        return
    window = getattr(intensity, "window", None) or getattr(basis, "window", None)
    steps = times.shape[-1]
    if window is None or window >= steps:
        return
    window = max(1, window)
    incoming = (history != 0).any(-1)
    # the window holds the last W incoming events: an incoming event at t evicts one inside the
    # support iff at least W earlier incoming events lie in (t - support, t)
    t = torch.cummax(times.detach(), -1).values.contiguous()  # padding rows last, never earlier
    count = torch.cumsum(incoming, -1)  # incoming events up to and including each step
    lo = torch.searchsorted(t, (t - basis.support).contiguous(), right=True)
    before = count - incoming.long()
    earlier = before - torch.where(lo > 0, count.gather(-1, (lo - 1).clamp(min=0)), torch.zeros_like(lo))
    clash = incoming & (earlier >= window)
    if clash.any():
        raise ValueError(
            f"the history window of {window} events is too short for this basis "
            f"(support {basis.support}); raise the window= of the GLM or basis, or leave it None"
        )


def _fast_scan(intensity: Intensity, times: torch.Tensor, is_cand: torch.Tensor, is_ctx: torch.Tensor,
               ctx_w: torch.Tensor, gumbel: torch.Tensor, bound: torch.Tensor, context: torch.Tensor | None,
               temperature: float, straight_through: bool, log_rates: list | None = None
               ) -> tuple[torch.Tensor, ...] | None:
    """The scan's dispatcher (see :func:`_scan`): None under backend ``"reference"`` (the caller runs
    the eager loop); else the engine's outputs where it applies (a scan filter, and no gradient with
    respect to the context or the bound), the generic checkpointed scan's otherwise (which appends
    its log-rates on the time line to ``log_rates`` when given)."""
    if get_backend() == "reference":
        return None
    args = (intensity, times, is_cand, is_ctx, ctx_w, gumbel, bound, temperature, straight_through)
    if not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (context, bound))):
        out = engine.scan(*args)
        if out is not None:
            return out
    return generic_scan(*args, log_rates=log_rates)


def _scan(
    intensity: Intensity,
    bound: torch.Tensor,
    duration: torch.Tensor,
    context: torch.Tensor | None,
    max_events: int,
    temperature: float,
    straight_through: bool,
    past: torch.Tensor | None = None,
    log_rates: list | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The thinning scan. Returns per-candidate ``marks`` (batch x N x (K+1)): one-hot if
    ``temperature == 0`` else soft (straight-through: hard forward, soft backward), their
    ``log_weights``, the candidate ``times`` and ``mask``.

    Which scan runs (the one decision, :func:`_fast_scan`): under backend ``"reference"`` the eager
    loop below, the oracle. Under every other backend the engine :func:`pyro_dpp.scan.engine.scan`
    (stock filters) where it applies, else the generic checkpointed scan
    :func:`pyro_dpp.scan.generic.generic_scan`: when the intensity has no scan filter, or when a
    gradient with respect to the context or the bound is asked for (the engine's adjoint carries
    gradients to the intensity's parameters only). All consume the same random numbers, so for the
    same seed they return the same draw up to float rounding."""
    k = intensity.num_marks
    cand_times, cand_mask = draw_candidates(bound, duration, max_events)
    # fixed steps (context and past events) carry weights over all K + C history marks
    fixed = fixed_events(past, context, k, intensity.num_context_marks)
    times, is_cand, is_ctx, ctx_w, cand_step = merge_timeline(
        cand_times, cand_mask, fixed, intensity.num_history_marks
    )
    batch, steps = times.shape[:-1], times.shape[-1]
    log_bound = torch.log(bound).unsqueeze(-1)
    gumbel = -torch.log(-torch.log(torch.rand(batch + (steps, k + 1), dtype=times.dtype, device=times.device)
                                   .clamp(min=torch.finfo(times.dtype).tiny)))
    out = _fast_scan(intensity, times, is_cand, is_ctx, ctx_w, gumbel, bound, context, temperature, straight_through,
                     log_rates)
    if out is not None:
        marks, logs, history, total = out
        ratio = torch.where(is_cand, total / bound.detach().unsqueeze(-1), torch.zeros_like(total))
        worst, at = ratio.max(-1) if steps else (ratio.new_zeros(batch), None)
        _check_bound(worst, bound, times.detach().gather(-1, at.unsqueeze(-1)).squeeze(-1))
        _check_window(intensity, times, history)
        if log_rates:  # the generic scan's log-rates, at the candidates (see pyro_dpp.scan.reuse)
            log_rates[0] = log_rates[0].gather(-2, cand_step.unsqueeze(-1).expand(cand_step.shape + (k,)))
        index = cand_step.unsqueeze(-1).expand(cand_step.shape + (k + 1,))
        return marks.gather(-2, index), logs.gather(-2, index), cand_times, cand_mask
    state = intensity.initial_state(batch, times, steps)
    worst = times.new_zeros(batch)
    worst_at = times.new_zeros(batch)
    marks, logs = [], []
    cand_f = is_cand.to(times.dtype).unsqueeze(-1)
    ctx_f = is_ctx.to(times.dtype).unsqueeze(-1)
    inv_t = 1.0 / temperature if temperature > 0 else 1.0
    for s in range(steps):
        t = times[..., s]
        log_pi, ratio = log_probs(intensity.log_rates(state, t), log_bound)  # batch x (K+1), batch
        ratio = torch.where(is_cand[..., s], ratio, torch.zeros_like(ratio)).detach()
        worst_at = torch.where(ratio > worst, t, worst_at)
        worst = torch.maximum(worst, ratio)
        y, log_y = step_marks(log_pi, gumbel[..., s, :] * inv_t, inv_t, temperature > 0, straight_through)
        event = y[..., :k] * cand_f[..., s, :]
        weights = ctx_w[..., s, :] * ctx_f[..., s, :]
        weights = torch.cat([event + weights[..., :k], weights[..., k:]], -1)
        state = intensity.update(state, t, weights)
        marks.append(y)
        logs.append(log_y)
    _check_bound(worst, bound, worst_at)
    index = cand_step.unsqueeze(-1).expand(cand_step.shape + (k + 1,))
    marks = torch.stack(marks, -2).gather(-2, index)
    logs = torch.stack(logs, -2).gather(-2, index)
    return marks, logs, cand_times, cand_mask


def _fit_rows(x: torch.Tensor, rows: int, fill: float = 0.0) -> torch.Tensor:
    """Pad (or cut padding off) the event dimension (-2) of ``x`` to ``rows``."""
    n = x.shape[-2]
    if n >= rows:
        return x[..., :rows, :]
    pad = x.new_full(x.shape[:-2] + (rows - n, x.shape[-1]), fill)
    return torch.cat([x, pad], -2)


def _fold_before(intensity: Intensity, state: tuple, fixed: torch.Tensor) -> tuple:
    """Fold the events of ``fixed`` (:func:`~pyro_dpp.past.fixed_events`) before the window (times
    ``< 0``) into ``state`` in time order, the batch in lockstep (rows without such an event fold in
    zero weights, which change no history sum)."""
    early = (fixed[..., 1:].sum(-1) > 0.5) & (fixed[..., 0] < 0)
    keys = torch.where(early, fixed[..., 0], torch.full_like(fixed[..., 0], torch.inf))
    order = keys.argsort(dim=-1, stable=True)
    keys = keys.gather(-1, order)
    weights = fixed[..., 1:-1].gather(-2, order.unsqueeze(-1).expand(order.shape + (fixed.shape[-1] - 2,)))
    rows = int(early.sum(-1).max())
    # a sequence with fewer early events repeats its last time (or the first of another) with zero weights
    first = keys[..., :1].clone()
    first = torch.where(torch.isfinite(first), first, keys[..., :rows].min().expand_as(first))
    for r in range(rows):
        real = torch.isfinite(keys[..., r])
        t = torch.where(real, keys[..., r], first[..., 0])
        first = t.unsqueeze(-1)
        w = weights[..., r, :] * real.unsqueeze(-1).to(weights.dtype)
        state = intensity.update(state, t, w)
    return state


def sample_relaxed(
    intensity: Intensity,
    bound: torch.Tensor,
    duration: torch.Tensor,
    context: torch.Tensor | None,
    max_events: int,
    temperature: float,
    straight_through: bool = False,
    past: torch.Tensor | None = None,
) -> torch.Tensor:
    """A draw of the differentiable point process: every candidate with its soft mark.

    :returns: a :class:`~pyro_dpp.events.RelaxedRealization` ``batch x max_events x (K+2)``: the
        realization tensor carrying the exact log-weights of its candidates (see :mod:`pyro_dpp.events`).
    """
    log_rates: list = []
    marks, logs, times, mask = _scan(intensity, bound, duration, context, max_events, temperature, straight_through,
                                     past, log_rates)
    m = mask.unsqueeze(-1).to(marks.dtype)
    marks = _fit_rows(marks * m, max_events)
    logs = _fit_rows(torch.where(mask.unsqueeze(-1), logs, torch.zeros_like(logs)), max_events)
    times = _fit_rows(times.unsqueeze(-1), max_events).squeeze(-1)
    value = sampled(pad_realization(times, marks[..., :-1], marks[..., -1], duration), logs)
    if log_rates:  # the DPP density of this very value reuses them
        remember(value, intensity, context, _fit_rows(log_rates[0], max_events))
    return value


def _compact(times: torch.Tensor, marks: torch.Tensor, accepted: torch.Tensor, duration: torch.Tensor,
             max_events: int) -> torch.Tensor:
    """Move the accepted rows to the front, keep their order, pad to ``max_events`` rows."""
    counts = accepted.sum(-1)
    most = int(counts.max()) if counts.numel() else 0
    if most > max_events:
        raise ValueError(
            f"a sequence has {most} events but max_events={max_events}; pass a larger max_events"
        )
    # each accepted row goes to its place among the accepted ones, every other row to a spare last row
    place = torch.where(accepted, accepted.cumsum(-1) - 1, max_events)
    rows = torch.cat([times.unsqueeze(-1), marks.to(times.dtype), times.new_zeros(times.shape + (1,))], -1)
    out = rows.new_zeros(rows.shape[:-2] + (max_events + 1, rows.shape[-1]))
    out = out.scatter_(-2, place.unsqueeze(-1).expand(rows.shape), rows)[..., :max_events, :]
    real = torch.arange(max_events, device=times.device) < counts.unsqueeze(-1)
    out[..., 0] = torch.where(real, out[..., 0], duration.unsqueeze(-1))
    return out


@torch.no_grad()
def sample_exact(
    intensity: Intensity, bound: torch.Tensor, duration: torch.Tensor, context: torch.Tensor | None, max_events: int,
    past: torch.Tensor | None = None,
) -> torch.Tensor:
    """Exact thinning with a constant ``bound``: a realization tensor of accepted events.

    Candidates are capped by ``max_events`` too, since every accepted event is a candidate and the
    cap is sized from ``bound * duration``."""
    k = intensity.num_marks
    cap = max(max_events, default_max_events(bound * duration))
    marks, _, times, mask = _scan(intensity, bound, duration, context, cap, 0.0, False, past)
    accepted = mask & (marks[..., :k].sum(-1) > 0.5)
    return _compact(times, marks[..., :k], accepted, duration, max_events)


@torch.no_grad()
def sample_ogata(
    intensity: Intensity, duration: torch.Tensor, context: torch.Tensor | None, max_events: int,
    past: torch.Tensor | None = None,
) -> torch.Tensor:
    """Exact sampling with the intensity's local bound (Ogata's modified thinning), lockstep over
    the batch: propose the next time from the current local bound, stop at the bound's horizon or
    the next context event, accept with probability ``sum(lambda) / bound``.

    Where the intensity's filter has an Ogata accelerator (:mod:`pyro_dpp.scan.ogata`; for
    :class:`~pyro_dpp.intensity.ExpHawkes` on CPU, backend ``"auto"`` or ``"numba"``) the same
    algorithm runs per sequence in numba, seeded from torch's generator (so ``torch.manual_seed``
    makes it reproducible; the random stream differs from the reference loop, the distribution
    does not). Past events, and context events before the window, are folded into the initial
    state first (by the intensity's ``update``, in time order); the accelerator then does not run."""
    k, c = intensity.num_marks, intensity.num_context_marks
    fixed = fixed_events(past, context, k, c)
    early = with_negative_fixed(fixed)
    if not early:
        fast = accelerated_ogata(intensity, duration, context, max_events)
        if fast is not None:
            return fast
    like = intensity.like()
    batch = duration.shape
    if context is None or context.shape[-2] == 0:
        context = duration.new_zeros(batch + (1, c + 2))
        context[..., 0] = duration.unsqueeze(-1)
    context = context.expand(batch + context.shape[-2:])
    ctx_mask = context[..., 1:].sum(-1) > 0.5
    ctx_times = torch.where(ctx_mask, context[..., 0], torch.full_like(context[..., 0], torch.inf))
    num_ctx = context.shape[-2]
    state = intensity.initial_state(batch, like.new_zeros(()).to(duration), max_events + num_ctx + 1 +
                                    (fixed.shape[-2] if early else 0))
    if early:
        state = _fold_before(intensity, state, fixed.expand(batch + fixed.shape[-2:]))
        late = ctx_mask & (ctx_times >= 0)
        ctx_times = torch.where(late, ctx_times, torch.full_like(ctx_times, torch.inf))
        order = ctx_times.argsort(dim=-1, stable=True)  # the context events inside the window first
        ctx_times = ctx_times.gather(-1, order)
        context = context.gather(-2, order.unsqueeze(-1).expand(order.shape + context.shape[-1:]))
    now = duration.new_zeros(batch)
    next_ctx = torch.zeros(batch, dtype=torch.long, device=duration.device)
    out_t = duration.new_zeros(batch + (max_events + 1,))
    out_w = duration.new_zeros(batch + (max_events + 1, k))
    count = torch.zeros(batch, dtype=torch.long, device=duration.device)
    tol = 1 + bound_tolerance(duration.dtype)
    while True:
        ctx_t = ctx_times.gather(-1, next_ctx.clamp(max=num_ctx - 1).unsqueeze(-1)).squeeze(-1)
        ctx_t = torch.where(next_ctx < num_ctx, ctx_t, torch.full_like(ctx_t, torch.inf))
        active = now < duration
        if not bool(active.any()):
            break
        bound, horizon = intensity.local_bound(state, now)
        proposal = now + torch.empty_like(now).exponential_() / bound
        limit = torch.minimum(torch.minimum(now + horizon, ctx_t), duration)
        hit_ctx = active & (proposal > limit) & (ctx_t <= limit)
        propose = active & ~(proposal > limit)
        t = torch.where(propose, proposal, limit)
        rates = intensity.rates(state, t)
        total = rates.sum(-1)
        if bool((propose & (total > bound * tol)).any()):
            raise ValueError(
                "the intensity exceeded its own local bound during Ogata sampling; the intensity's "
                "local_bound() is wrong for these parameters (pass a constant bound= instead)"
            )
        u = torch.rand_like(total) * bound
        cumulative = rates.cumsum(-1)
        mark = (u.unsqueeze(-1) >= cumulative).sum(-1)
        accept = propose & (u < total)
        one_hot = F.one_hot(mark.clamp(max=k - 1), k).to(duration.dtype)
        event_w = one_hot * accept.unsqueeze(-1).to(duration.dtype)
        ctx_idx = next_ctx.clamp(max=num_ctx - 1)
        ctx_w = context[..., 1 : 1 + c].gather(-2, ctx_idx[..., None, None].expand(batch + (1, c))).squeeze(-2)
        ctx_w = ctx_w * hit_ctx.unsqueeze(-1).to(duration.dtype)
        moved = accept | hit_ctx
        if bool(moved.any()):
            new_state = intensity.update(state, t, torch.cat([event_w, ctx_w], -1))
            state = tuple(
                torch.where(moved.reshape(moved.shape + (1,) * (new.dim() - moved.dim())), new, old)
                for new, old in zip(new_state, state)
            )
        slot = count.clamp(max=max_events).unsqueeze(-1)
        out_t.scatter_(-1, slot, torch.where(accept, t, out_t.gather(-1, slot).squeeze(-1)).unsqueeze(-1))
        prev = out_w.gather(-2, slot.unsqueeze(-1).expand(batch + (1, k))).squeeze(-2)
        out_w.scatter_(-2, slot.unsqueeze(-1).expand(batch + (1, k)),
                       torch.where(accept.unsqueeze(-1), one_hot, prev).unsqueeze(-2))
        count = count + accept.long()
        if bool((count > max_events).any()):
            raise ValueError(
                f"a sequence exceeded max_events={max_events} events; pass a larger max_events"
            )
        next_ctx = next_ctx + hit_ctx.long()
        now = torch.where(active, t, now)
    mask = torch.arange(max_events + 1, device=duration.device) < count.unsqueeze(-1)
    out_w = out_w * mask.unsqueeze(-1).to(out_w.dtype)
    return pad_realization(out_t[..., :max_events], out_w[..., :max_events, :],
                           out_t.new_zeros(batch + (max_events,)), duration)
