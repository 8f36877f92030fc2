"""Evaluation of SNN model/guide pairs: exact ELBO, importance-sampled log-likelihood, gradient variance."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch

from ..events import (
    SpikeTrains,
    event_mask,
    index_mask,
    index_to_dense,
    is_index,
    merged_times,
    validate_index,
    validate_realization,
)
from .network import SNN

ESTIMATORS = ("pathwise", "pathwise_exact", "score_function", "score_function_baseline")
#: The path-wise estimators and what their relaxed hidden sites score (``relaxed_log_prob``):
#: ``"pathwise"`` is the paper's (DPP densities), ``"pathwise_exact"`` scores the soft draws by the
#: exact log-likelihood formula, so its bias vanishes as the temperature falls.
PATHWISE = {"pathwise": "dpp", "pathwise_exact": "exact"}


def _data(observed: SpikeTrains | torch.Tensor, duration: Any, like: torch.Tensor, format: str = "index"
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """The observed spikes as a tensor in ``like``'s dtype and device, and their durations: exact
    :class:`~pyro_dpp.SpikeTrains` as an index value (``format="index"``, O(events) memory: what the
    observed site scores) or dense; a tensor as it is."""
    if isinstance(observed, SpikeTrains):
        duration = observed.duration if duration is None else duration
        index = format == "index" and observed.is_exact
        observed = observed.to_tensor(format="index" if index else "dense")
    if duration is None:
        raise ValueError("pass duration= with a realization tensor (or pass SpikeTrains)")
    cast = observed.to(like)
    real = index_mask(observed) if is_index(observed) else event_mask(observed)
    if cast.dtype != observed.dtype and merged_times(observed[..., 0], cast[..., 0], real).any():
        raise ValueError(
            f"the data's spike times do not fit the network's dtype {like.dtype}: distinct neighbouring times "
            "become equal; convert the network with .double() (or measure times from a nearer origin)"
        )
    observed = cast
    duration = torch.as_tensor(duration, dtype=like.dtype, device=like.device).expand(observed.shape[:-2])
    return observed, duration


def elbo_terms(
    model: SNN, guide: SNN, observed: torch.Tensor, duration: torch.Tensor, num_particles: int,
    temperature: float = 0.0, model_params: dict | None = None, guide_params: dict | None = None,
    relaxed_log_prob: str = "dpp", past: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One ELBO particle per row: ``(log p(X, Z) - log q(Z | X), log q(Z | X))``, each
    ``num_particles x batch``, with ``Z`` drawn from the guide (exact if ``temperature == 0``, else
    a differentiable DPP draw scored as ``relaxed_log_prob`` says). ``past``: observed spikes before
    each window (see :func:`~pyro_dpp.snn.snn_model`)."""
    q = guide.hidden_process(observed, duration, temperature, params=guide_params, relaxed_log_prob=relaxed_log_prob,
                             past=past)
    if q.batch_shape[:1] == (num_particles,) and len(q.batch_shape) == observed.dim() - 1:
        sample_shape = torch.Size()  # parameters already carry one copy per particle
    else:
        sample_shape = torch.Size((num_particles,))
    hidden = q.rsample(sample_shape) if temperature > 0 else q.sample(sample_shape)
    log_q = q.log_prob(hidden)
    prior = model.hidden_process(observed, duration, temperature, params=model_params,
                                 relaxed_log_prob=relaxed_log_prob, past=past)
    observed_process = model.observed_process(hidden, duration, params=model_params, past=past)
    log_p = prior.log_prob(hidden) + observed_process.log_prob(observed)
    return log_p - log_q, log_q


def exact_elbo(model: SNN, guide: SNN, observed: SpikeTrains | torch.Tensor, duration: Any = None,
               num_particles: int = 16, chunk: int = 16, window: float | None = None) -> torch.Tensor:
    """``batch`` exact ELBO per sequence: the ``temperature = 0`` model and guide with the current
    weights (the paper's evaluation protocol), averaged over ``num_particles`` hidden draws.

    :param float window: if given (``observed`` must be :class:`~pyro_dpp.SpikeTrains`), the sum
        over the sequence's windows of this many seconds of their ELBOs, each window with its past
        observed spikes and without past hidden spikes (the truncated-history approximation of
        :func:`~pyro_dpp.snn.fit` with ``window=``): memory independent of the recording's length."""
    def elbo(observed: torch.Tensor, duration: torch.Tensor, past: torch.Tensor | None) -> torch.Tensor:
        total = torch.zeros(observed.shape[:-2], dtype=observed.dtype, device=observed.device)
        for size in _chunks(num_particles, chunk):
            terms, _ = elbo_terms(model, guide, observed, duration, size, past=past)
            total = total + terms.sum(0)
        return total / num_particles

    return _evaluate(model, guide, observed, duration, window, elbo)





def log_marginal(model: SNN, guide: SNN, observed: SpikeTrains | torch.Tensor, duration: Any = None,
                 num_particles: int = 64, chunk: int = 16, window: float | None = None) -> torch.Tensor:
    """``batch`` importance-sampled estimate of ``log p(X)`` with the exact guide as proposal:
    ``log mean_k exp(log p(X, Z_k) - log q(Z_k | X))`` (a lower bound in expectation that tightens
    as ``num_particles`` grows).

    :param float window: if given (``observed`` as :class:`~pyro_dpp.SpikeTrains`), the sum over
        the sequence's windows of this many seconds of their estimates, each window with its past
        observed spikes and no past hidden spikes (as :func:`exact_elbo`)."""
    def estimate(observed: torch.Tensor, duration: torch.Tensor, past: torch.Tensor | None) -> torch.Tensor:
        weights = [elbo_terms(model, guide, observed, duration, size, past=past)[0]
                   for size in _chunks(num_particles, chunk)]
        return torch.logsumexp(torch.cat(weights, 0), 0) - math.log(num_particles)

    return _evaluate(model, guide, observed, duration, window, estimate)


#: Windows evaluated at once by :func:`exact_elbo` and :func:`log_marginal` with ``window=``.
WINDOW_BATCH = 32


def _evaluate(model: SNN, guide: SNN, observed: Any, duration: Any, window: Any, per_batch: Any) -> torch.Tensor:
    """``per_batch(observed, duration, past)`` on the sequences, or with a ``window`` on their
    windows :data:`WINDOW_BATCH` at a time, summed into their sequences."""
    with torch.no_grad(), _trusted_values():
        if window is None:
            return per_batch(*_checked_data(model, observed, duration), None)
        if not isinstance(observed, SpikeTrains) or duration is not None:
            raise ValueError("window= needs the observed spikes as SpikeTrains (with their durations), not a tensor")
        windows = observed.windows(window, model=[model, guide])
        parts = []
        for start in range(0, len(windows), WINDOW_BATCH):
            batch = windows[start : start + WINDOW_BATCH]  # dense tensors for these windows only
            values, durations = _checked_data(model, batch.value(), batch.duration)
            parts.append(per_batch(values, durations, batch.past.to(values)))
        per_window = torch.cat(parts)
        out = per_window.new_zeros(int(windows.sequence.max()) + 1)
        return out.index_add(0, windows.sequence.to(per_window.device), per_window)


def _checked_data(model: SNN, observed: SpikeTrains | torch.Tensor, duration: Any, format: str = "index"
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_data`, checked against the model; ``format="dense"`` converts index values too."""
    observed, duration = _data(observed, duration, model.weight, format)
    model._check_data(observed, model.n_observed, "observed")
    if is_index(observed):
        validate_index(observed, model.n_observed, duration, name="observed")
        if format == "dense":
            observed = index_to_dense(observed, model.n_observed)
    else:
        validate_realization(observed, model.n_observed, duration, name="observed", exact=True)
    return observed, duration


@contextlib.contextmanager
def _trusted_values() -> Iterator[None]:
    """Skip per-``log_prob`` value checks: inside, every hidden value comes from our own sampler and
    the observed data were validated once on entry (the checks cost ~5% of a gradient draw)."""
    previous = torch.distributions.Distribution._validate_args
    torch.distributions.Distribution.set_default_validate_args(False)
    try:
        yield
    finally:
        torch.distributions.Distribution.set_default_validate_args(previous)


def _chunks(total: int, chunk: int) -> list[int]:
    return [min(chunk, total - start) for start in range(0, total, chunk)]


def _per_draw_params(network: SNN, draws: int, batch_dims: int) -> dict[str, torch.Tensor]:
    """One detached copy of each parameter per draw: ``draws x 1 ... x shape``, so that one
    backward pass gives every draw's gradient."""
    params = {}
    for name in ("bias", "weight", "future_weight"):
        p = getattr(network, name)
        if p is None:
            continue
        shape = (draws,) + (1,) * batch_dims + tuple(p.shape)
        one = p.detach().reshape((1,) * (batch_dims + 1) + tuple(p.shape))
        params[name] = one.expand(shape).clone().requires_grad_()
    return params


def gradient_draws(
    model: SNN, guide: SNN, observed: SpikeTrains | torch.Tensor, estimator: str = "pathwise",
    num_draws: int = 100, temperature: float = 0.3, duration: Any = None, chunk: int = 50,
    shared: bool = False,
) -> torch.Tensor:
    """``num_draws x P`` single-particle gradient estimates of the ELBO (summed over the
    sequences) with respect to all model and guide parameters, at the current parameters.

    Draws are vectorised: each draw gets its own copy of the parameters as a batch dimension, so one
    backward pass yields all gradients of a chunk. Estimators:

    - ``"pathwise"``: DPP draws at ``temperature``, gradient of the ELBO itself (DPP densities at
      the hidden sites, the paper's estimator);
    - ``"pathwise_exact"``: the same draws, with the hidden sites scored by the exact log-likelihood
      formula (``relaxed_log_prob="exact"``): its bias vanishes as ``temperature`` falls;
    - ``"score_function"``: exact draws, surrogate ``log p(X, Z) + log q * elbo.detach()`` (plain
      REINFORCE, as ``Trace_ELBO`` computes it, per sequence);
    - ``"score_function_baseline"``: as above with ``elbo - b`` where ``b`` is the leave-one-out mean
      ELBO of the sequence over the other draws of the chunk (what a converged decaying-average
      baseline estimates).

    :param bool shared: the guide is the model itself (``q = p``); its parameters count once.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; choose one of {ESTIMATORS}")
    observed, duration = _checked_data(model, observed, duration)
    batch_dims = observed.dim() - 2
    pathwise = estimator in PATHWISE
    tau = temperature if pathwise else 0.0
    if pathwise and temperature <= 0:
        raise ValueError("the path-wise estimators need temperature > 0")
    grads = []
    with _trusted_values():
        for size in _chunks(num_draws, chunk):
            grads.append(_gradient_chunk(model, guide, observed, duration, estimator, size, tau, batch_dims, shared))
    return torch.cat(grads, 0)


def _gradient_chunk(model: SNN, guide: SNN, observed: torch.Tensor, duration: torch.Tensor, estimator: str,
                    size: int, tau: float, batch_dims: int, shared: bool) -> torch.Tensor:
    """``size x P`` gradient draws, one backward pass."""
    model_params = _per_draw_params(model, size, batch_dims)
    guide_params = model_params if shared else _per_draw_params(guide, size, batch_dims)
    elbo, log_q = elbo_terms(model, guide, observed, duration, size, tau, model_params, guide_params,
                             PATHWISE.get(estimator, "dpp"))
    if estimator in PATHWISE:
        surrogate = elbo
    else:
        reward = elbo.detach()
        if estimator == "score_function_baseline":
            if size < 2:
                raise ValueError("the leave-one-out baseline needs chunks of at least 2 draws")
            reward = reward - (reward.sum(0, keepdim=True) - reward) / (size - 1)
        # log p(X, Z) + log q * reward: exactly Trace_ELBO's surrogate for a non-reparameterized
        # site (its zero-mean -grad log q term is left out, as Pyro does)
        surrogate = elbo + log_q + log_q * reward
    params = list(model_params.values()) + ([] if shared else list(guide_params.values()))
    flat = torch.autograd.grad(surrogate.sum(), params, allow_unused=True)
    flat = [torch.zeros_like(p) if g is None else g for g, p in zip(flat, params)]
    return torch.cat([g.reshape(size, -1) for g in flat], -1)


def gradient_variance(
    model: SNN, guide: SNN, observed: SpikeTrains | torch.Tensor, estimator: str = "pathwise",
    num_draws: int = 1000, temperature: float = 0.3, duration: Any = None, chunk: int = 50,
    shared: bool = False,
) -> dict[str, Any]:
    """The paper's Experiment 1 metric: the standard deviation of each gradient coordinate over
    ``num_draws`` repeated draws at fixed parameters, averaged over coordinates ("E[std]").

    :returns: ``{"e_std", "std" (per coordinate), "mean" (per coordinate), "num_draws"}``.
    """
    grads = gradient_draws(model, guide, observed, estimator, num_draws, temperature, duration, chunk, shared)
    std = grads.std(0)
    return {"e_std": float(std.mean()), "std": std, "mean": grads.mean(0), "num_draws": num_draws}
