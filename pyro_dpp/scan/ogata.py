"""Exact sampling without a constant bound (Ogata) by a numba accelerator, where one is registered.

:func:`pyro_dpp.thinning.sample_ogata` asks :func:`accelerated_ogata` first; an ``"ogata"``
accelerator is registered per filter class (for :class:`~pyro_dpp.intensity.ExpHawkes`:
:func:`pyro_dpp.intensity._hawkes_numba.sample_ogata`), so a subclass that keeps the stock filter
keeps the sampler, and one that overrides the math gets the reference loop.
"""

from __future__ import annotations

import math

import torch

from .accelerators import find_accelerator
from .backend import numba_usable


def accelerated_ogata(intensity, duration: torch.Tensor, context: torch.Tensor | None,
                      max_events: int) -> torch.Tensor | None:
    """A realization drawn by the intensity's Ogata accelerator, or None where none can run (the
    backend, the device, the dtype, no filter or no accelerator): the caller runs the reference loop."""
    if not numba_usable(duration):
        return None
    empty = duration.new_zeros(1, 0)  # only the filter's class matters here
    filt = intensity.scan_filter(empty, duration.shape)
    sampler = None if filt is None else find_accelerator(type(filt), "ogata")
    return None if sampler is None else sampler(intensity, duration, context, max_events)


def ogata_buffers(duration: torch.Tensor, context: torch.Tensor | None, num_context_marks: int,
                  max_events: int) -> dict[str, torch.Tensor]:
    """The float64 CPU arrays an Ogata kernel reads and writes, batch-major (``B`` the flattened batch
    of ``duration``): ``seeds`` (from torch's generator), ``duration``, the context's times ``ctx_t``
    (``B x N``, real rows first), weights ``ctx_w`` (``B x N x C``) and real counts ``ctx_n``, and the
    outputs ``out_t`` (``B x max_events``), ``out_k`` (marks) and ``count`` (-1: overflow)."""
    from ..events import event_mask

    batch, f64, c = duration.shape, torch.float64, num_context_marks
    bsz = max(1, math.prod(batch))
    if context is None or context.shape[-2] == 0:
        ctx_t = torch.zeros(bsz, 1, dtype=f64)
        ctx_w = torch.zeros(bsz, 1, max(c, 1), dtype=f64)
        ctx_n = torch.zeros(bsz, dtype=torch.long)
    else:
        context = context.expand(batch + context.shape[-2:])
        real = event_mask(context).reshape(bsz, -1)
        ctx_t = context[..., 0].reshape(bsz, -1).to(f64).contiguous()
        ctx_w = context[..., 1: 1 + c].reshape(bsz, -1, c).to(f64).contiguous()
        ctx_n = real.sum(-1)
        if bool((real[:, 1:] & ~real[:, :-1]).any()):  # real rows must come first (validated contexts do)
            raise ValueError("context has real events after padding rows; put padding rows last")
    return {"seeds": torch.randint(0, 2**31 - 1, (bsz,), dtype=torch.long),
            "duration": duration.detach().to(f64).expand(batch).reshape(bsz).contiguous(),
            "ctx_t": ctx_t, "ctx_w": ctx_w, "ctx_n": ctx_n,
            "out_t": torch.zeros(bsz, max_events, dtype=f64),
            "out_k": torch.zeros(bsz, max_events, dtype=torch.long),
            "count": torch.zeros(bsz, dtype=torch.long)}


def ogata_realization(buffers: dict[str, torch.Tensor], num_marks: int, duration: torch.Tensor,
                      max_events: int) -> torch.Tensor:
    """The realization tensor (``duration``'s batch, dtype and device) from an Ogata kernel's outputs
    in ``buffers`` (:func:`ogata_buffers`); raises on overflow."""
    from ..events import pad_realization

    count, batch, dtype = buffers["count"], duration.shape, duration.dtype
    if bool((count < 0).any()):
        raise ValueError(f"a sequence exceeded max_events={max_events} events; pass a larger max_events")
    mask = torch.arange(max_events) < count.unsqueeze(-1)
    weights = torch.nn.functional.one_hot(buffers["out_k"], num_marks).to(dtype) * mask.unsqueeze(-1).to(dtype)
    times = buffers["out_t"].to(dtype).reshape(batch + (max_events,))
    value = pad_realization(times, weights.reshape(batch + (max_events, num_marks)),
                            times.new_zeros(batch + (max_events,)), duration)
    return value.to(duration.device)
