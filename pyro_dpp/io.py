"""Reading and writing spike trains: numpy ``.npz``, ``.csv``, NWB files and ``neo`` objects.

:func:`load_spikes` and :func:`save_spikes` dispatch on the file suffix; the format functions below
can be called directly too. Every reader returns :class:`~pyro_dpp.SpikeTrains` (exact, one-hot
events) and checks the data: a missing file, missing or unknown columns, NaN or infinite times,
negative or too large neuron ids and spikes outside the window raise :class:`ValueError` naming the
file and what to change (a missing file raises :class:`SpikeFileNotFoundError`, which is both a
:class:`ValueError` and a :class:`FileNotFoundError`).

**Time units.** :class:`~pyro_dpp.SpikeTrains` holds plain numbers. ``time_unit`` (``"s"``,
``"ms"``, ``"us"``, ``"ns"``, ``"min"`` or ``"h"``) names the unit of those numbers: readers convert
what the source records into it, writers record it. NWB stores seconds; a ``neo.SpikeTrain`` carries
its own unit; ``.npz`` and ``.csv`` files carry one if they were written with a ``time_unit`` (and
are read as they are otherwise).

**The .npz format** (:func:`load_npz`, :func:`save_npz`), either flat::

    times        float (n,)   spike times, in [0, duration of their sequence]
    neurons      int (n,)     neuron ids, 0 <= id < num_neurons
    sequence     int (n,)     optional: the sequence (trial) of each spike, 0-based (default: all 0)
    duration     float () or (num_sequences,)   window lengths
    num_neurons  int ()       optional (default: largest id + 1)
    time_unit    str ()       optional: the unit of times and duration

or per sequence: ``times_0, neurons_0, times_1, neurons_1, ...`` with ``duration`` (and the optional
``num_neurons``, ``time_unit``) as above.

**The .csv format** (:func:`load_csv`, :func:`save_csv`): a header row naming the columns
``time,neuron`` and optionally ``sequence`` (any order; the time column may carry its unit, as in
``time_ms``), one spike per row. The window lengths are not part of a plain csv: pass ``duration=``,
or add a comment line before the header, as :func:`save_csv` writes::

    # duration: 2.0 2.5
    # num_neurons: 3
    time_ms,neuron,sequence
    0.25,0,0
    ...

**NWB** (:func:`from_nwb`, :func:`to_nwb`; ``pip install 'pyro-dpp[nwb]'``): neurons are the rows
of the file's units table (in table order), times come from its ``spike_times`` column. If the file
has a trials table, every trial is one sequence (spikes relative to its start time, duration its
length; spikes outside every trial are left out); otherwise the file is one sequence starting at 0.

**neo** (:func:`from_neo`, :func:`to_neo`; ``pip install 'pyro-dpp[neo]'``): a list of
``neo.SpikeTrain`` is one sequence (one train per neuron), a list of such lists, a ``neo.Segment`` or
a ``neo.Block`` (one sequence per segment) several. The window of a sequence is
``[t_start, t_stop]`` of its trains; times are taken relative to ``t_start``.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .events import SpikeTrains, event_mask

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


# ---- npz ----------------------------------------------------------------------------------------


def load_npz(path: str | Path, num_neurons: int | None = None, duration: Any = None, time_unit: str | None = None,
             dtype: torch.dtype | None = None, device: Any = None) -> SpikeTrains:
    """Read spike trains from an ``.npz`` file (format in the module docstring).

    :param num_neurons: overrides the file's ``num_neurons`` (default: the file's, else largest id + 1).
    :param duration: overrides the file's ``duration``.
    :param time_unit: the unit of the returned times; the file's ``time_unit`` (if any) is converted to it.
    """
    path = _existing(path)
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as err:  # numpy raises several types for a file that is not an npz archive
        raise ValueError(f"{path}: not a readable .npz archive ({err})") from err
    if not hasattr(data, "files"):
        raise ValueError(f"{path}: a single array, not an .npz archive of named arrays (see pyro_dpp.io)")
    with data:
        try:
            arrays = {key: data[key] for key in data.files}
        except ValueError as err:  # e.g. object arrays, which need pickle
            raise ValueError(f"{path}: cannot read its arrays ({err}); store numbers and strings only") from err
    keys = set(arrays)
    stored_unit = str(arrays["time_unit"]) if "time_unit" in keys else None
    if stored_unit is not None:
        _unit(stored_unit)
    stored_neurons = int(arrays["num_neurons"]) if "num_neurons" in keys else None
    stored_duration = arrays["duration"] if "duration" in keys else None
    per_seq = sorted(int(k[len("times_"):]) for k in keys if k.startswith("times_") and k[6:].isdigit())
    if "times" in keys or "neurons" in keys:
        missing = {"times", "neurons"} - keys
        if missing:
            raise ValueError(f"{path}: missing array(s) {sorted(missing)}; found {sorted(keys)}")
        t_all, n_all = arrays["times"].reshape(-1), arrays["neurons"].reshape(-1)
        if t_all.size != n_all.size:
            raise ValueError(f"{path}: 'times' has {t_all.size} entries but 'neurons' {n_all.size}")
        if "sequence" in keys:
            seq = arrays["sequence"].reshape(-1)
            if seq.size != t_all.size:
                raise ValueError(f"{path}: 'sequence' has {seq.size} entries but 'times' {t_all.size}")
            if seq.size and (not np.issubdtype(seq.dtype, np.number) or not np.all(seq == np.round(seq))
                             or seq.min() < 0):
                raise ValueError(f"{path}: 'sequence' must hold nonnegative integer sequence ids")
            seq = seq.astype(np.int64)
        else:
            seq = np.zeros(t_all.size, dtype=np.int64)
        dur = duration if duration is not None else stored_duration
        count = int(seq.max()) + 1 if seq.size else 1
        if dur is not None and np.ndim(dur) > 0 and np.size(dur) > 1:
            if np.size(dur) < count:
                raise ValueError(f"{path}: spikes of sequence {count - 1} but only {np.size(dur)} durations")
            count = int(np.size(dur))
        times = [t_all[seq == s] for s in range(count)]
        neurons = [n_all[seq == s] for s in range(count)]
    elif per_seq:
        if per_seq != list(range(len(per_seq))):
            raise ValueError(f"{path}: per-sequence arrays must be times_0, times_1, ... without gaps")
        missing = [f"neurons_{s}" for s in per_seq if f"neurons_{s}" not in keys]
        if missing:
            raise ValueError(f"{path}: missing array(s) {missing}; found {sorted(keys)}")
        times = [arrays[f"times_{s}"].reshape(-1) for s in per_seq]
        neurons = [arrays[f"neurons_{s}"].reshape(-1) for s in per_seq]
        dur = duration if duration is not None else stored_duration
    else:
        raise ValueError(
            f"{path}: expected arrays 'times' and 'neurons' (or times_0, neurons_0, ...) and 'duration'; "
            f"found {sorted(keys)}"
        )
    if dur is None:
        raise ValueError(f"{path}: no 'duration' array; pass duration=")
    if duration is None and stored_unit is not None:
        dur = _convert(np.asarray(dur, dtype=float), stored_unit, time_unit)
    times = [_convert(np.asarray(t, dtype=float) if np.issubdtype(np.asarray(t).dtype, np.number) else t,
                      stored_unit, time_unit) for t in times]
    return _build(times, neurons, dur, num_neurons if num_neurons is not None else stored_neurons, str(path),
                  dtype, device)


def save_npz(trains: SpikeTrains, path: str | Path, time_unit: str | None = None) -> Path:
    """Write exact spike trains as a flat ``.npz`` file (``times``, ``neurons``, ``sequence``,
    ``duration``, ``num_neurons`` and, if given, ``time_unit``: the unit of the trains' times)."""
    times, neurons, duration = _events(trains)
    arrays = {
        "times": np.concatenate(times) if times else np.zeros(0),
        "neurons": np.concatenate(neurons) if neurons else np.zeros(0, np.int64),
        "sequence": np.concatenate([np.full(len(t), s, dtype=np.int64) for s, t in enumerate(times)]),
        "duration": duration,
        "num_neurons": np.asarray(trains.num_marks),
    }
    if time_unit is not None:
        arrays["time_unit"] = np.asarray(_unit(time_unit))
    path = Path(path)
    np.savez(path, **arrays)
    return path


# ---- csv ----------------------------------------------------------------------------------------


def _metadata(line: str) -> tuple[str, str] | None:
    body = line.lstrip("#").strip()
    if ":" not in body and "=" not in body:
        return None
    key, _, value = body.partition(":") if ":" in body else body.partition("=")
    return key.strip().lower(), value.strip()


def load_csv(path: str | Path, num_neurons: int | None = None, duration: Any = None, time_unit: str | None = None,
             dtype: torch.dtype | None = None, device: Any = None) -> SpikeTrains:
    """Read spike trains from a ``time,neuron[,sequence]`` csv file (format in the module docstring).

    :param duration: window length(s); overrides a ``# duration:`` comment line (one is needed).
    :param time_unit: the unit of the returned times; a unit in the time column's name (``time_ms``)
        is converted to it.
    """
    path = _existing(path)
    meta: dict[str, str] = {}
    rows: list[list[str]] = []
    header: list[str] | None = None
    try:
        with open(path, newline="") as handle:
            for line_no, row in enumerate(csv.reader(handle), start=1):
                if not row or all(not cell.strip() for cell in row):
                    continue
                if row[0].lstrip().startswith("#"):
                    entry = _metadata(",".join(row))
                    if entry is not None:
                        meta[entry[0]] = entry[1]
                    continue
                if header is None:
                    header = [cell.strip().lower() for cell in row]
                    continue
                if len(row) != len(header):
                    raise ValueError(f"{path}, line {line_no}: {len(row)} fields but the header has {len(header)}")
                rows.append(row)
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not a text csv file ({err})") from err
    if header is None:
        raise ValueError(f"{path}: empty file; expected a header row 'time,neuron[,sequence]'")
    time_cols = [c for c in header if c == "time" or c.startswith("time_") or c.startswith("time[")]
    unknown = [c for c in header if c not in ("neuron", "sequence") and c not in time_cols]
    if len(time_cols) != 1 or "neuron" not in header or unknown or len(set(header)) != len(header):
        raise ValueError(
            f"{path}: the header must name the columns time, neuron and optionally sequence (the time column "
            f"may carry its unit, as time_ms); got {header}"
        )
    stored_unit = None
    if time_cols[0] != "time":
        stored_unit = _unit(time_cols[0][5:].strip("[]_ "))
    index = {name: header.index(name) for name in header}
    try:
        t_all = np.array([float(r[index[time_cols[0]]]) for r in rows], dtype=float)
        n_all = np.array([float(r[index["neuron"]]) for r in rows], dtype=float)
        seq = (np.array([float(r[index["sequence"]]) for r in rows], dtype=float) if "sequence" in index
               else np.zeros(len(rows)))
    except ValueError as err:
        raise ValueError(f"{path}: a field is not a number ({err})") from err
    if seq.size and (not np.all(np.isfinite(seq)) or not np.all(seq == np.round(seq)) or seq.min() < 0):
        raise ValueError(f"{path}: the sequence column must hold nonnegative integer ids")
    seq = seq.astype(np.int64)
    if duration is None and "duration" in meta:
        try:
            duration = [float(x) for x in meta["duration"].replace(",", " ").split()]
        except ValueError as err:
            raise ValueError(f"{path}: cannot read the '# duration:' line ({err})") from err
        duration = _convert(np.asarray(duration), stored_unit, time_unit)
    if duration is None:
        raise ValueError(f"{path}: a csv file carries no window length; pass duration= (or add '# duration: T')")
    if num_neurons is None and "num_neurons" in meta:
        num_neurons = int(meta["num_neurons"])
    count = int(seq.max()) + 1 if seq.size else 1
    if np.size(duration) > 1:
        count = max(count, int(np.size(duration)))
    times = [_convert(t_all[seq == s], stored_unit, time_unit) for s in range(count)]
    neurons = [n_all[seq == s] for s in range(count)]
    return _build(times, neurons, duration, num_neurons, str(path), dtype, device)


def save_csv(trains: SpikeTrains, path: str | Path, time_unit: str | None = None) -> Path:
    """Write exact spike trains as csv: ``# duration:`` and ``# num_neurons:`` comment lines, the
    header ``time,neuron,sequence`` (``time_<unit>`` if ``time_unit`` is given) and one spike per row.
    Times are written with full precision, so they read back identically."""
    times, neurons, duration = _events(trains)
    column = "time" if time_unit is None else f"time_{_unit(time_unit)}"
    path = Path(path)
    with open(path, "w", newline="") as handle:
        handle.write("# duration: " + " ".join(repr(float(d)) for d in duration) + "\n")
        handle.write(f"# num_neurons: {trains.num_marks}\n")
        writer = csv.writer(handle)
        writer.writerow([column, "neuron", "sequence"])
        for s, (t, n) in enumerate(zip(times, neurons)):
            for ti, ni in zip(t.tolist(), n.tolist()):
                writer.writerow([repr(float(ti)), int(ni), s])
    return path


# ---- neo ----------------------------------------------------------------------------------------


def _neo_sequences(trains: Any) -> list[list[Any]]:
    neo = _require("neo", "neo")
    if isinstance(trains, neo.Block):
        return [list(segment.spiketrains) for segment in trains.segments]
    if isinstance(trains, neo.Segment):
        return [list(trains.spiketrains)]
    if isinstance(trains, neo.SpikeTrain):
        return [[trains]]
    if isinstance(trains, Sequence) and len(trains) and all(isinstance(t, neo.SpikeTrain) for t in trains):
        return [list(trains)]
    if isinstance(trains, Sequence) and len(trains) and all(
        isinstance(seq, Sequence) and all(isinstance(t, neo.SpikeTrain) for t in seq) for seq in trains
    ):
        return [list(seq) for seq in trains]
    raise ValueError(
        "expected a neo.Block, a neo.Segment, a list of neo.SpikeTrain (one sequence) or a list of such lists"
    )


def from_neo(trains: Any, time_unit: str = "s", num_neurons: int | None = None, dtype: torch.dtype | None = None,
             device: Any = None) -> SpikeTrains:
    """Spike trains from ``neo`` objects (``pip install 'pyro-dpp[neo]'``).

    :param trains: a list of ``neo.SpikeTrain`` (one sequence, one train per neuron), a list of such
        lists, a ``neo.Segment`` or a ``neo.Block`` (one sequence per segment). Each sequence's
        window is ``[min t_start, max t_stop]`` of its trains; times become relative to its start.
    :param str time_unit: the unit of the returned times (each train is rescaled with ``quantities``).
    :param num_neurons: pads with silent neurons (default: the number of trains per sequence).
    """
    sequences = _neo_sequences(trains)
    unit = _unit(time_unit)
    widths = {len(seq) for seq in sequences}
    if len(widths) != 1:
        raise ValueError(f"every sequence must have one train per neuron; got {sorted(widths)} trains per sequence")
    times, neurons, durations = [], [], []
    for s, seq in enumerate(sequences):
        if not seq:
            raise ValueError(f"sequence {s} has no spike trains")
        start = min(float(st.t_start.rescale(unit).magnitude) for st in seq)
        stop = max(float(st.t_stop.rescale(unit).magnitude) for st in seq)
        t = [np.asarray(st.times.rescale(unit).magnitude, dtype=float).reshape(-1) - start for st in seq]
        times.append(np.concatenate(t))
        neurons.append(np.concatenate([np.full(len(x), k, dtype=np.int64) for k, x in enumerate(t)]))
        durations.append(stop - start)
    return _build(times, neurons, durations, num_neurons if num_neurons is not None else widths.pop(), "neo trains",
                  dtype, device)


def to_neo(trains: SpikeTrains, time_unit: str = "s") -> list[list[Any]]:
    """``neo.SpikeTrain`` objects per sequence and neuron: ``out[sequence][neuron]``, each on
    ``[0, duration]``, with ``time_unit`` the unit of the trains' times."""
    neo = _require("neo", "neo")
    pq = _require("quantities", "neo")
    unit = pq.unit_registry[_unit(time_unit)]
    times, neurons, duration = _events(trains)
    out = []
    for t, n, d in zip(times, neurons, duration):
        out.append([
            neo.SpikeTrain(t[n == k], units=unit, t_start=0.0 * unit, t_stop=float(d) * unit, name=f"neuron {k}")
            for k in range(trains.num_marks)
        ])
    return out


# ---- NWB ----------------------------------------------------------------------------------------


def _read_nwb(nwbfile: Any, source: str, unit: str, num_neurons: int | None, duration: Any,
              use_trials: bool, dtype: torch.dtype | None, device: Any) -> SpikeTrains:
    units = nwbfile.units
    if units is None or len(units) == 0:
        raise ValueError(f"{source}: the NWB file has no units table (or an empty one)")
    if "spike_times" not in units.colnames:
        raise ValueError(f"{source}: the units table has no spike_times column (columns: {list(units.colnames)})")
    unit_times = [np.asarray(units["spike_times"][i], dtype=float).reshape(-1) for i in range(len(units))]
    # everything in seconds (NWB's unit) until the end
    window = None if duration is None else _convert(np.asarray(duration, dtype=float), unit, "s")
    trials = nwbfile.trials if use_trials else None
    if trials is not None and len(trials) > 0:
        starts = np.asarray(trials["start_time"][:], dtype=float)
        stops = np.asarray(trials["stop_time"][:], dtype=float)
        segments = [[x[(x >= a) & (x <= b)] - a for x in unit_times] for a, b in zip(starts, stops)]
        window = stops - starts if window is None else window
    else:
        segments = [unit_times]
        if window is None and "obs_intervals" in units.colnames:
            ends = np.concatenate([np.asarray(units["obs_intervals"][i], dtype=float).reshape(-1, 2)[:, 1]
                                   for i in range(len(units))])
            window = float(ends.max()) if ends.size else None
        if window is None:
            raise ValueError(
                f"{source}: the file has no trials and no obs_intervals to give the window; pass duration="
            )
    times = [_convert(np.concatenate(seg), "s", unit) for seg in segments]
    neurons = [np.concatenate([np.full(len(x), k, dtype=np.int64) for k, x in enumerate(seg)]) for seg in segments]
    window = _convert(np.asarray(window, dtype=float), "s", unit)
    return _build(times, neurons, window, num_neurons if num_neurons is not None else len(units), source,
                  dtype, device)


def from_nwb(source: Any, time_unit: str = "s", num_neurons: int | None = None, duration: Any = None,
             use_trials: bool = True, dtype: torch.dtype | None = None, device: Any = None) -> SpikeTrains:
    """Spike trains from the units table of an NWB file (``pip install 'pyro-dpp[nwb]'``).

    :param source: a path to an ``.nwb`` file or an open ``pynwb.NWBFile``.
    :param str time_unit: the unit of the returned times (NWB stores seconds).
    :param num_neurons: pads with silent neurons (default: the rows of the units table).
    :param duration: the window (in ``time_unit``): required for a file without trials and without
        ``obs_intervals``; overrides the trial lengths otherwise.
    :param bool use_trials: one sequence per trial if the file has a trials table.
    """
    unit = _unit(time_unit)
    pynwb = _require("pynwb", "nwb")
    if isinstance(source, (str, Path)):
        path = _existing(source)
        try:
            io = pynwb.NWBHDF5IO(str(path), "r")
        except Exception as err:  # h5py/hdmf raise various errors for a file that is not NWB
            raise ValueError(f"{path}: not a readable NWB file ({err})") from err
        with io:
            return _read_nwb(io.read(), str(path), unit, num_neurons, duration, use_trials, dtype, device)
    return _read_nwb(source, "NWB file", unit, num_neurons, duration, use_trials, dtype, device)


def to_nwb(trains: SpikeTrains, path: str | Path, time_unit: str = "s", gap: float = 1.0,
           session_description: str = "spike trains written by pyro_dpp", identifier: str | None = None) -> Path:
    """Write exact spike trains as an NWB file: one units-table row per neuron, one trial per
    sequence (laid end to end with ``gap`` seconds between them), ``obs_intervals`` the trials.

    :param str time_unit: the unit of the trains' times (NWB stores seconds).
    """
    pynwb = _require("pynwb", "nwb")
    from datetime import datetime, timezone
    from uuid import uuid4

    times, neurons, duration = _events(trains)
    unit = _unit(time_unit)
    seconds = [_convert(t, unit, "s") for t in times]
    length = _convert(duration, unit, "s")
    starts = np.concatenate([[0.0], np.cumsum(length[:-1] + gap)]) if len(length) else np.zeros(0)
    nwbfile = pynwb.NWBFile(
        session_description=session_description, identifier=identifier or str(uuid4()),
        session_start_time=datetime.now(timezone.utc),
    )
    intervals = np.stack([starts, starts + length], -1).astype(float)
    for k in range(trains.num_marks):
        spikes = np.concatenate([t[n == k] + a for t, n, a in zip(seconds, neurons, starts)])
        nwbfile.add_unit(spike_times=spikes.astype(float), obs_intervals=intervals)
    for a, d in zip(starts, length):
        nwbfile.add_trial(start_time=float(a), stop_time=float(a + d))
    path = Path(path)
    with pynwb.NWBHDF5IO(str(path), "w") as io:
        io.write(nwbfile)
    return path


# ---- dispatch -----------------------------------------------------------------------------------


def load_spikes(path: str | Path, num_neurons: int | None = None, duration: Any = None, time_unit: str | None = None,
                dtype: torch.dtype | None = None, device: Any = None, **kwargs: Any) -> SpikeTrains:
    """Read spike trains, choosing the reader by suffix: ``.npz`` (:func:`load_npz`), ``.csv``
    (:func:`load_csv`) or ``.nwb`` (:func:`from_nwb`).

    :param num_neurons: the number of neurons (default: from the file).
    :param duration: window length(s) (default: from the file; a plain csv needs it).
    :param time_unit: the unit of the returned times (default: the file's own; seconds for NWB).
    :param dtype: floating dtype of the result (default: torch's default dtype).
    :param device: device of the result.
    :param kwargs: passed to the reader (e.g. ``use_trials`` for NWB).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"{path}: unknown spike file suffix {path.suffix!r}; use one of {SUFFIXES}")
    if suffix == ".npz":
        return load_npz(path, num_neurons, duration, time_unit, dtype, device, **kwargs)
    if suffix == ".csv":
        return load_csv(path, num_neurons, duration, time_unit, dtype, device, **kwargs)
    return from_nwb(path, time_unit or "s", num_neurons, duration, dtype=dtype, device=device, **kwargs)


def save_spikes(trains: SpikeTrains, path: str | Path, time_unit: str | None = None, **kwargs: Any) -> Path:
    """Write exact spike trains, choosing the writer by suffix: ``.npz`` (:func:`save_npz`), ``.csv``
    (:func:`save_csv`) or ``.nwb`` (:func:`to_nwb`, where ``time_unit`` defaults to seconds).

    :param time_unit: the unit of the trains' times, recorded in the file (converted to seconds for NWB).
    :returns: the path written.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"{path}: unknown spike file suffix {path.suffix!r}; use one of {SUFFIXES}")
    if suffix == ".npz":
        return save_npz(trains, path, time_unit, **kwargs)
    if suffix == ".csv":
        return save_csv(trains, path, time_unit, **kwargs)
    return to_nwb(trains, path, time_unit or "s", **kwargs)


__all__ = [
    "SUFFIXES",
    "TIME_UNITS",
    "SpikeFileNotFoundError",
    "from_neo",
    "from_nwb",
    "load_csv",
    "load_npz",
    "load_spikes",
    "save_csv",
    "save_npz",
    "save_spikes",
    "to_neo",
    "to_nwb",
]
