"""Intensities written as a user would (no stock class, no filter), shared by
``tests/test_scan_generic.py`` and ``benchmarks/bench_generic.py`` (which puts ``tests/`` on
``sys.path`` to import them): the generic checkpointed paths are tested and timed on the same code.

- :class:`UserPowerLaw`: a power-law Hawkes kernel ``alpha (delta + t)^(-beta)``, optionally cut off
  at a ``support``; the scan state keeps the last ``window`` events (default: the whole history),
  the parallel ``forward`` is pairwise over events.
- :class:`NeuralIntensity`: an MLP over exponential traces of the history; the parallel ``forward``
  is pairwise over events and decays.
"""

from __future__ import annotations

import math

import torch

from pyro_dpp.intensity.base import Intensity, pairwise_lags

__all__ = ["NeuralIntensity", "UserPowerLaw"]

#: the time stored in an empty slot of the scan's event window: far enough in the past that its kernel
#: term (weighted by zero marks anyway) vanishes
_EMPTY_SLOT = -1e9


class UserPowerLaw(Intensity):
    """``lambda_i(t) = mu_i + sum_j alpha_ij sum_{t - support < t_n < t} w_nj (delta + t - t_n)^(-beta)``.

    :param baseline: ``mu``, ``batch x K``.
    :param adjacency: ``alpha``, ``batch x K x (K + C)`` (``C`` context marks).
    :param delta: the kernel's offset (positive).
    :param beta: the kernel's exponent.
    :param support: the lag beyond which an event no longer counts (``inf``: none).
    :param window: how many of the latest events the scan state keeps (None: all of them).
    """

    def __init__(self, baseline, adjacency, delta=1.0, beta=1.5, support=math.inf, window=None):
        super().__init__()
        self.baseline, self.adjacency = baseline, adjacency
        self.delta, self.beta, self.support, self.window = delta, beta, support, window
        self.num_marks = baseline.shape[-1]
        self.num_context_marks = adjacency.shape[-1] - self.num_marks

    @property
    def batch_shape(self):
        return self.baseline.shape[:-1]

    def _kernel(self, lag, before):
        inside = before & (lag < self.support) if math.isfinite(self.support) else before
        return torch.where(inside, (self.delta + lag) ** (-self.beta), torch.zeros_like(lag))

    def initial_state(self, batch_shape, like, num_steps):
        w = max(1, num_steps) if self.window is None else min(self.window, max(1, num_steps))
        return like.new_full(batch_shape + (w,), _EMPTY_SLOT), like.new_zeros(batch_shape + (w, self.num_history_marks))

    def rates(self, state, time):
        times, weights = state
        lag = time.unsqueeze(-1) - times
        drive = (self._kernel(lag, lag > 0).unsqueeze(-1) * weights).sum(-2)  # batch x (K + C)
        return self.baseline + (self.adjacency * drive.unsqueeze(-2)).sum(-1)

    def update(self, state, time, weights):
        times, history = state
        return (torch.cat([times[..., 1:], time.unsqueeze(-1)], -1),
                torch.cat([history[..., 1:, :], weights.unsqueeze(-2)], -2))

    def forward(self, times, weights, query):
        lag, before = pairwise_lags(times, query)
        return self.baseline.unsqueeze(-2) + (self._kernel(lag, before) @ weights) @ self.adjacency.transpose(-1, -2)

    def breakpoints(self, times, weights):
        # the cut-off makes a kink ``support`` after each event
        return times + self.support if math.isfinite(self.support) else None


class NeuralIntensity(Intensity):
    """``lambda = a * sigmoid(MLP(exponential traces of the history))``, bounded by ``a K``.

    :param num_marks: ``K``.
    :param decays: the traces' decay rates, a 1-d tensor; its dtype is the module's.
    :param num_context_marks: ``C``, history-only marks.
    :param hidden: the MLP's hidden width.
    :param amplitude: ``a``.
    :param seed: seeds the weights, drawn ``N(0, scale^2)``.
    :param scale: the weights' standard deviation.
    """

    def __init__(self, num_marks, decays, num_context_marks=0, hidden=6, amplitude=2.0, seed=0, scale=0.8):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.num_marks, self.num_context_marks = num_marks, num_context_marks
        self.decays, self.amplitude = decays, amplitude
        self.hidden = torch.nn.Linear(decays.shape[-1] * self.num_history_marks, hidden).to(decays.dtype)
        self.out = torch.nn.Linear(hidden, num_marks).to(decays.dtype)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale)

    @property
    def batch_shape(self):
        return torch.Size()

    def _from_traces(self, traces):
        return self.amplitude * torch.sigmoid(self.out(torch.tanh(self.hidden(traces.flatten(-2)))))

    def _decayed(self, state, time):
        traces, last = state
        return traces * torch.exp(-(time - last).unsqueeze(-1) * self.decays).unsqueeze(-1)

    def initial_state(self, batch_shape, like, num_steps):
        u = self.decays.shape[-1]
        return like.new_zeros(batch_shape + (u, self.num_history_marks)), like.new_zeros(batch_shape)

    def rates(self, state, time):
        return self._from_traces(self._decayed(state, time))

    def update(self, state, time, weights):
        return self._decayed(state, time) + weights.unsqueeze(-2), time

    def forward(self, times, weights, query):
        lag, before = pairwise_lags(times, query)
        kernel = torch.where(before.unsqueeze(-1), torch.exp(-lag.unsqueeze(-1) * self.decays), lag.new_zeros(()))
        return self._from_traces(torch.einsum("...qeu,...ed->...qud", kernel, weights))

    def max_rate(self):
        return torch.tensor(self.amplitude * self.num_marks, dtype=self.decays.dtype)
