"""Exact ``log_prob`` (+ backward) of observed spike trains: dense one-hot values vs index values.

The observed site of an SNN (``SNN(n_observed, 4).observed_process(hidden)``: a sigmoid GLM with the
paper's Epanechnikov basis, the hidden neurons' soft DPP events as context) scores ``--sequences``
sequences of Poisson spikes (1 Hz per neuron, ``--duration`` seconds) for several numbers of
observed neurons, once as the dense realization (``batch x events x (N + 2)``, the baseline) and
once as the index value (``batch x events x 2``). Each run is a fresh Python process, so its peak
memory (``ru_maxrss`` after minus resident memory before, the data already built) is its own.
Ratios are index over dense. JSON goes to ``benchmarks/results/index.json``.

Usage::

    python benchmarks/bench_index.py            # N in {30, 100, 300}, T = 100 s, 4 sequences
    python benchmarks/bench_index.py --quick    # N in {30, 100}, T = 20 s
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

from _common import RSS_PROBE, last_json, run_code

HERE = Path(__file__).resolve().parent

CHILD = RSS_PROBE + r"""
import json, resource, sys, time
import torch
from pyro_dpp import PointProcess, SpikeTrains
from pyro_dpp.intensity import Poisson
from pyro_dpp.snn import SNN

layout, neurons, duration, sequences = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(0)
net = SNN(neurons, 4, init="small").double()
gen = torch.Generator().manual_seed(1)
counts = torch.poisson(torch.full((sequences, neurons), duration), generator=gen).long()
times = [torch.rand(int(c.sum()), generator=gen, dtype=torch.float64) * duration for c in counts]
marks = [torch.repeat_interleave(torch.arange(neurons), c) for c in counts]
trains = SpikeTrains.from_events(times, marks, neurons, duration, dtype=torch.float64)
hidden = PointProcess(Poisson(torch.full((4,), 0.5, dtype=torch.float64)), duration, temperature=0.3
                      ).rsample((sequences,)).detach()
value = trains.to_tensor(format=layout)
before = rss()
start = time.perf_counter()
lp = net.observed_process(hidden, trains.duration).log_prob(value)
lp.sum().backward()
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"seconds": seconds, "peak_added_bytes": peak - before, "value_bytes": value.numel() * 8,
                  "events": int(trains.num_events.sum()), "log_prob": lp.detach().tolist()}))
"""


def run(layout: str, neurons: int, duration: float, sequences: int, timeout: float | None = None) -> dict:
    try:
        done = run_code(CHILD, layout, neurons, duration, sequences, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish in {timeout:.0f} s"}
    if done.returncode:
        lines = done.stderr.strip().splitlines()
        return {"error": lines[-1] if lines else f"exit status {done.returncode}"}
    return last_json(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--neurons", type=int, nargs="+", default=[30, 100, 300])
    parser.add_argument("--duration", type=float, default=100.0)
    parser.add_argument("--sequences", type=int, default=4)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--timeout", type=float, default=None, help="seconds a run may take (default: no limit)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "index.json")
    args = parser.parse_args()
    if args.quick:
        args.neurons, args.duration = [30, 100], 20.0
    rows = []
    print(f"{'neurons':>7} {'events':>8} {'dense s':>8} {'dense MB':>9} {'index s':>8} {'index MB':>9} "
          f"{'time x':>7} {'mem x':>6} {'max |diff|':>10}")
    for n in args.neurons:
        dense = run("dense", n, args.duration, args.sequences, args.timeout)
        index = run("index", n, args.duration, args.sequences, args.timeout)
        row = {"neurons": n, "duration": args.duration, "sequences": args.sequences, "dense": dense, "index": index}
        if "error" not in dense and "error" not in index:
            row["time_ratio"] = index["seconds"] / dense["seconds"]
            row["memory_ratio"] = index["peak_added_bytes"] / max(1, dense["peak_added_bytes"])
            row["max_abs_diff"] = max(abs(a - b) for a, b in zip(dense["log_prob"], index["log_prob"]))
            print(f"{n:7d} {index['events']:8d} {dense['seconds']:8.2f} {dense['peak_added_bytes'] / 1e6:9.0f} "
                  f"{index['seconds']:8.2f} {index['peak_added_bytes'] / 1e6:9.0f} {row['time_ratio']:7.2f} "
                  f"{row['memory_ratio']:6.2f} {row['max_abs_diff']:10.2e}")
        else:
            print(f"{n:7d} dense: {dense.get('error', 'ok')}; index: {index.get('error', 'ok')}")
        rows.append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
