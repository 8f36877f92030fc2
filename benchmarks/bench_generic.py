"""The generic checkpointed paths (issue 10, item 2) against the reference backend, in one run.

The intensities are written as a user would (no stock class, no filter; ``tests/user_intensities.py``,
shared with the tests of these paths): a 2-mark power-law
Hawkes process (kernel ``alpha (delta + t)^(-beta)`` cut off at a support; the scan keeps a window of
the last ``W`` events, the parallel ``forward`` is pairwise over events) and a 3-mark neural
intensity (an MLP over exponential traces; pairwise parallel ``forward`` over events and decays).
"Reference" is the eager loop for sampling (a graph per step) and the parallel ``forward`` for
scoring (``pyro_dpp.backend("reference")``); "generic" is :mod:`pyro_dpp.scan.generic` (sampling)
and :mod:`pyro_dpp.scan.generic_scoring` (scoring), which run under the default backend ``"auto"``;
"compiled" (sections 1, 3 and 4) is the generic scan under backend ``"compiled"`` (its steps in chunks
compiled by ``torch.compile``; the first call, which compiles, is reported apart as wall time).
Every timing is the median process CPU time of ``--repeats`` runs after a warm-up (CPU time: a busy
shared machine disturbs it less than wall time).

1. relaxed ``rsample`` + ``log_prob`` (DPP density) + backward at batch 256;
2. ``log_prob`` + backward of one exact sequence of 5,000 / 10,000 / 20,000 events (generic, one
   run each), the reference at the sizes where its pairwise memory fits (``--ref-events``; generic
   there too), extrapolated to the largest size by its measured growth exponent (marked
   ``extrapolated``);
3. exact sampling at batch 256;
4. peak memory (VmHWM of a fresh process) of relaxed ``rsample`` + backward with 2e5 candidates
   (generic), and the reference at 2e4 for scale.

Usage::

    python benchmarks/bench_generic.py            # ~10 minutes on 2 busy cores (compilation included)
    python benchmarks/bench_generic.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from _common import PEAK_PROBE, environment

from pyro_dpp import PointProcess, backend
from pyro_dpp.events import pad_realization
from pyro_dpp.intensity.base import Intensity

HERE = Path(__file__).resolve().parent
# the user-written intensities live with the tests of the generic paths (one copy, tested there)
sys.path.insert(0, str(HERE.parent / "tests"))
from user_intensities import NeuralIntensity, UserPowerLaw  # noqa: E402


def make(name: str) -> tuple[Intensity, list[torch.Tensor], float]:
    if name == "powerlaw":
        mu = torch.tensor([0.4, 0.3]).requires_grad_()
        alpha = torch.tensor([[0.15, 0.05], [0.05, 0.1]]).requires_grad_()
        return UserPowerLaw(torch.nn.functional.softplus(mu), alpha, support=5.0, window=64), [mu, alpha], 6.0
    intensity = NeuralIntensity(3, torch.tensor([0.5, 2.0]), hidden=16, scale=0.7)
    return intensity, list(intensity.parameters()), 6.0


def timed(fn: Callable[[], object], repeats: int, warmup: bool = True) -> float:
    if warmup:
        fn()
    cpus = []
    for _ in range(repeats):
        c0 = time.process_time()
        fn()
        cpus.append(time.process_time() - c0)
    return statistics.median(cpus)


def both(fn: Callable[[], object], repeats: int, compiled: bool = True) -> dict:
    """Median CPU seconds of ``fn`` under the reference backend, ``"auto"`` (the generic paths) and,
    with ``compiled``, ``"compiled"`` (the generic scan in torch.compile'd chunks; its first call, which
    compiles, is timed apart in wall seconds), and the speed-ups against the reference."""
    out = {}
    labels = [("reference", "reference"), ("generic", "auto")] + ([("compiled", "compiled")] if compiled else [])
    for label, name in labels:
        with backend(name):
            if label == "compiled":
                wall = time.perf_counter()
                fn()
                out["compiled_first_call_wall_s"] = time.perf_counter() - wall
            out[f"{label}_cpu_s"] = timed(fn, repeats, warmup=label != "compiled")
    out["speedup"] = out["reference_cpu_s"] / out["generic_cpu_s"]
    if compiled:
        out["compiled_speedup"] = out["reference_cpu_s"] / out["compiled_cpu_s"]
    return out


# ---- 1. relaxed ---------------------------------------------------------------------------------------------------
def bench_relaxed(batch: int, duration: float, repeats: int) -> dict:
    out = {}
    for name in ("powerlaw", "neural"):
        def run(name=name):
            intensity, params, bound = make(name)
            process = PointProcess(intensity, duration, bound=bound, temperature=0.3)
            torch.manual_seed(0)
            value = process.rsample((batch,))
            torch.autograd.grad(process.log_prob(value).sum(), params)
        out[name] = both(run, repeats)
        out[name]["candidates_per_sequence"] = make(name)[2] * duration
    out["config"] = {"batch": batch, "duration": duration, "temperature": 0.3, "log_prob": "dpp"}
    return out


# ---- 2. scoring one long sequence -------------------------------------------------------------------------------
def sequence(events: int, marks: int, rate: float = 2.0) -> tuple[torch.Tensor, float]:
    """One exact realization: ``events`` uniform times at ``rate`` per unit time, random marks."""
    gen = torch.Generator().manual_seed(events)
    duration = events / rate
    times = (torch.rand(1, events, generator=gen) * duration).sort(-1).values
    weights = torch.nn.functional.one_hot(torch.randint(marks, (1, events), generator=gen), marks).float()
    return pad_realization(times, weights, torch.zeros(1, events), torch.tensor([duration])), duration


def bench_scoring(sizes: list[int], ref_sizes: list[int], repeats: int) -> dict:
    out = {}
    for name in ("powerlaw", "neural"):
        row: dict = {"generic_cpu_s": {}, "reference_cpu_s": {}}
        runs = [(n, True) for n in sorted(set(sizes) | set(ref_sizes[-1:]))] + [(n, False) for n in ref_sizes]
        for events, fast in runs:
            value, duration = sequence(events, make(name)[0].num_marks)

            def run(value=value, duration=duration, events=events, name=name):
                intensity, params, _ = make(name)
                process = PointProcess(intensity, duration, max_events=events)
                torch.autograd.grad(process.log_prob(value).sum(), params)

            # long sequences: no warm-up (a first small size warmed the path up)
            with backend("auto" if fast else "reference"):
                row["generic_cpu_s" if fast else "reference_cpu_s"][events] = timed(run, repeats, events < 4000)
        if ref_sizes and sizes:
            # agreement of the two paths at the smallest common size
            n = min(ref_sizes)
            intensity, _, _ = make(name)
            value, duration = sequence(n, intensity.num_marks)
            with torch.no_grad():
                with backend("auto"):
                    a = PointProcess(intensity, duration, max_events=n).log_prob(value)
                with backend("reference"):
                    b = PointProcess(intensity, duration, max_events=n).log_prob(value)
            row["max_rel_difference"] = float(((a - b).abs() / b.abs()).max())
        gen = row["generic_cpu_s"]
        big, small = max(sizes), min(sizes)  # the growth over the requested sizes only
        row["generic_growth_exponent"] = math.log(gen[big] / gen[small]) / math.log(big / small)
        if len(ref_sizes) >= 2:
            ref = row["reference_cpu_s"]
            lo, hi = min(ref_sizes), max(ref_sizes)
            exponent = math.log(ref[hi] / ref[lo]) / math.log(hi / lo)
            row["reference_growth_exponent"] = exponent
            row["speedup_at_common_size"] = {n: ref[n] / gen[n] for n in ref_sizes if n in gen}
            if big not in ref:
                row["reference_extrapolated_cpu_s"] = {big: ref[hi] * (big / hi) ** exponent}
                row["speedup_extrapolated"] = {big: ref[hi] * (big / hi) ** exponent / gen[big]}
            else:
                row["speedup"] = {big: ref[big] / gen[big]}
        out[name] = row
    out["config"] = {"rate_per_unit_time": 2.0, "quadrature_nodes": 8}
    return out


# ---- 3. exact sampling --------------------------------------------------------------------------------------------
def bench_exact(batch: int, duration: float, repeats: int) -> dict:
    out = {}
    for name in ("powerlaw", "neural"):
        intensity, _, bound = make(name)
        process = PointProcess(intensity, duration, bound=bound)

        def run(process=process):
            torch.manual_seed(0)
            process.sample((batch,))

        out[name] = both(run, repeats)
    out["config"] = {"batch": batch, "duration": duration}
    return out


# ---- 4. memory ----------------------------------------------------------------------------------------------------
_CHILD = PEAK_PROBE + """
import sys, torch
sys.path.insert(0, {here!r})
torch.set_num_threads(1)
from bench_generic import make
from pyro_dpp import PointProcess, backend
candidates, path = float(sys.argv[1]), sys.argv[2]
intensity = make("neural")[0]
if candidates:
    torch.manual_seed(0)
    with backend({{"generic": "auto"}}.get(path, path)):
        sample = PointProcess(intensity, candidates / 6.0, bound=6.0, temperature=0.3,
                              max_events=int(candidates * 1.1)).rsample()
        torch.autograd.grad(sample[..., 1:-1].sum(), list(intensity.parameters()))
print(peak_mb())
"""


def bench_memory(sizes: list[tuple[float, str]]) -> dict:
    out = {}
    code = _CHILD.format(here=str(HERE))
    for candidates, path in [(0.0, "generic")] + sizes:
        proc = subprocess.run([sys.executable, "-c", code, str(candidates), path], capture_output=True, text=True,
                              check=True, env=dict(os.environ))
        key = "baseline_imports" if candidates == 0 else f"{path}_{int(candidates)}"
        out[key] = {"peak_rss_mb": float(proc.stdout.split()[-1])}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--sections", nargs="+", default=["relaxed", "scoring", "exact", "memory"])
    parser.add_argument("--ref-events", type=int, nargs="+", default=None,
                        help="sequence lengths for the reference scoring (pairwise memory; default 1000 2000)")
    parser.add_argument("--memory-candidates", type=float, default=None, help="default 2e5 (quick 2e4)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "generic.json")
    parser.add_argument("--warm-compile-cache", action="store_true",
                        help="reuse torch.compile's on-disk cache (default: a fresh one, so first calls compile)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if not args.warm_compile_cache:
        # "compiled_first_call_wall_s" is a cold start: torch.compile's on-disk caches in a fresh folder
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench_generic_inductor_")
    quick = args.quick
    repeats = args.repeats or (1 if quick else 3)
    start = time.perf_counter()
    sections = {
        "relaxed": lambda: bench_relaxed(32 if quick else 256, 5.0 if quick else 20.0, repeats),
        "scoring": lambda: bench_scoring([500, 1000, 2000] if quick else [5000, 10000, 20000],
                                         args.ref_events or ([250, 500] if quick else [1000, 2000]),
                                         args.repeats or 1),
        "exact": lambda: bench_exact(32 if quick else 256, 5.0 if quick else 20.0, repeats),
        "memory": lambda: bench_memory([(2e3, "reference"), (args.memory_candidates or 2e4, "generic")] if quick
                                       else [(2e4, "reference"), (2e4, "generic"),
                                             (args.memory_candidates or 2e5, "generic"),
                                             (args.memory_candidates or 2e5, "compiled")]),
    }
    results = {}
    for name in args.sections:
        results[name] = sections[name]()
        print(name, json.dumps(results[name], indent=1, default=float), flush=True)
    config = {"quick": quick, "repeats": repeats, "threads": 1, **environment(),
              "compile_cache": "warm" if args.warm_compile_cache else "cold",
              "load_average": os.getloadavg(), "elapsed_s": time.perf_counter() - start}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"config": config, "results": results}, indent=2, default=float))
    print(f"total {config['elapsed_s']:.0f} s; load average {os.getloadavg()[0]:.1f}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
