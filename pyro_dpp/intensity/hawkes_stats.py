r"""Sufficient statistics of exponential Hawkes data for fixed decays.

With the decays :math:`\beta` fixed, the exact log-likelihood of :class:`~pyro_dpp.intensity.ExpHawkes`
is a cheap function of (baseline, adjacency) given statistics of the data computed once:

.. math::
    \log L(\mu, \alpha) = \sum_e \log\Big(\mu_{k_e} + \sum_j \alpha_{k_e j}\beta_{k_e j} G_{ej}\Big)
    - T\sum_i \mu_i - \sum_{ij} \alpha_{ij} H_{ij},

    G_{ej} = \sum_{n: t_n < t_e} w_{nj}\, e^{-\beta_{k_e j}(t_e - t_n)}, \qquad
    H_{ij} = \sum_n w_{nj}\,\big(1 - e^{-\beta_{ij}(T - t_n)}\big)

over the events :math:`e` (mark :math:`k_e`) and the history :math:`n` (events and context). An
evaluation then costs one dot product of length ``1 + K + C`` per event (tick's
``ModelHawkesExpKernLogLik`` precomputes the same quantities). :class:`~pyro_dpp.PointProcess`
uses these statistics automatically when it scores the same data tensor again (MCMC, SVI, MLE
loops): see :func:`cached_statistics`.

**References**

[1] E. Bacry, M. Bompaire, S. Gaiffas, J.-F. Muzy, "tick: a Python library for statistical
    learning, with an emphasis on Hawkes processes and time-dependent models", JMLR, 2018.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch

from ._decay import decayed_sums
from .hawkes import ExpHawkes

#: How many data sets :func:`cached_statistics` keeps (most recently used last); entries whose data
#: tensor was garbage-collected are dropped.
CACHE_SIZE = 4

#: Tensor types the hand-written gradient handles (subclasses go through plain torch operations).
_PLAIN = (torch.Tensor, torch.nn.Parameter)


class ExpHawkesStatistics:
    """The statistics ``G`` and ``H`` above for one data set and fixed decays.

    :param torch.Tensor value: exact realization ``batch x E x (K + 2)`` (one-hot marks).
    :param decay: the decays, a scalar or ``K x (K + C)`` (no batch dimensions).
    :param duration: window lengths, broadcastable to the batch shape.
    :param context: optional context realization ``batch x M x (C + 2)``.
    :param int num_marks: ``K``.
    :param int num_context_marks: ``C`` (default: the context's marks, or 0 without context).
    """

    def __init__(self, value: torch.Tensor, decay: Any, duration: Any, num_marks: int,
                 context: torch.Tensor | None = None, num_context_marks: int | None = None) -> None:
        from ..likelihood import history, trim_padding  # likelihood imports the intensities

        value = trim_padding(value).detach()
        context = trim_padding(context)
        context = None if context is None else context.detach()
        k = num_marks
        if num_context_marks is None:
            num_context_marks = 0 if context is None else context.shape[-1] - 2
        c = num_context_marks
        if context is not None and context.shape[-1] - 2 != c:
            raise ValueError(f"context must have {c} marks, got {context.shape[-1] - 2}")
        decay = torch.as_tensor(decay, dtype=value.dtype, device=value.device).detach()
        if decay.dim() > 2 or (decay.dim() == 2 and decay.shape != (k, k + c)):
            raise ValueError(f"decay must be a scalar or {k} x {k + c}, got shape {tuple(decay.shape)}")
        duration = torch.as_tensor(duration, dtype=value.dtype, device=value.device).detach()
        batch = torch.broadcast_shapes(value.shape[:-2], duration.shape,
                                       () if context is None else context.shape[:-2])
        value = value.expand(batch + value.shape[-2:])
        times, weights = history(value, k, context, c)  # batch x (E + M), batch x (E + M) x D
        d = k + c
        uniform = decay.numel() == 1
        rates = decay.reshape(1, 1) if uniform else decay
        marks_w = value[..., 1 : 1 + k]
        real = marks_w.sum(-1) > 0.5  # batch x E
        traces = decayed_sums(times, weights, value[..., 0], rates)  # batch x E x (1 or K) x D
        mark = marks_w.argmax(-1)  # batch x E
        if not uniform:
            traces = traces.gather(-2, mark[..., None, None].expand(batch + (value.shape[-2], 1, d)))
        traces = traces.squeeze(-2)  # batch x E x D: G, with the decays of each event's own mark
        remaining = (duration.expand(batch).unsqueeze(-1) - times).clamp(min=0)
        inside = -torch.expm1(-decay.expand(k, d) * remaining[..., None, None])  # batch x (E+M) x K x D
        self.compensator_stats = (inside * weights.unsqueeze(-2)).sum(-3)  # batch x K x D: H
        self.duration = duration.expand(batch)
        self.batch_shape = batch
        self.num_marks, self.num_context_marks = k, c
        self.decay = decay
        # the real events, grouped by mark (then sequence): per mark, features [1, G_e] as a
        # (1 + D) x E_k matrix, so that the rates of its events are one vector-matrix product
        features = torch.cat([torch.ones_like(traces[..., :1]), traces], -1)[real]  # events x (1 + D)
        sequence = torch.arange(batch.numel(), device=value.device).reshape(batch + (1,)).expand(real.shape)[real]
        mark = mark[real]
        order = torch.argsort(mark * batch.numel() + sequence, stable=True)
        counts = torch.bincount(mark, minlength=k).tolist()
        self._features_by_mark = [f.t().contiguous() for f in features[order].split(counts)]  # K x [(1+D) x E_k]
        self._counts = counts
        self._sequence = sequence[order]  # events: the flat batch index of each event, in that order
        # events of one (mark, sequence) pair are contiguous: their log-rates are summed by segments
        self._segments = torch.bincount(mark * batch.numel() + sequence, minlength=k * batch.numel())
        # statistics of a tensor subclass (Pyro's provenance tracking in TraceGraph_ELBO) keep
        # its semantics only through torch operations, not through a custom autograd Function
        tensors = self._features_by_mark + [self.compensator_stats, self._sequence]
        self._plain = all(type(t) in _PLAIN for t in tensors)

    def log_likelihood(self, baseline: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        """``batch`` exact log-likelihoods (differentiable in ``baseline`` ``K`` and ``adjacency``
        ``K x (K + C)``; no batch dimensions on the parameters)."""
        k, d = self.num_marks, self.num_marks + self.num_context_marks
        if baseline.shape != (k,) or adjacency.shape != (k, d):
            raise ValueError(
                f"baseline must have shape ({k},) and adjacency ({k}, {d}), got {tuple(baseline.shape)} and "
                f"{tuple(adjacency.shape)}"
            )
        if torch.is_grad_enabled() and (baseline.requires_grad or adjacency.requires_grad):
            if self._plain and type(baseline) in _PLAIN and type(adjacency) in _PLAIN:
                return _LogLikelihood.apply(baseline, adjacency, self)
            return self._log_likelihood(baseline, adjacency)
        return self._forward(baseline, adjacency)[0]

    def _rates(self, baseline: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        """The intensity at each event, at its own mark (events grouped by mark)."""
        theta = torch.cat([baseline.unsqueeze(-1), adjacency * self.decay], -1)  # K x (1 + D)
        return torch.cat([theta[i] @ f for i, f in enumerate(self._features_by_mark)])  # events

    def _forward(self, baseline: torch.Tensor, adjacency: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The log-likelihood and the rates at the events, by the fastest operations (segment sums,
        whose backward is not differentiable: for values without a graph)."""
        rates = self._rates(baseline, adjacency)
        events = torch.segment_reduce(torch.log(rates), "sum", lengths=self._segments)
        events = events.reshape(self.num_marks, -1).sum(0).reshape(self.batch_shape)
        value = events - baseline.sum() * self.duration - (adjacency * self.compensator_stats).sum((-1, -2))
        return value, rates

    def _log_likelihood(self, baseline: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        """The log-likelihood in differentiable torch operations (any order of derivatives)."""
        log_rates = torch.log(self._rates(baseline, adjacency))
        # index_add, not segment_reduce: its backward is not differentiable
        events = log_rates.new_zeros(self.batch_shape.numel()).index_add(0, self._sequence, log_rates)
        events = events.reshape(self.batch_shape)
        return events - baseline.sum() * self.duration - (adjacency * self.compensator_stats).sum((-1, -2))

    def _gradient(self, grad: torch.Tensor, rates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The vector-Jacobian product of :meth:`_log_likelihood` with ``grad`` (``batch``), given the
        rates: per mark, the features weighted by ``grad / rate`` of their sequence, summed."""
        grad = grad.reshape(-1)
        weights = (grad.index_select(0, self._sequence) / rates).split(self._counts)
        theta_grad = torch.stack([f @ w for f, w in zip(self._features_by_mark, weights)])  # K x (1 + D)
        baseline_grad = theta_grad[:, 0] - (grad * self.duration.reshape(-1)).sum()
        stats = self.compensator_stats.reshape((-1,) + self.compensator_stats.shape[-2:])  # sequences x K x D
        compensator = (grad.reshape(-1, 1, 1) * stats).sum(0)
        return baseline_grad, theta_grad[:, 1:] * self.decay - compensator


class _LogLikelihood(torch.autograd.Function):
    """:meth:`ExpHawkesStatistics.log_likelihood` with a hand-written first derivative (the
    gradient loop of every MCMC, SVI or maximum-likelihood step: a few tensor operations instead
    of the autograd graph of the forward pass); higher derivatives differentiate the plain formula."""

    @staticmethod
    def forward(ctx: Any, baseline: torch.Tensor, adjacency: torch.Tensor, stats: ExpHawkesStatistics) -> torch.Tensor:
        value, rates = stats._forward(baseline, adjacency)
        ctx.save_for_backward(baseline, adjacency)
        ctx.stats, ctx.rates = stats, rates
        return value

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        baseline, adjacency = ctx.saved_tensors
        stats = ctx.stats
        if torch.is_grad_enabled():  # create_graph: a derivative that is itself differentiable
            with torch.enable_grad():
                value = stats._log_likelihood(baseline, adjacency)
                inputs = [x for x in (baseline, adjacency) if x.requires_grad]
                grads = iter(torch.autograd.grad(value, inputs, grad, create_graph=True))
            return tuple(next(grads) if x.requires_grad else None for x in (baseline, adjacency)) + (None,)
        baseline_grad, adjacency_grad = stats._gradient(grad, ctx.rates)
        return (baseline_grad if ctx.needs_input_grad[0] else None,
                adjacency_grad if ctx.needs_input_grad[1] else None, None)


class _Entry:
    def __init__(self, value: torch.Tensor, context: torch.Tensor | None, key: tuple,
                 stats: ExpHawkesStatistics) -> None:
        self.value = weakref.ref(value)
        self.context = None if context is None else weakref.ref(context)
        self.key, self.stats = key, stats

    def matches(self, value: torch.Tensor, context: torch.Tensor | None, key: tuple) -> bool:
        same_context = (context is None) if self.context is None else self.context() is context
        return self.value() is value and same_context and self.key == key


_CACHE: list[_Entry] = []


def cached_statistics(intensity: ExpHawkes, value: torch.Tensor, duration: torch.Tensor,
                      context: torch.Tensor | None) -> ExpHawkesStatistics | None:
    """Statistics for scoring ``value`` under ``intensity``, reused while the same data tensor
    (unmodified: its version counter is part of the key) is scored with the same decays, duration
    and context; None where they do not apply (decays with gradients or batch dimensions, batched
    baseline or adjacency, data with gradients). The first call computes and stores them (as much
    work as one ordinary evaluation); a tensor that is garbage-collected drops out."""
    decay = intensity.decay
    if (decay.requires_grad or value.requires_grad or intensity.batch_shape != ()
            or intensity.baseline.dim() != 1 or intensity.adjacency.dim() != 2 or decay.dim() > 2
            or (context is not None and context.requires_grad)
            or torch.jit.is_tracing() or torch.compiler.is_compiling()):
        return None
    key = (
        value._version, None if context is None else context._version, value.dtype, value.device,
        tuple(decay.detach().cpu().reshape(-1).tolist()), tuple(decay.shape),
        tuple(duration.detach().cpu().reshape(-1).tolist()), tuple(duration.shape), intensity.num_marks,
    )
    _CACHE[:] = [entry for entry in _CACHE if entry.value() is not None]  # data that is gone
    for i, entry in enumerate(_CACHE):
        if entry.matches(value, context, key):
            _CACHE.append(_CACHE.pop(i))
            return entry.stats
    weights = value[..., 1:]
    if not bool(((weights == 0) | (weights == 1)).all()):
        return None  # soft rows: the general formula weighs log-rates by the weights
    stats = ExpHawkesStatistics(value, decay, duration, intensity.num_marks, context, intensity.num_context_marks)
    _CACHE.append(_Entry(value, context, key, stats))
    del _CACHE[:-CACHE_SIZE]
    return stats
