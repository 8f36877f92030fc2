"""Nonlinear GLM intensities: a linear filter of the history through a pointwise activation."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .base import Intensity, State, as_param, check_finite
from .basis import Basis

ACTIVATIONS = ("sigmoid", "hardtanh", "softplus", "exp")


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
    """

    def __init__(self, bias: Any, weight: Any, basis: Basis, activation: str = "sigmoid", amplitude: Any = 1.0) -> None:
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
        self.basis, self.activation = basis, activation
        self.num_marks = k
        self.num_context_marks = weight.shape[-1] - k

    def like(self) -> torch.Tensor:
        return self.bias

    @property
    def batch_shape(self) -> torch.Size:
        return torch.broadcast_shapes(self.bias.shape[:-1], self.weight.shape[:-3], self.amplitude.shape)

    def _rates_from_features(self, features: torch.Tensor) -> torch.Tensor:
        # features: batch x L x D -> potential: batch x K
        potential = self.bias + torch.einsum("...ld,...lkd->...k", features, self.weight)
        return activate(self.activation, potential, self.amplitude.unsqueeze(-1))

    def initial_state(self, batch_shape: torch.Size, like: torch.Tensor, num_steps: int) -> State:
        return self.basis.initial_state(batch_shape, self.num_history_marks, like, num_steps)

    def rates(self, state: State, time: torch.Tensor) -> torch.Tensor:
        return self._rates_from_features(self.basis.state_features(state, time))

    def update(self, state: State, time: torch.Tensor, weights: torch.Tensor) -> State:
        return self.basis.update(state, time, weights)

    def forward(self, times: torch.Tensor, weights: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        features = self.basis.features(times, weights, query)  # batch x Q x L x D
        potential = self.bias.unsqueeze(-2) + torch.einsum("...qld,...lkd->...qk", features, self.weight)
        return activate(self.activation, potential, self.amplitude[..., None, None])

    def breakpoints(self, times: torch.Tensor, weights: torch.Tensor) -> torch.Tensor | None:
        kinks = self.basis.kinks()
        if kinks is None:
            return None
        kinks = kinks.to(times)
        kinks = kinks[kinks > 0]
        return (times.unsqueeze(-1) + kinks).flatten(-2)

    def max_rate(self) -> torch.Tensor | None:
        if self.activation in ("sigmoid", "hardtanh"):
            return self.amplitude * self.num_marks
        return None
