"""Homogeneous Poisson intensity."""

from __future__ import annotations

from typing import Any

import torch

from ..scan.filter import ScanFilter
from .base import Intensity, State, as_param, check_finite, keeps_math, safe_log


class Poisson(Intensity):
    r"""Homogeneous Poisson process: ``lambda_k(t | H_t) = rates[k]``, independent of the history.

    .. math:: \log p = \sum_e \log r_{k_e} - T \sum_k r_k

    :param rates: ``batch x K`` nonnegative rates, one per mark.
    :param int num_context_marks: width of context histories this intensity accepts (ignored).
    """

    parallel_scoring = True  # chunked, linear-cost parallel paths

    def __init__(self, rates: Any, num_context_marks: int = 0) -> None:
        super().__init__()
        rates = as_param(rates)
        if rates.dim() == 0:
            rates = rates.reshape(1)
        check_finite("rates", rates)
        if (rates < 0).any():
            raise ValueError("Poisson rates must be nonnegative")
        self.rates_param = rates
        self.num_marks = rates.shape[-1]
        self.num_context_marks = num_context_marks

    def like(self) -> torch.Tensor:
        return self.rates_param

    @property
    def batch_shape(self) -> torch.Size:
        return self.rates_param.shape[:-1]

    def initial_state(self, batch_shape: torch.Size, like: torch.Tensor, num_steps: int) -> State:
        return ()

    def rates(self, state: State, time: torch.Tensor) -> torch.Tensor:
        return self.rates_param.expand(time.shape + (self.num_marks,))

    def update(self, state: State, time: torch.Tensor, weights: torch.Tensor) -> State:
        return state

    def scan_filter(self, keys: torch.Tensor, batch: torch.Size) -> PoissonFilter | None:
        return PoissonFilter(self, keys, batch) if keeps_math(self, Poisson) else None

    def forward(self, times: torch.Tensor, weights: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        shape = torch.broadcast_shapes(query.shape[:-1], self.batch_shape)
        return self.rates_param.unsqueeze(-2).expand(shape + (query.shape[-1], self.num_marks))

    def compensator(self, times: torch.Tensor, weights: torch.Tensor, duration: torch.Tensor) -> torch.Tensor:
        return self.rates_param.sum(-1) * duration

    def history_reach(self, dtype: torch.dtype | None = None) -> float:
        """0: no history (see :meth:`Intensity.history_reach`)."""
        return 0.0

    def max_rate(self) -> torch.Tensor:
        return self.rates_param.sum(-1)

    def local_bound(self, state: State, time: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bound = self.rates_param.sum(-1).expand(time.shape)
        return bound, torch.full_like(bound, torch.inf)

    def mean_count(self, duration: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.rates_param.sum(-1) * duration
        return mean, mean.sqrt()


class PoissonFilter(ScanFilter):
    """History-free: the engine takes the log-rates of every step at once (no loop)."""

    def history_free_log_rates(self, times: torch.Tensor) -> torch.Tensor:
        return safe_log(self.intensity.rates_param).unsqueeze(-2)
