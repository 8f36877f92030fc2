"""Exact Hawkes log-likelihood + gradient against tick's ``ModelHawkesExpKernLogLik``.

The workload of issue 12: a 3-mark exponential Hawkes process (decay 1.5, the parameters of
``bench_core.py``), 5 realizations on ``[0, 2000]`` (about 19,000 events), one evaluation of the
log-likelihood and its gradient in (baseline, adjacency) at fixed decays. Timed, in this process:

- ``general``: :func:`pyro_dpp.likelihood.exact_log_likelihood` (no precomputation);
- ``log_prob``: what a Pyro model does at every step, ``PointProcess(ExpHawkes(b, a, decay), T)
  .log_prob(data)``, which reuses cached sufficient statistics of the data
  (:mod:`pyro_dpp.intensity.hawkes_stats`) after the first call;
- ``statistics``: :meth:`ExpHawkesStatistics.log_likelihood` called directly;
- ``tick``: ``ModelHawkesExpKernLogLik.loss_and_grad`` (if tick is importable; else says so).

Ratios are per-evaluation times over tick's (or over ``general`` without tick). Also an L-BFGS-B
maximum-likelihood fit (scipy) with each loss, against the same optimizer on tick's loss.

Usage::

    python benchmarks/bench_tick.py              # ~1 minute on 2 CPU cores
    python benchmarks/bench_tick.py --quick      # a few seconds (smoke test)

tick runs in a scratch environment (e.g. ``pip install tick numpydoc six`` plus a CPU torch wheel).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import scipy.optimize
import torch

from pyro_dpp import PointProcess, event_mask
from pyro_dpp.intensity import ExpHawkes
from pyro_dpp.intensity.hawkes_stats import ExpHawkesStatistics
from pyro_dpp.likelihood import exact_log_likelihood

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small workload, few repeats")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    realizations, duration, repeats = (2, 200.0, 5) if args.quick else (5, 2000.0, 30)
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
    for name, (ll, grad) in values.items():
        err = max(float((g - r).abs().max()) for g, r in zip(grad, ref_grad))
        ll = float(ll.detach())
        print(f"  {name:10s} log-likelihood {ll:.10f}  (|diff| {abs(ll - float(ref.detach())):.1e}, grad {err:.1e})")
    timings = {
        "general": median_ms(general, max(3, repeats // 5)),
        "log_prob": median_ms(log_prob, repeats),
        "statistics": median_ms(direct, repeats),
    }
    print(f"precomputing the statistics once: {precompute_ms:.2f} ms")

    coeffs = np.concatenate([b0.numpy(), a0.numpy().ravel()])
    if TICK_ERROR is None:
        model = ModelHawkesExpKernLogLik(DECAY, n_threads=args.threads)
        model.fit(to_tick(data), end_times=np.full(realizations, duration))
        loss, grad = model.loss(coeffs), model.grad(coeffs)
        # tick's loss is minus the log-likelihood per event, less a constant: K times the total duration
        tick_ll = -loss * events - k * realizations * duration
        print(f"  {'tick':10s} log-likelihood {tick_ll:.10f}  (|diff| {abs(tick_ll - float(ref.detach())):.1e}, "
              f"grad {np.abs(-grad * events - torch.cat([g.reshape(-1) for g in ref_grad]).numpy()).max():.1e}; "
              f"tick's loss + K T / events)")
        out = np.empty_like(coeffs)
        timings["tick"] = median_ms(lambda: model.loss_and_grad(coeffs, out), repeats)
        baseline_name = "tick"
    else:
        print(f"tick is not importable ({TICK_ERROR}): ratios are against pyro_dpp's general path")
        baseline_name = "general"
    print(f"\nloss + gradient, median of {repeats} (ms), ratio over {baseline_name}:")
    for name, ms in timings.items():
        print(f"  {name:10s} {ms:9.3f} ms   x{ms / timings[baseline_name]:.2f}")

    # maximum likelihood by L-BFGS-B (nonnegative parameters) with each loss
    def fit(loss_and_grad: Callable[[np.ndarray], tuple[float, np.ndarray]]) -> tuple[float, np.ndarray]:
        start = time.perf_counter()
        res = scipy.optimize.minimize(loss_and_grad, np.concatenate([b0.numpy(), a0.numpy().ravel()]), jac=True,
                                      method="L-BFGS-B", bounds=[(1e-8, None)] * (k + k * k))
        return time.perf_counter() - start, res.x

    def ours(x: np.ndarray) -> tuple[float, np.ndarray]:
        p = torch.tensor(x, dtype=DTYPE, requires_grad=True)
        ll = stats.log_likelihood(p[:k], p[k:].reshape(k, k)).sum()
        (g,) = torch.autograd.grad(-ll / events, p)
        return -float(ll.detach()) / events, g.numpy()

    seconds, x_ours = fit(ours)
    print(f"\nL-BFGS-B fit with the statistics: {seconds:.3f} s; baseline {np.round(x_ours[:k], 3)}")
    if TICK_ERROR is None:
        # the same optimizer on tick's loss (tick's own BFGS solver leaves the nonnegative orthant)
        tick_seconds, x_tick = fit(lambda x: model.loss_and_grad(x, np.empty_like(x)))
        print(f"L-BFGS-B fit with tick's loss:      {tick_seconds:.3f} s; baseline {np.round(x_tick[:k], 3)}; "
              f"ratio x{seconds / tick_seconds:.2f}; max |difference| of the estimates "
              f"{np.abs(x_ours - x_tick).max():.1e}")


if __name__ == "__main__":
    main()
