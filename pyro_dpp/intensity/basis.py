"""Filter bases for GLM/SNN intensities: ``f_ij(d) = sum_l W[l, i, j] phi_l(d)``.

A basis evaluates ``phi_l(d)`` for lags ``d > 0`` (zero for ``d <= 0``) and keeps a scan state of
the per-source history features ``F_lj(t) = sum_{n: t_n < t} w_nj phi_l(t - t_n)``:

- :class:`ExponentialBasis` is recursive: one trace per (time constant, source), constant size;
- finite-support bases (:class:`EpanechnikovBasis`, :class:`RaisedCosineBasis`) keep a rolling
  window of recent events; an event that would leave the window while still inside the support
  raises, never truncating the history silently.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .base import State, as_param


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

    # ---- parallel --------------------------------------------------------------------------
    def features(self, times: torch.Tensor, weights: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """``batch x Q x L x D`` history features at ``query`` (events strictly before count)."""
        lag = query.unsqueeze(-1) - times.unsqueeze(-2)  # batch x Q x E
        phi = self(lag)  # batch x Q x E x L
        return torch.einsum("...qel,...ed->...qld", phi, weights)

    # ---- scan: a window of the most recent events -------------------------------------------
    def initial_state(self, batch_shape: torch.Size, num_sources: int, like: torch.Tensor, num_steps: int) -> State:
        window = max(1, min(num_steps, getattr(self, "window", None) or num_steps))
        times = like.new_full(batch_shape + (window,), -math.inf)
        return times, like.new_zeros(batch_shape + (window, num_sources))

    def state_features(self, state: State, time: torch.Tensor) -> torch.Tensor:
        times, weights = state
        lag = time.unsqueeze(-1) - times
        lag = torch.where(torch.isfinite(lag), lag, torch.zeros_like(lag))
        return torch.einsum("...el,...ed->...ld", self(lag), weights)

    def update(self, state: State, time: torch.Tensor, weights: torch.Tensor) -> State:
        times, history = state
        oldest = times[..., 0]
        if ((time - oldest < self.support) & (history[..., 0, :] != 0).any(-1)).any():
            raise ValueError(
                f"the history window of {times.shape[-1]} events is too short for this basis "
                f"(support {self.support}); raise the basis's window= or leave it None"
            )
        times = torch.cat([times[..., 1:], time.unsqueeze(-1)], dim=-1)
        history = torch.cat([history[..., 1:, :], weights.unsqueeze(-2)], dim=-2)
        return times, history


class ExponentialBasis(Basis):
    r"""Exponential decays :math:`\phi_l(d) = e^{-d / \tau_l}` for :math:`d > 0`, with a recursive,
    constant-size scan state (one trace per time constant and source).

    :param time_constants: ``L`` positive time constants :math:`\tau_l`.
    """

    def __init__(self, time_constants: Any) -> None:
        super().__init__()
        tau = as_param(time_constants).reshape(-1)
        if not torch.isfinite(tau).all() or (tau <= 0).any():
            raise ValueError("time_constants must be positive and finite")
        self.register_buffer("time_constants", tau)
        self.num_basis = tau.numel()

    def forward(self, lag: torch.Tensor) -> torch.Tensor:
        lag = lag.unsqueeze(-1)
        before = lag > 0
        tau = self.time_constants.to(lag)
        return torch.where(before, torch.exp(-torch.where(before, lag, torch.zeros_like(lag)) / tau), torch.zeros_like(lag))

    def initial_state(self, batch_shape: torch.Size, num_sources: int, like: torch.Tensor, num_steps: int) -> State:
        return like.new_zeros(batch_shape + (self.num_basis, num_sources)), like.new_zeros(batch_shape)

    def state_features(self, state: State, time: torch.Tensor) -> torch.Tensor:
        traces, last = state
        return traces * torch.exp(-(time - last).unsqueeze(-1) / self.time_constants.to(traces)).unsqueeze(-1)

    def update(self, state: State, time: torch.Tensor, weights: torch.Tensor) -> State:
        return self.state_features(state, time) + weights.unsqueeze(-2), time


class EpanechnikovBasis(Basis):
    r"""The paper's inducing-point bumps
    :math:`\phi_l(d) = \tfrac34 \max(0, 1 - ((d - c_l)/h)^2)` with centres
    ``c = linspace(low, high, L)`` and width ``h`` (finite support: a history window).

    **References**

    [1] H. Kajino, "A Differentiable Point Process with Its Application to Spiking Neural
        Networks", ICML 2021.

    :param int num_basis: ``L``, number of bumps (2 in the paper).
    :param float low: first centre (paper: 0).
    :param float high: last centre (paper: 10).
    :param float width: ``h`` (paper: 1).
    :param int window: events kept by the scan (None: the whole history).
    """

    def __init__(self, num_basis: int = 2, low: float = 0.0, high: float = 10.0, width: float = 1.0,
                 window: int | None = None) -> None:
        super().__init__()
        if num_basis < 1 or width <= 0 or high < low:
            raise ValueError("EpanechnikovBasis needs num_basis >= 1, width > 0 and high >= low")
        self.register_buffer("centres", torch.linspace(low, high, num_basis, dtype=torch.get_default_dtype()))
        self.width, self.num_basis, self.window = float(width), num_basis, window
        self.support = float(high + width)

    def forward(self, lag: torch.Tensor) -> torch.Tensor:
        lag = lag.unsqueeze(-1)
        z = (lag - self.centres.to(lag)) / self.width
        return torch.where(lag > 0, 0.75 * (1 - z * z).clamp(min=0), torch.zeros_like(z))

    def kinks(self) -> torch.Tensor:
        return torch.cat([self.centres - self.width, self.centres + self.width])


class RaisedCosineBasis(Basis):
    r"""Raised cosines on a log-time axis (Pillow et al., 2008), standard in neuroscience GLMs:
    :math:`\phi_l(d) = \tfrac12 (1 + \cos(\mathrm{clip}(a \log(d + c) - \varphi_l, -\pi, \pi)))`, with
    peaks :math:`\varphi_l` spaced by :math:`\pi/2` so that the bumps tile ``[0, last_peak]``.

    **References**

    [1] J. W. Pillow et al., "Spatio-temporal correlations and visual signalling in a complete
        neuronal population", Nature, 2008.

    :param int num_basis: ``L`` bumps.
    :param float last_peak: lag of the last bump's peak.
    :param float offset: ``c > 0``, the log-axis offset (smaller: finer near zero lag).
    :param int window: events kept by the scan (None: the whole history).
    """

    def __init__(self, num_basis: int = 4, last_peak: float = 10.0, offset: float = 1.0,
                 window: int | None = None) -> None:
        super().__init__()
        if num_basis < 1 or last_peak <= 0 or offset <= 0:
            raise ValueError("RaisedCosineBasis needs num_basis >= 1, last_peak > 0 and offset > 0")
        lo, hi = math.log(offset), math.log(last_peak + offset)
        spacing = (hi - lo) / max(num_basis - 1, 1)
        self.scale = math.pi / 2 / spacing  # a: neighbouring peaks pi/2 apart on the cosine axis
        peaks = torch.linspace(lo, hi, num_basis, dtype=torch.get_default_dtype()) * self.scale
        self.register_buffer("peaks", peaks)
        self.offset, self.num_basis, self.window = float(offset), num_basis, window
        self.support = float(math.exp((float(peaks[-1]) + math.pi) / self.scale) - offset)

    def forward(self, lag: torch.Tensor) -> torch.Tensor:
        lag = lag.unsqueeze(-1)
        positive = lag > 0
        arg = self.scale * torch.log(torch.where(positive, lag, torch.zeros_like(lag)) + self.offset) - self.peaks.to(lag)
        value = 0.5 * (1 + torch.cos(arg.clamp(-math.pi, math.pi)))
        return torch.where(positive & (arg.abs() < math.pi), value, torch.zeros_like(value))

    def kinks(self) -> torch.Tensor:
        edges = torch.cat([self.peaks - math.pi, self.peaks + math.pi]) / self.scale
        return (torch.exp(edges) - self.offset).clamp(min=0)
