"""History before the observation window: events at negative times that enter the history only.

A window ``[0, T]`` cut out of a longer recording (:mod:`pyro_dpp.windows`) has events before it
that still drive the intensity inside it. :class:`~pyro_dpp.PointProcess` takes them as

- ``past``: events of the *modelled* marks at times ``< 0``, a realization tensor
  ``batch x P x (K + 2)`` (layout of :mod:`pyro_dpp.events`; padding rows, all weights zero, last,
  their time is ignored);
- ``context``: events of the context marks, which may now also hold times ``< 0``.

Neither is scored nor part of a sample: they change the conditional intensity on ``[0, T]`` and
nothing else. They are data: no gradient flows to the ``past`` tensor (it is detached). Every path
folds them in the same way: scoring appends them to the history
(:func:`pyro_dpp.likelihood.history`), the samplers merge them into the time line as fixed
(non-candidate) steps (:func:`fixed_events`), Ogata's sampler folds them into its initial state.
"""

from __future__ import annotations

from typing import Any

import torch

from .events import check_layout, event_mask, outside_window, validate_realization


def _check_layout(value: torch.Tensor, num_marks: int, name: str, what: str) -> torch.Tensor:
    """:func:`~pyro_dpp.events.check_layout` of events that may lie before the window; returns the
    real-row mask."""
    return check_layout(value, num_marks, name, f"{num_marks} {what}, as the intensity",
                        f"check the number of neurons of the {name} against the process",
                        atol=1e-9 if value.dtype == torch.float64 else 1e-4)


def check_past(past: Any, num_marks: int, like: torch.Tensor) -> torch.Tensor | None:
    """``past`` as a realization tensor in ``like``'s dtype and device, checked, with its padding
    rows' times set to 0; None stays None.

    :raises ValueError: for a wrong shape, NaN or inf, weights off the simplex, unsorted times, or a
        real event at a time ``>= 0`` (inside the window: score it, or shift the window).
    """
    if past is None:
        return None
    if not isinstance(past, torch.Tensor):
        raise ValueError(
            f"past must be a realization tensor batch x events x (K + 2) of events at times < 0, got "
            f"{type(past).__name__}; SpikeTrains.windows() builds it from a recording"
        )
    if not past.is_floating_point():
        raise ValueError(f"past must be a floating tensor, got {past.dtype}")
    past = past.detach().to(dtype=like.dtype, device=like.device)
    real = _check_layout(past, num_marks, "past", "modelled marks")
    times = past[..., 0]
    if (real & (times >= 0)).any():
        worst = float(times[real].max())
        raise ValueError(
            f"past holds an event at t = {worst!r}, but past events must lie before the window (times < 0); "
            "events at times >= 0 belong to the value being scored (or sampled), not to the past"
        )
    times = torch.where(real, times, torch.zeros_like(times))
    return torch.cat([times.unsqueeze(-1), past[..., 1:]], -1)


def check_context(context: torch.Tensor, num_context_marks: int, duration: torch.Tensor) -> None:
    """Check a context realization whose events may lie before the window (times ``< 0``, the
    events before a window cut from a recording) or inside ``[0, duration]``."""
    real = event_mask(context) if context.dim() >= 2 and context.shape[-1] == num_context_marks + 2 else None
    if real is None or not bool((real & (context[..., 0] < 0)).any()):
        validate_realization(context, num_context_marks, duration, name="context")
        return
    real = _check_layout(context, num_context_marks, "context", "context marks")
    late = outside_window(context[..., 0].clamp(min=0), torch.as_tensor(duration, dtype=context.dtype,
                                                                         device=context.device))
    if (real & late).any():
        raise ValueError("context has event times after the window's end (duration); drop them or enlarge the duration")


def negative_rows(x: torch.Tensor | None) -> int:
    """The fewest real rows at times ``< 0`` over the sequences of ``x`` (rows a sample need not
    hold); 0 for None."""
    if x is None or x.shape[-2] == 0:
        return 0
    count = (event_mask(x) & (x[..., 0] < 0)).sum(-1)
    return int(count.min()) if count.numel() else 0


def fixed_events(past: torch.Tensor | None, context: torch.Tensor | None, num_marks: int,
                 num_context_marks: int) -> torch.Tensor | None:
    """The events of a time line that are not candidates, over all ``K + C`` history marks: the
    past events (weights on the modelled marks) and the context events (weights on the context
    marks), as one realization tensor ``batch x (P + M) x (K + C + 2)`` (not sorted: the merge sorts
    it); None if there are neither."""
    parts = []
    if past is not None and past.shape[-2]:
        w = past[..., 1 : 1 + num_marks]
        parts.append(torch.cat([past[..., :1], w, w.new_zeros(w.shape[:-1] + (num_context_marks + 1,))], -1))
    if context is not None and context.shape[-2]:
        w = context[..., 1 : 1 + num_context_marks]
        parts.append(torch.cat([context[..., :1], w.new_zeros(w.shape[:-1] + (num_marks,)), w,
                                w.new_zeros(w.shape[:-1] + (1,))], -1))
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    batch = torch.broadcast_shapes(parts[0].shape[:-2], parts[1].shape[:-2])
    return torch.cat([p.expand(batch + p.shape[-2:]) for p in parts], -2)


def with_negative_fixed(fixed: torch.Tensor | None) -> bool:
    """Whether ``fixed`` (:func:`fixed_events`) holds events before the window."""
    return fixed is not None and bool((event_mask(fixed) & (fixed[..., 0] < 0)).any())


def full_width(ctx_w: torch.Tensor, num_marks: int, num_history_marks: int) -> torch.Tensor:
    """The fixed steps' weights of a time line over all ``K + C`` history marks: ``ctx_w`` as it is
    if it has ``K + C`` columns, else (``C`` columns: context events only, the layout before past
    events existed) with ``K`` zero columns in front."""
    if ctx_w.shape[-1] == num_history_marks:
        return ctx_w
    return torch.cat([ctx_w.new_zeros(ctx_w.shape[:-1] + (num_marks,)), ctx_w], -1)
