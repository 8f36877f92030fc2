"""Model and guides for an SNN with hidden neurons, as plain Pyro functions.

Observed spikes ``X``, hidden spikes ``Z``. The joint intensity factorises over marks, so

    log p(X, Z) = log p(Z | X-history)   site "hidden":   hidden process, context = X
                + log p(X | Z-history)   site "observed": observed process, context = soft Z

The guide samples site "hidden" from a variational network (same family, its own parameters)
conditioned on ``X``. The estimator is chosen by the temperature and the ELBO alone:

- path-wise: ``temperature > 0`` (the DPP at both hidden sites) with ``Trace_ELBO``; with
  ``relaxed_log_prob="exact"`` both hidden sites score the soft draw by the exact log-likelihood
  formula instead of the DPP density, so the objective tends to the exact ELBO as the temperature
  falls (the DPP density's Concrete log-ratios keep a bias at every temperature);
- score function: ``temperature = 0`` (exact process, hard samples) with ``Trace_ELBO`` (plain
  REINFORCE, the paper's baseline) or ``TraceGraph_ELBO`` with a ``baseline`` (variance reduced).

Passing the model's own network as the guide network (with the same ``name``) gives the paper's
special case ``q = p``.
"""

from __future__ import annotations

from typing import Any

import pyro
import torch

from ..events import index_marks, is_index
from .network import SNN


def snn_model(observed: torch.Tensor, duration: torch.Tensor, network: SNN, temperature: float = 0.0,
              name: str = "model", relaxed_log_prob: str = "dpp", past: torch.Tensor | None = None) -> None:
    """The generative model: hidden spikes, then the observed spikes given them.

    :param observed: the observed spikes: ``batch x events x 2`` index value (time, neuron id;
        O(events) memory, what :func:`~pyro_dpp.snn.fit` passes) or ``batch x events x (D_o + 2)``
        dense realization. The hidden process reads them as a dense context (converted per call).
    :param duration: ``batch`` window lengths.
    :param SNN network: the generative network.
    :param float temperature: 0 (exact hidden process) or > 0 (DPP).
    :param str relaxed_log_prob: ``"dpp"`` or ``"exact"`` (see :class:`~pyro_dpp.PointProcess`).
    :param past: ``batch x P x (D_o + 2)`` observed spikes before each window (times ``< 0``; the
        windows of a long recording, :meth:`~pyro_dpp.SpikeTrains.windows`): the past of the observed
        process and context of the hidden one, whose own past is not known (it starts empty).
    """
    pyro.module(name, network)
    with pyro.plate("sequences", observed.shape[0]):
        prior = network.hidden_process(observed, duration, temperature, relaxed_log_prob=relaxed_log_prob, past=past)
        hidden = pyro.sample("hidden", prior)
        pyro.sample("observed", network.observed_process(hidden, duration, past=past), obs=observed)


def snn_guide(observed: torch.Tensor, duration: torch.Tensor, network: SNN, temperature: float = 0.0,
              name: str = "guide", baseline: dict[str, Any] | None = None, relaxed_log_prob: str = "dpp",
              past: torch.Tensor | None = None) -> None:
    """The variational distribution of the hidden spikes given the observed ones.

    :param SNN network: the variational network (``acausal=True`` to see future observed spikes;
        the model's network with ``name="model"`` for ``q = p``).
    :param dict baseline: Pyro's baseline options for ``TraceGraph_ELBO`` (e.g.
        ``{"nn_baseline": module, "nn_baseline_input": x}``), used with ``temperature = 0``.
    :param str relaxed_log_prob: ``"dpp"`` or ``"exact"``, as in the model.
    :param past: observed spikes before each window (times ``< 0``), as in the model.
    """
    pyro.module(name, network)
    infer = {"baseline": baseline} if baseline else {}
    with pyro.plate("sequences", observed.shape[0]):
        posterior = network.hidden_process(observed, duration, temperature, relaxed_log_prob=relaxed_log_prob,
                                           past=past)
        pyro.sample("hidden", posterior, infer=infer)


class CountBaseline(torch.nn.Module):
    """A score-function baseline: an affine function of a sequence's observed spike counts per
    neuron (scaled by the window length), trained by ``TraceGraph_ELBO``'s squared-error baseline
    loss. A module, so it lives with the model's parameters rather than the global param store.

    :param int n_observed: observed neurons.
    """

    def __init__(self, n_observed: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(n_observed + 1, 1)
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)

    @staticmethod
    def features(observed: torch.Tensor, duration: torch.Tensor, num_marks: int | None = None) -> torch.Tensor:
        """``batch x (D_o + 1)``: spike counts per neuron and the duration (``num_marks = D_o`` for an
        index value)."""
        if is_index(observed) and num_marks is not None:
            ids = index_marks(observed)
            counts = observed.new_zeros(ids.shape[:-1] + (num_marks + 1,))
            counts = counts.scatter_add(-1, ids + 1, torch.ones_like(observed[..., 0]))[..., 1:]  # -1: padding
        else:
            counts = observed[..., 1:-1].sum(-2)
        return torch.cat([counts, duration.unsqueeze(-1).expand(counts.shape[:-1] + (1,))], -1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features).squeeze(-1)

    def options(self, observed: torch.Tensor, duration: torch.Tensor) -> dict[str, Any]:
        """The guide's ``baseline`` options for this module."""
        features = self.features(observed, duration, self.linear.in_features - 1).to(observed)
        if features.shape[0] == 1:
            features = features[0]  # TraceGraph_ELBO's downstream cost drops a plate of size one
        return {"nn_baseline": self, "nn_baseline_input": features}
