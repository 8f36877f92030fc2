"""Training SNN model/guide pairs with SVI: temperature annealing, constraints, checkpoints."""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import io
import math
import os
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro.infer import Trace_ELBO, TraceGraph_ELBO

from ..checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, atomic_write, rng_state, safe_load, set_rng_state
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


class TrainingInterrupted(KeyboardInterrupt):
    """:func:`fit` was interrupted (Ctrl-C, or SIGTERM under the command line); the state at the
    end of the last complete epoch was saved to ``checkpoint`` (if one was given), from which a
    later call resumes bit-identically.

    :ivar int epochs_done: complete epochs in the checkpoint.
    :ivar checkpoint: the checkpoint path, or None.
    """

    def __init__(self, epochs_done: int, num_epochs: int, checkpoint: Path | None) -> None:
        self.epochs_done, self.num_epochs, self.checkpoint = epochs_done, num_epochs, checkpoint
        where = f"; checkpoint saved to {checkpoint}" if checkpoint is not None else " (no checkpoint was asked for)"
        super().__init__(f"training interrupted after {epochs_done} of {num_epochs} epochs{where}")


#: Test hook: raise KeyboardInterrupt right after this epoch's checkpoint (a deterministic Ctrl-C).
_INTERRUPT_ENV = "PYRO_DPP_TEST_INTERRUPT_AFTER_EPOCH"


def check_training_options(estimator: str, optimizer: str, temperature: float) -> None:
    """Raise ``ValueError`` for an unknown estimator or optimizer, or a path-wise run without a
    positive temperature."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; choose one of {ESTIMATORS}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {tuple(OPTIMIZERS)}")
    if estimator in PATHWISE and temperature <= 0:
        raise ValueError("the path-wise estimators need temperature > 0")


def _check_fit_numbers(num_epochs: Any, temperature: Any, temperature_decay: Any, lr: Any, batch_size: Any,
                       num_particles: Any, regularizer: Any) -> None:
    def integer(name: str, value: Any, low: int, hint: str) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}; {hint}")

    integer("num_epochs", num_epochs, 0, "it counts the passes over the data")
    integer("num_particles", num_particles, 1, "it counts the ELBO samples per step (0 would be a zero loss)")
    if batch_size is not None:
        integer("batch_size", batch_size, 1, "pass the sequences per step, or None for all at once")
    for name, value, low, strict in (("temperature", temperature, 0.0, False),
                                     ("temperature_decay", temperature_decay, 0.0, True), ("lr", lr, 0.0, True),
                                     ("regularizer", regularizer, 0.0, False)):
        ok = isinstance(value, (int, float)) and math.isfinite(value) and (value > low if strict else value >= low)
        if not ok:
            raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {low:g}, got {value!r}")


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
    :param int num_particles: ELBO samples per step (>= 1).
    :param checkpoint: a file: written atomically after every epoch (and on Ctrl-C, which then
        raises :class:`TrainingInterrupted`), and resumed from if it exists. It holds the modules,
        the optimizer and every random-number state, so a resumed run ends bit-identical to an
        uninterrupted one; a checkpoint of other data, sizes or options raises :class:`ValueError`.
    :param callback: called as ``callback(epoch, model, guide)`` after every epoch (e.g. to evaluate);
        its return values are collected in ``FitResult.callback_values``.
    """
    check_training_options(estimator, optimizer, temperature)
    _check_fit_numbers(num_epochs, temperature, temperature_decay, lr, batch_size, num_particles, regularizer)
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
    shared = guide is None or guide is model
    if not shared and (guide.n_observed, guide.n_hidden) != (model.n_observed, model.n_hidden):
        raise ValueError(
            f"the guide has {guide.n_observed} observed + {guide.n_hidden} hidden neurons but the model "
            f"{model.n_observed} + {model.n_hidden}; build both with the same sizes"
        )
    if seed is not None:
        torch.manual_seed(seed)
    guide = model if shared else guide
    if estimator == "score_function_baseline" and baseline is None:
        baseline = CountBaseline(model.n_observed).to(model.weight)
    # the observed spikes as an index value (time, neuron id): O(events) memory at the observed site
    values, durations = _data(observed, None, model.weight, format="index")
    num_sequences = values.shape[0]
    batch_size = num_sequences if batch_size is None else int(batch_size)
    modules = [model] + ([] if shared else [guide]) + ([baseline] if baseline is not None else [])
    parameters = [p for m in modules for p in m.parameters()]
    opt = OPTIMIZERS[optimizer](parameters, lr=lr)
    elbo = (TraceGraph_ELBO if estimator == "score_function_baseline" else Trace_ELBO)(num_particles=num_particles)
    result = FitResult()
    path = Path(checkpoint) if checkpoint is not None else None
    fingerprint = _fingerprint(modules, values, durations, estimator=estimator, optimizer=optimizer, lr=lr,
                               batch_size=batch_size, num_particles=num_particles, temperature=temperature,
                               temperature_decay=temperature_decay, regularizer=regularizer, shared=shared)
    if path is not None and path.exists():
        result = _restore(path, fingerprint, modules, opt)
    guide_name = "model" if shared else "guide"
    # the state at the last epoch boundary: what an interrupt saves and a resume continues from
    snapshot = _snapshot(fingerprint, modules, opt, result) if path is not None else None
    interrupt_after = os.environ.get(_INTERRUPT_ENV)
    epochs = range(result.epochs_done, num_epochs)
    bar = _progress(epochs, progress, estimator)
    try:
        for epoch in bar:
            tau = temperature_schedule(epoch, temperature, temperature_decay) if estimator in PATHWISE else 0.0
            scoring = {"relaxed_log_prob": PATHWISE.get(estimator, "dpp")}
            start = time.perf_counter()
            order = torch.randperm(num_sequences)
            for index in order.split(batch_size):
                obs, dur = values[index], durations[index]
                model_fn = functools.partial(snn_model, network=model, temperature=tau, **scoring)
                options = baseline.options(obs, dur) if estimator == "score_function_baseline" else None
                guide_fn = functools.partial(snn_guide, network=guide, temperature=tau, name=guide_name,
                                             baseline=options, **scoring)
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
                    raise TrainingDiverged(
                        f"the loss became {loss} at epoch {epoch}; lower lr or raise the temperature"
                    )
                result.losses.append(float(loss))
            result.temperatures.append(tau)
            result.epoch_seconds.append(time.perf_counter() - start)
            result.epochs_done = epoch + 1
            if callback is not None:
                result.callback_values.append(callback(epoch, model, guide))
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{sum(result.losses[-len(order.split(batch_size)):]):.1f}", tau=f"{tau:.3f}")
            if path is not None:
                snapshot = _snapshot(fingerprint, modules, opt, result)
                _save(snapshot, path)
            if interrupt_after is not None and int(interrupt_after) == result.epochs_done:
                raise KeyboardInterrupt
    except KeyboardInterrupt as err:
        if snapshot is not None:
            _save(snapshot, path)
        done = snapshot["result"]["epochs_done"] if snapshot is not None else result.epochs_done
        raise TrainingInterrupted(done, num_epochs, path) from err
    return result


def _fingerprint(modules: list[torch.nn.Module], values: torch.Tensor, durations: torch.Tensor,
                 **options: Any) -> dict[str, Any]:
    """What must agree between a checkpoint and the run resuming from it."""
    data = hashlib.sha256()
    for x in (values, durations):
        data.update(x.detach().cpu().double().contiguous().numpy().tobytes())
    shapes = [[[name, list(p.shape), str(p.dtype)] for name, p in m.state_dict().items()] for m in modules]
    return {**options, "data_sha256": data.hexdigest(), "modules": shapes}


def _snapshot(fingerprint: dict[str, Any], modules: list[torch.nn.Module], opt: torch.optim.Optimizer,
              result: FitResult) -> dict[str, Any]:
    """A copy of the run's state (tensors and plain values only, as ``weights_only`` loading allows)."""
    return {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "fingerprint": fingerprint,
        "modules": [copy.deepcopy(m.state_dict()) for m in modules], "optimizer": copy.deepcopy(opt.state_dict()),
        "result": copy.deepcopy(dataclasses.asdict(result)), "rng": rng_state(),
    }


def _save(snapshot: dict[str, Any], path: Path) -> None:
    """Write a snapshot atomically, after checking in memory that ``weights_only`` loading reads it
    back (a callback returning other objects fails here, not when the run is resumed)."""
    buffer = io.BytesIO()
    torch.save(snapshot, buffer)
    try:
        torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            "the checkpoint can hold only tensors, numbers, strings, lists, tuples and dicts, and the callback "
            f"returned something else ({str(err).splitlines()[0]}); return plain values from the callback"
        ) from err
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))


def _restore(path: Path, fingerprint: dict[str, Any], modules: list[torch.nn.Module],
             opt: torch.optim.Optimizer) -> FitResult:
    state = safe_load(path, "training checkpoint")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a pyro_dpp training checkpoint; pass another checkpoint= path")
    if state.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path} is a checkpoint of version {state.get('version')}; this pyro_dpp reads "
                         f"version {CHECKPOINT_VERSION}")
    saved = state.get("fingerprint", {})
    differ = sorted(k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k))
    if differ:
        shown = ", ".join(("the data" if k == "data_sha256" else "the network sizes" if k == "modules" else
                           f"{k} ({saved.get(k)!r} in the checkpoint, {fingerprint.get(k)!r} now)") for k in differ)
        raise ValueError(
            f"{path} was written by a different run: {shown} differ; resume with the same data and options, "
            "or pass another checkpoint path (or delete this one) to start over"
        )
    try:
        for m, s in zip(modules, state["modules"]):
            m.load_state_dict(s)
        opt.load_state_dict(state["optimizer"])
        result = FitResult(**state["result"])
        set_rng_state(state["rng"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{path} is an incomplete or damaged training checkpoint ({err}); delete it") from err
    return result


def _progress(iterable: Any, enabled: bool, desc: str) -> Any:
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, leave=False)
