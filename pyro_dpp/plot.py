"""Plots (matplotlib): spike rasters, intensities, time-rescaling goodness of fit, training curves and
gradient-variance bars. The drawing functions draw into ``ax`` (a new figure if None) and return the Axes;
:func:`rescaled_intervals` computes what :func:`time_rescaling` draws."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .events import SpikeTrains


def _pyplot() -> Any:
    try:
        # No matplotlib.use() here: a library must not switch the user's backend (it replaced the
        # inline backend of notebooks). Headless sessions fall back to Agg by themselves.
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError("plotting needs matplotlib: pip install 'pyro-dpp[plot]'") from err
    return plt


def _flat(trains: SpikeTrains) -> torch.Tensor:
    """The realization tensor of ``trains`` with one batch dimension."""
    value = trains.to_tensor()
    return value.reshape(-1, *value.shape[-2:])


def raster(
    trains: SpikeTrains | torch.Tensor,
    sequence: int = 0,
    ax: Any = None,
    labels: Sequence[str] | None = None,
    title: str | None = None,
) -> Any:
    """Spike raster of one sequence. Relaxed (soft) candidates are drawn with opacity equal to
    their weight on each neuron, so a relaxed draw shows where the mass of its soft spikes lies.

    :param trains: :class:`~pyro_dpp.SpikeTrains` or a realization tensor.
    :returns: the matplotlib Axes.
    """
    plt = _pyplot()
    if isinstance(trains, torch.Tensor):
        trains = SpikeTrains.from_tensor(trains)
    times = trains.times.detach().cpu().reshape(-1, trains.times.shape[-1])[sequence].numpy()
    weights = trains.weights.detach().cpu().reshape(-1, *trains.weights.shape[-2:])[sequence].numpy()
    duration = float(trains.duration.reshape(-1)[sequence])
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 0.4 * trains.num_marks + 1.2))
    for k in range(trains.num_marks):
        w = weights[:, k]
        keep = w > 1e-3
        colors = np.zeros((keep.sum(), 4))
        colors[:, 3] = w[keep]
        ax.vlines(times[keep], k + 0.6, k + 1.4, colors=colors, linewidth=1.0)
    ax.set_xlim(0, duration)
    ax.set_ylim(0.5, trains.num_marks + 0.5)
    ax.set_yticks(range(1, trains.num_marks + 1))
    ax.set_yticklabels(labels or [str(k) for k in range(trains.num_marks)])
    ax.set_xlabel("time")
    ax.set_ylabel("neuron")
    if title:
        ax.set_title(title)
    return ax


def intensity_trace(
    intensity: Any, trains: SpikeTrains, sequence: int = 0, num_points: int = 1000, ax: Any = None,
    context: SpikeTrains | None = None,
) -> Any:
    """Plot each mark's conditional intensity over the window, given one sequence's history."""
    from .likelihood import history

    plt = _pyplot()
    value = _flat(trains)[sequence : sequence + 1]
    ctx = None if context is None else _flat(context)[sequence : sequence + 1].to(value)
    duration = float(trains.duration.reshape(-1)[sequence])
    grid = torch.linspace(0, duration, num_points, dtype=value.dtype, device=value.device).unsqueeze(0)
    times, weights = history(value, intensity.num_marks, ctx, intensity.num_context_marks)
    with torch.no_grad():
        rates = intensity(times, weights, grid)[0].cpu().numpy()
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 3))
    for k in range(rates.shape[-1]):
        ax.plot(grid[0].cpu().numpy(), rates[:, k], label=f"mark {k}")
    ax.set_xlabel("time")
    ax.set_ylabel("intensity")
    ax.legend(loc="upper right", fontsize="small")
    return ax


def rescaled_intervals(intensity: Any, trains: SpikeTrains, context: SpikeTrains | None = None,
                       nodes: int = 8) -> np.ndarray:
    """Time-rescaled inter-event intervals: by the time-rescaling theorem they are iid Exp(1) if
    the events were drawn from ``intensity``. Computed per sequence and mark by integrating each
    mark's intensity between its consecutive events (Gauss-Legendre between history events)."""
    from .likelihood import gauss_legendre, history

    value = _flat(trains)
    ctx = None if context is None else _flat(context).to(value)
    duration = trains.duration.reshape(-1).to(value)
    out = []
    with torch.no_grad():
        for s in range(value.shape[0]):
            v = value[s : s + 1]
            c = None if ctx is None else ctx[s : s + 1]
            times, weights = history(v, intensity.num_marks, c, intensity.num_context_marks)
            real = v[0, :, 1:].sum(-1) > 0.5
            zero = v.new_zeros(1)
            breaks = torch.cat([zero, times[0][times[0] <= duration[s]], duration[s : s + 1]])
            breaks = breaks.sort().values
            left, right = breaks[:-1], breaks[1:]
            half = (right - left) / 2
            x, w = gauss_legendre(nodes, v)
            query = ((left + right) / 2).unsqueeze(-1) + half.unsqueeze(-1) * x
            rates = intensity(times, weights, query.reshape(1, -1))[0].reshape(*query.shape, -1)
            pieces = (rates * (half.unsqueeze(-1) * w).unsqueeze(-1)).sum(1)
            cumulative = torch.cat([v.new_zeros(1, pieces.shape[-1]), pieces.cumsum(0)])
            for k in range(intensity.num_marks):
                ev = v[0, real & (v[0, :, 1 + k] > 0.5), 0]
                if len(ev) == 0:
                    continue
                idx = torch.searchsorted(breaks, ev)
                lam = cumulative[idx, k]
                out.append(torch.diff(torch.cat([zero, lam])).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def time_rescaling(intervals: np.ndarray, ax: Any = None, title: str | None = None) -> Any:
    """KS plot of time-rescaled intervals: empirical CDF of ``1 - exp(-interval)`` against the
    uniform, with the 95% Kolmogorov-Smirnov band."""
    plt = _pyplot()
    u = np.sort(1 - np.exp(-np.asarray(intervals)))
    n = len(u)
    model = (np.arange(1, n + 1) - 0.5) / max(n, 1)
    band = 1.36 / np.sqrt(max(n, 1))
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 4))
    ax.plot(model, u, ".", markersize=2, label="rescaled events")
    ax.plot([0, 1], [0, 1], "k-", linewidth=0.8)
    ax.plot([0, 1], [band, 1 + band], "k--", linewidth=0.6, label="95% KS band")
    ax.plot([0, 1], [-band, 1 - band], "k--", linewidth=0.6)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("uniform quantiles")
    ax.set_ylabel("empirical quantiles")
    ax.legend(loc="upper left", fontsize="small")
    if title:
        ax.set_title(title)
    return ax


def training_curves(histories: dict[str, Sequence[float]], ax: Any = None, ylabel: str = "loss") -> Any:
    """One line per named history (e.g. ELBO loss per step for several estimators)."""
    plt = _pyplot()
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    for name, values in histories.items():
        ax.plot(np.arange(len(values)), np.asarray(values, dtype=float), label=name)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize="small")
    return ax


def gradient_variance_bars(
    values: dict[str, Any], ax: Any = None, log: bool = True, ylabel: str = "E[std] of the gradient",
    title: str | None = None,
) -> Any:
    """Bars of the gradient-variance diagnostic (the paper's Experiment 1): one bar per estimator.

    :param values: ``estimator -> E[std]``, where a value is a number, the dict returned by
        :func:`pyro_dpp.snn.gradient_variance` (its ``"e_std"`` is used) or a sequence of numbers
        from repeated runs (the bar shows their mean, the error bar their standard deviation).
    :param bool log: logarithmic y axis (estimators often differ by orders of magnitude).
    :returns: the matplotlib Axes.
    """
    plt = _pyplot()
    if not values:
        raise ValueError("values is empty: pass a dict estimator -> E[std]")
    names, means, errors = [], [], []
    for name, value in values.items():
        if isinstance(value, dict):
            if "e_std" not in value:
                raise ValueError(f"values[{name!r}] is a dict without 'e_std' (as gradient_variance returns)")
            value = value["e_std"]
        runs = np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value, dtype=float).reshape(-1)
        if runs.size == 0 or not np.isfinite(runs).all() or (runs < 0).any():
            raise ValueError(f"values[{name!r}] must be finite and nonnegative, got {runs.tolist()}")
        names.append(str(name))
        means.append(float(runs.mean()))
        errors.append(float(runs.std(ddof=1)) if runs.size > 1 else 0.0)
    if ax is None:
        _, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 3.5))
    positions = np.arange(len(names))
    colors = [f"C{i}" for i in range(len(names))]
    ax.bar(positions, means, color=colors)
    spread = [i for i, e in enumerate(errors) if e > 0]
    if spread:
        ax.errorbar(positions[spread], np.asarray(means)[spread], yerr=np.asarray(errors)[spread], fmt="none",
                    ecolor="black", capsize=4)
    ax.set_xticks(positions)
    ax.set_xticklabels(names, rotation=15 if max(len(n) for n in names) > 12 else 0)
    log = log and all(m > 0 for m in means)
    if log:
        ax.set_yscale("log")
    top = max(m + e for m, e in zip(means, errors))
    if top > 0:
        ax.set_ylim(top=top * (2.0 if log else 1.15))  # room for the value labels
    ax.set_ylabel(ylabel)
    for x, m, e in zip(positions, means, errors):
        ax.annotate(f"{m:.3g}", (x, m + e), ha="center", va="bottom", fontsize="small",
                    xytext=(0, 2), textcoords="offset points")
    if title:
        ax.set_title(title)
    return ax
