"""Reading and writing spike trains: numpy ``.npz``, ``.csv``, NWB files and ``neo`` objects.

:func:`load_spikes` and :func:`save_spikes` dispatch on the file suffix; the format functions below
can be called directly too. Every reader returns :class:`~pyro_dpp.SpikeTrains` (exact, one-hot
events) and checks the data: a missing file, missing or unknown columns, NaN or infinite times,
negative or too large neuron ids, non-contiguous ids without a declared neuron count, spikes
outside the window and complex or fractional numbers raise :class:`ValueError` naming the
file and what to change (a missing file raises :class:`SpikeFileNotFoundError`, which is both a
:class:`ValueError` and a :class:`FileNotFoundError`).

**Large files.** Readers return compact :class:`~pyro_dpp.SpikeTrains` (float64 times and int64
neuron ids, 16 bytes a spike whatever the number of neurons; no one-hot weights). A csv file's rows
are parsed in bulk by numpy's C reader (files it cannot read, e.g. with quoted fields, go through
the row-by-row reader, with the same results and messages). ``benchmarks/bench_io.py`` measures
5 million spikes.

**Times are float64** unless a ``dtype=`` is asked for; a dtype that would merge distinct
neighbouring spike times (float32 at t = 3600000.1 s, say) raises :class:`ValueError`. Writers
write atomically (a temporary file, then a rename) at exactly the path given.

**Neuron ids** are ``0..num_neurons-1``. A file that declares no count must use every id up to
the largest (so a mistyped ``100000`` cannot create 100,001 neurons): declare the count
(``num_neurons=``, an npz ``num_neurons`` array, a csv ``# num_neurons:`` line) when the top
neurons are silent, or pass ``neuron_ids=`` (the file's id of each neuron, in order) to map
other ids.

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

from pathlib import Path
from typing import Any

import torch

from ..events import SpikeTrains
from ._common import SUFFIXES, TIME_UNITS, SpikeFileNotFoundError
from ._csv import load_csv, save_csv
from ._neo import from_neo, to_neo
from ._npz import load_npz, save_npz
from ._nwb import from_nwb, to_nwb


def load_spikes(path: str | Path, num_neurons: int | None = None, duration: Any = None, time_unit: str | None = None,
                dtype: torch.dtype | None = None, device: Any = None, **kwargs: Any) -> SpikeTrains:
    """Read spike trains, choosing the reader by suffix: ``.npz`` (:func:`load_npz`), ``.csv``
    (:func:`load_csv`) or ``.nwb`` (:func:`from_nwb`).

    :param num_neurons: the number of neurons (default: from the file; without one, the ids must be
        contiguous, 0..N-1).
    :param duration: window length(s) (default: from the file; a plain csv needs it).
    :param time_unit: the unit of the returned times (default: the file's own; seconds for NWB).
    :param dtype: floating dtype of the result (default: float64, which holds the times as stored;
        a dtype that would merge distinct spike times raises :class:`ValueError`).
    :param device: device of the result.
    :param kwargs: passed to the reader (``neuron_ids`` for npz and csv, ``use_trials`` for NWB).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"{path}: unknown spike file suffix {path.suffix!r}; use one of {SUFFIXES}")
    if suffix == ".npz":
        return load_npz(path, num_neurons, duration, time_unit, dtype, device, **kwargs)
    if suffix == ".csv":
        return load_csv(path, num_neurons, duration, time_unit, dtype, device, **kwargs)
    if "neuron_ids" in kwargs:
        raise ValueError(f"{path}: neuron_ids applies to npz and csv files; NWB neurons are the units-table rows")
    return from_nwb(path, time_unit or "s", num_neurons, duration, dtype=dtype, device=device, **kwargs)


def save_spikes(trains: SpikeTrains, path: str | Path, time_unit: str | None = None, **kwargs: Any) -> Path:
    """Write exact spike trains, choosing the writer by suffix: ``.npz`` (:func:`save_npz`), ``.csv``
    (:func:`save_csv`) or ``.nwb`` (:func:`to_nwb`, where ``time_unit`` defaults to seconds).

    :param time_unit: the unit of the trains' times, recorded in the file (converted to seconds for NWB).
    :returns: the path written, which is ``path`` itself (written atomically: a temporary file,
        then a rename).
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
