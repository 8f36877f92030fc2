"""NWB files (see :mod:`pyro_dpp.io`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..events import SpikeTrains
from ._common import _build, _convert, _events, _existing, _require, _unit, _write


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
           session_description: str = "spike trains written by pyro_dpp", identifier: str | None = None,
           session_start_time: Any = None) -> Path:
    """Write exact spike trains as an NWB file: one units-table row per neuron, one trial per
    sequence (laid end to end with ``gap`` seconds between them), ``obs_intervals`` the trials.
    The file is written atomically (a temporary file, then a rename).

    :param str time_unit: the unit of the trains' times (NWB stores seconds).
    :param float gap: seconds between consecutive trials, finite and > 0 (trials that touch or
        overlap would share spikes when read back).
    :param str identifier: the file's identifier (default: a fresh UUID).
    :param session_start_time: a timezone-aware :class:`datetime.datetime` (default: now). With a
        fixed ``identifier`` and ``session_start_time`` the same data give byte-identical files.
    """
    pynwb = _require("pynwb", "nwb")
    from datetime import datetime, timezone
    from uuid import uuid4

    try:
        gap = float(gap)
    except (TypeError, ValueError):
        raise ValueError(f"gap must be a number of seconds, got {gap!r}") from None
    if not (np.isfinite(gap) and gap > 0):
        raise ValueError(f"gap must be finite and > 0 seconds (trials that touch or overlap would share spikes "
                         f"when read back), got {gap}")
    if session_start_time is None:
        session_start_time = datetime.now(timezone.utc)
    elif not isinstance(session_start_time, datetime) or session_start_time.tzinfo is None:
        raise ValueError(f"session_start_time must be a timezone-aware datetime, got {session_start_time!r}")
    if identifier is not None and (not isinstance(identifier, str) or not identifier):
        raise ValueError(f"identifier must be a non-empty string, got {identifier!r}")
    times, neurons, duration = _events(trains)
    unit = _unit(time_unit)
    seconds = [_convert(t, unit, "s") for t in times]
    length = _convert(duration, unit, "s")
    starts = np.concatenate([[0.0], np.cumsum(length[:-1] + gap)]) if len(length) else np.zeros(0)
    if np.any(starts[1:] <= starts[:-1] + length[:-1]):
        raise ValueError(f"gap={gap} s is lost to rounding next to trial start times of {starts.max():g} s; "
                         "pass a larger gap")
    nwbfile = pynwb.NWBFile(
        session_description=session_description, identifier=identifier or str(uuid4()),
        session_start_time=session_start_time, file_create_date=[session_start_time],
    )
    intervals = np.stack([starts, starts + length], -1).astype(float)
    for k in range(trains.num_marks):
        spikes = np.concatenate([t[n == k] + a for t, n, a in zip(seconds, neurons, starts)])
        nwbfile.add_unit(spike_times=spikes.astype(float), obs_intervals=intervals)
    for a, d in zip(starts, length):
        nwbfile.add_trial(start_time=float(a), stop_time=float(a + d))
    if identifier is not None:
        # hdmf gives every object a random uuid4; derive them from the identifier instead, so that
        # the same data, identifier and session time give the same bytes
        from uuid import NAMESPACE_URL, uuid5

        for i, child in enumerate(sorted(nwbfile.all_children(), key=lambda c: (type(c).__name__, c.name))):
            child._AbstractContainer__object_id = str(uuid5(NAMESPACE_URL, f"pyro_dpp/{identifier}/{i}"))

    def write(tmp: Path) -> None:
        with pynwb.NWBHDF5IO(str(tmp), "w") as io:
            io.write(nwbfile)

    return _write(path, write)
