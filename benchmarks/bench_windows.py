"""Training on windows of a long recording: time and peak memory of an epoch against the recording's length.

An SNN (``--observed`` observed + ``--hidden`` hidden neurons, ``--basis``, ``init="small"``)
simulates one recording of ``T`` seconds (in its own process); three epochs of :func:`pyro_dpp.snn.fit` with
``estimator="pathwise_exact"`` then run on it whole (``batch_size=1``, the baseline) and in windows
of ``--window`` seconds (``window=``, ``batch_size=--batch`` windows per step). Each run is a fresh
process that loads the recording, so its peak resident memory (``ru_maxrss``) is its own (the
imports and the data are in every row). Ratios are against the shortest ``T`` of the same
mode, measured in this run; the time is the faster of the second and third epochs. Linear time means seconds per
recorded second stay flat, and windowed memory should stay flat too.

Usage::

    python benchmarks/bench_windows.py            # T in 100, 400, 1600 s (a few minutes on 2 cores)
    python benchmarks/bench_windows.py --quick    # T in 25, 100 s
    python benchmarks/bench_windows.py --out results/windows.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def simulate(args: argparse.Namespace) -> None:
    """Simulate the recording in this process and save it to ``args.data`` (the training processes
    load it, so that the simulation's memory is not in their peaks)."""
    import torch

    from pyro_dpp.snn import SNN

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    teacher = SNN(args.observed, args.hidden, basis=args.basis, amplitude=args.amplitude, init="small").double()
    observed, _ = teacher.simulate(1, args.T, seed=1)
    torch.save({"lists": observed.to_lists(), "duration": args.T}, args.data)


def child(args: argparse.Namespace) -> None:
    """Two epochs in this process; prints a JSON line."""
    import torch

    from pyro_dpp import SpikeTrains
    from pyro_dpp.snn import SNN, fit

    torch.set_num_threads(args.threads)
    saved = torch.load(args.data, weights_only=False)
    observed = SpikeTrains.from_lists(saved["lists"], saved["duration"], dtype=torch.float64)
    torch.manual_seed(0)
    model = SNN(args.observed, args.hidden, basis=args.basis, amplitude=args.amplitude, init="small").double()
    window = None if args.mode == "whole" else args.window
    batch = 1 if window is None else args.batch
    start = time.perf_counter()
    result = fit(model, observed, estimator="pathwise_exact", num_epochs=3, batch_size=batch, progress=False,
                 seed=0, window=window, history=args.history)
    total = time.perf_counter() - start
    seconds = min(result.epoch_seconds[1:])  # after the first epoch (compilation, allocation); the fastest
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"T": args.T, "mode": args.mode, "seconds": seconds, "total_seconds": total,
                      "steps": len(result.losses) // 3,
                      "spikes": int(observed.num_events.sum()), "peak_mb": peak_mb}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--observed", type=int, default=10)
    parser.add_argument("--hidden", type=int, default=4)
    parser.add_argument("--amplitude", type=float, default=5.0)
    parser.add_argument("--basis", default="epanechnikov", help="the SNN's basis (epanechnikov: the paper's)")
    parser.add_argument("--history", type=float, default=None,
                        help="seconds of past per window (default: the basis's reach; for the exponential basis "
                             "36 slowest time constants, so pass one)")
    parser.add_argument("--window", type=float, default=25.0)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lengths", type=float, nargs="*", default=None)
    parser.add_argument("--whole-max", type=float, default=400.0, help="longest T also run whole (the baseline)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--T", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="windows", help=argparse.SUPPRESS)
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        (simulate if args.mode == "simulate" else child)(args)
        return
    lengths = args.lengths or ([25.0, 100.0] if args.quick else [100.0, 400.0, 1600.0])
    rows = []
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("simulate", "whole", "windows"):
            for length in lengths:
                if mode == "whole" and length > args.whole_max:
                    continue
                cmd = [sys.executable, __file__, "--child", "--T", str(length), "--mode", mode,
                       "--observed", str(args.observed), "--hidden", str(args.hidden), "--amplitude",
                       str(args.amplitude), "--window", str(args.window), "--batch", str(args.batch), "--threads",
                       str(args.threads), "--data", str(Path(tmp) / f"T{length:g}.pt"), "--basis", args.basis]
                if args.history is not None:
                    cmd += ["--history", str(args.history)]
                done = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if done.returncode:
                    sys.exit(f"{mode} T={length} failed:\n{done.stderr[-3000:]}")
                if mode != "simulate":
                    rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
                    print(rows[-1], flush=True)
    print(f"\n{'mode':8} {'T (s)':>7} {'spikes':>7} {'epoch (s)':>10} {'s per s':>8} {'x time/T':>9} "
          f"{'peak MB':>8} {'x memory':>9}")
    for mode in ("whole", "windows"):
        mine = [r for r in rows if r["mode"] == mode]
        if not mine:
            continue
        base = mine[0]
        for r in mine:
            r["time_per_second_ratio"] = (r["seconds"] / r["T"]) / (base["seconds"] / base["T"])
            r["memory_ratio"] = r["peak_mb"] / base["peak_mb"]
            print(f"{mode:8} {r['T']:7.0f} {r['spikes']:7d} {r['seconds']:10.2f} {r['seconds'] / r['T']:8.4f} "
                  f"{r['time_per_second_ratio']:9.2f} {r['peak_mb']:8.0f} {r['memory_ratio']:9.2f}")
    if args.out:
        out = Path(args.out)
        out = out if out.is_absolute() else HERE / out
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"rows": rows, "observed": args.observed, "hidden": args.hidden, "basis": args.basis,
                                   "history": args.history,
                                   "window": args.window, "batch": args.batch, "threads": args.threads,
                                   "machine": platform.platform(), "processor": platform.processor()}, indent=1))


if __name__ == "__main__":
    main()
