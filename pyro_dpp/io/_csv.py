"""The ``.csv`` spike-file format (see :mod:`pyro_dpp.io`)."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..events import SpikeTrains
from ._common import _build, _convert, _count, _events, _existing, _unit, _write


def _metadata(line: str) -> tuple[str, str] | None:
    body = line.lstrip("#").strip()
    if ":" not in body and "=" not in body:
        return None
    key, _, value = body.partition(":") if ":" in body else body.partition("=")
    return key.strip().lower(), value.strip()


def _fast_rows(path: Path) -> tuple[dict[str, str], list[str] | None, np.ndarray] | None:
    """The metadata, the header and the data rows (a float64 ``rows x columns`` array) of a csv
    file, the rows parsed by numpy's C reader (:func:`numpy.loadtxt`: 5 million rows in seconds,
    one float64 array); None for files it does not read (quoted fields, a field that is not a
    number, ragged rows), which the row-by-row reader then reads or rejects with its messages."""
    meta: dict[str, str] = {}
    header = None
    consumed = 0
    try:
        with open(path, encoding="utf-8-sig") as handle:
            for line in handle:  # comment and blank lines, then the header
                consumed += 1
                line = line.strip()
                if not line or not line.replace(",", "").strip():
                    continue
                if line.startswith("#"):
                    entry = _metadata(line)
                    if entry is not None:
                        meta[entry[0]] = entry[1]
                    continue
                if '"' in line:
                    return None
                header = [cell.strip().lower() for cell in line.split(",")]
                break
    except UnicodeDecodeError:
        return None
    if header is None:
        return meta, header, np.zeros((0, 0))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numpy warns about a file without rows
            table = np.loadtxt(path, dtype=np.float64, delimiter=",", comments="#", skiprows=consumed, ndmin=2,
                               encoding="utf-8-sig", quotechar=None)
    except (ValueError, UnicodeDecodeError):
        return None
    if table.size and table.shape[1] != len(header):
        return None
    return meta, header, table.reshape(-1, len(header))


def load_csv(path: str | Path, num_neurons: int | None = None, duration: Any = None, time_unit: str | None = None,
             dtype: torch.dtype | None = None, device: Any = None, neuron_ids: Any = None) -> SpikeTrains:
    """Read spike trains from a ``time,neuron[,sequence]`` csv file (format in the module docstring).
    A UTF-8 byte-order mark (as spreadsheet programs write) is skipped.

    :param num_neurons: overrides a ``# num_neurons:`` line (default: that line, else largest id + 1
        if the ids are contiguous).
    :param neuron_ids: the file's neuron id of each neuron, in order (for ids other than 0..N-1).
    :param dtype: floating dtype of the result (default float64).
    :param duration: window length(s); overrides a ``# duration:`` comment line (one is needed).
    :param time_unit: the unit of the returned times; a unit in the time column's name (``time_ms``)
        is converted to it.
    """
    path = _existing(path)
    fast = _fast_rows(path)
    if fast is not None:
        meta, header, table = fast
    else:
        meta, header, table = _slow_rows(path)
    return _from_table(path, meta, header, table, num_neurons, duration, time_unit, dtype, device, neuron_ids)


def _slow_rows(path: Path) -> tuple[dict[str, str], list[str] | None, list[list[str]]]:
    """:func:`_fast_rows` row by row, with the csv module (quoted fields, comments anywhere)."""
    meta: dict[str, str] = {}
    rows: list[list[str]] = []
    header: list[str] | None = None
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
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
    return meta, header, rows


def _from_table(path: Path, meta: dict[str, str], header: list[str] | None, rows: Any, num_neurons: Any,
                duration: Any, time_unit: str | None, dtype: torch.dtype | None, device: Any,
                neuron_ids: Any) -> SpikeTrains:
    """Spike trains from the rows of a csv file: an array (the fast reader's) or lists of strings."""
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
    if isinstance(rows, np.ndarray):
        t_all = rows[:, index[time_cols[0]]] if rows.size else np.zeros(0)
        n_all = rows[:, index["neuron"]] if rows.size else np.zeros(0)
        seq = rows[:, index["sequence"]] if "sequence" in index and rows.size else np.zeros(len(t_all))
    else:
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
        try:
            num_neurons = float(meta["num_neurons"])
        except ValueError:
            raise ValueError(f"{path}: the '# num_neurons:' line must hold one positive integer, got "
                             f"{meta['num_neurons']!r}") from None
        num_neurons = _count(num_neurons, "the '# num_neurons:' line", str(path))
    count = int(seq.max()) + 1 if seq.size else 1
    if np.size(duration) > 1:
        count = max(count, int(np.size(duration)))
    if count == 1:
        times, neurons = [_convert(t_all, stored_unit, time_unit)], [n_all]
    else:  # one stable sort by sequence rather than a mask per sequence
        order = np.argsort(seq, kind="stable")
        bounds = np.searchsorted(seq[order], np.arange(count + 1))
        times = [_convert(t_all[order[bounds[s]: bounds[s + 1]]], stored_unit, time_unit) for s in range(count)]
        neurons = [n_all[order[bounds[s]: bounds[s + 1]]] for s in range(count)]
    return _build(times, neurons, duration, num_neurons, str(path), dtype, device, neuron_ids)


def save_csv(trains: SpikeTrains, path: str | Path, time_unit: str | None = None) -> Path:
    """Write exact spike trains as csv: ``# duration:`` and ``# num_neurons:`` comment lines, the
    header ``time,neuron,sequence`` (``time_<unit>`` if ``time_unit`` is given) and one spike per row.
    Times are written with full precision, so they read back identically. The file is written
    atomically (a temporary file, then a rename)."""
    times, neurons, duration = _events(trains)
    column = "time" if time_unit is None else f"time_{_unit(time_unit)}"

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            handle.write("# duration: " + " ".join(repr(float(d)) for d in duration) + "\n")
            handle.write(f"# num_neurons: {trains.num_marks}\n")
            writer = csv.writer(handle)
            writer.writerow([column, "neuron", "sequence"])
            for s, (t, n) in enumerate(zip(times, neurons)):
                for ti, ni in zip(t.tolist(), n.tolist()):
                    writer.writerow([repr(float(ti)), int(ni), s])

    return _write(path, write)
