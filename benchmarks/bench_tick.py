"""Exact Hawkes log-likelihood + gradient against tick's ``ModelHawkesExpKernLogLik``.

The workload of issue 12: a 3-mark exponential Hawkes process (decay 1.5, the parameters of
``bench_core.py``), 5 realizations on ``[0, 2000]`` (about 21,000 events), one evaluation of the
log-likelihood and its gradient in (baseline, adjacency) at fixed decays. Timed, in this process:

- ``general``: :func:`pyro_dpp.likelihood.exact_log_likelihood` (no precomputation);
- ``log_prob``: what a user's loss function or a Pyro model does at every step: builds
  ``PointProcess(ExpHawkes(b, a, decay), T)`` anew and calls ``.log_prob(data).sum()`` and the
  gradient; it reuses the cached sufficient statistics of the data
  (:mod:`pyro_dpp.intensity.hawkes_stats`) after the first call;
- ``statistics``: :meth:`ExpHawkesStatistics.log_likelihood` called directly (no distribution);
- ``tick``: ``ModelHawkesExpKernLogLik.loss_and_grad`` (if tick is importable; else says so).

The fast paths are timed round-robin (one evaluation of each in turn, ``--repeats`` rounds), so
that the load of a shared machine hits them alike, and each reports the median; ratios are
per-evaluation medians over tick's (over ``general`` without tick). Also an L-BFGS-B
maximum-likelihood fit (scipy) with each loss, against the same optimizer on tick's loss. The
figures go to ``results/tick.json`` (``--out``).

Usage::

    python benchmarks/bench_tick.py              # ~1 minute on 2 CPU cores
    python benchmarks/bench_tick.py --quick      # a few seconds (smoke test)

tick runs in a scratch environment (e.g. ``pip install tick numpydoc six numba`` plus a CPU torch
wheel).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.optimize
import torch

from pyro_dpp import PointProcess, event_mask
from pyro_dpp.intensity import ExpHawkes
from pyro_dpp.intensity.hawkes_stats import ExpHawkesStatistics
from pyro_dpp.likelihood import exact_log_likelihood

HERE = Path(__file__).resolve().parent
DTYPE = torch.float64
DECAY = 1.5
BASELINE = [0.4, 0.2, 0.3]
ADJACENCY = [[0.3, 0.0, 0.2], [0.4, 0.2, 0.0], [0.0, 0.3, 0.3]]

try:
    from tick.hawkes import ModelHawkesExpKernLogLik
except ImportError as err:  # pragma: no cover - depends on the environment
    TICK_ERROR: str | None = str(err)
else:
    TICK_ERROR = None


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def round_robin_ms(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 20) -> dict[str, list[float]]:
    """Per-evaluation times (ms) of each function, one evaluation of each in turn, so that the
    load of a shared machine falls alike on all of them."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(1e3 * (time.perf_counter() - start))
    return times


def simulate(realizations: int, duration: float, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    truth = ExpHawkes(torch.tensor(BASELINE, dtype=DTYPE), torch.tensor(ADJACENCY, dtype=DTYPE), DECAY)
    data = PointProcess(truth, duration, max_events=int(4 * duration)).sample((realizations,))
    rows = int(event_mask(data).sum(-1).max()) + 1
    return data[..., :rows, :].contiguous()


def to_tick(data: torch.Tensor) -> list[list[np.ndarray]]:
    out = []
    for seq in data:
        real = event_mask(seq)
        marks = seq[real, 1:-1].argmax(-1)
        out.append([np.ascontiguousarray(seq[real][marks == k, 0].numpy()) for k in range(len(BASELINE))])
    return out


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q1, q2, q3 = statistics.quantiles(values, n=4)
    return q1, q2, q3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small workload, few repeats")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=None, help="round-robin rounds (default 2000, quick 50)")
    parser.add_argument("--out", default=str(HERE / "results" / "tick.json"), help="JSON results ('' for none)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    begin = time.perf_counter()
    realizations, duration, repeats = (2, 200.0, 50) if args.quick else (5, 2000.0, 2000)
    repeats = args.repeats or repeats
    data = simulate(realizations, duration, seed=0)
    k = len(BASELINE)
    events = int(event_mask(data).sum())
    print(f"workload: {k} marks, {realizations} realizations of T = {duration:g}, {events} events, decay {DECAY}")
    print(f"torch {torch.__version__}, {args.threads} thread(s)")

    b0 = torch.tensor([0.3, 0.3, 0.3], dtype=DTYPE)
    a0 = torch.full((k, k), 0.1, dtype=DTYPE)
    b, a = b0.clone().requires_grad_(), a0.clone().requires_grad_()
    T = torch.tensor(duration, dtype=DTYPE)

    def general():
        ll = exact_log_likelihood(ExpHawkes(b, a, DECAY), data, T).sum()
        return ll, torch.autograd.grad(ll, (b, a))

    def log_prob():
        # a new distribution at every evaluation, as a loss function or a Pyro model builds it
        ll = PointProcess(ExpHawkes(b, a, DECAY), duration).log_prob(data).sum()
        return ll, torch.autograd.grad(ll, (b, a))

    start = time.perf_counter()
    stats = ExpHawkesStatistics(data, DECAY, duration, k)
    precompute_ms = 1e3 * (time.perf_counter() - start)

    def direct():
        ll = stats.log_likelihood(b, a).sum()
        return ll, torch.autograd.grad(ll, (b, a))

    values = {name: fn() for name, fn in (("general", general), ("log_prob", log_prob), ("statistics", direct))}
    ref, ref_grad = values["general"]
    agreement = {}
    for name, (ll, grad) in values.items():
        err = max(float((g - r).abs().max()) for g, r in zip(grad, ref_grad))
        ll = float(ll.detach())
        agreement[name] = {"log_likelihood": ll, "abs_diff": abs(ll - float(ref.detach())), "grad_max_abs_diff": err}
        print(f"  {name:10s} log-likelihood {ll:.10f}  (|diff| {abs(ll - float(ref.detach())):.1e}, grad {err:.1e})")
    print(f"precomputing the statistics once: {precompute_ms:.2f} ms")

    coeffs = np.concatenate([b0.numpy(), a0.numpy().ravel()])
    fast: dict[str, Callable[[], object]] = {"log_prob": log_prob, "statistics": direct}
    if TICK_ERROR is None:
        model = ModelHawkesExpKernLogLik(DECAY, n_threads=args.threads)
        model.fit(to_tick(data), end_times=np.full(realizations, duration))
        loss, grad = model.loss(coeffs), model.grad(coeffs)
        # tick's loss is minus the log-likelihood per event, less a constant: K times the total duration
        tick_ll = -loss * events - k * realizations * duration
        tick_grad_err = np.abs(-grad * events - torch.cat([g.reshape(-1) for g in ref_grad]).numpy()).max()
        agreement["tick"] = {"log_likelihood": tick_ll, "abs_diff": abs(tick_ll - float(ref.detach())),
                             "grad_max_abs_diff": float(tick_grad_err)}
        print(f"  {'tick':10s} log-likelihood {tick_ll:.10f}  (|diff| {abs(tick_ll - float(ref.detach())):.1e}, "
              f"grad {tick_grad_err:.1e}; tick's loss + K T / events)")
        out = np.empty_like(coeffs)
        fast["tick"] = lambda: model.loss_and_grad(coeffs, out)
        baseline_name = "tick"
    else:
        print(f"tick is not importable ({TICK_ERROR}): ratios are against pyro_dpp's general path")
        baseline_name = "general"

    times = round_robin_ms(fast, repeats, warmup=min(20, repeats))
    times["general"] = [median_ms(general, 1) for _ in range(max(3, repeats // 200))]
    medians = {name: statistics.median(t) for name, t in times.items()}
    print(f"\nloss + gradient per evaluation (ms; fast paths round-robin, {repeats} rounds): "
          f"median [quartiles], fastest; ratio of medians (of fastest) over {baseline_name}")
    timings = {}
    for name in ("general", "log_prob", "statistics", "tick"):
        if name not in times:
            continue
        q1, _, q3 = quartiles(times[name]) if len(times[name]) > 1 else (medians[name],) * 3
        ratio = medians[name] / medians[baseline_name]
        best = min(times[name])
        timings[name] = {"median_ms": medians[name], "q1_ms": q1, "q3_ms": q3, "min_ms": best,
                         "evaluations": len(times[name]), f"ratio_over_{baseline_name}": ratio,
                         f"min_ratio_over_{baseline_name}": best / min(times[baseline_name])}
        print(f"  {name:10s} {medians[name]:9.3f} ms [{q1:.3f}, {q3:.3f}]  min {best:.3f} ms   x{ratio:.2f} "
              f"(min x{best / min(times[baseline_name]):.2f})")
    if baseline_name == "tick":
        # paired: the ratio within each round, where the load was the same for both
        for name in ("log_prob", "statistics"):
            paired = statistics.median(x / y for x, y in zip(times[name], times["tick"]))
            timings[name]["paired_ratio_over_tick"] = paired
            print(f"  {name:10s} median of per-round ratios over tick: x{paired:.2f}")

    # maximum likelihood by L-BFGS-B (nonnegative parameters) with each loss
    def fit(loss_and_grad: Callable[[np.ndarray], tuple[float, np.ndarray]]) -> tuple[float, np.ndarray]:
        start = time.perf_counter()
        res = scipy.optimize.minimize(loss_and_grad, np.concatenate([b0.numpy(), a0.numpy().ravel()]), jac=True,
                                      method="L-BFGS-B", bounds=[(1e-8, None)] * (k + k * k))
        return time.perf_counter() - start, res.x

    def ours(x: np.ndarray) -> tuple[float, np.ndarray]:
        p = torch.tensor(x, dtype=DTYPE, requires_grad=True)
        ll = PointProcess(ExpHawkes(p[:k], p[k:].reshape(k, k), DECAY), duration).log_prob(data).sum()
        (g,) = torch.autograd.grad(-ll / events, p)
        return -float(ll.detach()) / events, g.numpy()

    seconds, x_ours = fit(ours)
    fits = {"log_prob_s": seconds, "log_prob_baseline": x_ours[:k].tolist()}
    print(f"\nL-BFGS-B fit with PointProcess.log_prob: {seconds:.3f} s; baseline {np.round(x_ours[:k], 3)}")
    if TICK_ERROR is None:
        # the same optimizer on tick's loss (tick's own BFGS solver leaves the nonnegative orthant)
        tick_seconds, x_tick = fit(lambda x: model.loss_and_grad(x, np.empty_like(x)))
        fits.update(tick_s=tick_seconds, ratio=seconds / tick_seconds,
                    max_abs_difference=float(np.abs(x_ours - x_tick).max()))
        print(f"L-BFGS-B fit with tick's loss:           {tick_seconds:.3f} s; baseline {np.round(x_tick[:k], 3)}; "
              f"ratio x{seconds / tick_seconds:.2f}; max |difference| of the estimates "
              f"{np.abs(x_ours - x_tick).max():.1e}")

    if args.out:
        config = {
            "quick": args.quick, "threads": args.threads, "repeats": repeats, "marks": k,
            "realizations": realizations, "duration": duration, "events": events, "decay": DECAY,
            "dtype": str(DTYPE), "torch": torch.__version__, "tick": TICK_ERROR is None,
            "tick_error": TICK_ERROR, "python": platform.python_version(), "platform": platform.platform(),
            "elapsed_s": time.perf_counter() - begin,
        }
        results = {"config": config, "agreement": agreement, "precompute_ms": precompute_ms,
                   "loss_and_grad": timings, "lbfgsb_fit": fits}
        out_path = Path(args.out)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(results, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
