"""Scoring cost of the newer intensities against sequence length, and sampling speed by path.

**Scoring**: exact ``log_prob`` + backward.

For :class:`~pyro_dpp.intensity.SumExpHawkes` (3 decays), :class:`~pyro_dpp.intensity.PowerLawHawkes`
(finite support; one shared power law, and one per pair) and, as a reference point, the stock
:class:`~pyro_dpp.intensity.ExpHawkes`, one sequence of 2 marks with ``n`` events at a fixed event
density (2 per unit time) is scored and differentiated. The table reports the median wall time of
repeated runs and its ratio to the shortest run of the same intensity, both measured in this
process: a linear cost gives ratios equal to the ratio of lengths (here 1, 2, 4, 8).

**Sampling** (``--sections sampling``): for :class:`~pyro_dpp.intensity.SumExpHawkes` (2 marks, 3
decays) and, for scale, :class:`~pyro_dpp.intensity.ExpHawkes`, at batch 64: relaxed ``rsample`` +
backward, exact thinning with a constant bound, and exact Ogata sampling (the local bound), each by
three paths measured in this process: ``filter`` (the default backend: the intensity's scan filter and
its numba accelerators), ``generic`` (a subclass that overrides ``rates``, so it has no filter: the
generic checkpointed scan and the torch Ogata loop, what ``SumExpHawkes`` ran before it had a filter)
and ``reference`` (the eager loops). Ratios are against the reference.

Usage::

    python benchmarks/bench_intensities.py                 # about a minute on one core
    python benchmarks/bench_intensities.py --quick         # a few seconds (smoke test)
    python benchmarks/bench_intensities.py --out results/intensities.json
    python benchmarks/bench_intensities.py --sections sampling     # sampling only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

import pyro_dpp
from pyro_dpp import PointProcess
from pyro_dpp.intensity import ExpHawkes, Intensity, PowerLawHawkes, SumExpHawkes

HERE = Path(__file__).resolve().parent
DTYPE = torch.float64


def intensities() -> dict[str, Callable[[], tuple[Intensity, list[torch.Tensor]]]]:
    def leaf(x):
        return torch.tensor(x, dtype=DTYPE, requires_grad=True)

    def exp_hawkes():
        mu, adj = leaf([0.5, 0.4]), leaf([[0.2, 0.1], [0.1, 0.2]])
        return ExpHawkes(mu, adj, torch.tensor(1.5, dtype=DTYPE)), [mu, adj]

    def sumexp():
        mu, adj = leaf([0.5, 0.4]), leaf([[[0.1] * 3] * 2] * 2)
        return SumExpHawkes(mu, adj, torch.tensor([0.5, 2.0, 8.0], dtype=DTYPE)), [mu, adj]

    def powerlaw_shared():
        mu, mult = leaf([0.5, 0.4]), leaf([[0.1, 0.1], [0.1, 0.1]])
        return PowerLawHawkes(mu, mult, 0.5, 1.5, support=4.0), [mu, mult]

    def powerlaw_pairs():
        mu, mult, c, b = leaf([0.5, 0.4]), leaf([[0.1, 0.1], [0.1, 0.1]]), leaf([[0.5] * 2] * 2), leaf([[1.5] * 2] * 2)
        return PowerLawHawkes(mu, mult, c, b, support=4.0), [mu, mult, c, b]

    return {"ExpHawkes": exp_hawkes, "SumExpHawkes": sumexp, "PowerLawHawkes-shared": powerlaw_shared,
            "PowerLawHawkes-pairs": powerlaw_pairs}


def realization(n: int, duration: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    times = torch.rand(n, generator=g, dtype=DTYPE).sort().values * duration
    marks = torch.nn.functional.one_hot(torch.randint(0, 2, (n,), generator=g), 2).to(DTYPE)
    return torch.cat([times[:, None], marks, torch.zeros(n, 1, dtype=DTYPE)], -1)


def median_time(fn: Callable[[], None], repeats: int) -> float:
    fn()  # warm-up
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


class NoFilterSumExp(SumExpHawkes):
    """Overrides ``rates`` (same math): no scan filter, so the generic paths run."""

    def rates(self, state, time):
        return super().rates(state, time)


class NoFilterExp(ExpHawkes):
    """Overrides ``rates`` (same math): no scan filter, so the generic paths run."""

    def rates(self, state, time):
        return super().rates(state, time)


def bench_sampling(batch: int, duration: float, repeats: int) -> list[dict]:
    """Relaxed rsample + backward, exact thinning and Ogata by path (filter / generic / reference)."""
    def leaf(x):
        return torch.tensor(x, dtype=DTYPE, requires_grad=True)

    def build(name, cls):
        if name == "SumExpHawkes":
            mu, adj = leaf([0.5, 0.4]), leaf([[[0.1, 0.05, 0.05]] * 2] * 2)
            return cls(mu, adj, torch.tensor([0.5, 2.0, 8.0], dtype=DTYPE)), [mu, adj]
        mu, adj = leaf([0.5, 0.4]), leaf([[0.2, 0.1], [0.1, 0.2]])
        return cls(mu, adj, torch.tensor(1.5, dtype=DTYPE)), [mu, adj]

    bound = 8.0
    classes = {"SumExpHawkes": (SumExpHawkes, NoFilterSumExp), "ExpHawkes": (ExpHawkes, NoFilterExp)}
    tasks = {
        "relaxed rsample+backward": lambda i, p: torch.autograd.grad(
            PointProcess(i, duration, bound=bound, temperature=0.3).rsample((batch,))[..., 1:-1].sum(), p),
        "exact thinning": lambda i, p: PointProcess(i, duration, bound=bound).sample((batch,)),
        "exact Ogata": lambda i, p: PointProcess(i, duration, max_events=400).sample((batch,)),
    }
    rows = []
    print(f"{'intensity':14s} {'task':26s} {'path':10s} {'seconds':>9s} {'x reference':>11s}")
    for name, (stock, plain) in classes.items():
        for task, fn in tasks.items():
            times = {}
            for path, cls, backend_name in (("reference", stock, "reference"), ("generic", plain, "auto"),
                                             ("filter", stock, "auto")):
                def run(cls=cls, fn=fn, backend_name=backend_name, name=name):
                    intensity, params = build(name, cls)
                    torch.manual_seed(0)
                    with pyro_dpp.backend(backend_name):
                        fn(intensity, params)

                times[path] = median_time(run, repeats)
            for path, seconds in times.items():
                ratio = times["reference"] / seconds
                rows.append({"intensity": name, "task": task, "path": path, "seconds": seconds,
                             "speedup_vs_reference": ratio, "batch": batch, "duration": duration, "bound": bound})
                print(f"{name:14s} {task:26s} {path:10s} {seconds:9.4f} {ratio:11.2f}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short sequences, one repeat")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sections", nargs="+", default=["scoring", "sampling"], choices=["scoring", "sampling"])
    parser.add_argument("--out", type=Path, default=None, help="JSON file (relative to benchmarks/)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lengths = [250, 500, 1000, 2000] if args.quick else [2500, 5000, 10000, 20000]
    repeats = 1 if args.quick else 3
    rows = []
    sampling = []
    if "sampling" in args.sections:
        sampling = bench_sampling(16 if args.quick else 64, 10.0 if args.quick else 40.0, repeats)
    if "scoring" not in args.sections:
        lengths = []
    if lengths:
        print(f"{'intensity':24s} {'events':>7s} {'seconds':>9s} {'ratio':>6s}")
    for name, make in intensities().items() if lengths else ():
        base = None
        for n in lengths:
            value, duration = realization(n, n / 2.0, seed=n), n / 2.0

            def step(make=make, value=value, duration=duration):
                intensity, _ = make()
                PointProcess(intensity, duration).log_prob(value).backward()

            seconds = median_time(step, repeats)
            base = base or seconds
            rows.append({"intensity": name, "events": n, "seconds": seconds, "ratio_to_shortest": seconds / base})
            print(f"{name:24s} {n:7d} {seconds:9.4f} {seconds / base:6.2f}")
    if args.out is not None:
        out = args.out if args.out.is_absolute() else HERE / args.out
        out.parent.mkdir(parents=True, exist_ok=True)
        meta = {"torch": torch.__version__, "python": platform.python_version(), "threads": args.threads,
                "machine": platform.machine(), "lengths": lengths, "repeats": repeats,
                "load_average_1min": os.getloadavg()[0]}
        out.write_text(json.dumps({"meta": meta, "rows": rows, "sampling": sampling}, indent=1) + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
