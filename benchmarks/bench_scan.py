"""Fast paths (issue #4) against the reference implementations, side by side, in one run.

Sections (every timing is the median of ``--repeats`` runs after a warm-up; both wall and process
CPU time are recorded, ratios use CPU time, which a busy shared machine disturbs less):

1. ``rsample`` + backward of the paper's SNN hidden process (2 observed + 4 hidden neurons,
   Epanechnikov filters, a = 5, tau = 0.3) for 256 sequences: fast vs reference, candidate steps/s;
2. exact sampling: the SNN (thinning) and a 6-dim exponential Hawkes process over T = 1e4 (Ogata),
   batched over 64 sequences and for one sequence; the reference Ogata loop is timed on a shorter
   window and compared per event;
3. scoring of the SNN's observed process given soft hidden candidates (exact log-likelihood with the
   quadrature compensator, and the DPP density of the hidden candidates), with backward: numba
   kernels vs the torch implementation;
4. the paper's Experiment 1 (gradient E[std] over single-particle draws; 10 sequences, T = 50): the
   fast paths over ``--exp1-draws`` draws (extrapolated to 1,000 when fewer, and marked so) and the
   reference over ``--exp1-ref-draws`` draws (always extrapolated);
5. scaling in the window length: time(T=400) / time(T=100) for sampling, scoring and one SVI step;
6. peak memory (max RSS of a fresh process) of ``rsample`` + backward for one sequence with 2e5
   candidates.

Usage::

    python benchmarks/bench_scan.py                 # ~5-10 minutes on 2 busy cores
    python benchmarks/bench_scan.py --quick         # a smoke run (~1 minute)
    python benchmarks/bench_scan.py --exp1-draws 1000   # Experiment 1 at full size (no extrapolation)
    python benchmarks/bench_scan.py --sections exp1 --exp1-draws 1000 --merge   # update that section only
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyro
import torch
from _common import PEAK_PROBE, environment

import pyro_dpp
from pyro_dpp import PointProcess, event_mask
from pyro_dpp.events import LOG_WEIGHTS_ATTR
from pyro_dpp.intensity import ExpHawkes
from pyro_dpp.scan.backend import numba_available
from pyro_dpp.snn import SNN, gradient_draws, snn_guide, snn_model

HERE = Path(__file__).resolve().parent


def timed(fn: Callable[[], float | int | None], repeats: int, warmup: int = 1) -> dict:
    for _ in range(warmup):
        fn()
    walls, cpus, works = [], [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        work = fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
        works.append(work or 0)
    return {"wall_s": statistics.median(walls), "cpu_s": statistics.median(cpus), "work": statistics.median(works),
            "walls": walls, "cpus": cpus}


def timed_path(run: Callable[[], int], fast: bool, repeats: int, unit: str, wall: bool = True) -> dict:
    """:func:`timed` of one path plus its throughput ``{unit}_per_s`` (work per CPU second; per wall
    second too, as ``{unit}_per_s_wall``, with ``wall``): the fast path ``repeats`` times after a
    warm-up, the reference once and cold (it is slow)."""
    r = timed(run, repeats if fast else 1, warmup=1 if fast else 0)
    r[f"{unit}_per_s"] = r["work"] / r["cpu_s"]
    if wall:
        r[f"{unit}_per_s_wall"] = r["work"] / r["wall_s"]
    return r


def Mode(fast: bool):  # noqa: N802 - reads as the context it returns
    """The default backend (numba kernels where installed) or the reference implementation."""
    return pyro_dpp.backend("auto" if fast else "reference")


def paper_snn(seed: int = 0, dtype=torch.float32) -> SNN:
    torch.manual_seed(seed)
    return SNN(2, 4, amplitude=5.0).to(dtype)


def observed_data(n_seq: int, duration: float, seed: int = 1):
    true = paper_snn(0)
    observed, _ = true.simulate(n_seq, duration, seed=seed)
    return observed


# ---- 1. rsample + backward ------------------------------------------------------------------------------------------
def bench_rsample(batch: int, duration: float, ref_duration: float, repeats: int) -> dict:
    """The reference costs the same per candidate step at any window length (its history window is
    sized by the filter support), so it runs on a shorter window and the ratio compares steps/s."""
    net = paper_snn(5)
    params = [net.bias, net.weight]
    out = {}
    for name, fast, T in (("fast", True, duration), ("reference", False, ref_duration)):
        observed = observed_data(batch, T)
        value, dur = observed.to_tensor().to(net.weight), observed.duration

        def run(fast=fast, value=value, dur=dur):
            with Mode(fast):
                sample = net.hidden_process(value, dur, 0.3).rsample()
                torch.autograd.grad(sample[..., 1:-1].sum(), params)
            return int(event_mask(sample).sum())
        r = timed_path(run, fast, repeats, "steps")
        r["duration"] = T
        out[name] = r
    out["speedup_per_step"] = out["fast"]["steps_per_s"] / out["reference"]["steps_per_s"]
    out["config"] = {"batch": batch, "duration": duration, "reference_duration": ref_duration, "temperature": 0.3}
    return out


# ---- 2. exact sampling ----------------------------------------------------------------------------------------------
def hawkes6() -> ExpHawkes:
    gen = torch.Generator().manual_seed(0)
    k = 6
    adjacency = torch.rand(k, k, generator=gen, dtype=torch.float64)
    adjacency = adjacency / adjacency.sum(0).max() * 0.6  # spectral radius < 0.6
    return ExpHawkes(torch.full((k,), 0.2, dtype=torch.float64), adjacency, torch.tensor(1.5, dtype=torch.float64))


def bench_exact(duration: float, ref_duration: float, repeats: int, snn_batch: int, snn_duration: float) -> dict:
    out = {}
    process = hawkes6()
    for batch in (64, 1):
        shape = (batch,) if batch > 1 else ()
        row = {}
        for name, fast, T in (("fast", True, duration), ("reference", False, ref_duration)):
            # stationary rate <= 6 x 0.2 / (1 - 0.6) = 3 per unit time: room for twice that
            pp = PointProcess(process, T, max_events=int(6 * T) + 100)

            def run(pp=pp, fast=fast, shape=shape):
                with Mode(fast):
                    return int(event_mask(pp.sample(shape)).sum())
            r = timed_path(run, fast, repeats, "events")
            r["duration"] = T
            row[name] = r
        row["speedup_per_event"] = row["fast"]["events_per_s"] / row["reference"]["events_per_s"]
        out[f"hawkes6_batch{batch}"] = row
    net = paper_snn(0)
    row = {}
    for name, fast in (("fast", True), ("reference", False)):
        def run(fast=fast):
            with Mode(fast), torch.no_grad():
                return int(event_mask(net.joint_process(snn_duration).sample((snn_batch,))).sum())
        r = timed_path(run, fast, repeats, "events", wall=False)
        row[name] = r
    row["speedup"] = row["reference"]["cpu_s"] / row["fast"]["cpu_s"]
    row["config"] = {"batch": snn_batch, "duration": snn_duration}
    out["snn_joint"] = row
    return out


# ---- 3. scoring -----------------------------------------------------------------------------------------------------
def bench_scoring(batch: int, duration: float, repeats: int) -> dict:
    net = paper_snn(5)
    observed = observed_data(batch, duration)
    value, dur = observed.to_tensor().to(net.weight), observed.duration
    params = [net.bias, net.weight]
    torch.manual_seed(7)
    with Mode(True), torch.no_grad():
        hidden = net.hidden_process(value, dur, 0.3).rsample()
    logs = getattr(hidden, LOG_WEIGHTS_ATTR)
    hidden = hidden.detach().requires_grad_()
    setattr(hidden, LOG_WEIGHTS_ATTR, logs.detach())  # float32 weights may underflow: score the log-weights
    out = {}
    for what in ("observed exact log_prob", "hidden DPP log_prob"):
        row = {}
        for name, fast in (("fast", True), ("reference", False)):
            def run(fast=fast, what=what):
                with Mode(fast):
                    if what == "observed exact log_prob":
                        lp = net.observed_process(hidden, dur).log_prob(value)
                    else:
                        lp = net.hidden_process(value, dur, 0.3).log_prob(hidden)
                    torch.autograd.grad(lp.sum(), params + [hidden])
                return int(event_mask(hidden).sum())
            row[name] = timed(run, repeats)
        row["speedup"] = row["reference"]["cpu_s"] / row["fast"]["cpu_s"]
        out[what] = row
    out["config"] = {"batch": batch, "duration": duration}
    return out


# ---- 4. Experiment 1 ------------------------------------------------------------------------------------------------
def bench_experiment1(draws: int, ref_draws: int, chunk: int) -> dict:
    observed = observed_data(10, 50.0)
    out = {}
    for estimator in ("pathwise", "score_function"):
        row = {}
        for name, fast, n in (("fast", True, draws), ("reference", False, ref_draws)):
            model, guide = paper_snn(11), paper_snn(12)
            torch.manual_seed(13)
            with Mode(fast):
                w0, c0 = time.perf_counter(), time.process_time()
                grads = gradient_draws(model, guide, observed, estimator, num_draws=n, temperature=0.3,
                                       chunk=min(chunk, n))
                wall, cpu = time.perf_counter() - w0, time.process_time() - c0
            row[name] = {"draws": n, "wall_s": wall, "cpu_s": cpu, "extrapolated": n < 1000,
                         "wall_s_1000": wall * 1000 / n, "cpu_s_1000": cpu * 1000 / n,
                         "e_std": float(grads.std(0).mean()) if n > 1 else float("nan")}
        row["speedup"] = row["reference"]["cpu_s_1000"] / row["fast"]["cpu_s_1000"]
        out[estimator] = row
    out["config"] = {"sequences": 10, "duration": 50.0, "neurons": "2 observed + 4 hidden", "amplitude": 5.0,
                     "temperature": 0.3, "chunk": chunk}
    return out


# ---- 5. scaling in T ------------------------------------------------------------------------------------------------
def _scaling_cases(duration: float, batch: int) -> dict[str, Callable[[], object]]:
    net = paper_snn(5)
    observed = observed_data(batch, duration)
    value, dur = observed.to_tensor().to(net.weight), observed.duration
    params = [net.bias, net.weight]
    torch.manual_seed(3)
    with torch.no_grad():
        hidden = net.hidden_process(value, dur, 0.0).sample()

    def sample():
        with torch.no_grad():
            return int(event_mask(net.hidden_process(value, dur, 0.0).sample()).sum())

    def score():
        lp = net.hidden_process(value, dur, 0.0).log_prob(hidden)
        lp = lp + net.observed_process(hidden, dur).log_prob(value)
        torch.autograd.grad(lp.sum(), params)

    elbo = pyro.infer.Trace_ELBO()
    model = functools.partial(snn_model, network=net, temperature=0.3)
    guide = functools.partial(snn_guide, network=net, temperature=0.3, name="model")

    def svi_step():
        pyro.clear_param_store()
        with pyro.settings.context(module_local_params=False):
            elbo.loss_and_grads(model, guide, value, dur)
        net.zero_grad()

    return {"sample": sample, "score": score, "svi_step": svi_step}


def bench_scaling(repeats: int, batch: int) -> dict:
    times: dict[str, dict[float, float]] = {"sample": {}, "score": {}, "svi_step": {}}
    for duration in (100.0, 400.0):
        for name, fn in _scaling_cases(duration, batch).items():
            times[name][duration] = timed(fn, repeats)["cpu_s"]
    out: dict = {name: {"T100_cpu_s": row[100.0], "T400_cpu_s": row[400.0], "ratio": row[400.0] / row[100.0]}
                 for name, row in times.items()}
    out["config"] = {"batch": batch}
    return out


# ---- 6. memory ------------------------------------------------------------------------------------------------------
_MEMORY_CHILD = PEAK_PROBE + """
import sys, torch
torch.set_num_threads(1)
from pyro_dpp import event_mask
from pyro_dpp.snn import SNN
torch.manual_seed(0)
net = SNN(2, 4, amplitude=5.0)
candidates = float(sys.argv[1])
duration = candidates / (5.0 * 4)  # bound a * n_hidden = 20 candidates per unit time
observed, _ = net.simulate(1, duration, seed=1)
value = observed.to_tensor()
sample = net.hidden_process(value, observed.duration, 0.3).rsample()
torch.autograd.grad(sample[..., 1:-1].sum(), [net.bias, net.weight])
print(int(event_mask(sample).sum()), peak_mb())
"""


def bench_memory(candidates: float) -> dict:
    """Peak RSS (VmHWM) of a fresh process (imports included: ``baseline_rss_mb`` is that of the
    imports alone). A first child run warms numba's on-disk cache, so that compilation is not counted."""
    env = dict(os.environ)
    runs = []
    for size in (1e3, candidates):
        proc = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, str(size)], capture_output=True, text=True,
                              env=env, check=True)
        count, peak_mb = proc.stdout.split()
        runs.append((int(count), float(peak_mb)))
    baseline = subprocess.run([sys.executable, "-c", PEAK_PROBE + "import torch, pyro, pyro_dpp, pyro_dpp.scan\n"
                               "print(peak_mb())"],
                              capture_output=True, text=True, env=env, check=True)
    return {"candidates": runs[1][0], "peak_rss_mb": runs[1][1], "baseline_rss_mb": float(baseline.stdout)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--exp1-draws", type=int, default=None, help="fast-path draws (default 100; quick 10)")
    parser.add_argument("--exp1-ref-draws", type=int, default=None, help="reference draws (default 5; quick 2)")
    parser.add_argument("--exp1-chunk", type=int, default=50)
    parser.add_argument("--sections", nargs="+", default=["rsample", "exact", "scoring", "exp1", "scaling", "memory"])
    parser.add_argument("--out", type=Path, default=HERE / "results" / "scan.json")
    parser.add_argument("--merge", action="store_true", help="update the sections in an existing --out file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    quick = args.quick
    repeats = args.repeats or (1 if quick else 3)
    results: dict = {}
    start = time.perf_counter()
    sections = {
        "rsample": ("rsample_backward", lambda: bench_rsample(64 if quick else 256, 10.0 if quick else 50.0,
                                                              5.0 if quick else 10.0, repeats)),
        "exact": ("exact_sampling", lambda: bench_exact(1e3 if quick else 1e4, 50.0 if quick else 200.0, repeats,
                                                        64, 10.0 if quick else 50.0)),
        "scoring": ("scoring", lambda: bench_scoring(16 if quick else 64, 10.0 if quick else 50.0, repeats)),
        "exp1": ("experiment1", lambda: bench_experiment1(args.exp1_draws or (10 if quick else 100),
                                                          args.exp1_ref_draws or (2 if quick else 5),
                                                          args.exp1_chunk)),
        "scaling": ("scaling", lambda: bench_scaling(repeats, 4 if quick else 16)),
        "memory": ("memory", lambda: bench_memory(2e4 if quick else 2e5)),
    }
    for name in args.sections:
        key, run = sections[name]
        results[key] = run()
        print(report({key: results[key]}), flush=True)
    elapsed = time.perf_counter() - start
    config = {"quick": quick, "threads": args.threads, "repeats": repeats, **environment(),
              "numba": numba_available() and __import__("numba").__version__,
              "load_average": os.getloadavg(), "elapsed_s": elapsed}
    payload = {"config": config, "results": results}
    if args.merge and args.out.exists():
        previous = json.loads(args.out.read_text())
        previous["results"].update(results)
        previous.setdefault("merged_runs", []).append(config)
        payload, results = previous, previous["results"]
    print()
    print(report(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2, default=float))
    print(f"total {elapsed:.0f} s; load average {os.getloadavg()[0]:.1f}; wrote {args.out}")
    return 0


def report(r: dict) -> str:
    lines = ["pyro_dpp fast paths vs reference (CPU seconds, medians; ratio = reference / fast)"]
    if "rsample_backward" in r:
        x = r["rsample_backward"]
        c = x["config"]
        lines.append(f"rsample+backward, paper SNN, {c['batch']} seq: fast (T={c['duration']:g}) "
                     f"{x['fast']['steps_per_s']:,.0f} cand steps/s (wall {x['fast']['steps_per_s_wall']:,.0f}) | "
                     f"reference (T={c['reference_duration']:g}) {x['reference']['steps_per_s']:,.0f}/s | "
                     f"x{x['speedup_per_step']:.1f} per step")
    if "exact_sampling" in r:
        for key, x in r["exact_sampling"].items():
            if key.startswith("hawkes"):
                f, ref = x["fast"], x["reference"]
                lines.append(f"exact sampling {key} (T={f['duration']:g}): fast {f['events_per_s']:,.0f} ev/s "
                             f"(wall {f['events_per_s_wall']:,.0f}) | reference (T={ref['duration']:g}) "
                             f"{ref['events_per_s']:,.0f} ev/s | x{x['speedup_per_event']:.0f} per event")
            else:
                c = x["config"]
                lines.append(f"exact sampling SNN joint, {c['batch']} seq, T={c['duration']:g}: "
                             f"fast {x['fast']['cpu_s']:.2f}s | reference {x['reference']['cpu_s']:.2f}s | "
                             f"x{x['speedup']:.1f}")
    if "scoring" in r:
        c = r["scoring"]["config"]
        for what, x in r["scoring"].items():
            if what == "config":
                continue
            lines.append(f"{what} + backward, {c['batch']} seq, T={c['duration']:g}: "
                         f"fast {x['fast']['cpu_s']:.2f}s | reference {x['reference']['cpu_s']:.2f}s | "
                         f"x{x['speedup']:.1f}")
    if "experiment1" in r:
        for est, x in r["experiment1"].items():
            if est == "config":
                continue
            f, ref = x["fast"], x["reference"]
            lines.append(f"Experiment 1 {est}: fast {f['cpu_s_1000']:.0f}s per 1000 draws "
                         f"({'extrapolated from ' + str(f['draws']) if f['extrapolated'] else 'measured'}; "
                         f"wall {f['wall_s_1000']:.0f}s) | reference {ref['cpu_s_1000']:.0f}s "
                         f"(extrapolated from {ref['draws']}) | x{x['speedup']:.1f}")
    if "scaling" in r:
        for name, x in r["scaling"].items():
            if name != "config":
                lines.append(f"scaling {name}: T=100 {x['T100_cpu_s']:.2f}s, T=400 {x['T400_cpu_s']:.2f}s, "
                             f"ratio {x['ratio']:.2f}")
    if "memory" in r:
        x = r["memory"]
        lines.append(f"peak memory rsample+backward, one sequence, {x['candidates']:,} candidates: "
                     f"{x['peak_rss_mb']:.0f} MB max RSS of the process (imports alone: {x['baseline_rss_mb']:.0f} MB)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
