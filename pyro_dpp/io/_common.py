"""Shared parts of the spike-file readers and writers: units, checks, the conversion to
:class:`~pyro_dpp.SpikeTrains`, atomic writing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import atomic_write
from ..events import SpikeTrains, event_mask, outside_window

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


def _count(value: Any, what: str, source: str) -> int:
    """A positive integer count from a file or an argument (``2.0`` passes, ``2.5`` and ``"x"`` raise)."""
    try:
        number = np.asarray(value)
        if number.ndim != 0 or np.iscomplexobj(number) or not np.issubdtype(number.dtype, np.number):
            raise TypeError
        number = float(number)
    except (TypeError, ValueError):
        raise ValueError(f"{source}: {what} must be one positive integer, got {value!r}") from None
    if not (np.isfinite(number) and number == round(number) and number >= 1):
        raise ValueError(f"{source}: {what} must be a positive integer, got {value!r}")
    return int(number)


def _real(values: np.ndarray, what: str, where: str) -> np.ndarray:
    if np.iscomplexobj(values):
        raise ValueError(f"{where}: {what} are complex numbers; store real numbers")
    if values.size and not np.issubdtype(values.dtype, np.number):
        raise ValueError(f"{where}: {what} must be numbers, got dtype {values.dtype}")
    return values


def _build(
    times: list[np.ndarray], neurons: list[np.ndarray], duration: Any, num_neurons: Any, source: str,
    dtype: torch.dtype | None = None, device: Any = None, neuron_ids: Any = None,
) -> SpikeTrains:
    """Check per-sequence spike times and neuron ids, then build :class:`~pyro_dpp.SpikeTrains`
    (float64 times unless ``dtype`` says otherwise).

    Neuron ids must be ``0..num_neurons-1``. Without a declared ``num_neurons`` the ids must be
    contiguous (every id up to the largest occurs), so a typo such as ``100000`` cannot create
    100,001 neurons; ``neuron_ids`` (the file's id of each neuron, in order) maps other ids."""
    if duration is None:
        raise ValueError(f"{source}: the window length is unknown; pass duration=")
    duration = _real(np.asarray(duration), "durations", source)
    duration = np.asarray(duration, dtype=float).reshape(-1)
    if duration.size == 1 and len(times) > 1:
        duration = np.full(len(times), float(duration[0]))
    if duration.size != len(times):
        raise ValueError(f"{source}: {duration.size} durations for {len(times)} sequences; give one per sequence")
    if not np.all(np.isfinite(duration)) or np.any(duration <= 0):
        raise ValueError(f"{source}: durations must be positive and finite, got {duration.tolist()}")
    id_map = None
    if neuron_ids is not None:
        ids = np.asarray(neuron_ids).reshape(-1)
        if (ids.size == 0 or np.iscomplexobj(ids) or not np.issubdtype(ids.dtype, np.number)
                or not np.all(ids == np.round(ids)) or len(np.unique(ids)) != ids.size):
            raise ValueError(f"{source}: neuron_ids must list distinct integer ids, got {neuron_ids!r}")
        id_map = {int(x): k for k, x in enumerate(ids.tolist())}
        if num_neurons is not None and _count(num_neurons, "num_neurons", source) != len(id_map):
            raise ValueError(f"{source}: num_neurons={num_neurons} but neuron_ids lists {len(id_map)} ids")
        num_neurons = len(id_map)
    checked_t, checked_n = [], []
    for s, (t, n) in enumerate(zip(times, neurons)):
        where = f"{source}, sequence {s}" if len(times) > 1 else source
        t = _real(np.asarray(t).reshape(-1), "spike times", where)
        n = _real(np.asarray(n).reshape(-1), "neuron ids", where)
        if t.size != n.size:
            raise ValueError(f"{where}: {t.size} spike times but {n.size} neuron ids")
        t = t.astype(float)
        if not np.all(np.isfinite(t)):
            raise ValueError(f"{where}: {int((~np.isfinite(t)).sum())} spike times are NaN or infinite; remove them")
        if n.size:
            if not np.all(np.isfinite(n)) or not np.all(n == np.round(n)):
                raise ValueError(f"{where}: neuron ids must be integers (found NaN or fractional ids)")
            if id_map is not None:  # vectorised lookup: sorted file ids, their positions
                keys = np.asarray(list(id_map), dtype=np.float64)
                order = np.argsort(keys)
                found = np.clip(np.searchsorted(keys[order], n), 0, len(keys) - 1)
                known = keys[order][found] == n
                if not known.all():
                    unknown = sorted({int(x) for x in np.unique(n[~known]).tolist()})
                    raise ValueError(f"{where}: neuron ids {unknown[:5]} are not in neuron_ids; add them or fix "
                                     "the file")
                n = np.asarray(list(id_map.values()), dtype=np.int64)[order][found]
            n = n.astype(np.int64)
            if n.min() < 0:
                raise ValueError(f"{where}: negative neuron id {int(n.min())}; ids must be 0, 1, ...")
        else:
            n = n.astype(np.int64)
        outside = outside_window(torch.as_tensor(t), torch.as_tensor(duration[s])).numpy()
        if outside.any():
            first = float(t[outside][0])
            raise ValueError(
                f"{where}: {int(outside.sum())} spikes lie outside the window [0, {duration[s]:g}] "
                f"(e.g. t = {first!r}); drop them or pass a larger duration="
            )
        checked_t.append(t)
        checked_n.append(n)
    used = np.unique(np.concatenate(checked_n)) if checked_n else np.zeros(0, np.int64)
    most = int(used[-1]) if used.size else -1
    if num_neurons is None:
        if most < 0:
            raise ValueError(f"{source}: no spikes at all, so the number of neurons is unknown; pass num_neurons=")
        if used.size != most + 1:
            gaps = np.flatnonzero(np.diff(np.concatenate([[-1], used])) > 1)  # first missing id after each gap
            missing = (np.concatenate([[-1], used])[gaps] + 1).tolist()
            raise ValueError(
                f"{source}: the neuron ids are not contiguous ({used.size} distinct ids up to {most}; "
                f"e.g. {missing[:5]} never occur) and the file declares no neuron count: declare it "
                "(num_neurons=, an npz 'num_neurons' array, a csv '# num_neurons: N' line) if those neurons "
                "are silent, pass neuron_ids= to map the ids, or fix a mistyped id"
            )
        num_neurons = most + 1
    num_neurons = _count(num_neurons, "num_neurons", source)
    if most >= num_neurons:
        raise ValueError(
            f"{source}: unknown neuron id {most} for num_neurons={num_neurons} (ids must be 0..{num_neurons - 1}); "
            "pass a larger num_neurons= or fix the ids"
        )
    dtype = torch.float64 if dtype is None else dtype
    return SpikeTrains.from_events(checked_t, checked_n, num_neurons, duration, dtype=dtype, device=device)


def _write(path: str | Path, write: Any) -> Path:
    """Write through ``write(tmp)`` to a temporary file, then rename it to ``path`` (atomic)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give a file path to write")
    if not path.parent.is_dir():
        raise ValueError(f"cannot write {path}: the folder {path.parent} does not exist")
    return atomic_write(path, write)


def _events(trains: SpikeTrains) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Per-sequence ``(times, neuron ids)`` and the durations of exact spike trains."""
    if not isinstance(trains, SpikeTrains):
        raise ValueError(f"expected SpikeTrains, got {type(trains).__name__}")
    if not trains.is_exact:
        value = trains.to_tensor().detach().cpu().double()
        value = value.reshape(-1, *value.shape[-2:])
        mask = event_mask(value)
        weights = value[..., 1:]
        hard = (weights - (weights > 0.5).double()).abs().max(-1).values <= 1e-6
        if (mask & (~hard | (weights[..., -1] > 0.5))).any():
            raise ValueError("only exact (one-hot) spike trains can be written; these hold relaxed (soft) events")
        value = torch.cat([value[..., :1], (weights > 0.5).double()], -1)  # the hard rows, rounded
        trains = SpikeTrains.from_tensor(value, trains.duration.detach().cpu().double().reshape(-1))
    times_all = trains.times.detach().cpu().double().reshape(-1, trains.times.shape[-1]).numpy()
    marks_all = trains.marks.detach().cpu().reshape(-1, trains.marks.shape[-1]).numpy()
    times, neurons = [], []
    for t, m in zip(times_all, marks_all):
        real = m >= 0
        times.append(t[real])
        neurons.append(m[real].astype(np.int64))
    return times, neurons, trains.duration.detach().cpu().double().reshape(-1).numpy()
