"""Loading large spike files: csv and npz with 5 million spikes.

Writes one recording (``--spikes`` spikes of ``--neurons`` neurons in ``--sequences`` sequences,
Poisson times, float64) as a csv file (the layout :func:`pyro_dpp.io.save_csv` writes) and an npz
file (:func:`pyro_dpp.io.save_npz`) in a temporary folder, then loads each in a fresh Python process
(so that the peak memory is that load's alone) with

- ``pyro_dpp.io.load_csv`` / ``load_npz`` (float64 :class:`~pyro_dpp.SpikeTrains`, all checks), and
- the baseline: ``numpy.loadtxt`` of the same csv (numpy's C parser, no checks) / ``numpy.load`` of
  the npz arrays,

and prints the load time, the peak resident memory added by the load (``ru_maxrss`` after the load
minus the resident memory before it; the process has imported torch and pyro_dpp already), and
the ratios of pyro_dpp over the baseline. JSON goes to ``benchmarks/results/io.json``.

Usage::

    python benchmarks/bench_io.py             # 5e6 spikes, 100 neurons, 1 sequence (about a minute)
    python benchmarks/bench_io.py --quick     # 2e5 spikes (a few seconds)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

import numpy as np
from _common import RSS_PROBE, last_json, run_code

HERE = Path(__file__).resolve().parent

CHILD = RSS_PROBE + r"""
import json, resource, sys, time
import numpy as np
import torch
import pyro_dpp.io as spio

kind, path = sys.argv[1], sys.argv[2]
before = rss()
start = time.perf_counter()
if kind == "pyro_dpp-csv":
    trains = spio.load_csv(path)
elif kind == "pyro_dpp-npz":
    trains = spio.load_npz(path)
elif kind == "numpy.loadtxt-csv":
    table = np.loadtxt(path, delimiter=",", comments="#", skiprows=3)
elif kind == "numpy.load-npz":
    with np.load(path) as data:
        table = {key: data[key] for key in data.files}
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
out = {"seconds": seconds, "peak_added_bytes": peak - before, "peak_rss_bytes": peak}
if kind.startswith("pyro_dpp"):
    assert trains.times.dtype == torch.float64
    out["spikes"] = int(trains.num_events.sum())
    out["stored_bytes"] = trains.times.numel() * 8 + trains.marks.numel() * 8
print(json.dumps(out))
"""


def write_files(folder: Path, spikes: int, neurons: int, sequences: int, seed: int = 0) -> tuple[Path, Path]:
    """A csv and an npz file of the same float64 spikes (written with full precision)."""
    rng = np.random.default_rng(seed)
    per = spikes // sequences
    duration = per / neurons  # one spike per second per neuron
    times = np.concatenate([np.sort(rng.uniform(0, duration, per)) for _ in range(sequences)])
    neuron = rng.integers(0, neurons, per * sequences)
    sequence = np.repeat(np.arange(sequences), per)
    csv_path = folder / "spikes.csv"
    with open(csv_path, "w") as handle:
        handle.write("# duration: " + " ".join([repr(float(duration))] * sequences) + "\n")
        handle.write(f"# num_neurons: {neurons}\n")
        handle.write("time,neuron,sequence\n")
        table = np.empty(len(times), dtype=[("t", "f8"), ("n", "i8"), ("s", "i8")])
        table["t"], table["n"], table["s"] = times, neuron, sequence
        np.savetxt(handle, table, fmt=["%.17g", "%d", "%d"], delimiter=",")
    npz_path = folder / "spikes.npz"
    np.savez(npz_path, times=times, neurons=neuron, sequence=sequence,
             duration=np.full(sequences, duration), num_neurons=np.asarray(neurons))
    return csv_path, npz_path


def run_child(kind: str, path: Path) -> dict:
    done = run_code(CHILD, kind, path)
    if done.returncode:
        raise RuntimeError(f"{kind} failed:\n{done.stderr}")
    return last_json(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spikes", type=float, default=5e6)
    parser.add_argument("--neurons", type=int, default=100)
    parser.add_argument("--sequences", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="2e5 spikes")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "io.json")
    args = parser.parse_args()
    spikes = int(2e5 if args.quick else args.spikes)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        csv_path, npz_path = write_files(Path(tmp), spikes, args.neurons, args.sequences)
        sizes = {"csv": csv_path.stat().st_size, "npz": npz_path.stat().st_size}
        for fmt, path, baseline in (("csv", csv_path, "numpy.loadtxt-csv"), ("npz", npz_path, "numpy.load-npz")):
            ours, base = run_child(f"pyro_dpp-{fmt}", path), run_child(baseline, path)
            assert ours["spikes"] == spikes
            rows.append({
                "format": fmt, "file_bytes": sizes[fmt], "spikes": spikes, "neurons": args.neurons,
                "sequences": args.sequences, "pyro_dpp": ours, "baseline_name": baseline.rsplit("-", 1)[0],
                "baseline": base, "time_ratio": ours["seconds"] / base["seconds"],
                "memory_ratio": ours["peak_added_bytes"] / max(1, base["peak_added_bytes"]),
            })
    print(f"{'format':6} {'file MB':>8} {'load s':>7} {'peak MB':>8} {'baseline':>14} {'base s':>7} "
          f"{'base MB':>8} {'time x':>7} {'mem x':>6}")
    for r in rows:
        print(f"{r['format']:6} {r['file_bytes'] / 1e6:8.1f} {r['pyro_dpp']['seconds']:7.2f} "
              f"{r['pyro_dpp']['peak_added_bytes'] / 1e6:8.0f} {r['baseline_name']:>14} "
              f"{r['baseline']['seconds']:7.2f} {r['baseline']['peak_added_bytes'] / 1e6:8.0f} "
              f"{r['time_ratio']:7.2f} {r['memory_ratio']:6.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"python": platform.python_version(), "numpy": np.__version__, "machine": platform.machine(),
            "cpus": os.cpu_count(), "threads": os.environ.get("OMP_NUM_THREADS", "1")}
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
