"""Scoring any intensity by a checkpointed scan over the events (DESIGN §5).

A parallel evaluation (:meth:`~pyro_dpp.intensity.base.Intensity.forward`) that a user writes is
often pairwise: every query against every history event, O(events^2) time and memory. The scan
interface gives the same values in linear time: fold the history (the value's events merged with
the context events, in time order) into the state one event at a time, and read off

- the log-intensities at each event from the state *before* it (before every event at the same
  time: the parallel contract counts events strictly before a query);
- the compensator by Gauss-Legendre quadrature on each interval between consecutive history times
  and the intensity's :meth:`~pyro_dpp.intensity.base.Intensity.breakpoints`, with
  ``rates(state, node)`` of the state after the interval's left end: the same intervals and nodes
  as :func:`pyro_dpp.likelihood.quadrature_compensator`, so both agree to float rounding.

Only the folding is sequential. The rates at a segment's events and quadrature nodes are evaluated
in one call on the segment's states stacked along a new leading batch dimension (the scan interface
is batched over any leading shape), so a step costs one ``update`` call. The forward pass keeps the
state every ``k`` events (default ``ceil(sqrt(E))``); the backward pass (:class:`_ScanScore`)
recomputes one segment at a time under autograd, last segment first, as
:mod:`pyro_dpp.scan.generic` does for sampling.

**Integer marks.** Exact data need not carry one-hot weights: given ``marks`` (an id per row),
:func:`scan_score` builds each segment's one-hot rows only when it folds them (working memory of
one segment, ``ceil(sqrt(rows))`` rows) and returns the log-intensity of each row's own mark
(``batch x rows``) rather than of every mark (``batch x rows x K``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.autograd.function import once_differentiable
from torch.utils import _pytree as pytree

from ..intensity.base import Intensity, State
from .segments import SegmentPlan, _leaves, add_segment_grads, default_checkpoint_every, intensity_tensors, segment_vjp

#: History rows per :meth:`~pyro_dpp.intensity.base.Intensity.breakpoints` call in marks mode.
_BREAKPOINT_CHUNK = 1 << 12


def has_scan(intensity: Intensity) -> bool:
    """Whether the intensity implements the scan interface (``initial_state``, ``update`` and
    ``rates`` or ``log_rates``)."""
    kind = type(intensity)
    return (kind.initial_state is not Intensity.initial_state and kind.update is not Intensity.update
            and (kind.rates is not Intensity.rates or kind.log_rates is not Intensity.log_rates))


def scores_by_scan(intensity: Intensity) -> bool:
    """Whether :mod:`pyro_dpp.likelihood` scores this intensity by the scan: if it has one and its
    :attr:`~pyro_dpp.intensity.base.Intensity.parallel_scoring` is False (the default)."""
    return not getattr(intensity, "parallel_scoring", False) and has_scan(intensity)


@dataclass
class _Plan(SegmentPlan):
    new_group: torch.Tensor | None  # batch x R: the row starts a group of equal times (None: no ties)
    ends: torch.Tensor  # batch x (R + 1): interval j is [ends[j-1], ends[j]] (ends[-1] := 0)
    nodes: torch.Tensor | None  # Legendre nodes and weights (2 x n), None: no compensator
    every: int
    constant_states: bool  # the states need no gradient (only the evaluation on them does)
    stats: dict = field(default_factory=dict)
    marks: torch.Tensor | None = None  # batch x R sorted integer marks (-1: none); None: dense weights
    num_history: int = 0  # D = K + C, the one-hot width in marks mode


def _row_weights(plan: _Plan, lo: int, hi: int, weights: torch.Tensor) -> torch.Tensor:
    """The history weights of rows ``lo .. hi-1`` (``batch x m x D``): ``weights`` themselves, or in
    marks mode the one-hot rows of the marks plus ``weights`` in the last columns."""
    if plan.marks is None:
        return weights
    return _one_hot(plan.marks[..., lo:hi], plan.num_history, weights)


def _one_hot(marks: torch.Tensor, width: int, extra: torch.Tensor) -> torch.Tensor:
    """``batch x m x width`` one-hot rows of ``marks`` (-1: a zero row) plus ``extra`` (``batch x m x
    c``, c <= width) in the last ``c`` columns."""
    rows = torch.zeros(marks.shape + (width,), dtype=extra.dtype, device=extra.device)
    rows.scatter_(-1, marks.clamp(min=0).unsqueeze(-1), (marks >= 0).unsqueeze(-1).to(extra.dtype))
    if extra.shape[-1]:
        rows = torch.cat([rows[..., : width - extra.shape[-1]], rows[..., width - extra.shape[-1]:] + extra], -1)
    return rows


def _own_mark(plan: _Plan, lo: int, hi: int, log_rates: torch.Tensor) -> torch.Tensor:
    """In marks mode, ``batch x m`` log-rates at each row's own modelled mark (0 for other rows)."""
    if plan.marks is None:
        return log_rates
    marks = plan.marks[..., lo:hi]
    k = log_rates.shape[-1]
    own = (marks >= 0) & (marks < k)
    picked = log_rates.gather(-1, marks.clamp(0, k - 1).unsqueeze(-1)).squeeze(-1)
    return torch.where(own, picked, torch.zeros_like(picked))


def _stack(states: list[State]) -> State:
    """The states stacked along a new leading batch dimension."""
    leaves = [pytree.tree_flatten(s)[0] for s in states]
    spec = pytree.tree_flatten(states[0])[1]
    return pytree.tree_unflatten([torch.stack(parts, 0) for parts in zip(*leaves)], spec)


def _lead(x: torch.Tensor) -> torch.Tensor:
    """``batch x m`` -> ``m x batch``."""
    return x.movedim(-1, 0)


def _fold(plan: _Plan, state: State, group: State | None, lo: int, hi: int, times: torch.Tensor,
          weights: torch.Tensor) -> tuple[State, State | None, list[State], list[State]]:
    """Fold rows ``lo .. hi-1`` (``times`` batch x m, ``weights`` batch x m x D are the segment's) into
    ``state`` (the state before row ``lo``; ``group``: the group state of row ``lo - 1``). Returns the
    state after the segment, the group state of its last row, and per row the state before it and the
    state its log-rates read (before its group of equal times; empty if there are no ties)."""
    before, at = [], []
    for i, (t, w) in enumerate(zip(times.unbind(-1), weights.unbind(-2))):
        if plan.new_group is not None:
            if group is None:
                group = state
            else:  # a row that starts a group of equal times sees the state before it, the others the group's
                fresh = plan.new_group[..., lo + i]
                group = pytree.tree_unflatten([
                    torch.where(fresh.reshape(fresh.shape + (1,) * (s.dim() - fresh.dim())), s, g)
                    for s, g in zip(pytree.tree_leaves(state), pytree.tree_leaves(group))], plan.spec)
            at.append(group)
        before.append(state)
        state = plan.intensity.update(state, t, w)
    return state, group, before, at


def _evaluate(plan: _Plan, before: list[State], at: list[State], end: State, lo: int, times: torch.Tensor,
              last: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The log-rates at a segment's rows (``batch x m x K``) and its part of the compensator
    (``batch``; with the final interval if ``last``), each in one call on the stacked states."""
    intensity = plan.intensity
    if before:
        log_rates = intensity.log_rates(_stack(at or before), _lead(times)).movedim(0, -2)
    else:
        log_rates = times.new_zeros(times.shape + (intensity.num_marks,))
    log_rates = _own_mark(plan, lo, lo + times.shape[-1], log_rates)
    comp = None
    if plan.nodes is not None:
        intervals = before + [end] if last else before
        stacked = _stack(intervals)
        j = torch.arange(lo, lo + len(intervals), device=times.device)
        right = plan.ends[..., j]
        left = torch.where(j > 0, plan.ends[..., (j - 1).clamp(min=0)], torch.zeros_like(right))
        half, centre = _lead((right - left) / 2), _lead((right + left) / 2)  # m x batch
        comp = 0.0
        own_rates = type(intensity).rates is not Intensity.rates
        for x, w in plan.nodes.t():
            node = centre + half * x
            rates = intensity.rates(stacked, node) if own_rates else intensity.log_rates(stacked, node).exp()
            comp = comp + (rates.sum(-1) * half * w).sum(0)
    return log_rates, comp


def _segment(plan: _Plan, state: State, group: State | None, lo: int, hi: int, times: torch.Tensor,
             weights: torch.Tensor, last: bool) -> tuple[State, State | None, torch.Tensor, torch.Tensor | None]:
    """:func:`_fold` then :func:`_evaluate`: the state after the segment, the group state of its last
    row, the log-rates at its rows and its part of the compensator."""
    end, group, before, at = _fold(plan, state, group, lo, hi, times, weights)
    return (end, group, *_evaluate(plan, before, at, end, lo, times, last))


def _forward(plan: _Plan, leaves: list[torch.Tensor], times: torch.Tensor, weights: torch.Tensor,
             checkpoints: list | None) -> tuple[torch.Tensor, torch.Tensor]:
    rows = times.shape[-1]
    state, group = pytree.tree_unflatten(list(leaves), plan.spec), None
    parts, comp = [], 0.0
    for lo in range(0, max(rows, 1), plan.every):
        hi = min(rows, lo + plan.every)
        if checkpoints is not None:
            checkpoints.append(([x.clone() for x in pytree.tree_leaves(state)],
                                None if group is None else [x.clone() for x in pytree.tree_leaves(group)]))
        state, group, lr, c = _segment(plan, state, group, lo, hi, times[..., lo:hi],
                                       _row_weights(plan, lo, hi, weights[..., lo:hi, :]), last=hi == rows)
        parts.append(lr)
        if c is not None:
            comp = comp + c
    comp = comp if isinstance(comp, torch.Tensor) else times.new_zeros(times.shape[:-1])
    return torch.cat(parts, -1 if plan.marks is not None else -2), comp


class _ScanScore(torch.autograd.Function):
    """Inputs: the plan, the initial state's leaves, the intensity's tensors, sorted ``times`` and
    ``weights``. Outputs: log-rates at the rows and the compensator."""

    @staticmethod
    def forward(ctx, plan: _Plan, *inputs: torch.Tensor):  # noqa: D102
        times, weights = inputs[plan.num_state + plan.num_params:]
        checkpoints: list = []
        log_rates, comp = _forward(plan, list(inputs[: plan.num_state]), times, weights, checkpoints)
        plan.stats.update(rows=times.shape[-1], every=plan.every, checkpoints=len(checkpoints),
                          constant_states=plan.constant_states)
        ctx.plan, ctx.checkpoints = plan, checkpoints
        ctx.save_for_backward(times, weights)
        return log_rates, comp

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_log_rates, grad_comp):  # noqa: D102
        plan, checkpoints = ctx.plan, ctx.checkpoints
        times, weights = ctx.saved_tensors
        need_times, need_weights = ctx.needs_input_grad[-2:]
        rows = times.shape[-1]
        grad_params: list = [None] * plan.num_params
        grad_times = torch.zeros_like(times) if need_times else None
        grad_weights = torch.zeros_like(weights) if need_weights else None
        carry: list = []
        for index in reversed(range(len(checkpoints))):
            lo = index * plan.every
            hi = min(rows, lo + plan.every)
            saved, saved_group = checkpoints[index]
            if plan.constant_states:
                # the states depend on nothing that requires grad: fold without a graph, then
                # differentiate only the evaluation on the stacked states
                state = pytree.tree_unflatten(list(saved), plan.spec)
                group = None if saved_group is None else pytree.tree_unflatten(list(saved_group), plan.spec)
                end, _, before, at = _fold(plan, state, group, lo, hi, times[..., lo:hi],
                                           _row_weights(plan, lo, hi, weights[..., lo:hi, :]))
                with torch.enable_grad():
                    lr, comp = _evaluate(plan, before, at, end, lo, times[..., lo:hi], last=hi == rows)
                    pairs = []
                    if grad_log_rates is not None and lr.requires_grad:
                        pairs.append((lr, _rows_of(plan, grad_log_rates, lo, hi)))
                    if grad_comp is not None and comp is not None and comp.requires_grad:
                        pairs.append((comp, grad_comp))
                    grads = segment_vjp(pairs, plan.params, check=index == len(checkpoints) - 1)
                add_segment_grads(grads, [], grad_params)
                continue
            with torch.enable_grad():
                leaves = [x.detach().requires_grad_(x.is_floating_point()) for x in saved]
                group_leaves = None if saved_group is None else [
                    x.detach().requires_grad_(x.is_floating_point()) for x in saved_group]
                seg_times = times[..., lo:hi].detach().requires_grad_(need_times)
                seg_weights = weights[..., lo:hi, :].detach().requires_grad_(need_weights)
                group = None if group_leaves is None else pytree.tree_unflatten(list(group_leaves), plan.spec)
                end, end_group, lr, comp = _segment(plan, pytree.tree_unflatten(list(leaves), plan.spec), group,
                                                    lo, hi, seg_times, _row_weights(plan, lo, hi, seg_weights),
                                                    last=hi == rows)
                pairs = []
                if grad_log_rates is not None:
                    pairs.append((lr, _rows_of(plan, grad_log_rates, lo, hi)))
                if grad_comp is not None and comp is not None:
                    pairs.append((comp, grad_comp))
                ends = pytree.tree_leaves(end) + ([] if end_group is None else pytree.tree_leaves(end_group))
                pairs += [(o, g) for o, g in zip(ends, carry) if g is not None]
                pairs = [(o, g) for o, g in pairs if o.requires_grad]
                starts = leaves + ([] if group_leaves is None else group_leaves)
                wanted = [x for x in starts if x.requires_grad] + plan.params
                wanted += [x for x, need in ((seg_times, need_times), (seg_weights, need_weights)) if need]
                grads = segment_vjp(pairs, wanted, check=index == len(checkpoints) - 1)
            carry = add_segment_grads(grads, starts, grad_params, (
                (need_times, grad_times, (..., slice(lo, hi))),
                (need_weights, grad_weights, (..., slice(lo, hi), slice(None))),
            ))
        plan.stats.update(recomputed_segments=len(checkpoints))
        carry = carry[: plan.num_state] if carry else [None] * plan.num_state
        return (None, *carry, *grad_params, grad_times, grad_weights)


def _rows_of(plan: _Plan, x: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Rows ``lo .. hi-1`` of an output: ``batch x m`` in marks mode, else ``batch x m x K``."""
    return x[..., lo:hi] if plan.marks is not None else x[..., lo:hi, :]


def _tie_groups(keys: torch.Tensor, weighted: torch.Tensor) -> torch.Tensor | None:
    """``batch x R``: which sorted rows start a group of equal times, or None if no row shares its
    time with an earlier row of nonzero weight (padding rows at the duration, say, change no state,
    so the scan needs no group states for them)."""
    same = torch.cat([torch.zeros_like(keys[..., :1], dtype=torch.bool), keys[..., 1:] == keys[..., :-1]], -1)
    index = torch.arange(keys.shape[-1], device=keys.device).expand(keys.shape)
    start = torch.cummax(torch.where(same, torch.zeros_like(index), index), -1).values  # the group's first row
    before = torch.cumsum(weighted.long(), -1) - weighted.long()  # weighted rows before each row
    if not bool((same & (before > before.gather(-1, start))).any()):
        return None
    return ~same


def scan_score(
    intensity: Intensity, times: torch.Tensor, weights: torch.Tensor, duration: torch.Tensor,
    nodes: torch.Tensor | None, checkpoint_every: int | None = None, stats: dict | None = None,
    marks: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-intensities at the history events and the compensator, by a checkpointed scan.

    :param times: ``batch x H`` history times (any order; padding rows have zero weights).
    :param weights: ``batch x H x (K + C)`` history weights.
    :param duration: ``batch`` the window length ``T``.
    :param nodes: ``2 x n`` Gauss-Legendre nodes and weights on ``[-1, 1]``; None: no compensator.
    :param int checkpoint_every: events per checkpointed segment (default ``ceil(sqrt(events))``).
    :param dict stats: if given, filled with the checkpoint bookkeeping.
    :param marks: ``batch x H`` integer history marks in ``0..K+C-1`` (-1: no mark) for exact rows;
        then a row's weights are the one-hot of its mark plus ``weights`` (``batch x H x c``, ``c <=
        K + C``, e.g. soft context marks) in the last ``c`` columns, built one segment at a time.
    :returns: ``batch x H x K`` log-intensities at the rows of ``times`` (in their order, each from the
        events strictly before it; with ``marks``, ``batch x H``: each row's own mark's, 0 for rows
        without a modelled mark) and the ``batch`` compensator over ``[0, duration]`` (None without
        ``nodes``).
    """
    width = intensity.num_history_marks
    batch = torch.broadcast_shapes(times.shape[:-1], weights.shape[:-2], duration.shape,
                                   () if marks is None else marks.shape[:-1])
    times = times.expand(batch + times.shape[-1:])
    weights = weights.expand(batch + weights.shape[-2:])
    duration = duration.expand(batch)
    rows = times.shape[-1]
    if marks is not None:
        marks = marks.expand(batch + marks.shape[-1:])
    if nodes is not None:
        if marks is None:
            extra = intensity.breakpoints(times.detach(), weights)
        else:  # one-hot rows a chunk at a time (breakpoints of every chunk, a zero-length interval at most)
            parts = [intensity.breakpoints(t, _one_hot(m, width, w.detach())) for t, m, w in zip(
                times.detach().split(_BREAKPOINT_CHUNK, -1), marks.split(_BREAKPOINT_CHUNK, -1),
                weights.split(_BREAKPOINT_CHUNK, -2))]
            extra = None if not parts or parts[0] is None else torch.cat(
                [p.expand(batch + p.shape[-1:]) for p in parts], -1)
        if extra is not None:
            extra = extra.detach().expand(batch + extra.shape[-1:])
            times = torch.cat([times, extra], -1)
            weights = torch.cat([weights, weights.new_zeros(batch + extra.shape[-1:] + weights.shape[-1:])], -2)
            if marks is not None:
                marks = torch.cat([marks, marks.new_full(batch + extra.shape[-1:], -1)], -1)
    order = times.detach().argsort(dim=-1, stable=True)
    times_sorted = times.gather(-1, order)
    weights_sorted = weights.gather(-2, order.unsqueeze(-1).expand(order.shape + weights.shape[-1:]))
    marks_sorted = None if marks is None else marks.gather(-1, order)
    keys = times_sorted.detach()
    ends = torch.cat([torch.minimum(keys.clamp(min=0), duration.unsqueeze(-1)), duration.unsqueeze(-1)], -1)
    weighted = (weights_sorted.detach() != 0).any(-1)
    if marks_sorted is not None:
        weighted = weighted | (marks_sorted >= 0)
    new_group = _tie_groups(keys, weighted)
    total = times_sorted.shape[-1]
    every = default_checkpoint_every(total) if checkpoint_every is None else int(checkpoint_every)
    if every < 1:
        raise ValueError(f"checkpoint_every must be a positive integer, got {checkpoint_every!r}")
    leaves, spec = _leaves(intensity.initial_state(batch, times_sorted, total))
    grad = torch.is_grad_enabled()
    params = intensity_tensors(intensity) if grad else []
    inputs = [*leaves, *params, times_sorted, weights_sorted]
    constant = grad and not any(x.requires_grad for x in [*leaves, times_sorted, weights_sorted])
    if constant and total:  # does the update itself use a tensor that requires grad?
        first = weights_sorted[..., :1, :].detach()
        if marks_sorted is not None:
            first = _one_hot(marks_sorted[..., :1], width, first)
        with torch.enable_grad():
            probe = intensity.update(pytree.tree_unflatten(list(leaves), spec), times_sorted[..., 0].detach(),
                                     first[..., 0, :])
        constant = not any(x.requires_grad for x in pytree.tree_leaves(probe))
    plan = _Plan(intensity, spec, len(leaves), len(params), params, new_group, ends, nodes, every, constant,
                 {} if stats is None else stats, marks_sorted, width)
    if grad and any(x.requires_grad for x in inputs):
        log_rates, comp = _ScanScore.apply(plan, *inputs)
    else:
        with torch.no_grad():
            log_rates, comp = _forward(plan, leaves, times_sorted, weights_sorted, None)
    # back to the rows' own order (the breakpoints' rows dropped)
    inverse = order.argsort(-1)[..., :rows]
    if marks is not None:
        return log_rates.gather(-1, inverse), (comp if nodes is not None else None)
    log_rates = log_rates.gather(-2, inverse.unsqueeze(-1).expand(inverse.shape + log_rates.shape[-1:]))
    return log_rates, (comp if nodes is not None else None)
