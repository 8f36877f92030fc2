"""The generic checkpointed thinning scan: a fast path for every intensity (DESIGN §5).

An intensity that offers no filter to the engine still has the documented scan interface
(:meth:`~pyro_dpp.intensity.base.Intensity.initial_state`, ``log_rates`` / ``rates``, ``update``).
The reference scan (:func:`pyro_dpp.thinning._scan` under backend ``"reference"``) calls it under
autograd, so every step leaves a graph (the intensity's own operations, the thinning step, a state
copy) alive until the backward pass: memory O(S) graphs for S steps, and the graph bookkeeping per
step.

:func:`generic_scan` runs the same steps with the same random numbers under ``torch.no_grad()``,
keeping the state only every ``k`` steps (default ``ceil(sqrt(S))``). Its backward pass
(:class:`_GenericScan`) recomputes one segment at a time from its checkpoint, last segment first,
under autograd, and pulls the cotangents of that segment's marks and log-weights, plus the state
cotangent handed back by the segment after it, through the user's own ``log_rates`` / ``update``
with one :func:`torch.autograd.grad` call per segment. Memory: O(S / k) checkpointed states plus
one segment's graph (O(k) steps), instead of S step graphs. A scan whose whole graph is small
(estimated under :data:`GRAPH_BUDGET_BYTES`: short time lines, small states) keeps it instead, as
the reference loop does: the recomputation would double the forward work to save memory that is
not short (see ``benchmarks/bench_generic.py``).

Gradients reach every tensor the intensity's computation depends on that requires grad: the
intensity's tensors are found by walking the module (its ``__dict__``, parameters, buffers,
submodules, and lists, tuples and dicts of tensors; non-leaf tensors such as
``softplus(pyro.param(...))`` included) and passed as inputs of the autograd function, as are the
initial state, the context weights, the time line and the bound. A tensor the intensity uses but
does not hold (a closure over a global, say) would lose its gradient silently; the backward pass
walks one segment's graph and raises :class:`ValueError` if it finds such a tensor, and when no
tensor the scan sees requires grad, the first step is probed under autograd (and raises the same
way) before the scan runs without a graph.

The thinning step itself (exact, relaxed, straight-through) is :mod:`pyro_dpp.scan.step`'s
:func:`~pyro_dpp.scan.step.log_probs` and :func:`~pyro_dpp.scan.step.step_marks`, the functions the
reference loop and the engine call, so that the paths cannot drift apart: for the same random
numbers the draw equals the reference loop's.
"""

from __future__ import annotations

import types
import warnings
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

import torch
from torch.autograd.function import once_differentiable
from torch.utils import _pytree as pytree

from ..intensity.base import Intensity, State
from ..past import full_width
from .backend import get_backend
from .segments import (
    SegmentPlan,
    _hidden_tensor,
    _leaves,
    add_segment_grads,
    default_checkpoint_every,
    intensity_tensors,
    segment_vjp,
)
from .step import log_probs, step_marks

#: A scan whose graph is estimated (:func:`graph_bytes`) under this many bytes keeps its graph instead of
#: checkpointing (the recomputation would cost a second forward pass for memory that is not short).
GRAPH_BUDGET_BYTES = 256 * 2**20


def graph_bytes(leaves: list[torch.Tensor], steps: int, outputs: int) -> int:
    """A generous estimate of the autograd graph of ``steps`` steps: per step, eight copies of the state
    (``leaves``) and of the step's ``outputs`` (bytes), plus 16 KiB of autograd bookkeeping."""
    state = sum(x.numel() * x.element_size() for x in leaves)
    return steps * (8 * (state + outputs) + 16 * 2**10)


@dataclass
class _Plan(SegmentPlan):
    """The scan's own inputs besides the differentiable ones."""

    cand: torch.Tensor  # batch x S x 1 (float)
    ctx: torch.Tensor  # batch x S x 1 (float)
    noise: torch.Tensor  # batch x S x (K+1): the Gumbel noise over the temperature (as the reference scales it)
    inv_t: float  # 1 / temperature (1 for exact draws)
    relaxed: bool
    straight_through: bool
    every: int
    stats: dict = field(default_factory=dict)


def _step(intensity: Intensity, state: State, t: torch.Tensor, cand: torch.Tensor, ctx_hist: torch.Tensor,
          noise: torch.Tensor, log_bound: torch.Tensor, inv_t: float, relaxed: bool,
          straight_through: bool) -> tuple[State, tuple[torch.Tensor, ...]]:
    """One thinning step: the state after it and the step's mark, log-weights, summed rates over the
    bound, history weights and log-rates."""
    k = intensity.num_marks
    log_rate = intensity.log_rates(state, t)  # batch x K
    log_pi, ratio = log_probs(log_rate, log_bound)  # batch x (K+1), batch
    y, log_y = step_marks(log_pi, noise, inv_t, relaxed, straight_through)
    weights = y[..., :k] * cand + ctx_hist[..., :k]
    if ctx_hist.shape[-1] > k:
        weights = torch.cat([weights, ctx_hist[..., k:]], -1)
    return intensity.update(state, t, weights), (y, log_y, ratio, weights, log_rate)


def _steps(intensity: Intensity, state: State, times: torch.Tensor, cands: torch.Tensor, ctx_hists: torch.Tensor,
           noises: torch.Tensor, log_bound: torch.Tensor, inv_t: float, relaxed: bool,
           straight_through: bool) -> tuple[State, list[torch.Tensor]]:
    """:func:`_step` over ``times`` (``batch x m``; the others ``batch x m x ...``), the unit that
    :func:`torch.compile` sees (backend ``"compiled"``): the outputs stacked along the step axis."""
    outs = []
    for i in range(times.shape[-1]):
        state, out = _step(intensity, state, times[..., i], cands[..., i, :], ctx_hists[..., i, :],
                           noises[..., i, :], log_bound, inv_t, relaxed, straight_through)
        outs.append(out)
    return state, [torch.stack(part, -1 if j == 2 else -2) for j, part in enumerate(zip(*outs))]


#: Steps per call of the compiled scan (backend ``"compiled"``): :func:`torch.compile` unrolls the chunk into
#: one graph, so the per-call overhead is shared by the chunk and the steps' operations fuse.
COMPILED_CHUNK = 16

#: The number of compiled graphs one configuration (see :func:`compiled_steps`) keeps before dynamo falls
#: back to eager steps (it raises its ``recompile_limit`` to this when the ``"compiled"`` backend is first
#: used): shapes and dtypes within a configuration recompile.
COMPILED_GRAPHS = 64

#: Inductor options of the compiled steps. The C++ kernels (CPU) are built with GCC's
#: ``-funsafe-math-optimizations`` (reassociation, reciprocals; NaN and inf keep their meaning, inductor
#: keeps ``-fno-finite-math-only`` and ``-fmath-errno``): it lets the compiler vectorize the transcendental
#: calls that inductor emits as scalar code inside reductions (a power-law kernel's ``pow`` over an event
#: window: exact sampling x1.4 faster in ``benchmarks/bench_generic.py``); results stay equal to the
#: reference's to float rounding (``tests/test_scan_generic.py``).
COMPILE_OPTIONS = {"cpp.enable_unsafe_math_opt_flag": True}

#: configuration -> its compiled steps; ``_FAILED`` once a compilation failed in this session
_compiled: dict[Hashable, Callable | None] = {}
_FAILED = "failed"


def compiling() -> bool:
    """Whether the generic scan runs compiled chunks of steps: backend ``"compiled"``, and no
    compilation failed in this session."""
    return get_backend() == "compiled" and _FAILED not in _compiled


def compiled_steps(key: Hashable = ()) -> Callable | None:
    """:func:`_steps` compiled by :func:`torch.compile` for the configuration ``key`` (made on first use)
    under backend ``"compiled"``, else None (also after a compilation failed in this session).

    One compiled copy per configuration (the intensity's class, exact or relaxed, straight-through,
    grad mode, device type and dtype): dynamo keeps the graphs it compiles per code object and checks a
    call's guards against them in turn, so with one shared copy every call of one configuration would
    pay for the guards of the others (measured: exact sampling 20% slower once relaxed draws had been
    compiled in the same process). Each copy gets a code object of its own, hence a cache of its own."""
    if not compiling():
        return None
    steps = _compiled.get(key)
    if steps is None:
        import torch._dynamo.config

        # recompiles within one configuration (shapes, dtypes): more than dynamo's default of 8 in a session
        # that samples and trains several models
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, COMPILED_GRAPHS)
        code = _steps.__code__.replace(co_name=f"_steps_{len(_compiled)}")
        steps = torch.compile(types.FunctionType(code, _steps.__globals__), options=COMPILE_OPTIONS)
        _compiled[key] = steps
    return steps


def _compiler_failed(error: Exception) -> None:
    """Turn the compiled steps off for this session after ``torch.compile`` failed, with a warning."""
    _compiled.clear()
    _compiled[_FAILED] = None
    warnings.warn(f"backend 'compiled': torch.compile failed ({type(error).__name__}: {str(error)[:300]}); the "
                  "generic scan runs its steps eagerly in this session", RuntimeWarning, stacklevel=3)


#: Steps per segment of a scan without autograd (a multiple of :data:`COMPILED_CHUNK`): long enough that
#: short scans run as one segment, short enough that a segment's per-step tensors stay a few megabytes.
UNCHECKPOINTED_SEGMENT = 4096


def _padded(x: torch.Tensor, extra: int, dims: int) -> torch.Tensor:
    """``x`` (``batch x m`` then ``dims`` more dimensions) with ``extra`` more steps: repeats of the last
    (times) or zeros (``dims > 0``: no candidate, no context event)."""
    if dims == 0:
        return torch.cat([x, x[..., -1:].expand(x.shape[:-1] + (extra,))], -1)
    return torch.cat([x, x.new_zeros(x.shape[:-2] + (extra, x.shape[-1]))], -2)


def _run(plan: _Plan, state: State, lo: int, hi: int, times: torch.Tensor, ctx_w: torch.Tensor,
         bound: torch.Tensor, last: bool = False
         ) -> tuple[State, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Steps ``lo .. hi-1`` (``lo < hi``) from ``state``; ``times`` (batch x m) and ``ctx_w`` (batch x m x (K+C))
    are the segment's. Returns the state after the segment and the steps' marks, log-weights (batch x m x
    (K+1)), summed rates over the bound (batch x m), history weights (batch x m x (K+C)) and log-rates
    (batch x m x K). Under backend ``"compiled"`` whole chunks of :data:`COMPILED_CHUNK` steps run as one
    compiled call, the rest step by step; with ``last`` (the scan's last segment, its state and graph
    unused: a forward pass without autograd) the rest runs as one more compiled chunk, padded with steps
    that carry no event (their outputs dropped), since an eager step costs several compiled ones."""
    intensity = plan.intensity
    log_bound = torch.log(bound).unsqueeze(-1)
    cands, ctx_hists, noises = plan.cand[..., lo:hi, :], ctx_w * plan.ctx[..., lo:hi, :], plan.noise[..., lo:hi, :]
    flags = (plan.inv_t, plan.relaxed, plan.straight_through)
    parts: list[list[torch.Tensor]] = [[], [], [], [], []]
    done, steps = 0, hi - lo
    compiled = compiled_steps((type(intensity), plan.relaxed, plan.straight_through, torch.is_grad_enabled(),
                               times.device.type, times.dtype))
    size = COMPILED_CHUNK
    if compiled is not None and last and steps % size:
        extra = size - steps % size
        times, cands, ctx_hists, noises = (_padded(x, extra, d) for x, d in ((times, 0), (cands, 1),
                                                                           (ctx_hists, 1), (noises, 1)))
    if compiled is not None and times.shape[-1] >= size:
        # chunk-major copies made once (a chunk must be contiguous: a view's strides depend on the
        # segment's length and would be guarded on and recompile)
        n = times.shape[-1] // size

        def chunks(x: torch.Tensor, dims: int) -> tuple[torch.Tensor, ...]:
            x = x[..., : n * size, :] if dims else x[..., : n * size]
            x = x.reshape(x.shape[: x.dim() - 1 - dims] + (n, size) + x.shape[x.dim() - dims:])
            return x.movedim(-2 - dims, 0).contiguous().unbind(0)

        inputs = zip(chunks(times, 0), chunks(cands, 1), chunks(ctx_hists, 1), chunks(noises, 1))
        for chunk in inputs:
            state = pytree.tree_map(torch.Tensor.contiguous, state)  # a leaf may be a view of a step's time
            try:
                state, outs = compiled(intensity, state, *chunk, log_bound, *flags)
            except torch._dynamo.exc.BackendCompilerFailed as error:  # no C++ compiler, say: steps run eagerly
                _compiler_failed(error)
                break
            for part, out in zip(parts, outs):
                part.append(out)
            done += size
    # per-step views in one call each (indexing inside the loop costs a dispatch per step and tensor)
    eager = []
    for t, cand, ctx_hist, noise in zip(times[..., done:].unbind(-1), cands[..., done:, :].unbind(-2),
                                        ctx_hists[..., done:, :].unbind(-2), noises[..., done:, :].unbind(-2)):
        state, outs = _step(intensity, state, t, cand, ctx_hist, noise, log_bound, *flags)
        eager.append(outs)
    if eager:
        for j, (part, out) in enumerate(zip(parts, zip(*eager))):
            part.append(torch.stack(out, -1 if j == 2 else -2))
    outs = [part[0] if len(part) == 1 else torch.cat(part, -1 if j == 2 else -2) for j, part in enumerate(parts)]
    if done > steps:  # drop the padding
        outs = [out[..., :steps] if j == 2 else out[..., :steps, :] for j, out in enumerate(outs)]
    return state, *outs


def _forward(plan: _Plan, leaves: list[torch.Tensor], times: torch.Tensor, ctx_w: torch.Tensor,
             bound: torch.Tensor, checkpoints: list | None) -> tuple[torch.Tensor, ...]:
    """The whole scan without autograd; appends the state leaves at each segment start to
    ``checkpoints`` when given."""
    k, d = plan.intensity.num_marks, plan.intensity.num_history_marks
    batch, steps = times.shape[:-1], times.shape[-1]
    state = pytree.tree_unflatten(list(leaves), plan.spec)
    # preallocated outputs, filled a segment at a time: lists of per-step tensors over the whole
    # time line would cost a tensor object per step and output (hundreds of bytes each)
    # (dtypes from the first segment: the intensity's, which may differ from the time line's)
    if not steps:
        empty = times.new_zeros(batch + (0, k + 1))
        return empty, empty, times.new_zeros(batch + (0, d)), times.new_zeros(batch + (0,)), empty[..., :k]
    out = None
    # without checkpoints, segments only bound the per-step views and outputs that a segment holds
    every = plan.every if checkpoints is not None else max(plan.every, UNCHECKPOINTED_SEGMENT)
    for lo in range(0, steps, every):
        hi = min(steps, lo + every)
        if checkpoints is not None:
            checkpoints.append([x.clone() for x in pytree.tree_leaves(state)])  # an update may work in place
        state, *parts = _run(plan, state, lo, hi, times[..., lo:hi], ctx_w[..., lo:hi, :], bound,
                             last=checkpoints is None and hi == steps)
        if hi - lo == steps:  # one segment: its outputs are the scan's
            out = parts
            break
        if out is None:
            out = [p.new_empty(p.shape[:len(batch)] + (steps,) + p.shape[len(batch) + 1:]) for p in parts]
        for o, p in zip(out, parts):
            o[(..., slice(lo, hi)) + (slice(None),) * (p.dim() - len(batch) - 1)] = p
    marks, logs, ratios, hists, log_rates = out
    return marks, logs, hists, ratios, log_rates


class _GenericScan(torch.autograd.Function):
    """Inputs: the plan, then the initial state's leaves, the intensity's tensors, ``times``, ``ctx_w``
    and ``bound``. Outputs: marks, log-weights (differentiable), history weights and summed rates over
    the bound, and the log-rates (differentiable; for :mod:`pyro_dpp.scan.reuse`)."""

    @staticmethod
    def forward(ctx, plan: _Plan, *inputs: torch.Tensor):  # noqa: D102
        n = plan.num_state + plan.num_params
        times, ctx_w, bound = inputs[n:]
        checkpoints: list = []
        marks, logs, hists, ratios, log_rates = _forward(plan, list(inputs[: plan.num_state]), times, ctx_w, bound,
                                                         checkpoints)
        plan.stats.update(steps=times.shape[-1], every=plan.every, checkpoints=len(checkpoints))
        ctx.plan, ctx.checkpoints = plan, checkpoints
        ctx.save_for_backward(times, ctx_w, bound)
        ctx.mark_non_differentiable(hists, ratios)
        return marks, logs, hists, ratios, log_rates

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_marks, grad_logs, _grad_hists, _grad_ratios, grad_log_rates):  # noqa: D102
        plan, checkpoints = ctx.plan, ctx.checkpoints
        times, ctx_w, bound = ctx.saved_tensors
        need_times, need_ctx, need_bound = ctx.needs_input_grad[-3:]
        steps = times.shape[-1]
        grad_params: list = [None] * plan.num_params
        grad_times = torch.zeros_like(times) if need_times else None
        grad_ctx = torch.zeros_like(ctx_w) if need_ctx else None
        grad_bound = torch.zeros_like(bound) if need_bound else None
        carry: list = [None] * plan.num_state  # cotangents of the state leaves after the segment
        recomputed = []
        for index in reversed(range(len(checkpoints))):
            lo = index * plan.every
            hi = min(steps, lo + plan.every)
            with torch.enable_grad():
                leaves = [x.detach().requires_grad_(x.is_floating_point()) for x in checkpoints[index]]
                seg_times = times[..., lo:hi].detach().requires_grad_(need_times)
                seg_ctx = ctx_w[..., lo:hi, :].detach().requires_grad_(need_ctx)
                seg_bound = bound.detach().requires_grad_(need_bound)
                state = pytree.tree_unflatten(list(leaves), plan.spec)
                end, ys, logs, _, _, log_rates = _run(plan, state, lo, hi, seg_times, seg_ctx, seg_bound)
                outs, cotangents = [], []
                for parts, g in ((ys, grad_marks), (logs, grad_logs), (log_rates, grad_log_rates)):
                    if g is not None:
                        outs.append(parts)
                        cotangents.append(g[..., lo:hi, :])
                for leaf, g in zip(pytree.tree_leaves(end), carry):
                    if g is not None:
                        outs.append(leaf)
                        cotangents.append(g)
                pairs = [(o, g) for o, g in zip(outs, cotangents) if o.requires_grad]
                wanted = [x for x in leaves if x.requires_grad] + plan.params
                wanted += [x for x, need in ((seg_times, need_times), (seg_ctx, need_ctx), (seg_bound, need_bound))
                           if need]
                grads = segment_vjp(pairs, wanted, check=index == len(checkpoints) - 1)
            recomputed.append(hi - lo)
            carry = add_segment_grads(grads, leaves, grad_params, (
                (need_times, grad_times, (..., slice(lo, hi))),
                (need_ctx, grad_ctx, (..., slice(lo, hi), slice(None))),
                (need_bound, grad_bound, ...),
            ))
        plan.stats.update(recomputed_segments=len(recomputed), longest_segment=max(recomputed, default=0),
                          recomputed_steps=sum(recomputed))
        return (None, *carry, *grad_params, grad_times, grad_ctx, grad_bound)


def generic_scan(
    intensity: Intensity, times: torch.Tensor, is_cand: torch.Tensor, is_ctx: torch.Tensor, ctx_w: torch.Tensor,
    gumbel: torch.Tensor, bound: torch.Tensor, temperature: float, straight_through: bool,
    checkpoint_every: int | None = None, stats: dict | None = None, log_rates: list | None = None,
    graph_budget: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The thinning scan of any intensity on a merged time line, without a per-step autograd graph
    (the contract of :func:`pyro_dpp.scan.engine.scan`; see :func:`pyro_dpp.thinning._scan`).

    :param times: ``batch x S`` the merged time line (candidates and context events).
    :param is_cand: ``batch x S`` which steps are candidates.
    :param is_ctx: ``batch x S`` which steps are context events.
    :param ctx_w: ``batch x S x (K+C)`` the fixed steps' weights on the time line (context events on
        the context marks, past events before the window on the modelled marks); ``batch x S x C``
        (context events only) is read with zero modelled columns.
    :param gumbel: ``batch x S x (K+1)`` the Gumbel noise of every step.
    :param bound: ``batch`` the constant bound.
    :param int checkpoint_every: steps per checkpointed segment (default ``ceil(sqrt(S))``); when
        given, the scan always checkpoints.
    :param int graph_budget: without ``checkpoint_every``, a scan whose graph is estimated
        (:func:`graph_bytes`) under this many bytes (default :data:`GRAPH_BUDGET_BYTES`) keeps its
        graph instead: one forward pass under autograd, no recomputation (``stats["graph"]``).
    :param dict stats: if given, filled with the checkpoint bookkeeping (``steps``, ``every``,
        ``checkpoints``; after a backward pass ``recomputed_segments``, ``longest_segment``,
        ``recomputed_steps``).
    :param list log_rates: if given, the log-rates on the time line (``batch x S x K``, differentiable
        like the marks) are appended to it (for :mod:`pyro_dpp.scan.reuse`).
    :returns: ``marks`` and ``log_weights`` on the time line (``batch x S x (K+1)``, before candidate
        selection), the history weights (``batch x S x (K+C)``) and the summed rates (``batch x S``).
    """
    batch, steps = times.shape[:-1], times.shape[-1]
    every = default_checkpoint_every(steps) if checkpoint_every is None else int(checkpoint_every)
    if checkpoint_every is None and compiling():
        every = -(-every // COMPILED_CHUNK) * COMPILED_CHUNK  # whole compiled chunks per segment
    if every < 1:
        raise ValueError(f"checkpoint_every must be a positive integer, got {checkpoint_every!r}")
    leaves, spec = _leaves(intensity.initial_state(batch, times, steps))
    grad = torch.is_grad_enabled()
    params = intensity_tensors(intensity) if grad else []
    inv_t = 1.0 / temperature if temperature > 0 else 1.0
    plan = _Plan(intensity, spec, len(leaves), len(params), params, is_cand.to(times.dtype).unsqueeze(-1),
                 is_ctx.to(times.dtype).unsqueeze(-1), gumbel.detach() * inv_t, inv_t, temperature > 0,
                 bool(straight_through), every, {} if stats is None else stats)
    ctx_w = full_width(ctx_w, intensity.num_marks, intensity.num_history_marks)
    inputs = [*leaves, *params, times, ctx_w, bound]
    per_step = 2 * intensity.num_marks + 2 + intensity.num_history_marks  # marks, log-weights, history weights
    outputs = times[..., :1].numel() * per_step * times.element_size()
    budget = GRAPH_BUDGET_BYTES if graph_budget is None else graph_budget
    if grad and steps and checkpoint_every is None and graph_bytes(leaves, steps, outputs) <= budget:
        # small enough to keep the graph: one forward pass under autograd, as the reference loop (every
        # tensor the computation uses gets its gradient)
        state = pytree.tree_unflatten(list(leaves), spec)
        _, *parts = _run(plan, state, 0, steps, times, ctx_w, bound)
        marks, logs, ratios, hists, rates_log = parts
        ratios = ratios.detach()
        hists = hists.detach()
        plan.stats.update(steps=steps, every=steps, checkpoints=0, graph=True)
    elif grad and any(x.requires_grad for x in inputs):
        marks, logs, hists, ratios, rates_log = _GenericScan.apply(plan, *inputs)
    else:
        if grad and steps:
            # nothing the scan can see requires grad: a parameter the intensity closes over without
            # holding it would lose its gradient silently here, so probe the first step with autograd
            with torch.enable_grad():
                if intensity.log_rates(pytree.tree_unflatten(list(leaves), spec), times[..., 0]).requires_grad:
                    raise _hidden_tensor("")
        with torch.no_grad():
            marks, logs, hists, ratios, rates_log = _forward(plan, leaves, times, ctx_w, bound, None)
        plan.stats.update(steps=steps, every=every, checkpoints=0)
    if log_rates is not None:
        log_rates.append(rates_log)
    # the summed rates, as the engine returns them (the caller's bound check divides by the bound)
    return marks, logs, hists, ratios * bound.detach().unsqueeze(-1)
