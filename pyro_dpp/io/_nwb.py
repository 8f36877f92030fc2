"""NWB files (see :mod:`pyro_dpp.io`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..events import SpikeTrains
from ._common import _build, _convert, _events, _existing, _require, _unit


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
