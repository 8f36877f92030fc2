"""The conformance suite: check an :class:`~pyro_dpp.intensity.Intensity` you wrote against the contract.

:func:`check_intensity` runs, on any intensity, the generic checks the package's own test tables run
on the stock intensities (:mod:`pyro_dpp.intensity.base` states the contract):

- the scan (``initial_state`` / ``rates`` / ``log_rates`` / ``update``) on random soft histories:
  shapes against ``num_marks``, a tuple state of fixed shape that ``update`` does not modify in
  place, finite and nonnegative rates, ``log_rates == log(rates)``, ``max_rate`` and
  ``local_bound`` where offered, and invariance to zero-weight steps (rejected candidates, padding);
- the parallel evaluation (``forward`` / ``log_forward``): shapes, broadcasting of the parameters'
  ``batch_shape`` against the data's batch, causality (perturbing events at or after a query must
  not change the intensity there), agreement with the scan, padding rows and row order;
- ``log_prob`` of :class:`~pyro_dpp.PointProcess`: shape, finiteness, padding, and the compensator
  (a closed form, or the default quadrature) against a fine quadrature of ``forward``;
- history before the window: ``log_prob`` with ``past=`` (events at negative times, as windows of a
  long recording carry them; :mod:`pyro_dpp.windows`) against the same direct computation; and
  where the intensity declares a finite :meth:`~pyro_dpp.intensity.Intensity.history_reach`,
  events older than it must not change ``forward``;
- gradients: :func:`torch.autograd.gradcheck` in float64 of the exact ``log_prob`` with respect to
  every parameter of the intensity;
- sampler statistics: exact draws, rescaled by each mark's compensator, give iid Exp(1) intervals
  (time-rescaling theorem; a Kolmogorov-Smirnov test);
- the relaxed sampler: ``rsample``, its DPP ``log_prob`` and their backward pass are finite.

Each broken rule raises :class:`ConformanceError` (a :class:`ValueError`) whose message starts with
``rule '<name>' broken:`` and says what to change. The rules: ``interface``, ``num_marks``,
``num_context_marks``, ``state``, ``in-place update``, ``finite``, ``negative rates``,
``log_rates``, ``max_rate``, ``local_bound``, ``batch shape``, ``causality``, ``scan/parallel``,
``log_forward``, ``padding``, ``row order``, ``log_prob``, ``compensator``, ``past``,
``history reach``, ``gradients``, ``statistics``, ``relaxed``.

**Parameters and float64.** Gradients are checked on a float64 copy. By default the copy is the
intensity itself with every floating tensor it holds (``nn.Parameter``\\ s, buffers and plain tensor
attributes, also of its submodules) cast to float64; the checked parameters are the
``nn.Parameter``\\ s and the plain tensor attributes (buffers are constants by PyTorch's convention).
Pass ``make=lambda dtype: MyIntensity(..., dtype=dtype)`` where casting is not enough (constants
computed at construction that you want exact in float64, tensors kept inside lists), and
``params=[...]`` to choose the checked tensors by name (``"bias"``, ``"net.0.weight"``).

Example::

    import torch
    from pyro_dpp.intensity import ExpHawkes
    from pyro_dpp.testing import check_intensity

    hawkes = ExpHawkes(torch.tensor([0.5, 0.3]), torch.tensor([[0.3, 0.1], [0.2, 0.2]]), torch.tensor(1.5))
    report = check_intensity(hawkes, duration=10.0, bound=8.0)   # raises ConformanceError if broken
    print(report["statistics"]["ks_pvalue"], report["scan_parallel_max_error"])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.autograd.gradcheck import GradcheckError

from ._conformance import (
    Case,
    ConformanceError,
    call,
    check_scan,
    close,
    realization,
)
from ._conformance_parallel import check_parallel, check_reach
from ._rescaling import cumulative, ks_pvalue, rescaled_gaps
from ._tensor_slots import bind, with_leaves
from .distribution import PointProcess
from .events import LOG_WEIGHTS_ATTR, event_mask
from .intensity.base import Intensity
from .likelihood import DEFAULT_QUADRATURE_NODES, compensator, history

__all__ = ["ConformanceError", "check_intensity", "ks_pvalue", "rescaled_gaps"]


def check_intensity(
    intensity: Intensity,
    duration: float = 10.0,
    *,
    bound: float | None = None,
    context: torch.Tensor | None = None,
    seed: int = 0,
    num_samples: int = 200,
    num_sequences: int = 3,
    num_events: int = 8,
    make: Callable[[torch.dtype], Intensity] | None = None,
    params: Sequence[str] | None = None,
    max_events: int | None = None,
    temperature: float = 0.5,
    p_min: float = 1e-3,
    rtol: float | None = None,
    quadrature_rtol: float = 1e-3,
    structure: bool = True,
    gradients: bool = True,
    statistics: bool = True,
    relaxed: bool = True,
) -> dict[str, Any]:
    """Run the conformance checks on ``intensity``; raise :class:`ConformanceError` at the first
    broken rule, else return a report (a dict of the measured figures and of what was skipped).

    :param Intensity intensity: the intensity to check (left unchanged).
    :param float duration: window length ``T`` of the histories and samples (a few mean
        inter-event intervals or more).
    :param float bound: a constant bound on the summed intensity for thinning (default: the
        intensity's ``max_rate()``; else exact sampling uses its ``local_bound``). Without any of them
        the statistics and relaxed checks are skipped.
    :param context: a realization tensor ``batch x M x (C + 2)`` of context events for the
        samplers (default: random Poisson context events when ``num_context_marks > 0``).
    :param int seed: seeds every random draw (the user's global RNG state is restored afterwards).
    :param int num_samples: exact sequences drawn for the time-rescaling test.
    :param int num_sequences: random histories per parameter batch for the structural checks.
    :param int num_events: events per random history.
    :param make: ``make(dtype) -> Intensity``, a factory of equal intensities in ``dtype``, used
        for the float64 gradient check instead of casting a copy.
    :param params: names of the tensors to check gradients for (default: every ``nn.Parameter``
        and plain tensor attribute of the intensity and its submodules).
    :param int max_events: rows of the exact draws (default: sized by ``PointProcess``).
    :param float temperature: temperature of the relaxed draws.
    :param float p_min: the KS test fails below this p-value.
    :param float rtol: tolerance of the agreement checks (default: 1e-8 in float64, 1e-4 in float32).
    :param float quadrature_rtol: tolerance of the default quadrature of the compensator (when the
        intensity has no closed form) against a fine one, relative to the compensator. The default
        (1e-3) catches undeclared jumps; kinks cost less accuracy (about 1e-4 relative for a GLM with a
        hardtanh activation, whose kinks depend on the history).
    :param bool structure: run the scan / parallel / ``log_prob`` checks.
    :param bool gradients: run the float64 gradient check.
    :param bool statistics: run the time-rescaling test of exact draws (the slowest part).
    :param bool relaxed: run the relaxed-sampler check.
    """
    if not isinstance(intensity, Intensity):
        raise ConformanceError("interface", f"expected a pyro_dpp.intensity.Intensity, got {type(intensity).__name__}")
    case = Case.build(intensity, duration, num_sequences, num_events, seed, rtol)
    report: dict[str, Any] = {
        "intensity": type(intensity).__name__, "num_marks": case.k, "num_context_marks": case.c,
        "batch_shape": tuple(case.batch), "dtype": str(case.dtype), "passed": [], "skipped": {},
    }
    with torch.random.fork_rng(devices=_devices(case)):
        torch.manual_seed(seed)
        if structure:
            with torch.no_grad():
                report.update(check_scan(case))
                report.update(check_parallel(case))
                report.update(check_reach(case))
                report.update(_check_log_prob(case, quadrature_rtol))
                report.update(_check_past(case, quadrature_rtol))
            report["passed"] += ["interface", "num_marks", "num_context_marks", "state", "in-place update",
                                 "finite", "negative rates", "log_rates", "max_rate", "local_bound", "batch shape",
                                 "causality", "scan/parallel", "log_forward", "padding", "row order", "log_prob",
                                 "compensator", "past", "history reach"]
        else:
            report["skipped"]["structure"] = "structure=False"
        if gradients:
            report["gradients"] = _check_gradients(case, make, params)
            report["passed"].append("gradients")
        else:
            report["skipped"]["gradients"] = "gradients=False"
        sampler_bound = bound if bound is not None else intensity.max_rate()
        can_sample = sampler_bound is not None or type(intensity).local_bound is not Intensity.local_bound
        if statistics and can_sample:
            report["statistics"] = _check_statistics(case, bound, context, num_samples, max_events, p_min)
            report["passed"].append("statistics")
        else:
            report["skipped"]["statistics"] = "statistics=False" if not statistics else _NO_BOUND
        if relaxed and sampler_bound is not None:
            report["relaxed"] = _check_relaxed(case, sampler_bound, context, temperature, params)
            report["passed"].append("relaxed")
        else:
            report["skipped"]["relaxed"] = "relaxed=False" if not relaxed else _NO_BOUND
    return report


_NO_BOUND = "no bound: pass bound= (the intensity has no max_rate() and no local_bound())"


def _devices(case: Case) -> list[int]:
    return [case.device.index or 0] if case.device.type == "cuda" else []


# ---- log_prob ------------------------------------------------------------------------------------
def _check_log_prob(case: Case, quadrature_rtol: float) -> dict[str, Any]:
    intensity, k = case.intensity, case.k
    value, context = realization(case, case.k, case.num_events, pad=2), None
    if case.c:
        context = realization(case, case.c, case.num_events, pad=1)
    rows = value.shape[-2]

    def score(v: torch.Tensor) -> torch.Tensor:
        process = PointProcess(intensity, case.duration, context=context, max_events=max(rows, v.shape[-2]))
        return call("log_prob", "PointProcess(...).log_prob", process.log_prob, v)

    # the compensator: closed form (or the default quadrature) against a fine quadrature of forward()
    times, weights = history(value, k, context, case.c)
    duration = torch.tensor(case.duration, dtype=case.dtype, device=case.device)  # as PointProcess passes it
    got = call("compensator", "compensator", compensator, intensity, times, weights, duration)
    fine = _fine_compensator(case, times, weights)
    closed = intensity.compensator(times, weights, duration) is not None
    tol = max(case.rtol, 1e-6 if case.dtype == torch.float64 else 1e-4)
    comp_error = float((got - fine).abs().max())
    if not close(got, fine, tol if closed else max(tol, quadrature_rtol), scale=fine.abs().max().clamp(min=1)):
        if closed:
            raise ConformanceError("compensator", f"compensator() differs from the integral of forward() by "
                                   f"{comp_error:.3g}; fix the closed form (or return None to use quadrature)")
        raise ConformanceError("compensator", f"the default quadrature ({DEFAULT_QUADRATURE_NODES} nodes per "
                               f"interval) is off by {comp_error:.3g}: declare the times where the intensity is not "
                               "smooth (kinks, jumps) in breakpoints()")
    # log_prob against sum_e log forward_{k_e}(t_e) - compensator
    lp = score(value)
    if lp.shape != case.data_batch:
        raise ConformanceError("batch shape", f"log_prob has shape {tuple(lp.shape)} for data of batch shape "
                               f"{tuple(case.base_batch)} and batch_shape {tuple(case.batch)}; expected "
                               f"{tuple(case.data_batch)}: check batch_shape and the broadcasting of forward()")
    with torch.no_grad():
        rates = intensity(times, weights, value[..., 0])  # batch x rows x K
        marks = value[..., 1 : 1 + k]
        chosen = (rates * marks).sum(-1)
        real = marks.sum(-1) > 0.5
        events = torch.where(real, torch.log(torch.where(real, chosen, torch.ones_like(chosen))), 0).sum(-1)
        want = (events - got).expand(lp.shape)  # the compensator was checked above
    impossible = want == -math.inf  # an event where its mark's rate is zero (hardtanh, say)
    if torch.isnan(lp).any() or (lp == math.inf).any() or (lp[~impossible] == -math.inf).any():
        raise ConformanceError("log_prob", f"log_prob is not finite ({lp.flatten().tolist()[:3]}...) where the "
                               "rates at the events are positive: check log_forward() and compensator()")
    if (lp[impossible] > -math.inf).any() or not close(lp[~impossible], want[~impossible], tol,
                                                      scale=fine.abs().max().clamp(min=1)):
        raise ConformanceError("log_prob", "log_prob differs from sum_e log forward()_{k_e}(t_e) - integral of "
                               f"forward() by {float((lp - want)[~impossible].abs().max()):.3g}: check log_forward()")
    padded = torch.cat([value, value[..., -1:, :].expand(value.shape[:-2] + (3, value.shape[-1]))], -2)
    lp_padded = score(padded)
    finite = lp[~impossible]
    scale = finite.abs().max() if finite.numel() else 0.0
    if not torch.equal(lp_padded == -math.inf, lp == -math.inf) or not close(
            lp_padded[~impossible], finite, case.rtol, scale=scale):
        raise ConformanceError("padding", "log_prob changed when padding rows (all-zero weights, time = duration) "
                               "were added to the value: every history sum must weight rows by their weights")
    return {"log_prob_mean": float(finite.mean()) if finite.numel() else -math.inf, "compensator_error": comp_error}


def _check_past(case: Case, quadrature_rtol: float) -> dict[str, Any]:
    """``log_prob`` given events before the window (``past``, and context events at negative times)
    against ``sum_e log forward()_{k_e}(t_e) - integral over [0, T] of forward()`` with that history."""
    intensity, k = case.intensity, case.k
    value = realization(case, k, case.num_events, pad=1)

    def before(x: torch.Tensor) -> torch.Tensor:  # the same kind of events, moved to [-1.25 T, -0.25 T]
        real = event_mask(x)
        times = torch.where(real, x[..., 0] - 1.25 * case.duration, torch.zeros_like(x[..., 0]))
        return torch.cat([times.unsqueeze(-1), x[..., 1:]], -1)

    past = before(realization(case, k, case.num_events, pad=1))
    context = None
    if case.c:
        ctx = realization(case, case.c, case.num_events, pad=1)
        early = before(realization(case, case.c, case.num_events, pad=0))
        context = torch.cat([early, ctx], -2)  # before the window, then inside it
    process = PointProcess(intensity, case.duration, context=context, past=past)
    lp = call("past", "PointProcess(..., past=...).log_prob", process.log_prob, value)
    times, weights = history(value, k, context, case.c, past)
    duration = torch.tensor(case.duration, dtype=case.dtype, device=case.device)
    fine = _fine_compensator(case, times, weights)
    with torch.no_grad():
        rates = intensity(times, weights, value[..., 0])
        marks = value[..., 1 : 1 + k]
        chosen = (rates * marks).sum(-1)
        real = marks.sum(-1) > 0.5
        events = torch.where(real, torch.log(torch.where(real, chosen, torch.ones_like(chosen))), 0).sum(-1)
        want = (events - fine).expand(lp.shape)
    closed = intensity.compensator(times, weights, duration) is not None
    tol = max(case.rtol, 1e-6 if case.dtype == torch.float64 else 1e-4)
    ok = torch.isfinite(want)
    error = float((lp - want)[ok].abs().max()) if ok.any() else 0.0
    if torch.isnan(lp).any() or not close(lp[ok], want[ok], tol if closed else max(tol, quadrature_rtol),
                                          scale=fine.abs().max().clamp(min=1)):
        raise ConformanceError(
            "past", f"log_prob with past= (history events before the window, times < 0) differs from "
                    f"sum_e log forward()_{{k_e}}(t_e) - integral of forward() over [0, T] by {error:.3g}: the scan "
                    "(initial_state / update) and compensator() must accept history events at negative times "
                    "(e.g. an initial state at time 0 must not be decayed to an earlier time)")
    return {"past_error": error}


def _fine_compensator(case: Case, times: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    end = torch.full(times.shape[:-1] + (1,), case.duration, dtype=times.dtype, device=times.device)
    with torch.no_grad():
        return cumulative(case.intensity, times, weights, end, case.duration, nodes=32)[..., 0, :].sum(-1)


# ---- gradients ------------------------------------------------------------------------------------
def _check_gradients(case: Case, make: Callable[[torch.dtype], Intensity] | None,
                     params: Sequence[str] | None) -> dict[str, Any]:
    wide = torch.float64
    model, slots, leaves = with_leaves(case.intensity, wide, params, make)
    if not leaves:
        return {"skipped": "the intensity holds no parameters (nn.Parameter or plain tensor attributes)"}
    size = max(2, case.num_events // 2)
    for _ in range(20):  # data with a finite log_prob (an event may fall where its mark's rate is zero)
        value = realization(case, case.k, size, pad=1)[:1].to(wide)
        context = realization(case, case.c, size, pad=1)[:1].to(wide) if case.c else None
        with torch.no_grad():
            process = PointProcess(model, case.duration, context=context, max_events=value.shape[-2])
            out = call("gradients", "log_prob in float64", process.log_prob, value)
        if torch.isfinite(out).all():
            break
    else:
        raise ConformanceError("gradients", f"the float64 log_prob is not finite ({out.flatten().tolist()[:3]}) on "
                               "20 random histories: check log_forward() and compensator() in float64")
    done = {}
    for i, name in enumerate(slots):

        def log_prob(x: torch.Tensor, i: int = i) -> torch.Tensor:
            bind(slots, leaves[:i] + [x] + leaves[i + 1 :])
            process = PointProcess(model, case.duration, context=context, max_events=value.shape[-2])
            return process.log_prob(value).sum()

        try:
            torch.autograd.gradcheck(log_prob, (leaves[i],), fast_mode=leaves[i].numel() > 64)
        except GradcheckError as err:
            text = str(err).strip().splitlines()
            raise ConformanceError(
                "gradients", f"the gradient of log_prob with respect to {name!r} disagrees with finite differences "
                f"(float64): {' '.join(text[:1])} ...; check the backward of custom autograd functions and "
                "operations that are not differentiable (in-place writes, .detach(), integer casts)") from err
        except ConformanceError:
            raise
        except Exception as err:
            raise ConformanceError("gradients", f"the float64 gradient check of {name!r} raised "
                                   f"{type(err).__name__}: {err}") from err
        finally:
            bind(slots, leaves)
        done[name] = "ok"
    return done


# ---- sampler statistics ------------------------------------------------------------------------------
def _sampling_context(case: Case, context: torch.Tensor | None, num: int) -> torch.Tensor | None:
    if context is not None or not case.c:
        return None if context is None else context.to(case.dtype).to(case.device)
    return realization(case, case.c, case.num_events, pad=1, batch=(num,) + (1,) * len(case.batch))


def _check_statistics(case: Case, bound: float | None, context: torch.Tensor | None, num_samples: int,
                      max_events: int | None, p_min: float) -> dict[str, Any]:
    ctx = _sampling_context(case, context, num_samples)
    generated = context is None and case.c > 0  # then ctx holds one sequence per sample
    try:
        process = PointProcess(case.intensity, case.duration, bound=bound, context=ctx, max_events=max_events)
        value = process.sample(() if generated else (num_samples,))
    except Exception as err:
        raise ConformanceError("statistics", f"exact sampling failed: {type(err).__name__}: {err}") from err
    context = None if ctx is None else ctx.expand(value.shape[:-2] + ctx.shape[-2:])
    intervals = rescaled_gaps(case.intensity, value, case.duration, context, seed=case.seed)
    pvalue = ks_pvalue(intervals)
    events = int(event_mask(value).sum())
    if len(intervals) < 20:
        return {"ks_pvalue": pvalue, "num_intervals": len(intervals), "num_events": events,
                "note": "fewer than 20 intervals: raise duration or num_samples for a meaningful test"}
    if pvalue < p_min:
        raise ConformanceError(
            "statistics", f"time-rescaled intervals of {events} exact events are not Exp(1) (KS p-value "
            f"{pvalue:.3g} < {p_min:g}, {len(intervals)} intervals): the samples do not follow forward(). With "
            "the structural checks passing, suspect the sampler's use of the intensity (zero-weight updates, "
            "state carried between steps, local_bound) or an unlucky seed")
    return {"ks_pvalue": pvalue, "num_intervals": len(intervals), "num_events": events}


# ---- relaxed sampler -------------------------------------------------------------------------------------
def _check_relaxed(case: Case, bound: Any, context: torch.Tensor | None, temperature: float,
                   params: Sequence[str] | None) -> dict[str, Any]:
    model, slots, leaves = with_leaves(case.intensity, case.dtype, params)
    num = 4
    ctx = _sampling_context(case, context, num)
    bound_t = torch.as_tensor(bound, dtype=case.dtype, device=case.device).detach()
    try:
        process = PointProcess(model, case.duration, bound=bound_t, temperature=temperature, context=ctx)
        value = process.rsample(() if context is None and case.c else (num,))
    except Exception as err:
        raise ConformanceError("relaxed", f"rsample failed: {type(err).__name__}: {err}") from err
    log_w = getattr(value, LOG_WEIGHTS_ATTR)
    if not torch.isfinite(value).all() or torch.isnan(log_w).any():
        raise ConformanceError("relaxed", "rsample returned NaN or inf weights: check log_rates() on soft histories")
    lp = call("relaxed", "the DPP log_prob of an rsample draw", process.log_prob, value)
    if not torch.isfinite(lp).all():
        raise ConformanceError("relaxed", "the DPP log_prob of an rsample draw is not finite")
    real = event_mask(value).unsqueeze(-1)
    g = torch.Generator().manual_seed(case.seed)
    proj = torch.randn(value[..., 1:].shape, generator=g, dtype=torch.float64).to(value)
    loss = lp.sum() + torch.where(real, value[..., 1:] * proj, torch.zeros_like(proj)).sum()
    grads = {}
    if leaves:
        got = call("relaxed", "backward of rsample + log_prob", torch.autograd.grad, loss, leaves,
                   allow_unused=True)
        for name, grad in zip(slots, got):
            if grad is not None and not torch.isfinite(grad).all():
                raise ConformanceError("relaxed", f"the gradient of rsample + log_prob with respect to {name!r} "
                                       "is not finite: look for sqrt/log/division at zero, or torch.where with "
                                       "an infinite branch, on soft histories")
            grads[name] = "finite" if grad is not None else "unused"
    return {"candidates": int(event_mask(value).sum()), "log_prob_mean": float(lp.detach().mean()),
            "gradients": grads}

