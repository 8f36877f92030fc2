"""Exact sampling without a constant bound (Ogata) by a numba accelerator, where one is registered.

:func:`pyro_dpp.thinning.sample_ogata` asks :func:`accelerated_ogata` first; an ``"ogata"``
accelerator is registered per filter class (for :class:`~pyro_dpp.intensity.ExpHawkes`:
:func:`pyro_dpp.intensity._hawkes_numba.sample_ogata`), so a subclass that keeps the stock filter
keeps the sampler, and one that overrides the math gets the reference loop.
"""

from __future__ import annotations

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
