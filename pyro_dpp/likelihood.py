"""Densities: the exact point-process log-likelihood and the DPP (relaxed thinning) density.

Exact (DESIGN §2)::

    log p = sum_e log lambda_{k_e}(t_e | H) - sum_k integral_0^T lambda_k(t | H_t) dt

with the compensator in closed form where the intensity offers one, otherwise by Gauss-Legendre
quadrature between consecutive history events and kernel kinks (the intensity is smooth there, so
the rule converges exponentially fast in the number of nodes).

Differentiable point process (temperature tau > 0)::

    log q = N log lambda_bar - lambda_bar T + sum_n log Concrete_tau(y_n ; pi_n)

with the Concrete density evaluated in log space from the log-weights.

**Exact data in the index layout** (``batch x events x 2``: time, mark id; see
:mod:`pyro_dpp.events`) is scored without the one-hot weights of all events: the first sum needs
the log-intensity of each event at its own mark only, and the compensator is computed a chunk of
events at a time (:func:`~pyro_dpp.index_likelihood.index_log_likelihood`).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .events import event_mask, index_to_dense, is_index
from .intensity._support import SupportWindows
from .intensity.base import Intensity, safe_log
from .relaxed import carried_log_weights, plain
from .scan.backend import get_backend
from .scan.generic_scoring import scan_score, scores_by_scan
from .scan.reuse import recall
from .thinning import bound_tolerance

#: Gauss-Legendre nodes per interval between breakpoints used by default.
DEFAULT_QUADRATURE_NODES = 8
_QUERY_CHUNK = 1 << 14


def _rows_in_use(value: torch.Tensor) -> int:
    """The rows up to the last real one of any sequence; all rows under :func:`torch.jit.trace`,
    which would otherwise freeze the count of the traced data."""
    if torch.jit.is_tracing() or not value.numel():
        return value.shape[-2]
    return int(event_mask(value).sum(-1).max())


#: On a CUDA device the parallel ``forward`` scores in a few large kernels where the scan launches
#: several per event (measured, ``benchmarks/bench_cuda.py``: 5,000 events on an H200, 0.01 s against
#: 1.5-2.6 s), so it is taken there while its pairwise tensors fit: (queries x history rows) pairs at
#: ``_BYTES_PER_PAIR`` (a few float32 per pair for the evaluation and what its backward keeps) within
#: ``_PARALLEL_MEMORY_SHARE`` of the device's memory.
_BYTES_PER_PAIR = 64
_PARALLEL_MEMORY_SHARE = 1 / 8


def _parallel_fits(times: torch.Tensor, queries: int) -> bool:
    """Whether the parallel ``forward`` at ``queries`` query times per sequence against the history
    ``times`` (``batch x rows``) is the faster way and fits: on a CUDA device only."""
    if times.device.type != "cuda":
        return False
    pairs = times.shape[:-1].numel() * queries * times.shape[-1]
    memory = torch.cuda.get_device_properties(times.device).total_memory
    return pairs * _BYTES_PER_PAIR <= memory * _PARALLEL_MEMORY_SHARE


def use_scan(intensity: Intensity, times: torch.Tensor, queries: int, *tensors: torch.Tensor | None) -> bool:
    """Whether scoring runs as a scan over the events (:mod:`pyro_dpp.scan.generic_scoring`) rather
    than through the intensity's parallel ``forward``: for an intensity that has a scan and does not
    ask for parallel scoring (:attr:`~pyro_dpp.intensity.base.Intensity.parallel_scoring`), under
    every backend but ``"reference"``, unless a gradient with respect to one of ``tensors`` (the
    duration) is needed (the scan's intervals carry none), or the history ``times`` live on a CUDA
    device where the parallel evaluation at ``queries`` query times per sequence fits in memory
    (:func:`_parallel_fits`)."""
    if get_backend() == "reference" or not scores_by_scan(intensity) or _parallel_fits(times, queries):
        return False
    return not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors))


def trim_padding(value: torch.Tensor | None) -> torch.Tensor | None:
    """Drop the padding rows that every sequence of the batch has (they change no density)."""
    if value is None or value.shape[-2] == 0:
        return value
    value = plain(value)
    rows = _rows_in_use(value)
    return value[..., :rows, :] if rows < value.shape[-2] else value


def history(value: torch.Tensor, num_marks: int, context: torch.Tensor | None,
            num_context_marks: int, past: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The events of ``value``, ``context`` and ``past`` (events of the modelled marks before the
    window, :mod:`pyro_dpp.past`) as one weighted history.

    :returns: ``times`` (batch x (E + M + P)) and ``weights`` (batch x (E + M + P) x (K + C)):
        modelled marks first, then context marks; the rows of ``value`` first, then the context's,
        then the past's; the rows need not be sorted.
    """
    if past is not None and past.shape[-2]:
        times, weights = history(value, num_marks, context, num_context_marks)
        w = past[..., 1 : 1 + num_marks]
        w = torch.cat([w, w.new_zeros(w.shape[:-1] + (num_context_marks,))], -1)
        batch = torch.broadcast_shapes(times.shape[:-1], past.shape[:-2])
        times = torch.cat([times.expand(batch + times.shape[-1:]), past[..., 0].expand(batch + past.shape[-2:-1])], -1)
        weights = torch.cat([weights.expand(batch + weights.shape[-2:]), w.expand(batch + w.shape[-2:])], -2)
        return times, weights
    times = value[..., 0]
    weights = value[..., 1 : 1 + num_marks]
    if num_context_marks:
        weights = torch.cat([weights, weights.new_zeros(weights.shape[:-1] + (num_context_marks,))], -1)
    if context is None or context.shape[-2] == 0:
        return times, weights
    batch = torch.broadcast_shapes(value.shape[:-2], context.shape[:-2])
    ctx = context.expand(batch + context.shape[-2:])
    ctx_w = ctx[..., 1 : 1 + num_context_marks]
    ctx_w = torch.cat([ctx_w.new_zeros(ctx_w.shape[:-1] + (num_marks,)), ctx_w], -1)
    times = torch.cat([times.expand(batch + times.shape[-1:]), ctx[..., 0]], -1)
    weights = torch.cat([weights.expand(batch + weights.shape[-2:]), ctx_w], -2)
    return times, weights


def evaluate(intensity: Intensity, times: torch.Tensor, weights: torch.Tensor, query: torch.Tensor,
             log: bool = False) -> torch.Tensor:
    """``intensity(times, weights, query)`` (or its ``log_forward``) in chunks of queries, to bound memory."""
    fn = intensity.log_forward if log else intensity
    if query.shape[-1] <= _QUERY_CHUNK:
        return fn(times, weights, query)
    # a kernel of finite support: each chunk sees only the events within it (linear total cost)
    windows = SupportWindows(times, weights, intensity.history_support())
    parts = [fn(*windows.covering(q, q), q) for q in query.split(_QUERY_CHUNK, dim=-1)]
    return torch.cat(parts, -2)


def gauss_legendre(nodes: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``nodes``-point Gauss-Legendre rule on ``[-1, 1]``: nodes and weights with ``like``'s
    dtype and device (numba twin: ``_gauss_tables`` in :mod:`pyro_dpp.intensity._glm_numba`)."""
    x, w = np.polynomial.legendre.leggauss(nodes)
    return like.new_tensor(x), like.new_tensor(w)


def quadrature_compensator(
    intensity: Intensity, times: torch.Tensor, weights: torch.Tensor, duration: torch.Tensor,
    nodes: int = DEFAULT_QUADRATURE_NODES,
) -> torch.Tensor:
    """``batch`` integral of the summed intensity over ``[0, duration]`` by Gauss-Legendre quadrature
    with ``nodes`` nodes on each interval between consecutive breakpoints (history event times and
    the intensity's kinks)."""
    batch = torch.broadcast_shapes(times.shape[:-1], duration.shape)
    times = times.expand(batch + times.shape[-1:])
    duration = duration.expand(batch)
    points = [times.new_zeros(batch + (1,)), times.detach()]
    extra = intensity.breakpoints(times.detach(), weights)
    if extra is not None:
        points.append(extra.expand(batch + extra.shape[-1:]))
    end = duration.unsqueeze(-1)
    points = torch.cat(points + [end], -1)
    points = torch.minimum(points.clamp(min=0), end).sort(-1).values
    if not torch.jit.is_tracing():  # a trace must not freeze the count of the traced data
        inside = int((points < end).sum(-1).max()) + 1  # the rest are zero-length intervals at the end
        points = torch.cat([points[..., :inside], end], -1)
    left, right = points[..., :-1], points[..., 1:]
    x, w = gauss_legendre(nodes, times)
    half = (right - left) / 2
    centre = (left + right) / 2
    # sort the history once (the chunks below would each sort it otherwise)
    order = times.detach().argsort(-1)
    times = times.gather(-1, order)
    weights = weights.expand(batch + weights.shape[-2:]).gather(
        -2, order.unsqueeze(-1).expand(order.shape + weights.shape[-1:]))
    # a kernel of finite support: each chunk sees only the events within it (linear total cost)
    windows = SupportWindows(times, weights, intensity.history_support(), presorted=True)
    total = 0.0
    chunk = max(1, _QUERY_CHUNK // nodes)
    for c, h in zip(centre.split(chunk, -1), half.split(chunk, -1)):
        near_t, near_w = windows.covering(c - h, c + h)
        part = intensity.integrate_intervals(near_t, near_w, c, h, nodes)
        if part is None:
            query = c.unsqueeze(-1) + h.unsqueeze(-1) * x  # batch x P x nodes
            rates = evaluate(intensity, near_t, near_w, query.flatten(-2)).sum(-1).reshape(query.shape)
            part = (rates * h.unsqueeze(-1) * w).sum((-1, -2))
        total = total + part
    return total


def compensator(
    intensity: Intensity, times: torch.Tensor, weights: torch.Tensor, duration: torch.Tensor,
    nodes: int = DEFAULT_QUADRATURE_NODES,
) -> torch.Tensor:
    """The closed form if the intensity has one, else :func:`quadrature_compensator`."""
    closed = intensity.compensator(times, weights, duration)
    if closed is not None:
        return closed
    return quadrature_compensator(intensity, times, weights, duration, nodes)


def exact_log_likelihood(
    intensity: Intensity, value: torch.Tensor, duration: torch.Tensor, context: torch.Tensor | None = None,
    nodes: int = DEFAULT_QUADRATURE_NODES, past: torch.Tensor | None = None,
) -> torch.Tensor:
    """``batch`` exact log-likelihood of the events in ``value``, given the ``context`` and the
    ``past`` events before the window (:mod:`pyro_dpp.past`; not scored): a dense realization
    tensor, or an index value (``batch x events x 2``, scored by
    :func:`~pyro_dpp.index_likelihood.index_log_likelihood`)."""
    if is_index(value):
        if past is not None:
            # a window with its past: bounded by the window, scored in the dense layout (memory-checked)
            value = index_to_dense(value, intensity.num_marks)
        else:
            from .index_likelihood import index_log_likelihood  # it builds on this module

            return index_log_likelihood(intensity, value, duration, context, nodes)
    k = intensity.num_marks
    value, context, past = trim_padding(value), trim_padding(context), trim_padding(past)
    times, weights = history(value, k, context, intensity.num_context_marks, past)
    # the parallel path queries the events and, without a closed compensator, ``nodes`` points per interval
    if use_scan(intensity, times, value.shape[-2] * (1 + nodes), duration):
        closed = intensity.compensator(times, weights, duration)
        grid = None if closed is not None else torch.stack(gauss_legendre(nodes, times))
        log_rates, comp = scan_score(intensity, times, weights, duration, grid)
        log_rates = log_rates[..., : value.shape[-2], :]  # batch x E x K
        comp = closed if closed is not None else comp
    else:
        log_rates = evaluate(intensity, times, weights, value[..., 0], log=True)  # batch x E x K
        comp = compensator(intensity, times, weights, duration, nodes)
    marks = value[..., 1 : 1 + k]
    chosen = marks > 0
    log_rates = torch.where(chosen, log_rates, torch.zeros_like(log_rates))
    events = (marks * log_rates).sum((-1, -2))
    return events - comp


def concrete_log_density(log_y: torch.Tensor, log_pi: torch.Tensor, temperature: float) -> torch.Tensor:
    r"""Log density of ``y = exp(log_y)`` under Concrete(pi, tau), over the last dimension:

    .. math::
        \log (M-1)! + (M-1)\log\tau + \sum_i [\log\pi_i - (\tau+1)\log y_i]
        - M \log\sum_i \pi_i y_i^{-\tau}

    Classes with :math:`\pi_i = 0` are degenerate (:math:`y_i = 0` almost surely) and dropped, so
    ``M`` counts the classes with positive probability; a value with weight on such a class has
    density zero (``-inf``).

    **References**

    [1] C. J. Maddison, A. Mnih, Y. W. Teh, "The Concrete Distribution", ICLR 2017.
    [2] E. Jang, S. Gu, B. Poole, "Categorical Reparameterization with Gumbel-Softmax", ICLR 2017.
    """
    active = log_pi > -math.inf
    m = active.sum(-1).to(log_pi.dtype)
    lp = torch.where(active, log_pi, torch.zeros_like(log_pi))
    # A weight of a possible class that underflowed to zero (the sampler's probability of that class
    # rounded to zero, e.g. saturated sigmoids in float32) is read as the smallest normal number:
    # it was below that, and an exact zero would make the density inf - inf.
    floor = math.log(torch.finfo(log_y.dtype).tiny)
    ly = torch.where(log_y > -math.inf, log_y, torch.full_like(log_y, floor))
    ly = torch.where(active, ly, torch.zeros_like(log_y))
    terms = torch.where(active, lp - (temperature + 1) * ly, torch.zeros_like(lp)).sum(-1)
    lse = torch.logsumexp(torch.where(active, lp - temperature * ly, torch.full_like(lp, -math.inf)), -1)
    density = torch.lgamma(m) + (m - 1) * math.log(temperature) + terms - m * lse
    impossible = (~active & (log_y > -math.inf)).any(-1)
    return torch.where(impossible, torch.full_like(density, -math.inf), density)


def relaxed_log_weights(value: torch.Tensor, num_marks: int, log_pi: torch.Tensor | None = None) -> torch.Tensor:
    """The log-weights of a relaxed realization: the exact ones carried by ``rsample``'s output
    (:func:`~pyro_dpp.events.carried_log_weights`), else the logarithm of the stored weights. A zero
    weight is an underflow (and raises) unless ``log_pi`` is given and says its class has
    probability zero (then its log-weight is -inf)."""
    carried = carried_log_weights(value)
    if carried is not None:
        return carried
    weights = value[..., 1 : num_marks + 2]
    real = event_mask(value).unsqueeze(-1)
    zero = real & (weights <= 0)
    if log_pi is not None:
        zero = zero & (log_pi > -math.inf)
    if zero.any():
        one_hot = (weights == 1).sum(-1, keepdim=True) == 1
        if bool((~real | (one_hot & ((weights == 0) | (weights == 1)).all(-1, keepdim=True))).all()):
            raise ValueError(
                "the value holds exact (one-hot) events, which a relaxed process (temperature > 0) gives density "
                "zero: score exact events with temperature=0 (the exact process), or pass "
                "relaxed_log_prob='exact' to score them with the exact log-likelihood formula"
            )
        raise ValueError(
            "a relaxed value has weights that are exactly zero (underflow at low temperature), so its "
            "density cannot be recovered from the weights alone; score the tensor returned by rsample (or a "
            "clone, slice or stack of it: they carry its log-weights, other operations drop them), or sample "
            "in float64"
        )
    return torch.where(real, safe_log(weights), torch.zeros_like(weights))


def dpp_log_density(
    intensity: Intensity, value: torch.Tensor, duration: torch.Tensor, bound: torch.Tensor, temperature: float,
    context: torch.Tensor | None = None, past: torch.Tensor | None = None,
) -> torch.Tensor:
    """``batch`` log density of a relaxed realization under the differentiable point process, given
    the ``context`` and the ``past`` events before the window (:mod:`pyro_dpp.past`)."""
    if torch.jit.is_tracing():
        raise ValueError(
            "the DPP density cannot be traced by torch.jit.trace (e.g. JitTrace_ELBO): the log-weights a relaxed "
            "value carries are not inputs of the trace, which would freeze them; use Trace_ELBO, or "
            "relaxed_log_prob='exact' (it scores the weights alone)"
        )
    k = intensity.num_marks
    carried = carried_log_weights(value)
    sampled = recall(value, intensity, context)  # the sampler's own log-rates for this draw, or None
    value = plain(value)
    rows = _rows_in_use(value)
    value, context = value[..., :rows, :], trim_padding(context)
    times, weights = history(value, k, context, intensity.num_context_marks, trim_padding(past))
    if sampled is not None and past is None:
        log_rates = sampled[..., :rows, :]
    elif use_scan(intensity, times, value.shape[-2]):
        log_rates = scan_score(intensity, times, weights, duration, None)[0][..., : value.shape[-2], :]
    else:
        log_rates = evaluate(intensity, times, weights, value[..., 0], log=True)  # batch x N x K
    real = event_mask(value)
    total = log_rates.exp().sum(-1)
    ratio = torch.where(real, total / bound.unsqueeze(-1), torch.zeros_like(total))
    if (ratio > 1 + bound_tolerance(ratio.dtype)).any():
        raise ValueError(
            f"the summed intensity reached {float(ratio.max()):.6g} times the bound at a candidate; "
            "the bound must dominate the intensity everywhere: pass a larger bound"
        )
    rest = (1 - ratio).clamp(min=0)
    log_pi = torch.cat([log_rates - torch.log(bound)[..., None, None], safe_log(rest).unsqueeze(-1)], -1)
    log_y = carried[..., :rows, :] if carried is not None else relaxed_log_weights(value, k, log_pi)
    # The "no event" probability is a difference that rounds to zero as the intensity nears the
    # bound (saturated sigmoids in float32), where the sampler, adding in another order or precision,
    # may still have seen a positive one and drawn a finite log-weight. Read such a rounded-down zero
    # as the smallest normal number, as concrete_log_density reads an underflowed weight: the class
    # stays possible and the density finite (no gradient flows through the floor).
    rounded = real & (rest <= 0) & (log_y[..., -1] > -math.inf)
    floor = torch.full_like(rest, math.log(torch.finfo(rest.dtype).tiny))
    log_pi = torch.cat([log_pi[..., :-1], torch.where(rounded, floor, log_pi[..., -1]).unsqueeze(-1)], -1)
    per_row = concrete_log_density(log_y, log_pi, temperature)
    per_row = torch.where(real, per_row, torch.zeros_like(per_row))
    count = real.sum(-1).to(value.dtype)
    return count * torch.log(bound) - bound * duration + per_row.sum(-1)
