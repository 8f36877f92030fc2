"""The scan engine on a CUDA device against the CPU and against the reference there, in one run.

Every case runs on three paths in the same process: ``cpu`` (the default backend on the CPU, one
thread like every CPU figure in the README: numba kernels for the stock intensities, the generic
torch scan for the user's), ``cuda`` (the default backend on the GPU: the torch engine for the stock
intensities, the generic scan for the user's) and ``cuda_reference`` (the eager loop / the parallel
``forward`` on the GPU). Timings are median wall seconds of ``--repeats`` runs after a warm-up, with
the device synchronised before each clock read.

Cases, each at batch 256 and at ``--large-batch`` (4,096; the reference at the small batch only):

- ``relaxed``: relaxed ``rsample`` + ``log_prob`` (DPP density) + backward over T = 20 (stock
  ``ExpHawkes`` 2-d, ``SumExpHawkes``, ``PowerLawHawkes``, and the user-written power law and
  neural intensity of ``tests/user_intensities.py``); for the paper's SNN, the hidden process given
  observed spikes (``SNN.hidden_process``), ``rsample`` + backward;
- ``exact``: exact sampling at the same sizes (thinning with the bound, Ogata for ``ExpHawkes``);
- ``scoring``: ``log_prob`` + backward of one exact sequence of ``--events`` events (5,000) (user intensities:
  the generic scoring scan against the pairwise ``forward``).

``agreement`` gives, for every intensity, the largest relative difference between CPU and CUDA of
``log_prob`` and of its gradient for the same realization in float64.

Usage (on a machine with a GPU)::

    python benchmarks/bench_cuda.py                       # ~5 minutes on an H200 (16 CPU cores)
    python benchmarks/bench_cuda.py --quick --device cpu  # a smoke run of the script itself
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
from bench_generic import make as make_user
from bench_generic import sequence

from pyro_dpp import PointProcess, backend
from pyro_dpp.intensity import ExpHawkes, PowerLawHawkes, SumExpHawkes
from pyro_dpp.intensity.base import Intensity
from pyro_dpp.snn import SNN

HERE = Path(__file__).resolve().parent
STOCK = ("exp_hawkes", "sumexp_hawkes", "powerlaw_hawkes")
USER = ("user_powerlaw", "user_neural")
#: the thinning bound: the user intensities' as in bench_generic (the neural one is bounded by 6); the stock
#: Hawkes processes get room for bursts at batch 4,096
BOUND = {"user_powerlaw": 6.0, "user_neural": 6.0}
STOCK_BOUND = 12.0


def make(name: str, device: torch.device, dtype: torch.dtype = torch.float32) -> tuple[Intensity, list[torch.Tensor]]:
    """An intensity with leaf parameters on ``device``; the stock ones as in ``tests/test_devices.py``."""
    if name in USER:
        intensity, params, _ = make_user(name.removeprefix("user_"))
        if name == "user_powerlaw":  # parameters are tensors given to the constructor
            mu, alpha = (p.detach().to(device, dtype).requires_grad_() for p in params)
            return type(intensity)(torch.nn.functional.softplus(mu), alpha, support=intensity.support,
                                   window=intensity.window), [mu, alpha]
        intensity.decays = intensity.decays.to(device, dtype)
        intensity.to(device, dtype)
        return intensity, list(intensity.parameters())
    kw = {"device": device, "dtype": dtype}
    baseline = torch.tensor([0.4, 0.3], **kw, requires_grad=True)
    adjacency = torch.tensor([[0.3, 0.1], [0.2, 0.2]], **kw, requires_grad=True)
    if name == "exp_hawkes":
        return ExpHawkes(baseline, adjacency, torch.tensor(1.5, **kw)), [baseline, adjacency]
    if name == "sumexp_hawkes":
        weights = (0.05 * torch.ones(2, 2, 3, **kw)).requires_grad_()
        return SumExpHawkes(baseline, weights, torch.tensor([0.5, 1.0, 4.0], **kw)), [baseline, weights]
    exponent = torch.tensor(1.5, **kw, requires_grad=True)
    return (PowerLawHawkes(baseline, adjacency, torch.tensor(1.0, **kw), exponent, support=5.0),
            [baseline, adjacency, exponent])


def bound_of(name: str) -> float:
    return BOUND.get(name, STOCK_BOUND)


def relaxed_step(name: str, device: torch.device, batch: int, duration: float) -> None:
    """Relaxed ``rsample`` + DPP ``log_prob`` + backward of a fresh intensity (built in the timed call,
    as a model step does: a parameter's transform is part of it)."""
    intensity, params = make(name, device)
    process = PointProcess(intensity, duration, bound=bound_of(name), temperature=0.3)
    value = process.rsample((batch,))
    torch.autograd.grad(process.log_prob(value).sum(), params)


#: the intensities to run (``--intensities``; all by default)
ONLY: set[str] = set()


def selected(names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(n for n in names if not ONLY or n in ONLY)


def timed(fn: Callable[[], object], device: torch.device, repeats: int, warmup: bool = True) -> float | str:
    """Median wall seconds, or the error's text (one failing case must not lose the others of a run
    on a lent machine)."""
    try:
        return _timed(fn, device, repeats, warmup)
    except (RuntimeError, ValueError) as error:
        print(f"  failed: {type(error).__name__}: {error}", flush=True)
        return f"{type(error).__name__}: {error}"


def _timed(fn: Callable[[], object], device: torch.device, repeats: int, warmup: bool) -> float:
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    if warmup:
        fn()
    walls = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        walls.append(time.perf_counter() - t0)
    return statistics.median(walls)


def paths(device: torch.device, large: bool) -> list[tuple[str, torch.device, str]]:
    """(label, device, backend) of one case; the reference runs at the small batch only."""
    out = [("cpu", torch.device("cpu"), "auto"), ("cuda", device, "auto")]
    return out if large else out + [("cuda_reference", device, "reference")]


def with_ratios(row: dict) -> dict:
    if not all(isinstance(v, float) for v in row.values()):
        return row
    if "cuda_reference" in row:
        row["cuda_vs_reference"] = row["cuda_reference"] / row["cuda"]
    row["cuda_vs_cpu"] = row["cpu"] / row["cuda"]
    return row


def bench_relaxed(device: torch.device, batches: list[int], duration: float, repeats: int) -> dict:
    out: dict = {}
    for name in selected(STOCK + USER + ("snn",)):
        for batch in batches:
            row = {}
            for label, dev, name_of_backend in paths(device, batch != batches[0]):
                if name == "snn":
                    torch.manual_seed(0)
                    net = SNN(2, 4, amplitude=5.0).to(dev)
                    observed, _ = net.simulate(batch, duration, seed=1)
                    params = [net.bias, net.weight]

                    def run(net=net, observed=observed, params=params):
                        sample = net.hidden_process(observed, temperature=0.3).rsample()
                        torch.autograd.grad(sample[..., 1:-1].sum(), params)
                else:
                    def run(name=name, dev=dev, batch=batch):
                        relaxed_step(name, dev, batch, duration)
                with backend(name_of_backend):
                    row[label] = timed(run, dev, repeats)
            out[f"{name}_batch{batch}"] = with_ratios(row)
            print(f"relaxed {name} batch {batch}: {row}", flush=True)
    return out


def bench_exact(device: torch.device, batches: list[int], duration: float, repeats: int) -> dict:
    out: dict = {}
    for name in selected(STOCK + USER):
        for batch in batches:
            row = {}
            for label, dev, name_of_backend in paths(device, batch != batches[0]):
                intensity, _ = make(name, dev)
                # ExpHawkes without a bound: Ogata's local bounds (its own sampler)
                bound = {} if name == "exp_hawkes" else {"bound": bound_of(name)}
                process = PointProcess(intensity, duration, **bound)

                def run(process=process, batch=batch):
                    with torch.no_grad():
                        process.sample((batch,))
                with backend(name_of_backend):
                    row[label] = timed(run, dev, repeats)
            out[f"{name}_batch{batch}"] = with_ratios(row)
            print(f"exact {name} batch {batch}: {row}", flush=True)
    return out


def bench_scoring(device: torch.device, events: int, repeats: int) -> dict:
    out: dict = {}
    for name in selected(USER):
        row = {}
        for label, dev, name_of_backend in paths(device, False):
            value, duration = sequence(events, make(name, dev)[0].num_marks)
            value = value.to(dev)

            def run(name=name, dev=dev, value=value, duration=duration):
                intensity, params = make(name, dev)
                process = PointProcess(intensity, duration, max_events=events)
                torch.autograd.grad(process.log_prob(value).sum(), params)
            with backend(name_of_backend):
                row[label] = timed(run, dev, repeats)
        out[name] = with_ratios(row)
        print(f"scoring {name} {events} events: {row}", flush=True)
    out["config"] = {"events": events}
    return out


def bench_compiled(device: torch.device, batch: int, duration: float, repeats: int) -> dict:
    """The user intensities under backend ``"compiled"`` on ``device`` (the generic scan's steps in
    torch.compile'd chunks), against ``"auto"`` there; the first call, which compiles, apart."""
    out: dict = {}
    for name in selected(USER):
        for what in ("relaxed", "exact"):
            def run(name=name, what=what):
                if what == "relaxed":
                    return relaxed_step(name, device, batch, duration)
                return PointProcess(make(name, device)[0], duration, bound=bound_of(name)).sample((batch,))
            row: dict = {}
            with backend("compiled"):
                row["compiled_first_call_wall_s"] = timed(run, device, 1, warmup=False)
                row["compiled"] = timed(run, device, repeats)
            with backend("auto"):
                row["auto"] = timed(run, device, repeats)
            if isinstance(row["compiled"], float) and isinstance(row["auto"], float):
                row["compiled_vs_auto"] = row["auto"] / row["compiled"]
            out[f"{what}_{name}_batch{batch}"] = row
            print(f"compiled {what} {name} batch {batch}: {row}", flush=True)
    return out


def agreement(device: torch.device, duration: float) -> dict:
    """max relative difference CPU vs ``device`` of log_prob and its gradients, float64."""
    out = {}
    for name in selected(STOCK + USER):
        values = {}
        for dev in (torch.device("cpu"), device):
            intensity, params = make(name, dev, torch.float64)
            process = PointProcess(intensity, duration, bound=bound_of(name))
            if dev.type == "cpu":
                torch.manual_seed(0)
                value = process.sample((8,))
            log_p = process.log_prob(value.to(dev))
            grads = torch.autograd.grad(log_p.sum(), params)
            values[dev.type] = [log_p.detach().cpu()] + [g.cpu() for g in grads]
        a, b = values["cpu"], values[device.type]
        out[name] = max(float(((x - y).abs() / y.abs().clamp_min(1e-300)).max()) for x, y in zip(a, b, strict=True))
        print(f"agreement {name}: {out[name]:.2e}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--large-batch", type=int, default=4096)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--sections", nargs="+", default=["agreement", "relaxed", "exact", "scoring"],
                        help="also: compiled (the user intensities under backend 'compiled'; compiles first)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "cuda.json")
    parser.add_argument("--intensities", nargs="+", default=[], choices=STOCK + USER + ("snn",),
                        help="run these cases only (default: all)")
    args = parser.parse_args(argv)
    ONLY.update(args.intensities)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to measure", file=sys.stderr)
        return 1
    torch.set_num_threads(1)
    batches = [32, 64] if args.quick else [256, args.large_batch]
    duration = 5.0 if args.quick else 20.0
    start = time.perf_counter()
    sections = {
        "agreement": lambda: agreement(device, duration),
        "relaxed": lambda: bench_relaxed(device, batches, duration, args.repeats),
        "exact": lambda: bench_exact(device, batches, duration, args.repeats),
        "compiled": lambda: bench_compiled(device, batches[0], duration, args.repeats),
        "scoring": lambda: bench_scoring(device, 1000 if args.quick else args.events, args.repeats),
    }
    results = {}
    for name in args.sections:
        results[name] = sections[name]()
    config = {"quick": args.quick, "repeats": args.repeats, "batches": batches, "duration": duration,
              "bound": {**dict.fromkeys(STOCK, STOCK_BOUND), **BOUND}, "cpu_threads": 1, **environment(),
              "elapsed_s": time.perf_counter() - start,
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"config": config, "results": results}, indent=2, default=float))
    print(f"total {config['elapsed_s']:.0f} s; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
