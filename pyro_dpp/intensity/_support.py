"""The history events a chunk of queries can see, for intensities whose kernels have finite support.

Scoring evaluates an intensity at many query times in chunks (to bound memory). With a kernel of
finite support ``s`` (:meth:`~pyro_dpp.intensity.Intensity.history_support`) a query at ``q`` sees
only the events in ``(q - s, q)``, so a chunk of queries in ``[a, b]`` needs only the events in
``(a - s, b]``: evaluating each chunk from those alone makes the total work linear in the events
(a whole history per chunk would be quadratic).

The events are kept sorted and cut once into fixed *pieces* (:meth:`torch.Tensor.split`, views); a
chunk's events are the concatenation of the pieces that cover its time range. Autograd then sums
each piece's gradients over the chunks that used it and joins the pieces once, so the backward pass
is linear too (slicing the whole tensor per chunk would allocate a whole-history gradient per chunk).
"""

from __future__ import annotations

import math

import torch

#: Events per piece: small enough that a chunk's history is not much more than its support
#: window, large enough that concatenations stay few.
PIECE = 256


class SupportWindows:
    """Sorted history ``times`` (``batch x E``) and ``weights`` (``batch x E x D``) with the pieces
    covering any time range.

    :param float support: the kernel support (``inf``: every chunk sees the whole history).
    :param bool presorted: the times are already nondecreasing along the last dimension.
    """

    def __init__(self, times: torch.Tensor, weights: torch.Tensor, support: float, presorted: bool = False) -> None:
        batch = torch.broadcast_shapes(times.shape[:-1], weights.shape[:-2])
        times = times.expand(batch + times.shape[-1:])
        weights = weights.expand(batch + weights.shape[-2:])
        self.active = math.isfinite(support) and times.shape[-1] > 2 * PIECE and not torch.jit.is_tracing()
        if self.active and not presorted:
            order = times.detach().argsort(-1)
            times = times.gather(-1, order)
            weights = weights.gather(-2, order.unsqueeze(-1).expand(order.shape + weights.shape[-1:]))
        self.times, self.weights, self.support = times, weights, support
        if self.active:
            self.keys = times.detach().reshape(-1, times.shape[-1]).contiguous()
            self.t_pieces = times.split(PIECE, -1)
            self.w_pieces = weights.split(PIECE, -2)

    def covering(self, start: torch.Tensor, stop: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The events every query in ``[start, stop]`` can see (``start``, ``stop``: tensors whose
        elements bound the queries of every batch row), as a contiguous run of the sorted history
        (possibly with a few events more on either side, which change nothing)."""
        if not self.active:
            return self.times, self.weights
        lo_t = float(start.detach().min()) - self.support
        hi_t = float(stop.detach().max())
        rows = self.keys.shape[0]
        lo = int(torch.searchsorted(self.keys, self.keys.new_full((rows, 1), lo_t)).min())
        hi = int(torch.searchsorted(self.keys, self.keys.new_full((rows, 1), hi_t), right=True).max())
        first, last = lo // PIECE, max(-(-hi // PIECE), lo // PIECE + 1)
        if first == 0 and last >= len(self.t_pieces):
            return self.times, self.weights
        if last - first == 1:
            return self.t_pieces[first], self.w_pieces[first]
        return torch.cat(self.t_pieces[first:last], -1), torch.cat(self.w_pieces[first:last], -2)
