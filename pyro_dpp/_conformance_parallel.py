"""The parallel checks of :func:`pyro_dpp.testing.check_intensity`: :meth:`forward` on random soft
histories against the scan, and its causality, padding, row-order and history-reach rules.

The shared pieces (the :class:`~pyro_dpp._conformance.Case`, the random histories, the rate checks)
live in :mod:`pyro_dpp._conformance`, which also runs the scan whose results these checks compare to.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ._conformance import (
    Case,
    ConformanceError,
    _check_max_rate,
    _full,
    _history,
    _log_error,
    _probe_width,
    check_rates,
    close,
    random_times,
    random_weights,
)


def _forward(case: Case, times: torch.Tensor, weights: torch.Tensor, query: torch.Tensor, rule: str = "interface",
             log: bool = False) -> torch.Tensor:
    fn = case.intensity.log_forward if log else case.intensity
    name = "log_forward()" if log else "forward()"
    try:
        return fn(times, weights, query)
    except Exception as err:
        if rule == "interface":
            raise _probe_width(case, lambda w: fn(times, w, query), weights, name, err) from err
        raise ConformanceError(rule, f"{name} raised {type(err).__name__}: {err}") from err


def check_parallel(case: Case) -> dict[str, Any]:
    times, weights, query = _history(case)
    tf, wf, qf = _full(case, times, 1), _full(case, weights, 2), _full(case, query, 1)
    q_len = query.shape[-1]
    expected = case.data_batch + (q_len, case.k)
    par = check_rates(case, _forward(case, tf, wf, qf), expected, "forward()")
    # broadcasting: data of batch (n, 1, ...) against parameters of batch_shape, and unbatched data
    broad = check_rates(case, _forward(case, times, weights, query, "batch shape"), expected,
                        "forward() on data of batch shape " + str(tuple(case.base_batch)))
    single = _forward(case, times.reshape(-1, times.shape[-1])[0], weights.reshape((-1,) + weights.shape[-2:])[0],
                      query.reshape(-1, q_len)[0], "batch shape")
    single = check_rates(case, single, case.batch + (q_len, case.k), "forward() on one unbatched sequence")
    if not (close(broad, par, case.rtol) and close(single, par[0], case.rtol)):
        raise ConformanceError("batch shape", "forward() gives other values when the data's batch dimensions "
                               "broadcast against batch_shape (or the data is unbatched) than on expanded data: "
                               "index the data's batch dimensions from the right, never by position")
    _check_causality(case, tf, wf, qf, par)
    _check_padding_and_order(case, tf, wf, qf, par)
    scan = case.results["scan"]["rates"]
    error = float((scan - par).abs().max())
    if not close(scan, par, case.rtol):
        raise ConformanceError("scan/parallel", f"the scan (initial_state/update/rates) and forward() disagree by up "
                               f"to {error:.3g} on the same history (tolerance rtol={case.rtol:g}): both must compute "
                               "the intensity given the events strictly before each query")
    logs = _forward(case, tf, wf, qf, "log_forward", log=True)
    if logs.shape != par.shape:
        raise ConformanceError("log_forward", f"log_forward() returned shape {tuple(logs.shape)}, forward() "
                               f"{tuple(par.shape)}")
    log_error = _log_error(case, logs, par, "log_forward", "forward()")
    _check_max_rate(case, par, "forward()")
    return {"scan_parallel_max_error": error, "log_forward_max_error": log_error}


def _check_causality(case: Case, tf: torch.Tensor, wf: torch.Tensor, qf: torch.Tensor, par: torch.Tensor) -> None:
    """For each query, redraw the weights of the events at or after it and move the later events
    (keeping them after it and in order): the intensity at the query must not change."""
    q = qf[..., :-1].movedim(-1, 0).unsqueeze(-1)  # Q x batch x 1
    shape = tuple(q.shape[:-1]) + (tf.shape[-1],)
    t = tf.unsqueeze(0)
    shrink = case.tensor(0.3 + 0.7 * torch.rand(q.shape, generator=case.gen, dtype=torch.float64))
    moved = torch.where(t > q, q + (t - q) * shrink, t)
    redrawn = torch.where((t >= q).unsqueeze(-1), random_weights(case, shape), wf.unsqueeze(0))
    got = _forward(case, moved, redrawn, q, "batch shape")
    want = par[..., :-1, :].movedim(-2, 0).unsqueeze(-2)
    if got.shape != want.shape:
        raise ConformanceError("batch shape", f"forward() on a history with one more leading batch dimension "
                               f"returned shape {tuple(got.shape)}, expected {tuple(want.shape)}")
    scale = par.abs().max()
    if not close(got, want, case.rtol, scale=scale):
        # even queries are midpoints (no event there): a change there comes from later events
        which = "after" if not close(got[0::2], want[0::2], case.rtol, scale=scale) else "at"
        raise ConformanceError("causality", f"forward() at a query changed when events at or after the query "
                               f"changed (by up to {float((got - want).abs().max()):.3g}; it sees events {which} "
                               "the query): count only events strictly before each query, e.g. mask lags with "
                               "(query - times) > 0, not >= 0")


def _check_padding_and_order(case: Case, tf: torch.Tensor, wf: torch.Tensor, qf: torch.Tensor,
                             par: torch.Tensor) -> None:
    batch, e, d = case.data_batch, tf.shape[-1], case.d
    # padding rows at the end (time = duration), as in realization tensors
    t_pad = torch.cat([tf, tf.new_full(batch + (3,), case.duration)], -1)
    w_pad = torch.cat([wf, wf.new_zeros(batch + (3, d))], -2)
    got = _forward(case, t_pad, w_pad, qf, "padding")
    # zero-weight rows at random times, sorted in (rejected candidates of a relaxed draw)
    extra = random_times(case, tuple(batch) + (4,))
    t_mix = torch.cat([tf, extra], -1)
    order = t_mix.argsort(-1)
    t_mix = t_mix.gather(-1, order)
    w_mix = torch.cat([wf, wf.new_zeros(batch + (4, d))], -2).gather(-2, order.unsqueeze(-1).expand(batch + (e + 4, d)))
    got_mix = _forward(case, t_mix, w_mix, qf, "padding")
    if not (close(got, par, case.rtol) and close(got_mix, par, case.rtol)):
        raise ConformanceError("padding", "forward() changed when rows with all-zero weights (padding, rejected "
                               "candidates) were added to the history: weight every history term by the row's "
                               "weights, and do not use the number of rows")
    perm = torch.randperm(e, generator=case.gen).to(tf.device)
    got_perm = _forward(case, tf[..., perm], wf[..., perm, :], qf, "row order")
    if not close(got_perm, par, case.rtol):
        raise ConformanceError("row order", "forward() changed when the history rows were permuted: histories need "
                               "not be sorted (log_prob appends the context events after the value's events); "
                               "sort them yourself if the evaluation needs it")


def check_reach(case: Case) -> dict[str, Any]:
    """Events older than the declared :meth:`~pyro_dpp.intensity.Intensity.history_reach` before every
    query (as windows of a long recording drop them) must not change :meth:`forward` there."""
    try:
        reach = case.intensity.history_reach(case.dtype)
    except ConformanceError:
        raise
    except ValueError:  # refused (an intensity of absolute time): windows do not apply
        return {"history_reach": None}
    except Exception as err:
        raise ConformanceError("history reach", f"history_reach(dtype) raised {type(err).__name__}: {err}") from err
    if reach is None:
        return {"history_reach": None}
    try:
        value = float(reach)
    except (TypeError, ValueError, RuntimeError):
        value = math.nan
    if not value >= 0:
        raise ConformanceError("history reach", f"history_reach(dtype) returned {reach!r}: return seconds >= 0 "
                               "(inf: all earlier events), or None where the reach is not known")
    if math.isinf(value):
        return {"history_reach": value}
    times, weights, query = _history(case)
    tf, wf, qf = _full(case, times, 1), _full(case, weights, 2), _full(case, query, 1)
    shape = tuple(case.data_batch) + (case.num_events,)
    # queries are >= 0: these events lie further back than the reach from every one of them
    u = torch.rand(shape, generator=case.gen, dtype=torch.float64).sort(-1).values
    old = case.tensor(-value - (1.05 - 0.95 * u) * case.duration)
    want = _forward(case, tf, wf, qf, "history reach")
    got = _forward(case, torch.cat([old, tf], -1), torch.cat([random_weights(case, shape), wf], -2), qf,
                   "history reach")
    error = float((got - want).abs().max())
    if got.shape != want.shape or not close(got, want, case.rtol):
        raise ConformanceError("history reach", f"forward() changed by up to {error:.3g} when events older than "
                               f"history_reach() = {value:g} s before the queries were added: return a longer "
                               "reach (the lag beyond which no event changes the intensity), or None where it is "
                               "not known")
    return {"history_reach": value, "history_reach_max_error": error}
