"""The filter-basis interface: :class:`Basis` and the generic scan state of a finite support.

A basis evaluates ``phi_l(d)`` for lags ``d > 0`` (zero for ``d <= 0``); :class:`Basis` gives every
subclass its parallel history features (a band of recent events when the support is finite) and a
scan state of the most recent events (a rolling window that raises rather than drop an event still
inside the support). The concrete bases live in :mod:`pyro_dpp.intensity.basis`.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .base import State, keeps_math

#: The methods that define a basis's values on a scan: a subclass overriding one loses the stock filter.
BASIS_MATH = ("forward", "initial_state", "state_features", "update")


class Basis(torch.nn.Module):
    """Base class of filter bases. Subclasses implement :meth:`forward` (``phi(lag)``)."""

    num_basis: int
    #: largest lag with a nonzero basis value (``inf`` for infinite support)
    support: float = math.inf

    def forward(self, lag: torch.Tensor) -> torch.Tensor:
        """``... x L`` basis values at ``lag`` (``...``); must be zero for ``lag <= 0``."""
        raise NotImplementedError

    def kinks(self) -> torch.Tensor | None:
        """Lags where some ``phi_l`` is not smooth (quadrature nodes avoid straddling them)."""
        return None

    def history_reach(self, dtype: torch.dtype | None = None) -> float | None:
        """The lag beyond which no ``phi_l`` changes a potential at ``dtype``'s precision: the
        history reach of a GLM or SNN on this basis (:meth:`pyro_dpp.intensity.Intensity.history_reach`).

        The default is :attr:`support` where it is finite, else None (not known). A subclass keeps
        its parent's reach unless it overrides this method.

        :param dtype: the data's dtype (used by infinite-support bases).
        :returns: seconds (``>= 0``), or None if unknown.
        """
        return float(self.support) if math.isfinite(self.support) else None

    def scan_filter(self, glm: Any, keys: torch.Tensor, batch: torch.Size) -> Any:
        """The scan filter of a GLM with this basis (see :meth:`pyro_dpp.intensity.Intensity.scan_filter`),
        or None. Any finite-support basis that keeps the generic window state gets the band filter,
        which evaluates its :meth:`forward` at the lags."""
        from .basis_filters import BandFilter

        if keeps_math(self, Basis, BASIS_MATH[1:]) and math.isfinite(self.support) and "forward" not in vars(self):
            if type(self).forward is not Basis.forward:
                return BandFilter(glm, keys, batch)
        return None

    # ---- parallel --------------------------------------------------------------------------
    def features(self, times: torch.Tensor, weights: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """``batch x Q x L x D`` history features at ``query`` (events strictly before count).

        Finite-support bases evaluate a band: each query sees only the events within one support
        length before it, so the cost is linear in the number of events for a fixed event density."""
        if math.isfinite(self.support) and times.shape[-1] > 32:
            return self._banded_features(times, weights, query)
        lag = query.unsqueeze(-1) - times.unsqueeze(-2)  # batch x Q x E
        phi = self(lag)  # batch x Q x E x L
        return torch.einsum("...qel,...ed->...qld", phi, weights)

    def _banded_features(self, times: torch.Tensor, weights: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        batch = torch.broadcast_shapes(times.shape[:-1], weights.shape[:-2], query.shape[:-1])
        order = times.detach().argsort(dim=-1)
        times = times.gather(-1, order).expand(batch + times.shape[-1:]).contiguous()
        weights = weights.gather(-2, order.unsqueeze(-1).expand(order.shape + weights.shape[-1:]))
        weights = weights.expand(batch + weights.shape[-2:])
        query = query.expand(batch + query.shape[-1:]).contiguous()
        hi = torch.searchsorted(times.detach(), query.detach())  # events before hi are strictly earlier
        lo = torch.searchsorted(times.detach(), (query - self.support).detach().contiguous())
        width = int((hi - lo).max()) if hi.numel() else 0
        q, n_sources = query.shape[-1], weights.shape[-1]
        if width == 0:
            return weights.new_zeros(batch + (q, self.num_basis, n_sources))
        index = hi.unsqueeze(-1) - width + torch.arange(width, device=hi.device)  # batch x Q x W
        valid = index >= lo.unsqueeze(-1)
        index = index.clamp(min=0)
        near = times.gather(-1, index.flatten(-2)).reshape(index.shape)
        near_w = weights.gather(-2, index.flatten(-2).unsqueeze(-1).expand(batch + (q * width, n_sources)))
        near_w = near_w.reshape(index.shape + (n_sources,))
        phi = self(query.unsqueeze(-1) - near) * valid.unsqueeze(-1).to(near.dtype)  # batch x Q x W x L
        return torch.einsum("...qwl,...qwd->...qld", phi, near_w)

    # ---- scan: a window of the most recent events -------------------------------------------
    def initial_state(self, batch_shape: torch.Size, num_sources: int, like: torch.Tensor, num_steps: int,
                      window: int | None = None) -> State:
        """A window of ``window`` events (default: the basis's own ``window``, else ``num_steps``)."""
        window = max(1, min(num_steps, window or getattr(self, "window", None) or num_steps))
        times = like.new_full(batch_shape + (window,), -math.inf)
        return times, like.new_zeros(batch_shape + (window, num_sources))

    def state_features(self, state: State, time: torch.Tensor) -> torch.Tensor:
        times, weights = state
        lag = time.unsqueeze(-1) - times
        lag = torch.where(torch.isfinite(lag), lag, torch.zeros_like(lag))
        return torch.einsum("...el,...ed->...ld", self(lag), weights)

    def update(self, state: State, time: torch.Tensor, weights: torch.Tensor) -> State:
        # Events with zero weight (rejected candidates, padding) change no sum: they take no slot.
        times, history = state
        incoming = (weights != 0).any(-1)
        evicted = (history[..., 0, :] != 0).any(-1) & (time - times[..., 0] < self.support)
        if (incoming & evicted).any():
            raise ValueError(
                f"the history window of {times.shape[-1]} events is too short for this basis "
                f"(support {self.support}); raise the window= of the GLM or basis, or leave it None"
            )
        shifted_times = torch.cat([times[..., 1:], time.unsqueeze(-1)], dim=-1)
        shifted = torch.cat([history[..., 1:, :], weights.unsqueeze(-2)], dim=-2)
        times = torch.where(incoming.unsqueeze(-1), shifted_times, times)
        history = torch.where(incoming[..., None, None], shifted, history)
        return times, history


def _rows(x: torch.Tensor, batch: torch.Size, dims: int) -> torch.Tensor:
    """``x`` (``batch x ...``, ``dims`` trailing dimensions) broadcast to ``batch``, flattened into
    rows, float64 and contiguous."""
    tail = x.shape[x.dim() - dims:]
    return x.to(torch.float64).expand(batch + tail).reshape((batch.numel(),) + tail).contiguous()
