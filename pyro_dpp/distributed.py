"""Data-parallel training of SNN model/guide pairs with PyTorch Lightning and Pyro's ``ELBOModule``.

``pip install 'pyro-dpp[distributed]'`` (the ``lightning`` package). The pieces:

- :class:`SpikeTrainDataset` serves one sequence at a time (or, with ``window=``, one window of a
  long recording with the spikes before it, so that the workers shard windows) and
  :func:`collate_spike_trains` pads a minibatch to its own largest event count (not the data set's),
  giving a :class:`SpikeBatch`;
- :class:`SNNModel` and :class:`SNNGuide` are :func:`~pyro_dpp.snn.snn_model` and
  :func:`~pyro_dpp.snn.snn_guide` as :class:`torch.nn.Module` objects: their parameters (and a
  score-function :class:`~pyro_dpp.snn.CountBaseline`) live in the modules, never in Pyro's global
  parameter store, so that ``Trace_ELBO()(model, guide)`` (a :class:`pyro.infer.elbo.ELBOModule`) is
  an ordinary module that DDP can replicate and whose gradients it can average;
- :class:`SNNLightningModule` trains them (estimators, temperature schedule, regulariser and
  refractory projection as in :func:`pyro_dpp.snn.fit`); :func:`ddp_trainer` makes a Lightning
  ``Trainer`` with the DDP strategy (gloo on CPUs, NCCL on GPUs).

**Loss scaling.** A step's loss is the negative ELBO *per sequence* (the mean over the local
minibatch), so the gradient DDP averages over workers equals the single-process gradient over the
union of their minibatches, whatever the number of workers. (:func:`pyro_dpp.snn.fit` sums over its
minibatch instead; with ``batch_size=1`` per worker the two agree.) Lightning shards the sequences
with a ``DistributedSampler``, which repeats a few of them when their number does not divide evenly
among the workers.

**Fully observed data.** If the data set also holds the hidden spikes, the loss is the exact
negative log-likelihood ``-log p(X, Z)`` per sequence: deterministic, no guide involved.

Example (see ``examples/distributed_fit.py``)::

    module = SNNLightningModule(SNN(4, 2, basis="exponential"), estimator="pathwise")
    loader = torch.utils.data.DataLoader(SpikeTrainDataset(observed), batch_size=2,
                                         collate_fn=collate_spike_trains)
    ddp_trainer(devices=2, max_epochs=10).fit(module, loader)
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import pyro
import torch
from pyro.infer import Trace_ELBO, TraceGraph_ELBO
from pyro.infer.elbo import ELBOModule

from .events import SpikeTrains, event_mask
from .snn.evaluation import PATHWISE
from .snn.inference import CountBaseline
from .snn.network import SNN
from .snn.training import OPTIMIZERS, check_training_options, temperature_schedule

try:
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover - exercised only without the extra
    pl = None

_INSTALL = "distributed training needs PyTorch Lightning: pip install 'pyro-dpp[distributed]'"


# ---- data --------------------------------------------------------------------------------------


class SpikeBatch(NamedTuple):
    """A padded minibatch: ``observed`` (``B x E x (D_o + 2)``), ``duration`` (``B``), for fully
    observed data ``hidden`` (``B x E' x (D_h + 2)``; else None), and for windows of a recording
    ``past`` (``B x P x (D_o + 2)``, the observed spikes before each window at times ``< 0``; else
    None)."""

    observed: torch.Tensor
    duration: torch.Tensor
    hidden: torch.Tensor | None = None
    past: torch.Tensor | None = None


class SpikeTrainDataset(torch.utils.data.Dataset):
    """The sequences of :class:`~pyro_dpp.SpikeTrains` as a map-style data set.

    An item is ``(observed_rows, duration, hidden_rows)``: the real rows of one sequence's
    realization tensor (no padding), its window length, and the same for the hidden spikes if given
    (else None). Batch items with :func:`collate_spike_trains`.

    With ``window`` (seconds) an item is one window of a sequence (:meth:`SpikeTrains.windows`),
    ``(observed_rows, duration, None, past_rows)`` with the observed spikes within the history reach
    before it (times ``< 0``): a ``DistributedSampler`` then shards windows, and a step's memory does
    not depend on the recording's length. As in :func:`pyro_dpp.snn.fit` with ``window=``, the hidden
    process of a window starts without past hidden spikes.

    :param SpikeTrains observed: the observed spikes, one sequence per item.
    :param SpikeTrains hidden: optional hidden spikes of the same sequences (fully observed data; not
        with ``window``).
    :param float window: window length in seconds, or None for whole sequences.
    :param model: with ``window``: the :class:`~pyro_dpp.snn.SNN` (or a list: model and guide) whose
        history reach sets how far back each window's past goes; or pass ``history`` (seconds).
    """

    def __init__(self, observed: SpikeTrains, hidden: SpikeTrains | None = None, window: float | None = None,
                 model: Any = None, history: float | None = None) -> None:
        if not isinstance(observed, SpikeTrains):
            raise ValueError(f"observed must be SpikeTrains, got {type(observed).__name__}")
        self._past = None
        if window is not None:
            if hidden is not None:
                raise ValueError("window= trains on windows of observed spikes; pass hidden=None (fully observed "
                                 "data in windows would need the hidden spikes' past too, which is not supported)")
            windows = observed.windows(window, history=history, model=model)
            self._observed, self._past = [], []
            for start in range(0, len(windows), 256):  # dense tensors a chunk of windows at a time
                chunk = windows[start : start + 256]
                self._observed += _per_sequence_past(chunk.value())  # the real rows of each window
                self._past += _per_sequence_past(chunk.past)
            self._duration = windows.duration.detach()
        else:
            self._observed = _per_sequence(observed)
            self._duration = observed.duration.reshape(-1).detach()
        self._hidden = None
        if hidden is not None:
            if not isinstance(hidden, SpikeTrains):
                raise ValueError(f"hidden must be SpikeTrains, got {type(hidden).__name__}")
            if hidden.duration.numel() != self._duration.numel() or not torch.equal(
                hidden.duration.reshape(-1).to(self._duration), self._duration
            ):
                raise ValueError("hidden and observed spike trains must hold the same sequences (same durations)")
            self._hidden = _per_sequence(hidden)

    def __len__(self) -> int:
        return len(self._observed)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        hidden = None if self._hidden is None else self._hidden[index]
        if self._past is not None:
            return self._observed[index], self._duration[index], hidden, self._past[index]
        return self._observed[index], self._duration[index], hidden


def _per_sequence(trains: SpikeTrains) -> list[torch.Tensor]:
    value = trains.to_tensor().detach()
    value = value.reshape(-1, *value.shape[-2:])
    counts = event_mask(value).sum(-1).tolist()
    return [value[s, :n].clone() for s, n in enumerate(counts)]


def _per_sequence_past(value: torch.Tensor) -> list[torch.Tensor]:
    """The real rows of each sequence of a realization tensor (real rows first)."""
    counts = event_mask(value).sum(-1).tolist()
    return [value[s, :n].clone() for s, n in enumerate(counts)]


def _pad(rows: list[torch.Tensor], duration: torch.Tensor) -> torch.Tensor:
    """Stack per-sequence rows, padded to the longest plus one padding row (time = duration)."""
    most = max(r.shape[0] for r in rows)
    out = rows[0].new_zeros(len(rows), most + 1, rows[0].shape[-1])
    out[..., 0] = duration.to(out).unsqueeze(-1)
    for s, r in enumerate(rows):
        out[s, : r.shape[0]] = r
    return out


def collate_spike_trains(items: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]) -> SpikeBatch:
    """Collate :class:`SpikeTrainDataset` items into a :class:`SpikeBatch`, padding to the
    minibatch's largest number of events (plus one padding row that records the duration)."""
    if not items:
        raise ValueError("cannot collate an empty minibatch")
    duration = torch.stack([item[1] for item in items])
    observed = _pad([item[0] for item in items], duration)
    hidden = None
    if items[0][2] is not None:
        hidden = _pad([item[2] for item in items], duration)
    past = None
    if len(items[0]) > 3:  # windows: the past pads with zero rows (time 0), after the real ones
        past = _pad([item[3] for item in items], torch.zeros_like(duration))
    return SpikeBatch(observed, duration, hidden, past)


# ---- model and guide as modules ----------------------------------------------------------------


class SNNModel(torch.nn.Module):
    """:func:`~pyro_dpp.snn.snn_model` as a module: sample site ``"hidden"`` from the network's
    hidden process, observe site ``"observed"``; the parameters stay in ``network``.

    :param SNN network: the generative network.
    :param float temperature: 0 (exact hidden process) or > 0 (DPP); may be changed between steps.
    :param str relaxed_log_prob: how a relaxed hidden site is scored (see :class:`~pyro_dpp.PointProcess`).
    """

    def __init__(self, network: SNN, temperature: float = 0.0, relaxed_log_prob: str = "dpp") -> None:
        super().__init__()
        self.network = network
        self.temperature = float(temperature)
        self.relaxed_log_prob = relaxed_log_prob

    def forward(self, observed: torch.Tensor, duration: torch.Tensor, past: torch.Tensor | None = None) -> None:
        """Run the model on ``observed`` (``B x E x (D_o + 2)``) with windows ``duration`` (``B``) and
        the observed spikes before them, ``past`` (as :func:`~pyro_dpp.snn.snn_model`)."""
        with pyro.plate("sequences", observed.shape[0]):
            prior = self.network.hidden_process(observed, duration, self.temperature,
                                                relaxed_log_prob=self.relaxed_log_prob, past=past)
            hidden = pyro.sample("hidden", prior)
            pyro.sample("observed", self.network.observed_process(hidden, duration, past=past), obs=observed)


class SNNGuide(torch.nn.Module):
    """:func:`~pyro_dpp.snn.snn_guide` as a module: sample site ``"hidden"`` from the variational
    network given the observed spikes.

    :param SNN network: the variational network (the model's own network for ``q = p``).
    :param float temperature: 0 (exact, score function) or > 0 (DPP, path-wise).
    :param CountBaseline baseline: a score-function baseline for ``TraceGraph_ELBO`` (a submodule,
        trained with the rest).
    :param str relaxed_log_prob: how a relaxed hidden site is scored, as in :class:`SNNModel`.
    """

    def __init__(self, network: SNN, temperature: float = 0.0, baseline: CountBaseline | None = None,
                 relaxed_log_prob: str = "dpp") -> None:
        super().__init__()
        self.network = network
        self.temperature = float(temperature)
        self.relaxed_log_prob = relaxed_log_prob
        self.baseline = baseline

    def forward(self, observed: torch.Tensor, duration: torch.Tensor, past: torch.Tensor | None = None) -> None:
        """Sample the hidden spikes given ``observed`` (``B x E x (D_o + 2)``), ``duration`` (``B``)
        and the observed spikes before the windows, ``past``."""
        infer = {"baseline": self.baseline.options(observed, duration)} if self.baseline is not None else {}
        with pyro.plate("sequences", observed.shape[0]):
            posterior = self.network.hidden_process(observed, duration, self.temperature,
                                                    relaxed_log_prob=self.relaxed_log_prob, past=past)
            pyro.sample("hidden", posterior, infer=infer)


class SurrogateELBOModule(ELBOModule):
    """:class:`~pyro.infer.elbo.ELBOModule` for ELBOs without ``differentiable_loss`` (Pyro's
    ``TraceGraph_ELBO``): returns the negative ELBO whose gradient is the surrogate's (score-function
    terms with baselines, plus the baselines' own squared-error loss)."""

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The negative ELBO (value) with the surrogate's gradient, for the model/guide arguments."""
        elbo, surrogate = self.elbo._loss_and_surrogate_loss(self.model, self.guide, args, kwargs)
        value = -float(elbo.detach() if isinstance(elbo, torch.Tensor) else elbo)
        return surrogate + (value - surrogate.detach())


def complete_log_likelihood(network: SNN, observed: torch.Tensor, duration: torch.Tensor,
                            hidden: torch.Tensor) -> torch.Tensor:
    """``batch`` exact ``log p(X, Z) = log p(Z | X-history) + log p(X | Z-history)`` of fully
    observed data (hard hidden spikes)."""
    return (network.hidden_process(observed, duration).log_prob(hidden)
            + network.observed_process(hidden, duration).log_prob(observed))


# ---- Lightning ---------------------------------------------------------------------------------

_Base: Any = pl.LightningModule if pl is not None else torch.nn.Module


class SNNLightningModule(_Base):
    """A Lightning module that trains an SNN model/guide pair by SVI (any number of DDP workers).

    The ELBO is Pyro's ``Trace_ELBO()(model, guide)`` (an :class:`~pyro.infer.elbo.ELBOModule`) for
    ``"pathwise"``, ``"pathwise_exact"`` and ``"score_function"``, and :class:`SurrogateELBOModule` with
    ``TraceGraph_ELBO`` and a :class:`~pyro_dpp.snn.CountBaseline` for
    ``"score_function_baseline"``. Batches are :class:`SpikeBatch` (from
    :func:`collate_spike_trains`); with hidden spikes in the batch the loss is the exact complete-data
    negative log-likelihood instead. The loss is per sequence (see the module docstring).

    :param SNN model: the generative network (trained).
    :param SNN guide: the variational network (trained too); None for ``q = p``.
    :param str estimator: one of :data:`pyro_dpp.snn.ESTIMATORS`.
    :param float temperature: ``tau_0`` of the schedule ``tau_e = tau_0 * temperature_decay^e``
        (epochs ``e``), path-wise only.
    :param str optimizer: ``"adagrad"`` (paper, lr 0.05), ``"adam"`` or ``"sgd"``.
    :param float regularizer: coefficient of the Frobenius norm of the weights (paper: 0.1).
    :param int num_particles: ELBO particles per step.
    :param CountBaseline baseline: the score-function baseline (default: a new one).
    :param int seed: if given, each worker seeds torch with ``seed + rank`` when fitting starts, so
        that workers draw different (and reproducible) hidden spikes.
    """

    def __init__(
        self,
        model: SNN,
        guide: SNN | None = None,
        estimator: str = "pathwise",
        temperature: float = 0.3,
        temperature_decay: float = 0.95,
        optimizer: str = "adagrad",
        lr: float = 0.05,
        regularizer: float = 0.1,
        num_particles: int = 1,
        baseline: CountBaseline | None = None,
        seed: int | None = None,
    ) -> None:
        if pl is None:
            raise ImportError(_INSTALL)
        super().__init__()
        check_training_options(estimator, optimizer, temperature)
        self.estimator, self.optimizer_name, self.lr = estimator, optimizer, float(lr)
        self.initial_temperature, self.temperature_decay = float(temperature), float(temperature_decay)
        self.regularizer_weight = float(regularizer)
        self.seed = seed
        self.shared = guide is None or guide is model
        guide = model if self.shared else guide
        if estimator == "score_function_baseline" and baseline is None:
            baseline = CountBaseline(model.n_observed).to(model.weight)
        elif estimator != "score_function_baseline":
            baseline = None
        if estimator == "score_function_baseline":
            self.elbo = SurrogateELBOModule(SNNModel(model), SNNGuide(guide, baseline=baseline),
                                            TraceGraph_ELBO(num_particles=num_particles, max_plate_nesting=1))
        else:
            scoring = PATHWISE.get(estimator, "dpp")
            self.elbo = Trace_ELBO(num_particles=num_particles, max_plate_nesting=1)(
                SNNModel(model, relaxed_log_prob=scoring), SNNGuide(guide, relaxed_log_prob=scoring))
        #: per-epoch mean loss (negative ELBO per sequence), averaged over workers
        self.history: list[float] = []

    @property
    def network(self) -> SNN:
        """The generative network."""
        return self.elbo.model.network

    @property
    def guide_network(self) -> SNN:
        """The variational network (the generative one for ``q = p``)."""
        return self.elbo.guide.network

    def temperature(self, epoch: int) -> float:
        """The temperature of ``epoch`` (0 for the score-function estimators)."""
        if self.estimator not in PATHWISE:
            return 0.0
        return temperature_schedule(epoch, self.initial_temperature, self.temperature_decay)

    def on_fit_start(self) -> None:
        """Seed each worker with ``seed + rank`` (if a seed was given)."""
        if self.seed is not None:
            torch.manual_seed(self.seed + self.global_rank)

    def on_train_epoch_start(self) -> None:
        """Set this epoch's temperature in the model and the guide."""
        tau = self.temperature(self.current_epoch)
        self.elbo.model.temperature = tau
        self.elbo.guide.temperature = tau

    def training_step(self, batch: SpikeBatch, batch_idx: int) -> torch.Tensor:
        """The loss of one :class:`SpikeBatch`: negative ELBO per sequence (or the complete-data
        negative log-likelihood if the batch holds hidden spikes) plus the weight regulariser."""
        observed, duration, hidden, *rest = batch
        past = rest[0] if rest else None
        size = observed.shape[0]
        with pyro.settings.context(module_local_params=True):
            if hidden is not None:
                loss = -complete_log_likelihood(self.network, observed, duration, hidden).mean()
                # parameters this loss does not use (the guide's, a baseline) get zero gradients, so
                # that DDP finds every gradient it waits for
                loss = loss + 0.0 * sum(p.sum() for p in self.parameters())
            else:
                loss = (self.elbo(observed, duration) if past is None
                        else self.elbo(observed, duration, past=past)) / size
        value = float(loss.detach())
        if not math.isfinite(value):
            raise ValueError(
                f"the loss became {value} at epoch {self.current_epoch}; lower lr or raise the temperature"
            )
        self.log("loss", loss.detach(), on_step=False, on_epoch=True, sync_dist=True, batch_size=size,
                 prog_bar=True)
        if self.regularizer_weight:
            penalty = self.network.regularizer() + (0 if self.shared else self.guide_network.regularizer())
            loss = loss + self.regularizer_weight * penalty
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Project the networks onto their constraints (the refractory self-connections)."""
        # the paper's constraint on self-connections, after every optimiser step (same on every worker)
        self.network.project_()
        if not self.shared:
            self.guide_network.project_()

    def on_train_epoch_end(self) -> None:
        """Append the epoch's loss, averaged over batches and workers, to :attr:`history`."""
        value = self.trainer.callback_metrics.get("loss")
        if value is not None:
            self.history.append(float(value))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """The chosen optimiser over all parameters (model, guide, baseline)."""
        return OPTIMIZERS[self.optimizer_name](self.parameters(), lr=self.lr)


def ddp_trainer(devices: int = 2, accelerator: str = "cpu", **kwargs: Any) -> Any:
    """A Lightning ``Trainer`` for data-parallel training on ``devices`` workers: the DDP strategy
    with the gloo backend on CPUs (NCCL on GPUs), no logger and no checkpoints unless asked for.

    Workers are started by re-running the calling script (Lightning's default), so call this from a
    script guarded by ``if __name__ == "__main__":``. Other keyword arguments go to the ``Trainer``
    (``max_epochs``, ``enable_progress_bar``, ...).
    """
    if pl is None:
        raise ImportError(_INSTALL)
    from lightning.pytorch.strategies import DDPStrategy

    backend = "nccl" if accelerator in ("gpu", "cuda") else "gloo"
    if devices > 1:
        kwargs.setdefault("strategy", DDPStrategy(process_group_backend=backend))
    kwargs.setdefault("logger", False)
    kwargs.setdefault("enable_checkpointing", False)
    kwargs.setdefault("enable_model_summary", False)
    return pl.Trainer(accelerator=accelerator, devices=devices, **kwargs)


__all__ = [
    "SNNGuide",
    "SNNLightningModule",
    "SNNModel",
    "SpikeBatch",
    "SpikeTrainDataset",
    "SurrogateELBOModule",
    "collate_spike_trains",
    "complete_log_likelihood",
    "ddp_trainer",
]
