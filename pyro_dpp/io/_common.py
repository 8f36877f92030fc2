"""Shared parts of the spike-file readers and writers: units, checks, the conversion to
:class:`~pyro_dpp.SpikeTrains`, atomic writing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..events import SpikeTrains, event_mask

#: seconds per time unit
TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9, "min": 60.0, "h": 3600.0}
_ALIASES = {"sec": "s", "second": "s", "seconds": "s", "msec": "ms", "millisecond": "ms", "milliseconds": "ms",
            "µs": "us", "μs": "us", "usec": "us", "microsecond": "us", "microseconds": "us", "minute": "min",
            "minutes": "min", "hour": "h", "hours": "h"}
SUFFIXES = (".npz", ".csv", ".nwb")


class SpikeFileNotFoundError(FileNotFoundError, ValueError):
    """A spike file that does not exist (both a :class:`FileNotFoundError` and a :class:`ValueError`)."""


# ---- helpers ----------------------------------------------------------------------------------


def _unit(name: Any) -> str:
    if name is None:
        raise ValueError("time_unit must be a unit name such as 's' or 'ms', got None")
    key = str(name).strip()
    key = _ALIASES.get(key.lower(), key)
    if key not in TIME_UNITS:
        raise ValueError(f"unknown time unit {name!r}; use one of {sorted(TIME_UNITS)}")
    return key


def _convert(values: np.ndarray, source: str | None, target: str | None) -> np.ndarray:
    """Times in unit ``source`` expressed in unit ``target`` (unchanged when either is None or they agree)."""
    if source is None or target is None:
        return values
    source, target = _unit(source), _unit(target)
    if source == target:
        return values
    return values * (TIME_UNITS[source] / TIME_UNITS[target])


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise SpikeFileNotFoundError(f"no spike file at {path}")
    if path.is_dir():
        raise ValueError(f"{path} is a directory, not a spike file")
    return path


def _require(module: str, extra: str) -> Any:
    try:
        return __import__(module)
    except ImportError as err:
        raise ImportError(
            f"this needs the optional package {module!r}: pip install 'pyro-dpp[{extra}]'"
        ) from err


def _build(
    times: list[np.ndarray], neurons: list[np.ndarray], duration: Any, num_neurons: int | None, source: str,
    dtype: torch.dtype | None = None, device: Any = None,
) -> SpikeTrains:
    """Check per-sequence spike times and neuron ids, then build :class:`~pyro_dpp.SpikeTrains`."""
    if duration is None:
        raise ValueError(f"{source}: the window length is unknown; pass duration=")
    duration = np.asarray(duration, dtype=float).reshape(-1)
    if duration.size == 1 and len(times) > 1:
        duration = np.full(len(times), float(duration[0]))
    if duration.size != len(times):
        raise ValueError(f"{source}: {duration.size} durations for {len(times)} sequences; give one per sequence")
    if not np.all(np.isfinite(duration)) or np.any(duration <= 0):
        raise ValueError(f"{source}: durations must be positive and finite, got {duration.tolist()}")
    checked_t, checked_n = [], []
    for s, (t, n) in enumerate(zip(times, neurons)):
        where = f"{source}, sequence {s}" if len(times) > 1 else source
        t = np.asarray(t).reshape(-1)
        n = np.asarray(n).reshape(-1)
        if t.size != n.size:
            raise ValueError(f"{where}: {t.size} spike times but {n.size} neuron ids")
        if t.size and not np.issubdtype(t.dtype, np.number):
            raise ValueError(f"{where}: spike times must be numbers, got dtype {t.dtype}")
        t = t.astype(float)
        if not np.all(np.isfinite(t)):
            raise ValueError(f"{where}: {int((~np.isfinite(t)).sum())} spike times are NaN or infinite; remove them")
        if n.size:
            if not np.issubdtype(n.dtype, np.number):
                raise ValueError(f"{where}: neuron ids must be integers, got dtype {n.dtype}")
            if not np.all(np.isfinite(n)) or not np.all(n == np.round(n)):
                raise ValueError(f"{where}: neuron ids must be integers (found NaN or fractional ids)")
            n = n.astype(np.int64)
            if n.min() < 0:
                raise ValueError(f"{where}: negative neuron id {int(n.min())}; ids must be 0, 1, ...")
        else:
            n = n.astype(np.int64)
        outside = (t < 0) | (t > duration[s])
        if outside.any():
            first = float(t[outside][0])
            raise ValueError(
                f"{where}: {int(outside.sum())} spikes lie outside the window [0, {duration[s]:g}] "
                f"(e.g. t = {first:g}); drop them or pass a larger duration="
            )
        checked_t.append(t)
        checked_n.append(n)
    most = max((int(n.max()) for n in checked_n if n.size), default=-1)
    if num_neurons is None:
        num_neurons = most + 1
        if num_neurons == 0:
            raise ValueError(f"{source}: no spikes at all, so the number of neurons is unknown; pass num_neurons=")
    num_neurons = int(num_neurons)
    if num_neurons < 1:
        raise ValueError(f"{source}: num_neurons must be positive, got {num_neurons}")
    if most >= num_neurons:
        raise ValueError(
            f"{source}: unknown neuron id {most} for num_neurons={num_neurons} (ids must be 0..{num_neurons - 1}); "
            "pass a larger num_neurons= or fix the ids"
        )
    return SpikeTrains.from_events(checked_t, checked_n, num_neurons, duration, dtype=dtype, device=device)


def _events(trains: SpikeTrains) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Per-sequence ``(times, neuron ids)`` and the durations of exact spike trains."""
    if not isinstance(trains, SpikeTrains):
        raise ValueError(f"expected SpikeTrains, got {type(trains).__name__}")
    value = trains.to_tensor().detach().cpu().double()
    value = value.reshape(-1, *value.shape[-2:])
    mask = event_mask(value)
    weights = value[..., 1:]
    hard = (weights - (weights > 0.5).double()).abs().max(-1).values <= 1e-6
    if (mask & (~hard | (weights[..., -1] > 0.5))).any():
        raise ValueError("only exact (one-hot) spike trains can be written; these hold relaxed (soft) events")
    times, neurons = [], []
    for s in range(value.shape[0]):
        real = mask[s]
        times.append(value[s, real, 0].numpy())
        neurons.append(value[s, real, 1:-1].argmax(-1).numpy().astype(np.int64))
    return times, neurons, trains.duration.detach().cpu().double().reshape(-1).numpy()
