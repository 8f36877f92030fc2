"""Event-count guesses of subcritical linear Hawkes processes (used to size ``max_events``)."""

from __future__ import annotations

import torch


def stationary_count(branching: torch.Tensor, baseline: torch.Tensor,
                     duration: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(mean, std)`` guesses of the number of events in ``[0, duration]`` of a linear Hawkes
    process with ``batch x K x K`` branching matrix (mean number of mark-i children of a mark-j
    event) and ``batch x K`` baseline: the stationary mean :math:`T \\sum_i ((I - A)^{-1}\\mu)_i`
    (an upper bound of the mean started empty) and a standard deviation inflated by the cluster
    sizes, about :math:`\\sqrt{\\text{mean}} / (1 - \\rho(A))`. None if the process is not
    subcritical (spectral radius :math:`\\rho(A) \\ge 1`) or a branching ratio is infinite."""
    if not torch.isfinite(branching).all():
        return None
    radius = torch.linalg.eigvals(branching).abs().amax(-1)
    if (radius >= 1).any():
        return None
    eye = torch.eye(branching.shape[-1], dtype=branching.dtype, device=branching.device)
    stationary = torch.linalg.solve(eye - branching, baseline.unsqueeze(-1).expand(
        torch.broadcast_shapes(branching.shape[:-2], baseline.shape[:-1]) + baseline.shape[-1:] + (1,)))
    mean = stationary.squeeze(-1).sum(-1) * duration
    return mean, mean.sqrt() / (1 - radius)
