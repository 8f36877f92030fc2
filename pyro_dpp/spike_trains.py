"""The user-facing container of spike trains: :class:`SpikeTrains` (the realization layout it converts
to and from is documented in :mod:`pyro_dpp.events`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .events import (
    _resolution_error,
    event_mask,
    merged_times,
    num_marks_of,
    outside_window,
    pad_realization,
    validate_realization,
)
from .memory import check_allocation


def _numpy(x: Any) -> Any:
    """``x`` itself, or a tensor's values as a numpy array (from any device)."""
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x


def _as_duration(duration: Any, batch: int, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None) -> torch.Tensor:
    if dtype is None:
        # a floating tensor keeps its dtype; anything else gets the default dtype
        floating = isinstance(duration, torch.Tensor) and duration.is_floating_point()
        dtype = duration.dtype if floating else torch.get_default_dtype()
    if device is None and isinstance(duration, torch.Tensor):
        device = duration.device
    duration = torch.as_tensor(duration, dtype=dtype, device=device)
    if duration.dim() == 0:
        duration = duration.expand(batch)
    if duration.shape != (batch,):
        raise ValueError(
            f"duration must be a scalar or have one entry per sequence ({batch}), got {tuple(duration.shape)}"
        )
    if not torch.isfinite(duration).all() or (duration <= 0).any():
        raise ValueError("duration must be positive and finite")
    return duration.clone()


class SpikeTrains:
    """A batch of marked event sequences (spike trains) on windows ``[0, duration]``.

    The container users hold. It converts from per-neuron spike-time lists and from
    (times, marks) arrays, and to and from the padded realization tensor that
    :class:`~pyro_dpp.PointProcess` samples and scores (see :mod:`pyro_dpp.events` for the layout).

    :param torch.Tensor times: ``batch x events`` event times.
    :param torch.Tensor weights: ``batch x events x marks`` mark weights (one-hot for exact events).
    :param torch.Tensor duration: ``batch`` window lengths.
    :param torch.Tensor rest: ``batch x events`` "no event" weights (zeros for exact events);
        a row whose weights and rest are all zero is padding.
    """

    def __init__(
        self,
        times: torch.Tensor,
        weights: torch.Tensor,
        duration: torch.Tensor,
        rest: torch.Tensor | None = None,
    ) -> None:
        if rest is None:
            rest = torch.zeros_like(times)
        duration = torch.as_tensor(duration, dtype=times.dtype, device=times.device)
        if times.dim() < 1 or weights.shape[:-1] != times.shape:
            raise ValueError(
                f"times must be batch x events and weights batch x events x marks, got {tuple(times.shape)} "
                f"and {tuple(weights.shape)}"
            )
        try:
            torch.broadcast_to(duration, times.shape[:-1])
        except RuntimeError:
            raise ValueError(
                f"duration has shape {tuple(duration.shape)} but the trains have batch shape "
                f"{tuple(times.shape[:-1])}; give a scalar or one window length per sequence"
            ) from None
        self._value = pad_realization(times, weights, rest, duration.expand(times.shape[:-1]))
        self.duration = duration.expand(times.shape[:-1])
        validate_realization(self._value, weights.shape[-1], self.duration, name="spike trains")

    # ---- views -------------------------------------------------------------------------------
    @property
    def times(self) -> torch.Tensor:
        """``batch x events`` event times (padding rows hold the duration)."""
        return self._value[..., 0]

    @property
    def weights(self) -> torch.Tensor:
        """``batch x events x marks`` mark weights: one-hot for exact events, soft for relaxed ones."""
        return self._value[..., 1:-1]

    @property
    def rest(self) -> torch.Tensor:
        """``batch x events`` "no event" weights (nonzero only for relaxed candidates)."""
        return self._value[..., -1]

    @property
    def mask(self) -> torch.Tensor:
        """``batch x events`` boolean mask of real rows."""
        return event_mask(self._value)

    @property
    def num_marks(self) -> int:
        return num_marks_of(self._value)

    @property
    def batch_shape(self) -> torch.Size:
        return self._value.shape[:-2]

    @property
    def num_events(self) -> torch.Tensor:
        """``batch`` number of real rows (events, or candidates for relaxed trains)."""
        return self.mask.sum(-1)

    def __len__(self) -> int:
        return self._value.shape[0] if self._value.dim() > 2 else 1

    def __repr__(self) -> str:
        return (
            f"SpikeTrains(batch_shape={tuple(self.batch_shape)}, num_marks={self.num_marks}, "
            f"max_events={self._value.shape[-2]})"
        )

    # ---- conversions -------------------------------------------------------------------------
    @classmethod
    def from_tensor(cls, value: torch.Tensor, duration: Any | None = None) -> SpikeTrains:
        """Wrap a realization tensor (as returned by ``PointProcess.sample``/``rsample``).

        :param duration: window lengths; defaults to the time held by the last row, which is the
            duration whenever the last row is padding.
        """
        if not isinstance(value, torch.Tensor) or value.dim() < 2 or value.shape[-1] < 2:
            raise ValueError("value must be a realization tensor of shape batch x events x (marks + 2)")
        if duration is None:
            if event_mask(value)[..., -1].any():
                raise ValueError("value has no padding row to read the duration from; pass duration=")
            duration = value[..., -1, 0]
        return cls(value[..., 0], value[..., 1:-1], duration, rest=value[..., -1])

    def to_tensor(self, max_events: int | None = None) -> torch.Tensor:
        """The padded realization tensor with ``max_events`` rows (default: as many as needed, plus
        one padding row so the duration can be recovered).

        :raises ValueError: if a sequence holds more than ``max_events`` events.
        """
        most = int(self.num_events.max()) if self._value.numel() else 0
        if max_events is None:
            max_events = most + 1
        if most > max_events:
            raise ValueError(
                f"a sequence holds {most} events but max_events={max_events}; pass a larger max_events"
            )
        rows = self._value.shape[-2]
        if max_events <= rows:
            return self._value[..., :max_events, :].clone()
        pad = self._value.new_zeros(self.batch_shape + (max_events - rows, self._value.shape[-1]))
        pad[..., 0] = self.duration.unsqueeze(-1)
        return torch.cat([self._value, pad], dim=-2)

    @classmethod
    def from_lists(cls, spikes: Sequence[Sequence[Any]], duration: Any, dtype: torch.dtype | None = None,
                   device: torch.device | str | None = None) -> SpikeTrains:
        """Build from ``spikes[sequence][neuron]``, an array of spike times of that neuron.

        :param duration: a scalar or one window length per sequence.
        :param dtype: floating dtype of the result (default: ``duration``'s if it is a floating
            tensor, else torch's default dtype).
        :param device: device of the result (default: ``duration``'s if it is a tensor, else the CPU).
        """
        if len(spikes) == 0:
            raise ValueError("spikes must hold at least one sequence")
        num_marks = len(spikes[0])
        times, marks = [], []
        for s, seq in enumerate(spikes):
            if len(seq) != num_marks:
                raise ValueError(
                    f"sequence {s} has {len(seq)} neurons but sequence 0 has {num_marks}; every "
                    "sequence must list the same neurons (use an empty array for a silent neuron)"
                )
            t = [np.asarray(_numpy(train), dtype=float).reshape(-1) for train in seq]
            times.append(np.concatenate(t) if t else np.zeros(0))
            marks.append(np.concatenate([np.full(len(x), k) for k, x in enumerate(t)]) if t else np.zeros(0, int))
        return cls.from_events(times, marks, num_marks, duration, dtype=dtype, device=device)

    @classmethod
    def from_events(cls, times: Any, marks: Any, num_marks: int, duration: Any, dtype: torch.dtype | None = None,
                    device: torch.device | str | None = None) -> SpikeTrains:
        """Build from event ``times`` and integer ``marks`` (``0 <= mark < num_marks``).

        Either one sequence (two 1-D arrays) or a list of sequences (two lists of 1-D arrays).
        Events are sorted by time; none is dropped. ``dtype`` and ``device`` as in :meth:`from_lists`.

        :raises ValueError: for times outside the window (:func:`outside_window`), ids outside
            ``0..num_marks-1``, a ``dtype`` in which distinct times become equal (float32 cannot
            tell 3600000.2 from 3600000.3), or a weight tensor over the memory limit
            (:mod:`pyro_dpp.memory`; a mistyped ``num_marks``).
        """
        if isinstance(num_marks, bool) or not isinstance(num_marks, (int, np.integer)) or num_marks < 1:
            raise ValueError(f"num_marks must be a positive integer (the number of neurons), got {num_marks!r}")
        num_marks = int(num_marks)
        single = not isinstance(times, (list, tuple))
        if single:
            times, marks = [times], [marks]
        if len(times) != len(marks):
            raise ValueError(f"got {len(times)} time arrays but {len(marks)} mark arrays")
        batch = len(times)
        duration = _as_duration(duration, batch, dtype, device)
        dtype, device = duration.dtype, duration.device
        duration = duration.cpu()  # events are assembled on the CPU, then moved to ``device``
        seqs = []
        for s, (t, m) in enumerate(zip(times, marks)):
            t_np = np.asarray(_numpy(t))
            if np.iscomplexobj(t_np):
                raise ValueError(f"sequence {s}: spike times are complex numbers; pass real times")
            t64 = torch.as_tensor(t_np.astype(float)).reshape(-1)
            m_np = np.asarray(_numpy(m)).reshape(-1)
            if len(t64) != len(m_np):
                raise ValueError(f"sequence {s}: {len(t64)} times but {len(m_np)} marks")
            if not torch.isfinite(t64).all():
                raise ValueError(f"sequence {s} has NaN or inf spike times")
            if len(m_np) and (not np.issubdtype(m_np.dtype, np.number) or np.iscomplexobj(m_np)
                              or not np.all(np.isfinite(m_np)) or not np.all(m_np == np.round(m_np))):
                raise ValueError(f"sequence {s}: marks must be integer neuron ids")
            m = torch.as_tensor(m_np.astype(np.int64))
            if len(m) and (m.min() < 0 or m.max() >= num_marks):
                raise ValueError(
                    f"sequence {s} has neuron ids outside 0..{num_marks - 1}; raise num_marks or fix the ids"
                )
            order = torch.argsort(t64, stable=True)
            t64, m = t64[order], m[order]
            t = t64.to(dtype)
            if outside_window(t, duration[s].to(dtype)).any():
                raise ValueError(
                    f"sequence {s} has spike times outside [0, {float(duration[s])}]; "
                    "drop them or enlarge the duration"
                )
            merged = merged_times(t64, t, torch.ones_like(t64, dtype=torch.bool))
            if merged.any():
                raise _resolution_error(f"sequence {s}", t64, merged, dtype)
            seqs.append((t, m))
        rows = max(1, max(len(t) for t, _ in seqs))
        check_allocation(batch * rows * (num_marks + 3) * torch.finfo(dtype).bits / 8 * 2,
                         f"spike trains of {batch} sequences x {rows} events x {num_marks} neurons",
                         "check num_marks (the number of neurons) and the neuron ids, or load fewer sequences")
        out_t = torch.zeros(batch, rows, dtype=dtype)
        out_w = torch.zeros(batch, rows, num_marks, dtype=dtype)
        for s, (t, m) in enumerate(seqs):
            out_t[s, : len(t)] = t
            out_w[s, torch.arange(len(t)), m] = 1.0
        out_t, out_w, duration = out_t.to(device), out_w.to(device), duration.to(device)
        if single:
            return cls(out_t[0], out_w[0], duration[0])
        return cls(out_t, out_w, duration)

    def to_lists(self) -> list[list[np.ndarray]]:
        """Per-sequence, per-neuron spike-time arrays. Relaxed rows are read by their largest weight
        (rows whose largest weight is "no event" are not spikes)."""
        value = self._value if self._value.dim() > 2 else self._value.unsqueeze(0)
        out = []
        for seq in value.detach().cpu():
            mark = seq[:, 1:].argmax(-1)
            real = seq[:, 1:].sum(-1) > 0.5
            out.append([seq[real & (mark == k), 0].numpy() for k in range(self.num_marks)])
        return out

    def windows(self, length: float, history: float | None = None, model: Any = None,
                context: SpikeTrains | None = None) -> Any:
        """Cut each sequence into consecutive windows ``[s, s + length)`` shifted to ``[0, length]``
        (the last one shorter, ending at the duration), each carrying the events of the ``history``
        seconds before it as ``past`` (times ``< 0``), so that the exact log-likelihood of the
        recording is the sum of the windows' (see :mod:`pyro_dpp.windows`).

        :param float length: window length in seconds.
        :param float history: seconds of past per window; default: the history reach of ``model``
            (:func:`pyro_dpp.windows.history_reach`: a finite kernel's support, else where every
            kernel is below float epsilon relative).
        :param model: the intensity or :class:`~pyro_dpp.snn.SNN` that sets the default ``history``.
        :param SpikeTrains context: context events of the same recording, cut alike.
        :returns: a :class:`pyro_dpp.windows.Windows` (``trains``, ``past``, ``offsets``,
            ``sequence``, ``context``).
        """
        from .windows import cut_windows

        return cut_windows(self, length, history=history, model=model, context=context)

    def to(self, *args: Any, **kwargs: Any) -> SpikeTrains:
        """Move to a device or dtype, like :meth:`torch.Tensor.to`; a dtype in which distinct
        neighbouring times become equal raises :class:`ValueError`."""
        value = self._value.to(*args, **kwargs)
        if value.dtype != self._value.dtype:
            merged = merged_times(self._value[..., 0], value[..., 0], self.mask)
            if merged.any():
                raise _resolution_error("SpikeTrains.to", self._value[..., 0], merged, value.dtype)
        return SpikeTrains.from_tensor(value, self.duration.to(*args, **kwargs))
