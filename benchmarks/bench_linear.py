"""Linear time and memory of the SNN's scoring and sampling (issue 11, items 1 and 3).

Sections (each case runs in a fresh child process, so its peak memory is its own; times are the
median of ``--repeats`` runs after a warm-up on a short sequence that compiles the kernels):

1. ``observed``: the exact ``log_prob`` of the observed site (30 observed neurons at about 1
   spike/s each, given 4 hidden neurons' soft candidates as context) and its backward, for
   sequences of several lengths;
2. ``hidden``: the relaxed ``rsample`` of the hidden site (4 hidden neurons, tau = 0.3, given the
   observed spikes) and its backward, same lengths;
3. ``per_step``: the scan's cost per step against the number of neurons K: exact joint sampling of
   K neurons (every neuron a target: per-target drive state, O(K L) per candidate) and the relaxed
   hidden site with 16 hidden neurons given K observed ones (O(L (16 + K)) per step with stored
   features).

Ratios are to the shortest length (sections 1-2) or to the smallest K (section 3) in the same run:
linear cost shows as time ratios close to the length ratios. ``seconds`` is process CPU time (one
thread), which a busy shared machine disturbs less than wall time (also recorded). Peak memory is the child's max RSS
minus its RSS after setup (imports, data).

Usage::

    python benchmarks/bench_linear.py                 # ~3-6 minutes on 2 busy cores
    python benchmarks/bench_linear.py --quick         # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results" / "linear.json"
OBSERVED, HIDDEN, RATE = 30, 4, 1.0


def _rss() -> float:
    """Current resident memory in MB (Linux), else the peak so far."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # pragma: no cover - not Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _peak() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def _poisson(neurons: int, duration: float, rate: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted times and integer marks of independent Poisson spike trains."""
    count = int(torch.poisson(torch.tensor(neurons * rate * duration), generator=gen))
    times = (torch.rand(count, generator=gen, dtype=torch.float64) * duration).sort().values
    return times, torch.randint(neurons, (count,), generator=gen)


def _data(duration: float, seed: int = 0):
    """Observed spikes (1 x E x (30 + 2)) and soft hidden candidates (1 x N x (4 + 2)) as
    realization tensors, drawn cheaply (no simulation, so setup memory stays small)."""
    from pyro_dpp.events import pad_realization

    gen = torch.Generator().manual_seed(seed)
    times, marks = _poisson(OBSERVED, duration, RATE, gen)
    weights = torch.nn.functional.one_hot(marks, OBSERVED).to(torch.float64)
    end = torch.full((1,), duration, dtype=torch.float64)
    observed = pad_realization(times[None], weights[None], torch.zeros(1, len(times), dtype=torch.float64), end)
    ctimes, _ = _poisson(HIDDEN, duration, 5.0, gen)  # the hidden candidates: bound 5 per neuron
    soft = torch.softmax(torch.randn(len(ctimes), HIDDEN + 1, generator=gen, dtype=torch.float64) * 2, -1)
    hidden = pad_realization(ctimes[None], soft[None, :, :HIDDEN], soft[None, :, HIDDEN], end)
    return observed, hidden


def _network(observed: int, hidden: int):
    from pyro_dpp.snn import SNN

    torch.manual_seed(0)
    return SNN(observed, hidden, init="small").double()


def _observed_case(duration: float):
    net = _network(OBSERVED, HIDDEN)
    observed, hidden = _data(duration)
    hidden = hidden.clone().requires_grad_()

    def run():
        net.zero_grad()
        loss = net.observed_process(hidden, duration).log_prob(observed).sum()
        loss.backward()

    return run, {"spikes": int(observed.shape[-2]), "context_events": int(hidden.shape[-2])}


def _hidden_case(duration: float):
    net = _network(OBSERVED, HIDDEN)
    observed, _ = _data(duration)

    def run():
        net.zero_grad()
        torch.manual_seed(1)
        value = net.hidden_process(observed, duration, temperature=0.3).rsample()
        (value[..., 1:] * torch.linspace(0.5, 1.5, HIDDEN + 1, dtype=value.dtype)).sum().backward()

    return run, {"spikes": int(observed.shape[-2]), "candidates": int(5 * HIDDEN * duration)}


def _joint_case(neurons: int):
    net = _network(neurons, 0)
    duration = 20000.0 / (net.neuron_bound * neurons)  # about 20,000 candidates
    process = net.joint_process(duration)

    def run():
        torch.manual_seed(1)
        process.sample((1,))

    return run, {"candidates": int(net.neuron_bound * neurons * duration)}


def _hidden_k_case(neurons: int):
    from pyro_dpp.events import pad_realization

    net = _network(neurons, 16)
    duration = 40.0
    gen = torch.Generator().manual_seed(0)
    times, marks = _poisson(neurons, duration, RATE, gen)
    end = torch.full((1,), duration, dtype=torch.float64)
    observed = pad_realization(times[None], torch.nn.functional.one_hot(marks, neurons).to(torch.float64)[None],
                               torch.zeros(1, len(times), dtype=torch.float64), end)

    def run():
        net.zero_grad()
        torch.manual_seed(1)
        value = net.hidden_process(observed, duration, temperature=0.3).rsample()
        value[..., 1:-1].sum().backward()

    return run, {"candidates": int(5 * 16 * duration), "context_events": int(len(times))}


CASES = {"observed": _observed_case, "hidden": _hidden_case, "joint": _joint_case, "hidden_k": _hidden_k_case}


def child(spec: dict) -> dict:
    """One case in this process: warm up on a small size (compiles), set up, time, measure memory."""
    torch.set_num_threads(1)
    make = CASES[spec["case"]]
    warm, _ = make(spec["warm"])
    warm()
    run, info = make(spec["size"])
    setup = _rss()
    times, cpu = [], []
    for _ in range(spec["repeats"]):
        start, start_cpu = time.perf_counter(), time.process_time()
        run()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return {**spec, **info, "wall_seconds": statistics.median(times), "seconds": statistics.median(cpu),
            "peak_mb": _peak(),
            "peak_above_setup_mb": max(0.0, _peak() - setup)}


def _spawn(spec: dict) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                         env=env, check=False)
    if out.returncode:
        raise RuntimeError(f"case {spec} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _section(name: str, case: str, sizes: list[float], warm: float, repeats: int, unit: str) -> list[dict]:
    rows = [_spawn({"case": case, "size": s, "warm": warm, "repeats": repeats}) for s in sizes]
    base = rows[0]
    print(f"\n{name}")
    print(f"  {unit:>8} {'CPU s':>9} {'x size':>7} {'x time':>7} {'peak MB':>8} {'x mem':>6}  work")
    for r in rows:
        r["size_ratio"] = r["size"] / base["size"]
        r["time_ratio"] = r["seconds"] / base["seconds"]
        r["memory_ratio"] = r["peak_above_setup_mb"] / max(base["peak_above_setup_mb"], 1.0)
        work = ", ".join(f"{k} {r[k]}" for k in ("spikes", "candidates", "context_events") if k in r)
        print(f"  {r['size']:>8g} {r['seconds']:>9.3f} {r['size_ratio']:>7.2f} {r['time_ratio']:>7.2f} "
              f"{r['peak_above_setup_mb']:>8.0f} {r['memory_ratio']:>6.2f}  {work}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="short lengths and small K (a smoke run)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    lengths = [50.0, 100.0, 200.0] if args.quick else [250.0, 500.0, 1000.0, 2000.0]
    neurons = [10, 30, 100] if args.quick else [30, 100, 300]
    print(f"bench_linear: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"1 thread, load average {os.getloadavg()[0]:.1f} (a busy machine inflates times)")
    results = {
        "observed_log_prob_backward": _section(
            f"observed site: exact log_prob + backward ({OBSERVED} observed, {HIDDEN} hidden soft context)",
            "observed", lengths, 20.0, args.repeats, "T (s)"),
        "hidden_rsample_backward": _section(
            f"hidden site: relaxed rsample + backward ({HIDDEN} hidden given {OBSERVED} observed, tau 0.3)",
            "hidden", lengths, 20.0, args.repeats, "T (s)"),
        "per_step_joint_exact": _section(
            "per step: exact joint sampling of K neurons (~20,000 candidates)", "joint", neurons, 10, args.repeats,
            "K"),
        "per_step_hidden_relaxed": _section(
            "per step: relaxed hidden site, 16 hidden given K observed (T = 40 s), with backward", "hidden_k",
            neurons, 10, args.repeats, "K"),
    }
    for key in ("per_step_joint_exact", "per_step_hidden_relaxed"):
        for r in results[key]:
            r["candidates_per_second"] = r["candidates"] / r["seconds"]
        print(f"  {key}: candidates/s " + ", ".join(f"K={r['size']}: {r['candidates_per_second']:.0f}"
                                                    for r in results[key]))
    results["meta"] = {"torch": torch.__version__, "python": sys.version.split()[0], "threads": 1,
                       "load_average": os.getloadavg(), "quick": args.quick, "repeats": args.repeats}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"\nwritten {args.out}")


if __name__ == "__main__":
    main()
