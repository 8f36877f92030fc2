"""The scan checks of :func:`pyro_dpp.testing.check_intensity`, and what every structural check shares.

:class:`Case` holds the intensity under test and its random soft histories; :func:`check_scan` runs
the scan (initial_state/update/rates) over them and checks log-rates, zero-weight steps and the
bounds. The parallel checks (:meth:`forward` against the scan, causality, padding, history reach)
are in :mod:`pyro_dpp._conformance_parallel`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from .events import pad_realization
from .intensity.base import Intensity, State


class ConformanceError(ValueError):
    """A broken rule of the intensity contract; ``rule`` names it, the message says what to change."""

    def __init__(self, rule: str, message: str) -> None:
        self.rule = rule
        super().__init__(f"rule '{rule}' broken: {message}")


def call(rule: str, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args)``, an exception from it re-raised as a :class:`ConformanceError` of ``rule``."""
    try:
        return fn(*args, **kwargs)
    except ConformanceError:
        raise
    except Exception as err:
        raise ConformanceError(rule, f"{what} raised {type(err).__name__}: {err}") from err


def close(got: torch.Tensor, want: torch.Tensor, rtol: float, scale: Any = None) -> bool:
    """``|got - want| <= rtol (|want| + scale)`` everywhere (``scale``: default the largest ``|want|``)."""
    want = want.to(got.dtype)
    if scale is None:
        scale = want.abs().max() if want.numel() else 0.0
    return bool(((got - want).abs() <= rtol * (want.abs() + scale)).all())


@dataclass
class Case:
    """What the checks share: the intensity, its sizes, the random histories and the scan results."""

    intensity: Intensity
    k: int
    c: int
    dtype: torch.dtype
    device: torch.device
    batch: torch.Size
    duration: float
    n: int
    num_events: int
    seed: int
    rtol: float
    gen: torch.Generator
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def d(self) -> int:
        return self.k + self.c

    @property
    def base_batch(self) -> torch.Size:
        """The data's batch shape: sequences, then ones against the parameters' batch dimensions."""
        return torch.Size((self.n,) + (1,) * len(self.batch))

    @property
    def data_batch(self) -> torch.Size:
        return torch.Size((self.n,) + tuple(self.batch))

    @classmethod
    def build(cls, intensity: Intensity, duration: float, n: int, num_events: int, seed: int,
              rtol: float | None) -> Case:
        k = getattr(intensity, "num_marks", None)
        c = getattr(intensity, "num_context_marks", 0)
        if not isinstance(k, int) or k < 1:
            raise ConformanceError("num_marks", f"num_marks must be a positive int, got {k!r}")
        if not isinstance(c, int) or c < 0:
            raise ConformanceError("num_context_marks", f"num_context_marks must be an int >= 0, got {c!r}")
        batch = call("interface", "batch_shape", lambda: torch.Size(intensity.batch_shape))
        like = call("interface", "like()", intensity.like)
        if not isinstance(like, torch.Tensor) or not like.is_floating_point():
            raise ConformanceError("interface", "like() must return a floating tensor (the dtype and device to use)")
        if not (isinstance(duration, (int, float)) and math.isfinite(duration) and duration > 0):
            raise ValueError(f"duration must be a positive number, got {duration!r}")
        if rtol is None:
            rtol = 1e-8 if like.dtype == torch.float64 else 1e-4
        gen = torch.Generator().manual_seed(seed)
        return cls(intensity, k, c, like.dtype, like.device, batch, float(duration), n, num_events, seed, rtol, gen)

    def tensor(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(dtype=self.dtype, device=self.device)


# ---- random data ---------------------------------------------------------------------------------
def random_weights(case: Case, shape: tuple[int, ...]) -> torch.Tensor:
    """``shape x (K + C)`` history weights: soft modelled events (a Concrete-like point of the simplex
    over the K marks and "no event") or, with probability 1/2 when C > 0, one-hot context events."""
    g = case.gen
    soft = torch.softmax(2 * torch.randn(shape + (case.k + 1,), generator=g, dtype=torch.float64), -1)[..., :-1]
    weights = torch.cat([soft, soft.new_zeros(shape + (case.c,))], -1)
    if case.c:
        ctx = F.one_hot(torch.randint(case.c, shape, generator=g), case.c).to(soft)
        ctx = torch.cat([soft.new_zeros(shape + (case.k,)), ctx], -1)
        weights = torch.where((torch.rand(shape, generator=g) < 0.5).unsqueeze(-1), ctx, weights)
    return case.tensor(weights)


def random_times(case: Case, shape: tuple[int, ...]) -> torch.Tensor:
    """Sorted uniform times in ``(0, 0.9 duration)``."""
    u = torch.rand(shape, generator=case.gen, dtype=torch.float64).sort(-1).values
    return case.tensor(0.9 * case.duration * u)


def realization(case: Case, marks: int, num_events: int, pad: int, batch: tuple[int, ...] | None = None
                ) -> torch.Tensor:
    """An exact realization tensor ``batch x (num_events + pad) x (marks + 2)``: random events with
    one-hot marks, then ``pad`` padding rows."""
    batch = tuple(case.base_batch if batch is None else batch)
    times = random_times(case, batch + (num_events + pad,))
    real = torch.arange(num_events + pad) < num_events
    onehot = F.one_hot(torch.randint(marks, batch + (num_events + pad,), generator=case.gen), marks)
    weights = case.tensor(onehot * real.unsqueeze(-1))
    duration = times.new_full(batch, case.duration)
    times = torch.where(case.tensor(real).bool(), times, duration.unsqueeze(-1))
    return pad_realization(times, weights, torch.zeros_like(times), duration)


def _history(case: Case) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The random history (base batch): times, weights and the queries (a midpoint before each
    event, the event itself, and the duration at the end)."""
    if "history" not in case.results:
        shape = tuple(case.base_batch) + (case.num_events,)
        times, weights = random_times(case, shape), random_weights(case, shape)
        mids = (torch.cat([torch.zeros_like(times[..., :1]), times[..., :-1]], -1) + times) / 2
        query = torch.stack([mids, times], -1).flatten(-2)
        query = torch.cat([query, torch.full_like(times[..., :1], case.duration)], -1)
        case.results["history"] = times, weights, query
    return case.results["history"]


def _full(case: Case, x: torch.Tensor, event_dims: int) -> torch.Tensor:
    return x.expand(case.data_batch + x.shape[x.dim() - event_dims :]).contiguous()


# ---- shape and value checks -------------------------------------------------------------------------------
def check_rates(case: Case, rates: Any, expected: torch.Size, where: str) -> torch.Tensor:
    if not isinstance(rates, torch.Tensor):
        raise ConformanceError("interface", f"{where} must return a tensor, got {type(rates).__name__}")
    if rates.dim() == 0 or rates.shape[-1] != case.k:
        raise ConformanceError("num_marks", f"{where} returned shape {tuple(rates.shape)}, whose last dimension is "
                               f"not num_marks = {case.k}: set num_marks to the number of modelled marks")
    if rates.shape != expected:
        raise ConformanceError("batch shape", f"{where} returned shape {tuple(rates.shape)}, expected "
                               f"{tuple(expected)} (the data's batch broadcast with batch_shape {tuple(case.batch)}, "
                               "then the marks): check batch_shape and broadcast parameters from the right")
    if not torch.isfinite(rates).all():
        raise ConformanceError("finite", f"{where} returned NaN or inf: look for overflow (exp of a large "
                               "potential), division by zero or log of zero")
    if (rates < 0).any():
        raise ConformanceError("negative rates", f"{where} returned negative intensities (min "
                               f"{float(rates.min()):.4g}): intensities must be >= 0 for every history (use "
                               "softplus, exp or sigmoid of a potential, or constrain the parameters)")
    return rates


def _check_state(case: Case, state: Any, where: str, before: State | None = None) -> State:
    if not isinstance(state, tuple) or not all(isinstance(s, torch.Tensor) for s in state):
        raise ConformanceError("state", f"{where} must return the state as a tuple of tensors, got "
                               f"{type(state).__name__}")
    if before is not None:
        old = [(tuple(s.shape), s.dtype) for s in before]
        new = [(tuple(s.shape), s.dtype) for s in state]
        if old != new:
            raise ConformanceError("state", f"the state changed shape or dtype in {where}: {old} became {new}; the "
                                   "scan needs a state of fixed shape and dtype (exponential traces, or a history "
                                   "window of fixed length sized in initial_state from num_steps)")
    return state


def _probe_width(case: Case, fn: Callable[[torch.Tensor], Any], weights: torch.Tensor, what: str,
                 err: Exception) -> ConformanceError:
    """The error to raise when ``fn`` failed on history weights of width K + C: if it accepts another
    width, the declared numbers of marks are wrong."""
    # wider first: a narrower history may broadcast against the intensity's own width and "work"
    for width in [*range(case.d + 1, case.d + 9), *range(case.d - 1, 0, -1)]:
        other = weights[..., :width] if width < case.d else F.pad(weights, (0, width - case.d))
        try:
            fn(other)
        except Exception:
            continue
        rule = "num_context_marks" if width >= case.k else "num_marks"
        return ConformanceError(rule, f"{what} fails on history weights of width num_marks + num_context_marks "
                                f"= {case.k} + {case.c} ({type(err).__name__}: {err}) but accepts width {width}: "
                                f"set num_marks and num_context_marks to the widths the intensity reads")
    return ConformanceError("interface", f"{what} raised {type(err).__name__}: {err}")


def _update(case: Case, state: State, time: torch.Tensor, weights: torch.Tensor) -> State:
    saved = [s.clone() for s in state]
    try:
        new = case.intensity.update(state, time, weights)
    except Exception as err:
        raise _probe_width(case, lambda w: case.intensity.update(state, time, w), weights, "update()", err) from err
    new = _check_state(case, new, "update()", state)
    for i, (s, old) in enumerate(zip(state, saved)):
        if not torch.equal(s, old):
            raise ConformanceError("in-place update", f"update() modified state[{i}] in place; return new tensors "
                                   "(the samplers keep earlier states, e.g. to recompute the backward pass)")
    return new


# ---- the scan -----------------------------------------------------------------------------------------------
def _run_scan(case: Case, zero_steps: bool) -> dict[str, Any]:
    """Rates (and log-rates) at the queries of the random history, by the scan; with ``zero_steps``
    an all-zero-weight step is folded in before each query (as rejected candidates are)."""
    intensity = case.intensity
    times, weights, query = (_full(case, x, e) for x, e in zip(_history(case), (1, 2, 1)))
    batch, steps = case.data_batch, case.num_events * (3 if zero_steps else 1) + 1
    state = _check_state(case, call("interface", "initial_state()", intensity.initial_state, batch, times, steps),
                         "initial_state()")
    zero = torch.zeros_like(weights[..., 0, :])
    expected = batch + (case.k,)
    out, logs, states = [], [], [(state, times.new_zeros(batch))]
    for q in range(query.shape[-1]):
        t = query[..., q]
        if zero_steps:
            state = _update(case, state, t, zero)
        out.append(check_rates(case, call("interface", "rates()", intensity.rates, state, t), expected, "rates()"))
        if q % 2 == 1:  # an event: its log-rate, then fold it in
            log = call("log_rates", "log_rates()", intensity.log_rates, state, t)
            logs.append(log)
            state = _update(case, state, t, weights[..., q // 2, :])
            states.append((state, t))
    return {"rates": torch.stack(out, -2), "log_rates": torch.stack(logs, -2), "states": states}


def check_scan(case: Case) -> dict[str, Any]:
    scan = _run_scan(case, zero_steps=False)
    case.results["scan"] = scan
    rates, logs = scan["rates"][..., 1:-1:2, :], scan["log_rates"]
    if logs.shape != rates.shape:
        raise ConformanceError("log_rates", f"log_rates() returned shape {tuple(logs.shape[:-2] + logs.shape[-1:])}"
                               f", rates() {tuple(rates.shape[:-2] + rates.shape[-1:])}")
    error = _log_error(case, logs, rates, "log_rates", "rates()")
    # zero-weight steps (rejected candidates, padding) must change nothing
    padded = _run_scan(case, zero_steps=True)["rates"]
    if not close(padded, scan["rates"], case.rtol):
        raise ConformanceError("padding", "a scan step with all-zero weights (a rejected thinning candidate or a "
                               "padding row) changed the rates: update() must fold an event in proportion to its "
                               "weights, so that zero weights change nothing")
    _check_max_rate(case, scan["rates"], "rates()")
    _check_local_bound(case, scan["states"])
    return {"log_rates_max_error": error}


def _log_error(case: Case, logs: torch.Tensor, rates: torch.Tensor, rule: str, name: str) -> float:
    """Largest ``|logs - log(rates)|`` where the rates are positive; raise if out of tolerance."""
    log_name = rule + "()"
    if torch.isnan(logs).any() or (logs == math.inf).any():
        raise ConformanceError(rule, f"{log_name} returned NaN or +inf")
    tiny = torch.finfo(rates.dtype).tiny
    positive = rates > tiny ** 0.5
    diff = torch.where(positive, logs - torch.log(torch.where(positive, rates, torch.ones_like(rates))), 0)
    bad = diff.abs() > case.rtol * (1 + torch.log(rates.clamp(min=tiny)).abs())
    # where rates underflow, a stable log form may be finite, but must be tiny too
    bad = bad | (~positive & (logs > 0.5 * math.log(tiny)))
    if bad.any():
        raise ConformanceError(rule, f"{log_name} differs from log({name}) by up to {float(diff.abs().max()):.3g}: "
                               "the samplers use the log form, the checks the plain one; make them agree")
    return float(diff.abs().max()) if diff.numel() else 0.0


def _check_max_rate(case: Case, rates: torch.Tensor, where: str) -> None:
    bound = call("max_rate", "max_rate()", case.intensity.max_rate)
    if bound is None:
        return
    bound = torch.as_tensor(bound).to(rates)
    total = rates.sum(-1)
    over = total > bound.unsqueeze(-1) * (1 + case.rtol)
    if over.any():
        raise ConformanceError("max_rate", f"max_rate() = {bound.max().item():.6g} but the summed {where} reached "
                               f"{float(total.max()):.6g}; max_rate must bound the summed intensity over every history "
                               "(or return None and pass bound= to PointProcess)")


def _check_local_bound(case: Case, states: list[tuple[State, torch.Tensor]]) -> None:
    intensity = case.intensity
    if type(intensity).local_bound is Intensity.local_bound:
        return
    for state, t in states:
        got = call("local_bound", "local_bound()", intensity.local_bound, state, t)
        if got is None:
            continue
        bound, horizon = (torch.as_tensor(x).to(t).expand(t.shape) for x in got)
        reach = torch.minimum(horizon, case.duration - t).clamp(min=0)
        for frac in (1e-3, 0.05, 0.25, 0.5, 1.0):
            at = t + frac * reach
            total = call("interface", "rates()", intensity.rates, state, at).sum(-1)
            if (total > bound * (1 + case.rtol)).any():
                raise ConformanceError("local_bound", f"local_bound() promised {float(bound.min()):.6g} until "
                                       f"t + horizon, but the summed rates reached {float(total.max()):.6g} before "
                                       "(with no event in between): Ogata sampling needs a true upper bound")
