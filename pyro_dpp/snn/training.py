"""Training SNN model/guide pairs with SVI: temperature annealing, constraints, checkpoints."""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro.infer import Trace_ELBO, TraceGraph_ELBO

from ..events import SpikeTrains
from .evaluation import ESTIMATORS, PATHWISE, _data
from .inference import CountBaseline, snn_guide, snn_model
from .network import SNN

OPTIMIZERS = {"adagrad": torch.optim.Adagrad, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}


@dataclass
class FitResult:
    """What :func:`fit` returns: the loss (negative ELBO estimate, summed over the minibatch,
    regulariser excluded) of every step, the temperature of every epoch, and the wall time."""

    losses: list[float] = field(default_factory=list)
    temperatures: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    epochs_done: int = 0
    callback_values: list[Any] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return float(sum(self.epoch_seconds))


class TrainingDiverged(ValueError):
    """:func:`fit` stopped because the loss became infinite or NaN."""


def check_training_options(estimator: str, optimizer: str, temperature: float) -> None:
    """Raise ``ValueError`` for an unknown estimator or optimizer, or a path-wise run without a
    positive temperature."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; choose one of {ESTIMATORS}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {tuple(OPTIMIZERS)}")
    if estimator in PATHWISE and temperature <= 0:
        raise ValueError("the path-wise estimators need temperature > 0")


def temperature_schedule(epoch: int, initial: float = 0.3, rate: float = 0.95) -> float:
    """``tau_e = tau_0 * r^e`` (paper: 0.3, 0.95)."""
    return initial * rate**epoch


def fit(
    model: SNN,
    observed: SpikeTrains,
    guide: SNN | None = None,
    estimator: str = "pathwise",
    num_epochs: int = 10,
    temperature: float = 0.3,
    temperature_decay: float = 0.95,
    optimizer: str = "adagrad",
    lr: float = 0.05,
    batch_size: int | None = 1,
    num_particles: int = 1,
    regularizer: float = 0.1,
    baseline: CountBaseline | None = None,
    checkpoint: str | Path | None = None,
    progress: bool = True,
    seed: int | None = None,
    callback: Any = None,
) -> FitResult:
    """Train a model/guide pair by SVI.

    :param SNN model: the generative network (trained).
    :param SpikeTrains observed: training data.
    :param SNN guide: the variational network (trained too); None for ``q = p`` (the model's own
        hidden dynamics as the guide).
    :param str estimator: ``"pathwise"`` (DPP, ``Trace_ELBO``), ``"pathwise_exact"`` (DPP draws
        scored by the exact log-likelihood formula, ``Trace_ELBO``), ``"score_function"`` (exact,
        ``Trace_ELBO``) or ``"score_function_baseline"`` (exact, ``TraceGraph_ELBO`` with a
        :class:`CountBaseline` trained alongside).
    :param float temperature: ``tau_0`` of the schedule ``tau_e = tau_0 * temperature_decay^e``.
    :param str optimizer: ``"adagrad"`` (paper, lr 0.05), ``"adam"`` or ``"sgd"``.
    :param int batch_size: sequences per step (paper: 1); None for all at once.
    :param float regularizer: coefficient of the Frobenius norm of the weights (paper: 0.1).
    :param checkpoint: a file: saved after every epoch, and resumed from if it exists.
    :param callback: called as ``callback(epoch, model, guide)`` after every epoch (e.g. to evaluate);
        its return values are collected in ``FitResult.callback_values``.
    """
    check_training_options(estimator, optimizer, temperature)
    if model.n_hidden == 0:
        raise ValueError(
            "the network has no hidden neurons, so there is nothing to infer: maximise "
            "model.observed_process(...).log_prob(data) directly (see tutorial 4)"
        )
    if not isinstance(observed, SpikeTrains):
        raise ValueError("observed must be SpikeTrains (see SpikeTrains.from_lists / from_events)")
    if observed.num_marks != model.n_observed:
        raise ValueError(
            f"the data have {observed.num_marks} neurons but the network has {model.n_observed} observed neurons"
        )
    if seed is not None:
        torch.manual_seed(seed)
    shared = guide is None or guide is model
    guide = model if shared else guide
    if estimator == "score_function_baseline" and baseline is None:
        baseline = CountBaseline(model.n_observed).to(model.weight)
    values, durations = _data(observed, None, model.weight)
    num_sequences = values.shape[0]
    batch_size = num_sequences if batch_size is None else int(batch_size)
    modules = [model] + ([] if shared else [guide]) + ([baseline] if baseline is not None else [])
    parameters = [p for m in modules for p in m.parameters()]
    opt = OPTIMIZERS[optimizer](parameters, lr=lr)
    elbo = (TraceGraph_ELBO if estimator == "score_function_baseline" else Trace_ELBO)(num_particles=num_particles)
    result = FitResult()
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None and path.exists():
        state = torch.load(path, weights_only=False)
        for m, s in zip(modules, state["modules"]):
            m.load_state_dict(s)
        opt.load_state_dict(state["optimizer"])
        result = state["result"]
    guide_name = "model" if shared else "guide"
    epochs = range(result.epochs_done, num_epochs)
    bar = _progress(epochs, progress, estimator)
    for epoch in bar:
        tau = temperature_schedule(epoch, temperature, temperature_decay) if estimator in PATHWISE else 0.0
        scoring = {"relaxed_log_prob": PATHWISE.get(estimator, "dpp")}
        start = time.perf_counter()
        order = torch.randperm(num_sequences)
        for index in order.split(batch_size):
            obs, dur = values[index], durations[index]
            model_fn = functools.partial(snn_model, network=model, temperature=tau, **scoring)
            options = baseline.options(obs, dur) if estimator == "score_function_baseline" else None
            guide_fn = functools.partial(snn_guide, network=guide, temperature=tau, name=guide_name, baseline=options,
                                         **scoring)
            opt.zero_grad()
            with pyro.settings.context(module_local_params=False):
                loss = elbo.loss_and_grads(model_fn, guide_fn, obs, dur)
            if regularizer:
                penalty = regularizer * (model.regularizer() + (0 if shared else guide.regularizer()))
                penalty.backward()
            opt.step()
            model.project_()
            if not shared:
                guide.project_()
            if not math.isfinite(loss):
                raise TrainingDiverged(f"the loss became {loss} at epoch {epoch}; lower lr or raise the temperature")
            result.losses.append(float(loss))
        result.temperatures.append(tau)
        result.epoch_seconds.append(time.perf_counter() - start)
        result.epochs_done = epoch + 1
        if callback is not None:
            result.callback_values.append(callback(epoch, model, guide))
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{sum(result.losses[-len(order.split(batch_size)):]):.1f}", tau=f"{tau:.3f}")
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"modules": [m.state_dict() for m in modules], "optimizer": opt.state_dict(),
                        "result": result}, path)
    return result


def _progress(iterable: Any, enabled: bool, desc: str) -> Any:
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, leave=False)
