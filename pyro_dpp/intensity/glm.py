"""Nonlinear GLM intensities: a linear filter of the history through a pointwise activation."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from ..scan.backend import numba_usable
from ._support import SupportWindows
from .base import Intensity, State, as_param, check_finite, keeps_math, safe_log
from .basis import Basis
from .basis_base import _rows

ACTIVATIONS = ("sigmoid", "hardtanh", "softplus", "exp")
_ANTICAUSAL_CHUNK = 1 << 12  # queries per evaluation of the anticausal features (bounds memory)


def activate(name: str, potential: torch.Tensor, amplitude: torch.Tensor) -> torch.Tensor:
    """``amplitude * g(potential)`` for the named activation ``g``."""
    if name == "sigmoid":
        return amplitude * torch.sigmoid(potential)
    if name == "hardtanh":
        return amplitude * 0.5 * (F.hardtanh(potential) + 1)
    if name == "softplus":
        return amplitude * F.softplus(potential)
    if name == "exp":
        return amplitude * torch.exp(potential)
    raise ValueError(f"unknown activation {name!r}; choose one of {ACTIVATIONS}")


def log_activate(name: str, potential: torch.Tensor, amplitude: torch.Tensor) -> torch.Tensor:
    """``log(amplitude * g(potential))`` without underflow for very negative potentials."""
    if name == "sigmoid":
        return torch.log(amplitude) + F.logsigmoid(potential)
    if name == "exp":
        return torch.log(amplitude) + potential
    if name == "softplus":
        # softplus(u) = exp(u) (1 + O(exp(u))) for u << 0
        small = potential < -20
        safe = torch.where(small, torch.zeros_like(potential), potential)
        return torch.log(amplitude) + torch.where(small, potential, torch.log(F.softplus(safe)))
    return safe_log(activate(name, potential, amplitude))


class GLM(Intensity):
    r"""A point-process GLM (the SNN's intensity, DESIGN §3):

    .. math::
        u_i(t) = b_i + \sum_l \sum_j W_{lij} \sum_{n: t_n < t} w_{nj}\, \phi_l(t - t_n),
        \qquad \lambda_i(t) = a\, g(u_i(t))

    with a filter basis :math:`\phi` (:mod:`pyro_dpp.intensity.basis`) and an activation ``g``:
    ``"sigmoid"`` and ``"hardtanh"`` are bounded by ``a`` (so ``max_rate = a K``), ``"softplus"`` and
    ``"exp"`` are not (give :class:`~pyro_dpp.PointProcess` a ``bound``; exceeding it raises).

    **References**

    [1] J. W. Pillow et al., Nature, 2008 (point-process GLMs).
    [2] H. Kajino, "A Differentiable Point Process with Its Application to Spiking Neural
        Networks", ICML 2021.

    :param bias: ``batch x K`` biases :math:`b`.
    :param weight: ``batch x L x K x (K + C)`` filter weights :math:`W` (sources: the modelled marks,
        then the context marks).
    :param Basis basis: the filter basis (``L`` functions).
    :param str activation: one of ``"sigmoid"``, ``"hardtanh"``, ``"softplus"``, ``"exp"``.
    :param amplitude: positive ``a``.
    :param future: optional realization tensor ``batch x M x (F + 2)`` of events the intensity sees
        *ahead* of time through anticausal filters (an acausal guide: hidden units that see future
        observed spikes), adding :math:`\sum_l \sum_j V_{lij} \sum_{n: t_n > t} w_{nj} \phi_l(t_n - t)`.
    :param future_weight: ``batch x L x K x F`` anticausal filter weights :math:`V`.
    :param int window: events the scan keeps for a finite-support basis (default: the basis's
        ``window``, else the whole history); an event leaving it while still in the support raises.
    """

    parallel_scoring = True  # chunked, linear-cost parallel paths

    def __init__(self, bias: Any, weight: Any, basis: Basis, activation: str = "sigmoid", amplitude: Any = 1.0,
                 window: int | None = None, future: Any = None, future_weight: Any = None) -> None:
        super().__init__()
        bias = as_param(bias)
        weight = as_param(weight, bias)
        amplitude = as_param(amplitude, bias)
        check_finite("bias", bias)
        check_finite("weight", weight)
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {ACTIVATIONS}")
        if not torch.isfinite(amplitude).all() or (amplitude <= 0).any():
            raise ValueError("amplitude must be positive and finite")
        k = bias.shape[-1]
        if weight.dim() < 3 or weight.shape[-3] != basis.num_basis or weight.shape[-2] != k or weight.shape[-1] < k:
            raise ValueError(
                f"weight must have shape (..., {basis.num_basis}, {k}, {k} + C) for {basis.num_basis} basis "
                f"functions and {k} marks, got {tuple(weight.shape)}"
            )
        self.bias, self.weight, self.amplitude = bias, weight, amplitude
        self.basis, self.activation, self.window = basis, activation, window
        if (future is None) != (future_weight is None):
            raise ValueError("future and future_weight go together: pass both or neither")
        if future is not None:
            future_weight = as_param(future_weight, bias)
            if future.shape[-1] - 2 != future_weight.shape[-1] or future_weight.shape[-3:-1] != weight.shape[-3:-1]:
                raise ValueError(
                    f"future_weight must have shape (..., {basis.num_basis}, {k}, F) for future events with F "
                    f"marks, got {tuple(future_weight.shape)} and future {tuple(future.shape)}"
                )
        self.future, self.future_weight = future, future_weight
        self._ahead: SupportWindows | None = None  # the future events, reversed and sorted (on first use)
        self.num_marks = k
        self.num_context_marks = weight.shape[-1] - k

    def like(self) -> torch.Tensor:
        return self.bias

    @property
    def batch_shape(self) -> torch.Size:
        shapes = [self.bias.shape[:-1], self.weight.shape[:-3], self.amplitude.shape]
        if self.future is not None:
            shapes += [self.future.shape[:-2], self.future_weight.shape[:-3]]
        return torch.broadcast_shapes(*shapes)

    def _anticausal(self, query: torch.Tensor) -> torch.Tensor | float:
        """``batch x Q x K`` potential from future events at ``query`` (``batch x Q``)."""
        if self.future is None:
            return 0.0
        # The events ahead of a query at lag t_n - q are the events before it in reversed time
        # (-t_n < -q): the basis's causal features of the reversed events at the reversed queries,
        # each chunk of queries from the events within one support length of it (linear cost, no
        # queries x events tensor).
        if self._ahead is None:
            self._ahead = SupportWindows(-self.future[..., 0], self.future[..., 1:-1], self.basis.support)
        parts = []
        for q in (-query).split(_ANTICAUSAL_CHUNK, -1):
            features = self.basis.features(*self._ahead.covering(q, q), q)  # batch x Q x L x F
            parts.append(torch.einsum("...qlf,...lkf->...qk", features, self.future_weight))
        return parts[0] if len(parts) == 1 else torch.cat(parts, -2)

    def _state_potential(self, state: State, time: torch.Tensor) -> torch.Tensor:
        """``batch x K`` membrane potential at ``time`` from the scan state."""
        features = self.basis.state_features(state, time)  # batch x L x D
        potential = self.bias + torch.einsum("...ld,...lkd->...k", features, self.weight)
        if self.future is not None:
            potential = potential + self._anticausal(time.unsqueeze(-1)).squeeze(-2)
        return potential

    def _potential(self, times: torch.Tensor, weights: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """``batch x Q x K`` membrane potential at ``query`` from a whole history."""
        fused = getattr(self.basis, "polynomial_potential", None)
        coef = None if fused is None else fused(times, weights, query, self.weight)  # batch x Q x 3 x K
        if coef is not None:  # the kernel projects the events onto the targets: O(L K) per query
            potential = self.bias.unsqueeze(-2) + coef[..., 0, :].to(self.bias.dtype)
            return potential + self._anticausal(query)
        features = self.basis.features(times, weights, query)  # batch x Q x L x D
        potential = self.bias.unsqueeze(-2) + torch.einsum("...qld,...lkd->...qk", features, self.weight)
        return potential + self._anticausal(query)

    def integrate_intervals(self, times: torch.Tensor, weights: torch.Tensor, centre: torch.Tensor,
                            half: torch.Tensor, nodes: int) -> torch.Tensor | None:
        """Between breakpoints the potential of a basis with polynomial pieces (Epanechnikov) is a
        quadratic in time: evaluate the history once per interval, then the Gauss-Legendre nodes
        (fused in one kernel on CPU, where sigmoid intensities use the fewest nodes whose
        analytic error bound stays below :data:`pyro_dpp.intensity._glm_numba.ADAPTIVE_TOL`)."""
        poly = getattr(self.basis, "polynomial_coefficients", None)
        if poly is None or self.future is not None:
            return None
        whole = getattr(self.basis, "polynomial_compensator", None)
        if whole is not None:
            total = whole(times, weights, centre, half, self.weight, self.bias, self.amplitude, self.activation, nodes)
            if total is not None:
                return total
        fused = getattr(self.basis, "polynomial_potential", None)
        coef = None if fused is None else fused(times, weights, centre, self.weight)  # batch x P x 3 x K
        if coef is None:
            feats = poly(times, weights, centre)  # batch x P x 3 x L x D
            coef = torch.einsum("...qmld,...lkd->...qmk", feats, self.weight.to(feats.dtype))
        first = torch.zeros(3, 1, dtype=coef.dtype, device=coef.device)
        first[0] = 1
        coef = coef + (first * self.bias.to(coef.dtype).unsqueeze(-2)).unsqueeze(-3)  # the bias: constant term
        batch = torch.broadcast_shapes(coef.shape[:-3], half.shape[:-1], self.amplitude.shape)
        if numba_usable(times, weights, centre) and not half.requires_grad:
            from ._glm_numba import IntervalIntegrals

            rows = (_rows(coef, batch, 3), _rows(half.detach(), batch, 1), _rows(self.amplitude, batch, 0))
            total = IntervalIntegrals.apply(*rows, self.activation, nodes)
            return total.reshape(batch).to(times.dtype)
        from ..likelihood import gauss_legendre

        x, w = gauss_legendre(nodes, times)
        coef = coef.to(times.dtype)
        s = (half.unsqueeze(-1) * x).unsqueeze(-1)  # batch x P x M x 1
        c0, c1, c2 = (c.unsqueeze(-2) for c in coef.unbind(-2))
        potential = c0 + s * (c1 + s * c2)
        rates = activate(self.activation, potential, self.amplitude[..., None, None, None]).sum(-1)
        return (rates * half.unsqueeze(-1) * w).sum((-1, -2))

    def scan_filter(self, keys: torch.Tensor, batch: torch.Size) -> Any:
        """The basis's filter (:meth:`Basis.scan_filter`), unless this class overrides the GLM's math."""
        return self.basis.scan_filter(self, keys, batch) if keeps_math(self, GLM) else None

    def initial_state(self, batch_shape: torch.Size, like: torch.Tensor, num_steps: int) -> State:
        return self.basis.initial_state(batch_shape, self.num_history_marks, like, num_steps, self.window)

    def rates(self, state: State, time: torch.Tensor) -> torch.Tensor:
        return activate(self.activation, self._state_potential(state, time), self.amplitude.unsqueeze(-1))

    def log_rates(self, state: State, time: torch.Tensor) -> torch.Tensor:
        return log_activate(self.activation, self._state_potential(state, time), self.amplitude.unsqueeze(-1))

    def update(self, state: State, time: torch.Tensor, weights: torch.Tensor) -> State:
        return self.basis.update(state, time, weights)

    def forward(self, times: torch.Tensor, weights: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        return activate(self.activation, self._potential(times, weights, query), self.amplitude[..., None, None])

    def log_forward(self, times: torch.Tensor, weights: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        return log_activate(self.activation, self._potential(times, weights, query), self.amplitude[..., None, None])

    def breakpoints(self, times: torch.Tensor, weights: torch.Tensor) -> torch.Tensor | None:
        kinks = self.basis.kinks()
        if kinks is None:
            if self.future is None:
                return None
            return self.future[..., 0]  # the anticausal drive jumps at future events
        kinks = kinks.to(times)
        kinks = kinks[kinks > 0]
        points = (times.unsqueeze(-1) + kinks).flatten(-2)
        if self.future is not None:
            ahead = (self.future[..., 0].unsqueeze(-1) - kinks).flatten(-2)
            batch = torch.broadcast_shapes(points.shape[:-1], ahead.shape[:-1])
            points = torch.cat([points.expand(batch + points.shape[-1:]), ahead.expand(batch + ahead.shape[-1:])], -1)
        return points

    def history_reach(self, dtype: torch.dtype | None = None) -> float | None:
        """The basis's :meth:`~pyro_dpp.intensity.Basis.history_reach` (see
        :meth:`Intensity.history_reach`)."""
        return self.basis.history_reach(self.bias.dtype if dtype is None else dtype)

    def history_support(self) -> float:
        # a finite support, or exponential filters whose tails sum to below precision beyond the
        # reach; a subclass that changes the math may look further back
        reach = self.history_reach() if keeps_math(self, GLM) else None
        return math.inf if reach is None else reach

    def max_rate(self) -> torch.Tensor | None:
        if self.activation in ("sigmoid", "hardtanh"):
            return self.amplitude * self.num_marks
        return None
