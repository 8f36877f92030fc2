"""The ``.npz`` spike-file format (see :mod:`pyro_dpp.io`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..events import SpikeTrains
from ._common import _build, _convert, _count, _events, _existing, _unit, _write


def load_npz(path: str | Path, num_neurons: int | None = None, duration: Any = None, time_unit: str | None = None,
             dtype: torch.dtype | None = None, device: Any = None, neuron_ids: Any = None) -> SpikeTrains:
    """Read spike trains from an ``.npz`` file (format in the module docstring).

    :param num_neurons: overrides the file's ``num_neurons`` (default: the file's, else largest id + 1
        if the ids are contiguous).
    :param neuron_ids: the file's neuron id of each neuron, in order (for ids other than 0..N-1).
    :param dtype: floating dtype of the result (default float64).
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
    stored_neurons = _count(arrays["num_neurons"], "the 'num_neurons' array", str(path)) if "num_neurons" in keys \
        else None
    for key, value in arrays.items():
        if np.iscomplexobj(value):
            raise ValueError(f"{path}: the array {key!r} holds complex numbers; store real numbers")
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
                  dtype, device, neuron_ids)


def save_npz(trains: SpikeTrains, path: str | Path, time_unit: str | None = None) -> Path:
    """Write exact spike trains as a flat ``.npz`` file (``times``, ``neurons``, ``sequence``,
    ``duration``, ``num_neurons`` and, if given, ``time_unit``: the unit of the trains' times).

    The file is written atomically at exactly ``path`` (whatever its suffix: numpy would append
    ``.npz`` to a name such as ``x.NPZ``), and ``path`` is returned."""
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
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:  # a file object: numpy appends no suffix
            np.savez(handle, **arrays)

    return _write(path, write)
