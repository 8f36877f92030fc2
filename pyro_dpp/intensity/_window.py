"""A rolling window of recent history events: the scan state of kernels without a recursion.

The state is ``(times, weights)``: ``batch x W`` times (``-inf`` in empty slots, so every lag there
is ``+inf``) and ``batch x W x D`` weights, oldest first. An event with all-zero weights (a
rejected candidate, padding) changes no history sum and takes no slot. An event that would push
out one still inside the kernel's support raises: the window never truncates the history silently.
"""

from __future__ import annotations

import math

import torch

from .base import State


def empty_window(batch_shape: torch.Size, size: int, num_sources: int, like: torch.Tensor) -> State:
    """An empty window of ``size`` slots (at least one)."""
    size = max(1, size)
    return like.new_full(batch_shape + (size,), -math.inf), like.new_zeros(batch_shape + (size, num_sources))


def push_event(state: State, time: torch.Tensor, weights: torch.Tensor, support: float, owner: str) -> State:
    """Fold an event at ``time`` (``batch``) with ``weights`` (``batch x D``) into the window; raises
    if it evicts an event less than ``support`` old (``owner`` names what to enlarge)."""
    times, history = state
    incoming = (weights != 0).any(-1)
    evicted = (history[..., 0, :] != 0).any(-1) & (time - times[..., 0] < support)
    if (incoming & evicted).any():
        raise ValueError(
            f"the history window of {times.shape[-1]} events is too short for {owner} (support {support}); "
            "raise its window= or leave it None"
        )
    shifted_times = torch.cat([times[..., 1:], time.unsqueeze(-1)], -1)
    shifted = torch.cat([history[..., 1:, :], weights.unsqueeze(-2)], -2)
    times = torch.where(incoming.unsqueeze(-1), shifted_times, times)
    history = torch.where(incoming[..., None, None], shifted, history)
    return times, history
