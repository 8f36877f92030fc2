"""Where the paper's path-wise gradient variance comes from, with the guide equal to the model.

With ``q = p`` the hidden-site DPP densities of model and guide are the same function of the same
parameters at the same draw, so they cancel draw by draw (value and gradient), and the path-wise
objective is the observed site alone,

.. math::
    \\log p(X \\mid \\tilde Z) = \\underbrace{\\sum_e \\log \\lambda_{k_e}(t_e \\mid X, \\tilde Z)}_{\\text{events}}
    - \\underbrace{\\sum_k \\int_0^T \\lambda_k(t \\mid X, \\tilde Z)\\, dt}_{\\text{compensator}},
    \\qquad \\tilde Z = \\tilde Z(\\theta, g)

(soft hidden marks drawn from Gumbel noise ``g``). Its gradient has a *direct* part (``\\tilde Z``
held fixed: the score of the observed spikes given the drawn hidden history) and a *soft-history*
part (through ``\\partial \\tilde Z / \\partial \\theta``, the reparameterisation of the soft marks,
whose Jacobian grows like ``1 / tau`` and compounds through the recurrent soft history). The
direct parts move only the observed neurons' parameters (rows of the observed targets), the
soft-history parts only the hidden neurons' (the soft marks depend on nothing else), so with
``q = p`` every hidden-neuron coordinate of the path-wise gradient is a soft-history term.
:func:`pathwise_variance_sources` reports the E[std] of each piece, averaged over all coordinates
as in Experiment 1.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from ..likelihood import compensator, evaluate, history, trim_padding
from ..snn import SNN
from ..snn.evaluation import _checked_data, _chunks, _per_draw_params, _trusted_values
from .paper import Setting

#: The pieces, in the order their gradients are stacked.
PIECES = ("total", "hidden_sites", "events_direct", "events_soft", "compensator_direct", "compensator_soft")


def _observed_terms(model: SNN, hidden: torch.Tensor, observed: torch.Tensor, duration: torch.Tensor,
                    params: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(events, compensator)`` of the observed site's exact log-likelihood (``events - compensator``
    is ``model.observed_process(hidden).log_prob(observed)``), each ``draws x batch``."""
    process = model.observed_process(hidden, duration, params=params)
    intensity, k = process.intensity, process.intensity.num_marks
    value, context = trim_padding(observed), trim_padding(process.context)
    times, weights = history(value, k, context, intensity.num_context_marks)
    log_rates = evaluate(intensity, times, weights, value[..., 0], log=True)
    marks = value[..., 1 : 1 + k]
    events = (marks * torch.where(marks > 0, log_rates, torch.zeros_like(log_rates))).sum((-1, -2))
    return events, compensator(intensity, times, weights, process.duration, process.quadrature_nodes)


def pathwise_source_draws(model: SNN, observed: Any, num_draws: int = 100, temperature: float = 0.3,
                          duration: Any = None, chunk: int = 50) -> dict[str, torch.Tensor]:
    """``num_draws x P`` gradient draws of each piece of the paper's path-wise objective with
    ``q = p`` (see the module docstring; :data:`PIECES`), summed over the sequences.

    ``total`` is :func:`~pyro_dpp.snn.gradient_draws` ``(model, model, observed, "pathwise",
    shared=True)`` draw for draw (same seed, same ``chunk``); ``hidden_sites`` is the gradient of
    ``log p_tau(Z) - log q_tau(Z)``, zero with ``q = p``; the other four add up to ``total``.
    """
    if temperature <= 0:
        raise ValueError("the path-wise estimator needs temperature > 0")
    observed, duration = _checked_data(model, observed, duration, format="dense")
    batch_dims = observed.dim() - 2
    pieces: dict[str, list[torch.Tensor]] = {name: [] for name in PIECES}
    with _trusted_values():
        for size in _chunks(num_draws, chunk):
            params = _per_draw_params(model, size, batch_dims)
            process = model.hidden_process(observed, duration, temperature, params=params)
            hidden = process.rsample()
            log_q = process.log_prob(hidden)
            log_p = model.hidden_process(observed, duration, temperature, params=params).log_prob(hidden)
            events, comp = _observed_terms(model, hidden, observed, duration, params)
            events_fixed, comp_fixed = _observed_terms(model, hidden.detach(), observed, duration, params)
            objectives = {"total": log_p - log_q + events - comp, "hidden_sites": log_p - log_q,
                          "events": events, "events_fixed": events_fixed, "comp": -comp, "comp_fixed": -comp_fixed}
            names = list(params)
            grads = {}
            for key, objective in objectives.items():
                flat = torch.autograd.grad(objective.sum(), [params[n] for n in names], retain_graph=True,
                                           allow_unused=True)
                flat = [torch.zeros_like(params[n]) if g is None else g for g, n in zip(flat, names)]
                grads[key] = torch.cat([g.reshape(size, -1) for g in flat], -1)
            pieces["total"].append(grads["total"])
            pieces["hidden_sites"].append(grads["hidden_sites"])
            pieces["events_direct"].append(grads["events_fixed"])
            pieces["events_soft"].append(grads["events"] - grads["events_fixed"])
            pieces["compensator_direct"].append(grads["comp_fixed"])
            pieces["compensator_soft"].append(grads["comp"] - grads["comp_fixed"])
    return {name: torch.cat(parts, 0) for name, parts in pieces.items()}


def pathwise_variance_sources(num_draws: int = 200, num_sequences: int = 10,
                              temperatures: tuple[float, ...] = (1.0, 0.3, 0.1), seeds: tuple[int, ...] = (0,),
                              setting: Setting | None = None, chunk: int = 50) -> dict[str, Any]:
    """E[std] of each piece of the paper's path-wise gradient with ``q = p`` (Experiment 1's data
    and model at each seed), at each temperature, next to the exact-draw score of the observed
    site (``score_observed``: the gradient of ``log p(X | Z)`` at exact hidden draws, ``Z`` held
    fixed, which is what every estimator's observed-site term would be at ``tau = 0``).

    :returns: ``{"seeds", "temperatures", "num_draws", "results": {seed: {tau: {piece: e_std}}}}``.
    """
    setting = setting or Setting()
    out: dict[str, Any] = {"seeds": list(seeds), "temperatures": list(temperatures), "num_draws": num_draws,
                           "num_sequences": num_sequences, "pieces": list(PIECES), "results": {}}
    start = time.perf_counter()
    for seed in seeds:
        _, train, _ = setting.data(seed, num_sequences, 1)
        model, _, _ = setting.pair(seed, "model")
        rows = out["results"][str(seed)] = {}
        for tau in temperatures:
            torch.manual_seed(seed)
            draws = pathwise_source_draws(model, train, num_draws, tau, chunk=chunk)
            rows[str(tau)] = {name: float(d.std(0).mean()) for name, d in draws.items()}
        torch.manual_seed(seed)
        rows["score_observed"] = float(_exact_observed_score(model, train, num_draws, chunk).std(0).mean())
    out["seconds"] = time.perf_counter() - start
    return out


def _exact_observed_score(model: SNN, observed: Any, num_draws: int, chunk: int) -> torch.Tensor:
    """``num_draws x P``: the gradient of ``log p(X | Z)`` with exact hidden draws ``Z ~ p(Z | X)``
    held fixed (the observed site's direct score at ``tau = 0``)."""
    observed, duration = _checked_data(model, observed, None, format="dense")
    batch_dims = observed.dim() - 2
    out = []
    with _trusted_values():
        for size in _chunks(num_draws, chunk):
            params = _per_draw_params(model, size, batch_dims)
            with torch.no_grad():
                hidden = model.hidden_process(observed, duration, 0.0, params=params).sample()
            events, comp = _observed_terms(model, hidden, observed, duration, params)
            names = list(params)
            flat = torch.autograd.grad((events - comp).sum(), [params[n] for n in names], allow_unused=True)
            flat = [torch.zeros_like(params[n]) if g is None else g for g, n in zip(flat, names)]
            out.append(torch.cat([g.reshape(size, -1) for g in flat], -1))
    return torch.cat(out, 0)


def format_sources(result: dict[str, Any]) -> str:
    """A plain-text table of :func:`pathwise_variance_sources`: one row per seed and temperature."""
    header = ["seed", "tau"] + list(result["pieces"])
    lines = ["  ".join(f"{h:>18s}" for h in header)]
    for seed, rows in result["results"].items():
        for tau, row in rows.items():
            if tau == "score_observed":
                continue
            lines.append("  ".join([f"{seed:>18s}", f"{tau:>18s}"] + [f"{row[p]:18.1f}" for p in result["pieces"]]))
        lines.append(f"{seed:>18s}  {'exact Z (tau=0)':>18s}  observed-site score, Z fixed: "
                     f"{rows['score_observed']:.1f}")
    return "\n".join(lines)
