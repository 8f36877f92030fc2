r"""Long recordings in windows: cut each sequence into consecutive windows that carry their past.

A window ``[s, s + L)`` of a recording, shifted to ``[0, L]``, is scored (or trained on) with the
events in ``[s - R, s)`` before it as ``past`` (times ``< 0``; :mod:`pyro_dpp.past`), where ``R``
is the intensity's *history reach*: the lag beyond which no event changes the intensity. Then the
exact log-likelihood of the recording is the sum of its windows' log-likelihoods,

.. math:: \log p(\text{recording}) = \sum_w \log p(\text{window}_w \mid \text{past}_w),

since the intensity factorises over time and each window's intensity sees the same history as the
whole recording's (exactly for a finite reach, to float precision for an infinite one).

The reach (:func:`history_reach`):

- finite-support kernels (Epanechnikov and raised-cosine bases, :class:`PowerLawHawkes` with a
  ``support``): the support;
- infinite support (exponential basis, :class:`ExpHawkes`, :class:`SumExpHawkes`, power laws
  without a support): the lag beyond which every kernel is below the float epsilon of the data's
  dtype relative to its largest value (``log(1/eps)`` slowest time constants for exponentials,
  ``c (eps^{-1/b} - 1)`` for a power law, which can be very long: pass ``history=``);
- no history (homogeneous :class:`Poisson`): 0;
- anything else: pass ``history=`` (seconds).

Each intensity states its reach next to its math, by its
:meth:`~pyro_dpp.intensity.Intensity.history_reach` (:class:`~pyro_dpp.intensity.Basis` and
:class:`~pyro_dpp.snn.SNN` have one too): a user's own intensity that defines it works with
windows like a stock one, one that does not gets a ``ValueError`` asking for ``history=``, and
a subclass of a stock intensity keeps its parent's reach unless it overrides the method.

Windows shift time: window ``w`` starts at 0. So an intensity must not depend on absolute time
(the kernels of the history do not; a time-varying baseline such as :class:`InhomogeneousPoisson`
or :class:`PiecewisePoisson` does, and :func:`history_reach` refuses it).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .events import SpikeTrains


class Windows:
    """Consecutive windows of a recording, each with the events before it.

    Holds the recording's events once (times and integer marks) and, per window, where it starts
    and which events it and its past hold: the dense tensors below are built on access for the
    windows at hand, so that ``windows[index]`` (a minibatch) costs memory for those windows only.

    :ivar torch.Tensor offsets: ``windows`` start time of each window in its recording.
    :ivar torch.Tensor sequence: ``windows`` (long) which sequence of the recording each came from.
    :ivar torch.Tensor duration: ``windows`` window lengths (the last of a sequence may be shorter).
    :ivar float history: the reach used (seconds; ``inf``: all earlier events).

    Built on access (for the windows of this object):

    - :attr:`trains`: the windows' events shifted to ``[0, length]`` as :class:`SpikeTrains`;
      :meth:`value` the same as a realization tensor ``windows x E x (K + 2)``;
    - :attr:`past`: ``windows x P x (K + 2)`` realization tensor of the events within the history
      reach before each window, at times ``< 0`` (padding rows: zero weights, time 0), the ``past=``
      of :class:`~pyro_dpp.PointProcess`;
    - :attr:`context`: for a recording with context marks (``context=`` of
      :meth:`SpikeTrains.windows`), ``windows x M x (C + 2)`` the context events before (times
      ``< 0``) and inside each window, the ``context=`` of the window's process; else None;
    - :meth:`with_past`: each window's past and events in one tensor (the context of a process
      for which these marks are context).
    """

    def __init__(self, events: list, context_events: list | None, num_marks: int, num_context_marks: int,
                 rows: np.ndarray, history: float, dtype: torch.dtype, device: Any) -> None:
        self._events, self._context_events = events, context_events
        self.num_marks, self.num_context_marks = num_marks, num_context_marks
        # per window: sequence, start, length, lo, hi, past lo, context lo, context hi
        self._rows = rows
        self.history = history
        self.dtype, self.device = dtype, device

    def __len__(self) -> int:
        return int(self._rows.shape[0])

    def __repr__(self) -> str:
        return (f"Windows({len(self)} windows of {self.num_marks} marks, history={self.history:g}, "
                f"context={'no' if self._context_events is None else 'yes'})")

    def __getitem__(self, index: Any) -> Windows:
        """The windows ``index`` selects (an integer, slice, list, array or tensor of indices, a mask)."""
        if isinstance(index, torch.Tensor):
            index = index.detach().cpu().numpy()
        rows = self._rows[np.arange(len(self))[index]].reshape(-1, self._rows.shape[-1])
        return Windows(self._events, self._context_events, self.num_marks, self.num_context_marks, rows,
                       self.history, self.dtype, self.device)

    def _column(self, j: int, dtype: torch.dtype) -> torch.Tensor:
        return torch.as_tensor(self._rows[:, j].astype(np.float64), dtype=dtype, device=self.device)

    @property
    def offsets(self) -> torch.Tensor:
        return self._column(1, self.dtype)

    @property
    def sequence(self) -> torch.Tensor:
        return self._column(0, torch.float64).long()

    @property
    def duration(self) -> torch.Tensor:
        return self._column(2, self.dtype)

    def _cut(self, events: list, lo: int, hi: int) -> list[tuple[np.ndarray, np.ndarray]]:
        out = []
        for row in self._rows:
            times, marks = events[int(row[0])]
            a, b = int(row[lo]), int(row[hi])
            out.append((times[a:b] - row[1], marks[a:b]))
        return out

    def value(self) -> torch.Tensor:
        """The windows' events as a realization tensor ``windows x E x (K + 2)``."""
        return _realization(self._cut(self._events, 3, 4), self.num_marks, self.dtype, self.device,
                            pad_time=self._rows[:, 2])

    @property
    def trains(self) -> SpikeTrains:
        cut = self._cut(self._events, 3, 4)
        return SpikeTrains.from_events([t for t, _ in cut], [m for _, m in cut], self.num_marks,
                                       self.duration, dtype=self.dtype, device=self.device)

    @property
    def past(self) -> torch.Tensor:
        return _realization(self._cut(self._events, 5, 3), self.num_marks, self.dtype, self.device)

    @property
    def context(self) -> torch.Tensor | None:
        if self._context_events is None:
            return None
        return _realization(self._cut(self._context_events, 6, 7), self.num_context_marks, self.dtype, self.device,
                            pad_time=self._rows[:, 2])

    def with_past(self) -> torch.Tensor:
        """``windows x (P + E) x (K + 2)``: each window's past and own events in one realization
        tensor (times ``< 0`` then in ``[0, length]``), the ``context=`` of a process for which these
        marks are context (the hidden neurons of an SNN given the observed ones)."""
        return _realization(self._cut(self._events, 5, 4), self.num_marks, self.dtype, self.device,
                            pad_time=self._rows[:, 2])

    def fingerprint(self) -> str:
        """A digest of the recording's events and the windows' layout (for checkpoints)."""
        digest = hashlib.sha256()
        for times, marks in self._events:
            digest.update(np.ascontiguousarray(times).tobytes())
            digest.update(np.ascontiguousarray(marks).tobytes())
        digest.update(np.ascontiguousarray(self._rows).tobytes())
        return digest.hexdigest()


def prepend_past(past: torch.Tensor | None, value: torch.Tensor, duration: torch.Tensor) -> torch.Tensor:
    """One realization tensor of ``past`` (times ``< 0``) followed by ``value`` (``[0, duration]``),
    real rows first (padding rows last, at the duration).

    :param past: ``batch x P x (K + 2)`` or None (returns ``value``).
    :param value: ``batch x E x (K + 2)``.
    :param duration: ``batch``.
    """
    if past is None or past.shape[-2] == 0:
        return value
    batch = torch.broadcast_shapes(past.shape[:-2], value.shape[:-2])
    both = torch.cat([past.expand(batch + past.shape[-2:]).to(value), value.expand(batch + value.shape[-2:])], -2)
    real = both[..., 1:].sum(-1) > 0.5
    order = (~real).to(torch.int8).argsort(dim=-1, stable=True)  # real rows first, in their order
    both = both.gather(-2, order.unsqueeze(-1).expand(order.shape + both.shape[-1:]))
    real = real.gather(-1, order)
    times = torch.where(real, both[..., 0], duration.to(both).expand(batch).unsqueeze(-1).expand(real.shape))
    rows = max(1, int(real.sum(-1).max()) + 1) if real.numel() else both.shape[-2]
    return torch.cat([times.unsqueeze(-1), both[..., 1:]], -1)[..., : min(rows, both.shape[-2]), :]


def history_reach(model: Any, dtype: torch.dtype = torch.float64) -> float:
    """The lag beyond which an event no longer changes the intensity of ``model`` (see the module
    docstring): the support of a finite kernel, else where every kernel falls below ``dtype``'s
    epsilon relative to its largest value.

    Each model states its own reach, next to its math: ``model.history_reach(dtype)``
    (:meth:`pyro_dpp.intensity.Intensity.history_reach`, :meth:`pyro_dpp.intensity.Basis.history_reach`,
    :meth:`pyro_dpp.snn.SNN.history_reach`), so a user's own intensity states its reach by
    defining that method.

    :param model: an :class:`~pyro_dpp.intensity.Intensity`, a :class:`~pyro_dpp.intensity.Basis`,
        an :class:`~pyro_dpp.snn.SNN` (any object with a ``history_reach(dtype)`` method), or a
        list of those (the longest reach).
    :param dtype: the data's dtype, whose epsilon cuts infinite tails.
    :raises ValueError: for a model whose reach is unknown (pass ``history=`` then), or one that
        windows cannot serve (an intensity of absolute time).
    """
    if isinstance(model, (list, tuple)):
        return max((history_reach(m, dtype) for m in model), default=0.0)
    method = getattr(model, "history_reach", None)
    reach = method(dtype) if callable(method) else None
    if reach is None or not reach >= 0:
        raise ValueError(
            f"the history reach of {type(model).__name__} is not known: pass history= (seconds: how far back "
            "an event still changes the intensity; windows then carry the events that far back as past), "
            "or give the class a history_reach(dtype) method"
        )
    return float(reach)


def _events(trains: SpikeTrains) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per sequence: sorted times (float64 array) and integer marks."""
    out = []
    for neurons in trains.to_lists():
        times = np.concatenate([np.asarray(t, dtype=np.float64) for t in neurons]) if neurons else np.zeros(0)
        marks = np.concatenate([np.full(len(t), k, dtype=np.int64) for k, t in enumerate(neurons)]) \
            if neurons else np.zeros(0, np.int64)
        order = np.argsort(times, kind="stable")
        out.append((times[order], marks[order]))
    return out


def _positive_length(name: str, value: Any) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}") from err
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number of seconds, got {value!r}")
    return value


def _realization(rows: list[tuple[np.ndarray, np.ndarray]], num_marks: int, dtype: torch.dtype,
                 device: Any, pad_time: Sequence[float] | None = None) -> torch.Tensor:
    """``len(rows) x max_rows x (K + 2)`` from per-window (times, marks); padding rows hold
    ``pad_time`` (default 0) and zero weights. With a ``pad_time`` (the windows' durations) every
    window gets at least one padding row, as :meth:`SpikeTrains.to_tensor` gives."""
    width = max([len(t) for t, _ in rows] + [0]) + (pad_time is not None)
    out = torch.zeros(len(rows), width, num_marks + 2, dtype=dtype)
    for i, (t, m) in enumerate(rows):
        n = len(t)
        if pad_time is not None:
            out[i, n:, 0] = float(pad_time[i])
        if n:
            out[i, :n, 0] = torch.as_tensor(t, dtype=dtype)
            out[i, torch.arange(n), 1 + torch.as_tensor(m)] = 1.0
    return out.to(device)


def cut_windows(trains: SpikeTrains, length: float, history: float | None = None, model: Any = None,
                context: SpikeTrains | None = None) -> Windows:
    """:meth:`SpikeTrains.windows`: cut every sequence of ``trains`` into windows ``[s, s + length)``
    (``s = 0, length, 2 length, ...``; the last one ends at the sequence's duration and holds an
    event exactly there), shifted to start at 0, each with the events of the previous ``history``
    seconds as its past.

    :param SpikeTrains trains: the recording (one or more sequences).
    :param float length: window length (seconds, > 0).
    :param float history: how far back the past reaches (seconds, >= 0; ``inf`` for everything
        before); default: :func:`history_reach` of ``model`` in the trains' dtype.
    :param model: the intensity (or SNN, basis) whose reach sets the default ``history``.
    :param SpikeTrains context: events of context marks over the same recording (same sequences and
        durations): cut alike, each window carrying those before it (within ``history``) and inside it
        in :attr:`Windows.context`.
    :raises ValueError: for a non-positive or non-finite ``length``, a negative or NaN ``history``,
        neither ``history`` nor ``model``, or a ``context`` that does not match the recording.
    """
    if not isinstance(trains, SpikeTrains):
        raise ValueError(f"windows are cut from SpikeTrains, got {type(trains).__name__}")
    length = _positive_length("length", length)
    dtype, device = trains.times.dtype, trains.times.device
    if history is None:
        if model is None:
            raise ValueError(
                "pass history= (seconds of past each window carries) or the model (intensity or SNN) whose "
                "history reach sets it"
            )
        history = history_reach(model, dtype)
    try:
        history = float(history)
    except (TypeError, ValueError) as err:
        raise ValueError(f"history must be a number of seconds >= 0 (or inf), got {history!r}") from err
    if math.isnan(history) or history < 0:
        raise ValueError(f"history must be a number of seconds >= 0 (or inf), got {history!r}")
    durations = trains.duration.detach().reshape(-1).double().cpu().numpy()
    events = _events(trains)
    ctx_events = None
    if context is not None:
        if not isinstance(context, SpikeTrains):
            raise ValueError(f"context must be SpikeTrains, got {type(context).__name__}")
        ctx_dur = context.duration.detach().reshape(-1).double().cpu().numpy()
        if ctx_dur.shape != durations.shape or not np.allclose(ctx_dur, durations, rtol=1e-12, atol=0):
            raise ValueError(
                f"context has {len(ctx_dur)} sequences of durations {ctx_dur[:4].tolist()}... but the trains "
                f"{len(durations)} of {durations[:4].tolist()}...; pass the context of the same recording"
            )
        ctx_events = _events(context)
    rows = []
    for i, (times, _) in enumerate(events):
        total = float(durations[i])
        count = max(1, math.ceil(total / length))
        for w in range(count):
            s = w * length
            e = min(s + length, total)
            if s >= total and w:  # rounding in total / length
                break
            last = w == count - 1 or s + length >= total
            hi = np.searchsorted(times, e, side="right" if last else "left")
            lo = np.searchsorted(times, s, side="left")
            plo = 0 if math.isinf(history) else np.searchsorted(times, s - history, side="left")
            clo = chi = 0
            if ctx_events is not None:
                ct = ctx_events[i][0]
                chi = np.searchsorted(ct, e, side="right" if last else "left")
                clo = 0 if math.isinf(history) else np.searchsorted(ct, s - history, side="left")
            rows.append((i, s, e - s, lo, hi, plo, clo, chi))
            if last:
                break
    table = np.array(rows, dtype=np.float64).reshape(-1, 8)
    return Windows(events, ctx_events, trains.num_marks, 0 if context is None else context.num_marks, table,
                   history, dtype, device)
