"""The one scan engine: the thinning scan on a merged time line for any intensity with a filter.

The reference scan (the eager loop in :func:`pyro_dpp.thinning._scan`, backend ``"reference"``) calls
the intensity's ``log_rates(state, t)`` and ``update(state, t, w)`` at every step under autograd. This
engine exploits what is known before the loop starts, the whole time line, and the intensity's
:class:`~pyro_dpp.scan.filter.ScanFilter`:

- the scan runs without autograd and stores per-step outputs only (log-probabilities, drives, and
  the features the parameter gradient needs): memory O(steps x (marks + features));
- gradients come from a hand-written reverse scan (:class:`_ScanAdjoint`): the adjoint of a causal
  filter is the anti-causal filter, run backwards. It yields the cotangent of every step's
  log-rates; the gradient with respect to the intensity's parameters then is one vector-Jacobian
  product through the filter's *surrogate* (the log-rates rebuilt from the stored features as a
  differentiable function of the parameters).

The loop runs in a numba accelerator registered for the filter's class where one can run
(:mod:`pyro_dpp.scan.accelerators`), else in torch (batch-last tensors, any device). The random
numbers (candidates, Gumbel noise) are drawn by the caller exactly as the reference draws them, so
for the same seed every backend returns the same draw up to float rounding (tests/test_scan.py).

Known difference from the reference: the reference finite-support window skips all-zero history
rows, so with straight-through marks (a rejected candidate weighs zero in the forward pass) it
drops the soft weights' gradient through rejected candidates; the engine keeps it, as the
reference does for exponential kernels and as a window that keeps every row does.
"""

from __future__ import annotations

import math

import torch

from ..intensity.base import Intensity
from ..past import full_width
from .accelerators import find_accelerator
from .backend import numba_threads, numba_usable
from .filter import ScanFilter
from .step import adjoint_parts, log_probs, step_marks


class _ScanAdjoint(torch.autograd.Function):
    """Attaches the reverse scan to the outputs: ``psi`` (``batch x S x K``: the log-rates on the time
    line as a function of the parameters, history held fixed) carries the parameter graph; the
    outputs' values come from the forward scan."""

    @staticmethod
    def forward(ctx, psi, marks, logs, state):  # noqa: D102
        ctx.state = state
        return marks.clone(), logs.clone()

    @staticmethod
    def backward(ctx, grad_marks, grad_logs):  # noqa: D102
        runner, keys, log_pi, log_y, drive, cand, inv_t, noise, batch = ctx.state
        bsz, steps = keys.shape

        def flat(g):
            return None if g is None else g.reshape(bsz, steps, -1)

        grad_marks, grad_logs = flat(grad_marks), flat(grad_logs)
        if isinstance(runner, ScanFilter):  # torch: bulk local parts, then the loop step-major, batch-last
            direct, jac, dl = adjoint_parts(log_pi, drive, runner.log_rates, grad_marks, grad_logs, cand, inv_t,
                                            noise)
            k = direct.shape[-1]
            direct_u, jac_u = direct * dl, jac * dl.unsqueeze(-1)
            pulled = _reverse_torch(runner, direct_u.permute(1, 2, 0).contiguous(),
                                    jac_u.permute(1, 2, 3, 0).contiguous()).permute(2, 0, 1)
            glr = direct + (jac * pulled[..., None, :k]).sum(-1)
        else:
            zero = log_pi.new_zeros(()).expand(log_pi.shape)
            grad_marks = zero if grad_marks is None else grad_marks.contiguous()
            grad_logs = zero if grad_logs is None else grad_logs.contiguous()
            glr = keys.new_empty(drive.shape)
            numba_threads()
            runner.reverse(keys, log_pi, log_y, cand, drive, grad_marks, grad_logs, inv_t, glr)
        return glr.reshape(batch + (steps, glr.shape[-1])), None, None, None


def _forward_torch(filt: ScanFilter, noise: torch.Tensor, cand: torch.Tensor, history: torch.Tensor,
                   log_pi: torch.Tensor, drive: torch.Tensor | None, log_bound: torch.Tensor, inv_t: float,
                   soft: bool, store: bool) -> None:
    """The scan with a torch filter (no autograd), batch-last: ``noise`` and ``log_pi``
    ``S x (K+1) x B``, ``cand`` ``S x 1 x B``, ``history`` ``S x D x B`` holding the fixed steps' weights
    (context and past events; the candidates' marks are added to it), ``drive`` ``S x K x B`` (kept
    for the adjoint when not None), ``log_bound`` ``1 x B``."""
    k = filt.K
    filt.start(store)
    for s in range(filt.S):
        u = filt.drive(s)
        if drive is not None:
            drive[s] = u
        lp = log_probs(filt.log_rates_step(u), log_bound, 0)[0]
        log_pi[s] = lp
        marks = step_marks(lp, noise[s], inv_t, soft, False, 0)[0]
        history[s, :k].addcmul_(marks[:k], cand[s])
        filt.push(s, history[s])


def _reverse_torch(filt: ScanFilter, direct_u: torch.Tensor, jac_u: torch.Tensor) -> torch.Tensor:
    """The adjoint scan with a torch filter: ``S x D x B`` pulled history cotangents, given the drive
    cotangent ``g_s = direct_u[s] + jac_u[s] @ pulled[s, :K]`` (``S x K x B``, ``S x K x K x B``)."""
    k = filt.K
    pulled = direct_u.new_empty(filt.S, filt.D, filt.B)
    filt.start_reverse()
    for s in range(filt.S - 1, -1, -1):
        gw = filt.pull(s)
        pulled[s] = gw
        filt.push_reverse(s, (jac_u[s] * gw[:k].unsqueeze(0)).sum(1).add_(direct_u[s]))
    return pulled


def _history_free(filt: ScanFilter, log_rates: torch.Tensor, times: torch.Tensor, is_cand: torch.Tensor,
                  is_ctx: torch.Tensor, ctx_w: torch.Tensor, gumbel: torch.Tensor, bound: torch.Tensor,
                  temperature: float, straight_through: bool):
    """Intensities that ignore the history: every step at once (with autograd, as the reference)."""
    batch, steps = times.shape[:-1], times.shape[-1]
    log_rates = log_rates.expand(batch + (steps, filt.K))
    log_bound = torch.log(bound.detach()).reshape(batch + (1, 1))
    log_pi, ratio = log_probs(log_rates, log_bound)
    inv_t = 1.0 / temperature if temperature > 0 else 1.0
    y, log_y = step_marks(log_pi, gumbel * inv_t, inv_t, temperature > 0, straight_through)
    history = y[..., :filt.K] * is_cand.unsqueeze(-1).to(times.dtype)
    history = torch.cat([history, times.new_zeros(batch + (steps, filt.D - filt.K))], -1)
    history = history + ctx_w.detach() * is_ctx.unsqueeze(-1).to(times.dtype)
    return y, log_y, history.detach(), (ratio * bound.detach().unsqueeze(-1)).detach()


def scan(intensity: Intensity, times: torch.Tensor, is_cand: torch.Tensor, is_ctx: torch.Tensor,
         ctx_w: torch.Tensor, gumbel: torch.Tensor, bound: torch.Tensor, temperature: float,
         straight_through: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The thinning scan on a merged time line (see :func:`pyro_dpp.thinning._scan`) by the engine.

    :returns: ``marks`` and ``log_weights`` on the time line (``batch x S x (K+1)``, as the reference
        scan computes them before selecting candidate rows), the time line's history weights
        (``batch x S x (K+C)``, for the window check) and the summed rates (``batch x S``, for the
        bound check); None if the intensity offers no filter (the caller runs the generic scan,
        :func:`pyro_dpp.scan.generic.generic_scan`).
    """
    batch, steps = times.shape[:-1], times.shape[-1]
    k = intensity.num_marks
    ctx_w = full_width(ctx_w, k, intensity.num_history_marks)
    bsz = max(1, math.prod(batch))
    dtype, device = times.dtype, times.device
    d = intensity.num_history_marks
    real = (is_cand | is_ctx).reshape(bsz, steps)
    keys = times.detach().reshape(bsz, steps)
    keys = torch.where(real, keys, keys.amax(-1, keepdim=True))
    keys = torch.cummax(keys, -1).values.contiguous()  # padding rows (at the end) take the last time
    filt = intensity.scan_filter(keys, batch)
    if filt is None:
        # no scan filter (a user's own intensity, or a stock subclass that overrides its math): the
        # caller (pyro_dpp.thinning._fast_scan) runs the generic checkpointed path instead
        # (pyro_dpp.scan.generic, built from the intensity's initial_state / log_rates / update)
        return None
    # (past steps lie before the window, where a time-dependent rate need not be defined: their
    # rates are never used)
    free = filt.history_free_log_rates(times.detach().clamp(min=0))
    if free is not None:
        return _history_free(filt, free, times, is_cand, is_ctx, ctx_w, gumbel, bound, temperature,
                             straight_through)
    cand = is_cand.reshape(bsz, steps).to(dtype)
    # the fixed steps' weights over all D history marks (context and past events); the scan adds
    # the candidates' marks to the first K columns
    history = (ctx_w.detach() * is_ctx.unsqueeze(-1).to(dtype)).expand(batch + (steps, d)).reshape(bsz, steps, d)
    history = history.to(dtype=dtype, device=device).contiguous().clone()
    inv_t = 1.0 / temperature if temperature > 0 else 1.0
    noise = (gumbel.detach().reshape(bsz, steps, k + 1) * inv_t).contiguous()
    log_bound = torch.log(bound.detach()).to(dtype).expand(batch).reshape(bsz).contiguous()
    relaxed = temperature > 0
    hard = not relaxed or straight_through
    grad = relaxed and torch.is_grad_enabled() and any(t.requires_grad for t in filt.tensors())
    accelerator = find_accelerator(type(filt)) if numba_usable(keys) else None
    with torch.no_grad():
        if accelerator is not None:
            runner = accelerator(filt)
            log_pi = torch.empty(bsz, steps, k + 1, dtype=dtype)
            log_y = torch.empty(bsz, steps, k + 1, dtype=dtype) if relaxed else log_pi
            marks = torch.empty(bsz, steps, k + 1, dtype=dtype)
            ratio = torch.empty(bsz, steps, dtype=dtype)
            drive = torch.empty(bsz, steps, k, dtype=dtype) if grad else keys.new_zeros(1, 1, 1)
            shape = tuple(runner.store_shape)
            stored = torch.empty((bsz, steps) + shape, dtype=dtype) if grad else keys.new_zeros((1,) * (2 + len(shape)))
            numba_threads()
            runner.forward(keys, cand, history, noise, log_bound, inv_t, relaxed, hard,
                           (log_pi, log_y, marks, ratio, drive), stored, grad)
            stored = stored if grad else None
        else:
            runner = filt
            log_pi_t = torch.empty(steps, k + 1, bsz, dtype=dtype, device=device)
            drive_t = torch.empty(steps, k, bsz, dtype=dtype, device=device) if grad else None
            history_t = history.permute(1, 2, 0).contiguous()
            _forward_torch(filt, noise.permute(1, 2, 0).contiguous(), cand.t().unsqueeze(1).contiguous(),
                           history_t, log_pi_t, drive_t, log_bound.view(1, bsz), inv_t, soft=not hard, store=grad)
            log_pi, history = log_pi_t.permute(2, 0, 1), history_t.permute(2, 0, 1)
            drive = drive_t.permute(2, 0, 1) if grad else None
            stored = filt.stored() if grad else None
            marks, log_y = step_marks(log_pi, noise, inv_t, relaxed, straight_through)
            ratio = log_pi[..., :k].exp().sum(-1)
        total = ratio * bound.detach().to(dtype).expand(batch).reshape(bsz, 1)
    shape = batch + (steps, k + 1)
    out_marks, out_logs = marks.reshape(shape), log_y.reshape(shape)
    if grad:
        if stored is not None:
            stored = stored.reshape(batch + stored.shape[1:])
        psi = filt.surrogate(stored, times.detach(), history.reshape(batch + (steps, d)))
        state = (runner, keys, log_pi, log_y, drive, cand, inv_t, noise, batch)
        out_marks, out_logs = _ScanAdjoint.apply(psi, out_marks, out_logs, state)
    return out_marks, out_logs, history.reshape(batch + (steps, d)), total.reshape(batch + (steps,))
