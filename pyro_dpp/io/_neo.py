"""``neo`` objects (see :mod:`pyro_dpp.io`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..events import SpikeTrains
from ._common import _build, _events, _require, _unit


def _neo_sequences(trains: Any) -> list[list[Any]]:
    neo = _require("neo", "neo")
    if isinstance(trains, neo.Block):
        if not trains.segments:
            raise ValueError("the neo.Block has no segments (no sequences); add segments with spike trains")
        return [list(segment.spiketrains) for segment in trains.segments]
    if isinstance(trains, neo.Segment):
        if not trains.spiketrains:
            raise ValueError("the neo.Segment has no spike trains; add one neo.SpikeTrain per neuron")
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
    if widths == {0}:
        raise ValueError("the neo object holds no spike trains; add one neo.SpikeTrain per neuron")
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
