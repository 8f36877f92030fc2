"""Core timings: exact sampling, ``rsample`` + backward, and ``log_prob`` (exact and DPP).

For two processes (a 3-mark exponential Hawkes process and a 3-neuron sigmoid GLM with an
exponential-decay basis), each operation runs on one sequence (``batch 1``, the baseline) and on a
batch of sequences drawn in one call. The table reports the median wall time of repeated runs
(after warm-up), the time per sequence, a throughput (events per second for exact sampling and
exact scoring, thinning *candidate steps* per second for the relaxed sampler and the DPP density),
and the speedup from batching: per-sequence time of the unbatched run over that of the batched run,
both measured in this process.

Usage::

    python benchmarks/bench_core.py            # full run, under ~2 minutes on 2 CPU cores
    python benchmarks/bench_core.py --quick    # a few seconds (smoke test)
    python benchmarks/bench_core.py --threads 2 --batch 128 --out results/core.json
    python benchmarks/bench_core.py --backend torch    # the torch engine instead of the numba kernels
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from _common import environment

import pyro_dpp
from pyro_dpp import PointProcess, event_mask
from pyro_dpp.intensity import GLM, ExpHawkes, ExponentialBasis
from pyro_dpp.scan import BACKENDS

HERE = Path(__file__).resolve().parent
DTYPE = torch.float64
NUM_MARKS = 3


def make_hawkes(requires_grad: bool) -> tuple[ExpHawkes, float, list[torch.Tensor]]:
    baseline = torch.tensor([0.4, 0.2, 0.3], dtype=DTYPE, requires_grad=requires_grad)
    adjacency = torch.tensor([[0.3, 0.0, 0.2], [0.4, 0.2, 0.0], [0.0, 0.3, 0.3]], dtype=DTYPE,
                             requires_grad=requires_grad)
    hawkes = ExpHawkes(baseline, adjacency, torch.tensor(1.5, dtype=DTYPE))
    # the relaxed sampler needs a constant bound: 8x the stationary rate (as the CLI demo)
    bound = 8.0 * float(hawkes.mean_count(torch.tensor(1.0, dtype=DTYPE))[0].detach())
    return hawkes, bound, [baseline, adjacency]


def make_glm(requires_grad: bool) -> tuple[GLM, float, list[torch.Tensor]]:
    bias = torch.tensor([-1.0, -1.5, -0.5], dtype=DTYPE, requires_grad=requires_grad)
    weight = torch.tensor(
        [
            [[-2.0, 0.8, 0.5], [0.6, -2.0, 0.4], [0.5, 0.5, -2.0]],  # fast trace (tau = 1)
            [[-0.2, 0.2, 0.1], [0.2, -0.2, 0.1], [0.1, 0.3, -0.2]],  # slow trace (tau = 5)
        ],
        dtype=DTYPE,
        requires_grad=requires_grad,
    )
    glm = GLM(bias, weight, ExponentialBasis([1.0, 5.0]), activation="sigmoid", amplitude=2.0)
    return glm, float(glm.max_rate()), [bias, weight]


PROCESSES: dict[str, Callable[[bool], tuple]] = {"hawkes3": make_hawkes, "glm3_exp": make_glm}


def timed(fn: Callable[[], int], repeats: int, warmup: int, seed: int) -> tuple[float, int, list[float]]:
    """Median wall time of ``fn`` over ``repeats`` seeded runs after ``warmup`` runs; ``fn`` returns
    a work count (events or candidates), reported as the median over the timed runs."""
    for i in range(warmup):
        torch.manual_seed(seed + 10_000 + i)
        fn()
    times, counts = [], []
    for i in range(repeats):
        torch.manual_seed(seed + i)
        start = time.perf_counter()
        count = fn()
        times.append(time.perf_counter() - start)
        counts.append(count)
    return statistics.median(times), int(statistics.median(counts)), times


def make_cases(name: str, shape: torch.Size, duration: float, temperature: float,
               seed: int) -> tuple[list[tuple[str, Callable[[], int], str]], list[torch.Tensor]]:
    """The four timed operations for one process and one sample shape, as ``(name, fn, unit)``."""
    intensity, bound, params = PROCESSES[name](True)
    exact = PointProcess(intensity, duration=duration)
    relaxed = PointProcess(intensity, duration=duration, bound=bound, temperature=temperature)
    torch.manual_seed(seed)
    data = exact.sample(shape)
    torch.manual_seed(seed)
    soft = relaxed.sample(shape)  # a detached relaxed draw that keeps its log-weights

    def sample_exact() -> int:
        with torch.no_grad():
            return int(event_mask(exact.sample(shape)).sum())

    def rsample_backward() -> int:
        value = relaxed.rsample(shape)
        torch.autograd.grad(value[..., 1 : 1 + NUM_MARKS].sum(), params)  # d(soft count) / d(params)
        return int(event_mask(value).sum())

    def log_prob_exact() -> int:
        torch.autograd.grad(exact.log_prob(data).sum(), params)
        return int(event_mask(data).sum())

    def log_prob_dpp() -> int:
        torch.autograd.grad(relaxed.log_prob(soft).sum(), params)
        return int(event_mask(soft).sum())

    cases = [
        ("sample (exact)", sample_exact, "events/s"),
        ("rsample + backward", rsample_backward, "candidates/s"),
        ("log_prob exact + backward", log_prob_exact, "events/s"),
        ("log_prob DPP + backward", log_prob_dpp, "candidates/s"),
    ]
    return cases, params


def bench_process(name: str, batch: int, duration: float, temperature: float, repeats: int, warmup: int,
                  seed: int) -> list[dict]:
    rows = []
    for size in (1, batch):
        shape = torch.Size(() if size == 1 else (size,))
        cases, _ = make_cases(name, shape, duration, temperature, seed)
        for op, fn, unit in cases:
            median, work, all_times = timed(fn, repeats, warmup, seed)
            rows.append({
                "process": name, "op": op, "batch": size, "median_s": median,
                "per_sequence_s": median / size, "work": work, "unit": unit,
                "throughput": work / median if median > 0 else float("nan"), "times_s": all_times,
            })
    # speedup of batching: per-sequence time of the unbatched run (baseline) over the batched one
    base = {r["op"]: r["per_sequence_s"] for r in rows if r["batch"] == 1}
    for r in rows:
        r["speedup_vs_unbatched"] = base[r["op"]] / r["per_sequence_s"]
    return rows


def format_table(rows: list[dict]) -> str:
    head = (f"{'process':<10} {'operation':<26} {'batch':>5} {'median ms':>10} {'ms/seq':>9} "
            f"{'throughput':>12} {'unit':<13} {'speedup':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['process']:<10} {r['op']:<26} {r['batch']:>5} {1e3 * r['median_s']:>10.2f} "
            f"{1e3 * r['per_sequence_s']:>9.3f} {r['throughput']:>12.0f} {r['unit']:<13} "
            f"{r['speedup_vs_unbatched']:>7.1f}x"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few repeats (a few seconds)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: the scans are tiny ops, threads add overhead)")
    parser.add_argument("--batch", type=int, default=None, help="sequences per batched call (default 64; quick 8)")
    parser.add_argument("--duration", type=float, default=None, help="window length (default 20; quick 5)")
    parser.add_argument("--temperature", type=float, default=0.3)
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per case (default 5; quick 2)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--processes", nargs="+", default=list(PROCESSES), choices=list(PROCESSES))
    parser.add_argument("--backend", default="auto", choices=BACKENDS,
                        help="pyro_dpp.set_backend (default auto: numba kernels on CPU)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "core.json")
    args = parser.parse_args(argv)
    pyro_dpp.set_backend(args.backend)
    batch = args.batch or (8 if args.quick else 64)
    duration = args.duration or (5.0 if args.quick else 20.0)
    repeats = args.repeats or (2 if args.quick else 5)
    if batch < 2 or duration <= 0 or repeats < 1 or args.threads < 1 or args.temperature <= 0:
        parser.error("need --batch >= 2, --duration > 0, --repeats >= 1, --threads >= 1, --temperature > 0")
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    rows = []
    for name in args.processes:
        rows += bench_process(name, batch, duration, args.temperature, repeats, args.warmup, args.seed)
    elapsed = time.perf_counter() - start

    config = {
        "quick": args.quick, "threads": args.threads, "batch": batch, "duration": duration,
        "temperature": args.temperature, "backend": args.backend, "repeats": repeats, "warmup": args.warmup,
        "seed": args.seed,
        "dtype": str(DTYPE), **environment(), "elapsed_s": elapsed,
    }
    print(f"pyro_dpp core benchmark: batch {batch}, duration {duration}, {args.threads} thread(s), "
          f"median of {repeats} after {args.warmup} warm-up")
    print(format_table(rows))
    print(f"speedup = (time per sequence, batch 1) / (time per sequence, batch {batch}); total {elapsed:.1f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"config": config, "results": rows}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
