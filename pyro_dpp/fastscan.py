"""Fast sequential scans for the stock intensities (DESIGN §5, issue #4 "Performance").

The reference scan (:func:`pyro_dpp.thinning._scan` with ``fast=False``) calls the intensity's
``log_rates(state, t)`` and ``update(state, t, w)`` at every step under autograd, so that a
finite-support GLM keeps a window of several hundred events per step alive in the graph. The fast
path exploits what is known before the loop starts: the whole time line (pre-drawn thinning
candidates merged with context events). Every intensity it handles has the form

    log lambda_s = act(u_s),   u_s = c_s + sum_{n < s} H(t_s - t_n) w_n        (H linear, known)

with history weights ``w_n`` (soft or hard marks of earlier candidates, context weights), so

- the causal filter is evaluated with O(1) tensor work per step and sequence: recursive traces for
  exponential kernels, the band of events inside each bump's support for finite-support bases
  (numba), or in-block prefix sums of ``w``, ``w t``, ``w t^2`` (torch engines, Epanechnikov);
- the scan runs without autograd and stores per-step outputs only (log-probabilities, drives, and
  the features the parameter gradient needs): memory O(steps x (marks + features)) instead of
  O(steps x window x sources);
- gradients come from a hand-written reverse scan (:class:`_ScanAdjoint`): the adjoint of a causal
  filter is the anti-causal filter, run on the reversed time line. It yields the cotangent of every
  step's log-rates; the gradient with respect to the intensity's parameters then is one
  vector-Jacobian product through a *surrogate*: the log-rates recomputed from the stored features
  as a differentiable function of the parameters (history held fixed; for a Hawkes decay, first
  order in the decay with the lag-weighted traces), so any parameter layout, batch shape or
  upstream parametrisation is handled by autograd as usual.

Two backends run the loops: numba kernels (:mod:`pyro_dpp._numba_scan`; CPU tensors, one fused
loop per sequence, parallel over the batch with torch's thread count) when numba is installed, and
torch "engines" (batch-last tensors, any device) otherwise; :data:`BACKEND` forces one. The random
numbers (candidates, Gumbel noise) are drawn by the caller exactly as the reference scan draws them,
so for the same seed both paths return the same draw up to float rounding (tests/test_fast_paths.py).

Only exact instances of :class:`~pyro_dpp.intensity.Poisson`, :class:`~pyro_dpp.intensity.ExpHawkes`
and :class:`~pyro_dpp.intensity.GLM` (with the three stock bases, or a finite-support basis that
keeps the generic window state) take this path; anything else (subclasses, monkeypatched methods, a
context or bound that requires gradients) runs the reference scan.

Known difference from the reference: the reference finite-support window skips all-zero history
rows, so with straight-through marks (a rejected candidate weighs zero in the forward pass) it
drops the soft weights' gradient through rejected candidates; the fast path keeps it, as the
reference does for exponential kernels and as a window that keeps every row does.
"""

from __future__ import annotations

import math

import torch

from .intensity.base import Intensity, safe_log
from .intensity.basis import Basis, EpanechnikovBasis, ExponentialBasis, RaisedCosineBasis
from .intensity.glm import GLM, log_activate
from .intensity.hawkes import ExpHawkes
from .intensity.poisson import Poisson

_SCAN_METHODS = ("rates", "log_rates", "update", "initial_state", "forward", "log_forward", "state_features")


def _overridden(module: torch.nn.Module) -> bool:
    """True if an instance attribute shadows one of the scan/parallel methods (e.g. a test spy)."""
    return any(name in vars(module) for name in _SCAN_METHODS)


def supports(intensity: Intensity) -> bool:
    """Whether :func:`scan` handles this intensity (else the reference scan runs)."""
    if _overridden(intensity):
        return False
    kind = type(intensity)
    if kind in (Poisson, ExpHawkes):
        return True
    if kind is GLM:
        basis = intensity.basis
        if _overridden(basis):
            return False
        if type(basis) in (ExponentialBasis, EpanechnikovBasis, RaisedCosineBasis):
            return True
        # another finite-support basis: the band engine evaluates its forward(); only if its scan
        # state is the generic window (whose features are that forward by construction)
        kind = type(basis)
        generic = all(getattr(kind, m) is getattr(Basis, m) for m in ("initial_state", "state_features", "update"))
        return generic and math.isfinite(basis.support) and kind.forward is not Basis.forward
    return False


def _param_tensors(intensity: Intensity) -> list[torch.Tensor]:
    if isinstance(intensity, Poisson):
        return [intensity.rates_param]
    if isinstance(intensity, ExpHawkes):
        return [intensity.baseline, intensity.adjacency, intensity.decay]
    tensors = [intensity.bias, intensity.weight, intensity.amplitude]
    if intensity.future is not None:
        tensors += [intensity.future, intensity.future_weight]
    return tensors + [b for b in intensity.basis.buffers()]


def needs_grad(intensity: Intensity) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in _param_tensors(intensity))


# ---- engines: the causal filter and its adjoint ------------------------------------------------------
# Layout: per-step tensors are batch-last, ``(small dims..., B)`` with ``B`` the flattened batch, so
# that every elementwise op runs over contiguous batch entries (tensors whose innermost dimension is a
# handful of marks are an order of magnitude slower per element on CPU). Step-indexed stores are
# ``S x (small dims) x B``. Buffers that are *gathered* from (rows chosen per sequence) are row-major,
# ``rows x width``, since ``index_select`` of whole rows is the fast gather.
def _last(x: torch.Tensor, batch: torch.Size, event_dims: int) -> torch.Tensor:
    """Broadcast ``x`` to ``batch + event`` and return it batch-last: ``event + (B,)``."""
    event = x.shape[x.dim() - event_dims:]
    flat = x.expand(batch + event).reshape((-1,) + event)
    return flat.permute(tuple(range(1, event_dims + 1)) + (0,)).contiguous()


class _Engine:
    """The history filter of one intensity on one time line, forward (causal) and reverse
    (anti-causal adjoint). ``B`` flattened batch, ``S`` steps, ``K`` marks, ``D = K + C`` sources.

    Forward: ``start(store)``; per step ``drive(s)`` gives ``u_s`` (``K x B``) from the events folded
    in so far (and, with ``store``, keeps what :meth:`surrogate` needs), then ``push(s, h)`` folds in
    the step's history weights ``h`` (``D x B``).
    Reverse, steps in decreasing order: ``start_reverse()``; per step ``pull(s)`` gives
    ``sum_{n > s} (du_n / dh_s)^T g_n`` (``D x B``), then ``push_reverse(s, g)`` folds in the drive
    cotangent ``g = g_s`` (``K x B``)."""

    def __init__(self, intensity: Intensity, keys: torch.Tensor, batch: torch.Size) -> None:
        self.keys = keys  # B x S, nondecreasing
        self.B, self.S = keys.shape
        self.K = intensity.num_marks
        self.D = intensity.num_history_marks
        self.batch = batch
        self.keys_last = keys.t().contiguous()  # S x B

    def log_rates(self, u: torch.Tensor) -> torch.Tensor:
        """Elementwise map from the drive to the log-rates (``... x K x B``)."""
        raise NotImplementedError

    def log_rates_step(self, u: torch.Tensor) -> torch.Tensor:
        return self.log_rates(u)

    def _gaps(self) -> torch.Tensor:
        """``S x B`` time since the previous step (the first step: since 0, as the reference state)."""
        return torch.diff(self.keys_last, dim=0, prepend=self.keys_last.new_zeros(1, self.B))


class _Hawkes(_Engine):
    """Linear Hawkes: the drive is the rate itself, one exponential trace per source (scalar decay)
    or per (target, source)."""

    def __init__(self, intensity: ExpHawkes, keys: torch.Tensor, batch: torch.Size) -> None:
        super().__init__(intensity, keys, batch)
        decay = intensity.decay.detach()
        adjacency = intensity.adjacency.detach()
        self.base = _last(intensity.baseline.detach(), batch, 1)  # K x B
        self.uniform = decay.numel() == 1
        self.gain = _last(adjacency * decay, batch, 2)  # K x D x B
        gaps = self._gaps()
        if self.uniform:
            self.decay = torch.exp(-decay.reshape(()) * gaps)  # S x B
        else:
            beta = _last(decay.expand(torch.broadcast_shapes(decay.shape, adjacency.shape)), batch, 2)
            self.beta, self.gaps = beta, gaps  # K x D x B, S x B
        self.grad_decay = intensity.decay.requires_grad

    def _dec(self, s: int) -> torch.Tensor:
        if self.uniform:
            return self.decay[s]
        return torch.exp(-self.beta * self.gaps[s])

    def log_rates(self, u: torch.Tensor) -> torch.Tensor:
        return safe_log(u)

    def log_rates_step(self, u: torch.Tensor) -> torch.Tensor:
        return torch.log(u)

    def start(self, store: bool) -> None:
        self.x = self.keys.new_zeros((self.D, self.B) if self.uniform else (self.K, self.D, self.B))
        self.store = store and not self.grad_decay
        if self.store:
            self.traces = self.keys.new_empty((self.S,) + self.x.shape)

    def drive(self, s: int) -> torch.Tensor:
        x = self.x.mul_(self._dec(s))
        if self.store:
            self.traces[s] = x
        if self.uniform:
            return self.base + (self.gain * x).sum(1)
        return self.base + (self.gain * x).sum(1)

    def push(self, s: int, h: torch.Tensor) -> None:
        self.x.add_(h if self.uniform else h.unsqueeze(0))

    def start_reverse(self) -> None:
        self.r = self.keys.new_zeros((self.K, self.B) if self.uniform else (self.K, self.D, self.B))

    def pull(self, s: int) -> torch.Tensor:
        if s + 1 < self.S:
            self.r.mul_(self._dec(s + 1))
        if self.uniform:
            return (self.gain * self.r.unsqueeze(1)).sum(0)
        return (self.gain * self.r).sum(0)

    def push_reverse(self, s: int, g: torch.Tensor) -> None:
        self.r.add_(g if self.uniform else g.unsqueeze(1))


class _GLMEngine(_Engine):
    """GLM drive ``u = b + (anticausal term) + sum_l W_l F_l``; subclasses provide the features
    ``F`` (``L x D x B``)."""

    def __init__(self, intensity: GLM, keys: torch.Tensor, batch: torch.Size) -> None:
        super().__init__(intensity, keys, batch)
        self.L = intensity.basis.num_basis
        weight = _last(intensity.weight.detach(), batch, 3)  # L x K x D x B
        self.wf = weight.permute(1, 0, 2, 3).reshape(self.K, self.L * self.D, self.B).contiguous()
        self.wt = weight.permute(0, 2, 1, 3).reshape(self.L * self.D, self.K, self.B).contiguous()
        self.bias = _last(intensity.bias.detach(), batch, 1)  # K x B
        self.const = None
        if intensity.future is not None:
            with torch.no_grad():
                ahead = intensity._anticausal(keys.reshape(batch + keys.shape[-1:]))  # batch x S x K
            self.const = ahead.reshape(self.B, self.S, self.K).permute(1, 2, 0) + self.bias  # S x K x B
        self.activation = intensity.activation
        amplitude = intensity.amplitude.detach()
        self.amplitude = _last(amplitude.reshape(amplitude.shape + (1,)), batch, 1)  # 1 x B
        self.log_amplitude = torch.log(self.amplitude)

    def start(self, store: bool) -> None:
        self.store = store
        self.feats = self.keys.new_empty(self.S, self.L, self.D, self.B) if store else None
        self.out = self.keys.new_empty(self.K, self.B)

    def _features_out(self, s: int) -> torch.Tensor | None:
        """Where to write step ``s``'s features (kept for :meth:`surrogate`), if anywhere."""
        return self.feats[s] if self.store else None

    def _project(self, s: int, features: torch.Tensor) -> torch.Tensor:
        """``u_s`` (``K x B``) from ``L x D x B`` features."""
        if self.store and features.data_ptr() != self.feats[s].data_ptr():
            self.feats[s] = features
        u = torch.sum(self.wf * features.reshape(1, self.L * self.D, self.B), 1, out=self.out)
        return u.add_(self.bias if self.const is None else self.const[s])

    def _back_project(self, g: torch.Tensor) -> torch.Tensor:
        """``L x D x B``: ``W_l^T g`` for every basis function."""
        return (self.wt * g.unsqueeze(0)).sum(1).view(self.L, self.D, self.B)

    def log_rates(self, u: torch.Tensor) -> torch.Tensor:
        """Batch-major (``B x S x K``) drives, as the adjoint passes them."""
        return log_activate(self.activation, u, self.amplitude.reshape(self.B, 1, 1))

    def log_rates_step(self, u: torch.Tensor) -> torch.Tensor:
        if self.activation == "sigmoid":
            return torch.nn.functional.logsigmoid(u).add_(self.log_amplitude)
        return log_activate(self.activation, u, self.amplitude)


class _ExpGLM(_GLMEngine):
    """Exponential basis: one recursive trace per (time constant, source)."""

    def __init__(self, intensity: GLM, keys: torch.Tensor, batch: torch.Size) -> None:
        super().__init__(intensity, keys, batch)
        tau = intensity.basis.time_constants.to(keys)
        decay = torch.exp(-self._gaps().unsqueeze(1) / tau.view(1, -1, 1))
        self.decay = decay.unsqueeze(2).contiguous()  # S x L x 1 x B

    def start(self, store: bool) -> None:
        super().start(store)
        self.x = self.keys.new_zeros(self.L, self.D, self.B)

    def drive(self, s: int) -> torch.Tensor:
        return self._project(s, self.x.mul_(self.decay[s]))

    def push(self, s: int, h: torch.Tensor) -> None:
        self.x.add_(h)

    def start_reverse(self) -> None:
        self.r = self.keys.new_zeros(self.L, self.D, self.B)

    def pull(self, s: int) -> torch.Tensor:
        if s + 1 < self.S:
            self.r.mul_(self.decay[s + 1])
        return self.r.sum(0)

    def push_reverse(self, s: int, g: torch.Tensor) -> None:
        self.r.add_(self._back_project(g))


_CHUNK = 128  # steps per chunk of lazily built index tables


def _poly_tables(keys: torch.Tensor, lo_step: int, hi_step: int, centres: torch.Tensor, width: float,
                 block: float, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Index and coefficient tables of the Epanechnikov filter on a sorted time line ``keys``
    (``B x S``), queried at the time line's own steps ``lo_step:hi_step``.

    Bump ``l`` at a query ``t`` sums ``0.75 (1 - (t - c_l - t_n)^2 / h^2) w_n`` over the events with
    ``t - t_n`` in ``(max(0, c_l - h), c_l + h)``: a contiguous index range. Time is cut into blocks
    of length ``block >= 2 h`` (so a range meets at most two blocks); buffer row ``n + 1`` holds the
    in-block prefix sums of ``w``, ``w d`` and ``w d^2`` through index ``n``, ``d`` the event time
    relative to its block's centre (row 0: zeros). A range sum is ``sum_j coef_j . row_j`` over four
    rows (two per block) with coefficients that expand the quadratic around each block's centre.

    :returns: ``rows`` (``Q x (L * 4 * B)`` flat buffer rows, in ``(l, j, b)`` order: with
        ``groups == 1`` the row of ``(r, b)`` is ``r * B + b``, else ``(r * L + l) * B + b``) and
        ``coef`` (``Q x L x 12 x 1 x B``: four rows times three moments).
    """
    bsz, steps = keys.shape
    num = centres.numel()
    q = keys[:, lo_step:hi_step].unsqueeze(-1)  # B x Q x 1
    nq = q.shape[1]
    bid = torch.floor(keys / block)
    low = (centres - width).clamp(min=0)
    high = centres + width
    lo = torch.searchsorted(keys, (q - high).reshape(bsz, -1), right=True).view(bsz, nq, num)
    hi = torch.searchsorted(keys, (q - low).reshape(bsz, -1), right=False).view(bsz, nq, num)
    nonempty = hi > lo
    last = steps - 1
    r = (hi - 1).clamp(min=0, max=last)

    def at(index: torch.Tensor) -> torch.Tensor:
        return bid.gather(1, index.reshape(bsz, -1)).view(bsz, nq, num)

    b1, b2 = at(lo.clamp(max=last)), at(r)
    same = b1 == b2
    end1 = torch.searchsorted(bid, b1.reshape(bsz, -1).contiguous(), right=True).view(bsz, nq, num) - 1
    prev_same = (lo >= 1) & (at((lo - 1).clamp(min=0)) == b1)
    zero = torch.zeros_like(lo)
    plus1 = torch.where(same, r + 1, end1 + 1)
    minus1 = torch.where(prev_same, lo, zero)
    rows = torch.stack([plus1, minus1, r + 1, zero], -1)  # B x Q x L x 4

    def coefficients(b: torch.Tensor) -> torch.Tensor:
        a = q - centres - (b + 0.5) * block  # the bump is 0.75 (1 - (a - d)^2 / h^2)
        h2 = width * width
        return torch.stack([0.75 * (1 - a * a / h2), 1.5 * a / h2, torch.full_like(a, -0.75 / h2)], -1)

    c1 = coefficients(b1) * nonempty.unsqueeze(-1)
    c2 = coefficients(b2) * (nonempty & ~same).unsqueeze(-1)
    coef = torch.stack([c1, -c1, c2, -c2], -2).reshape(bsz, nq, num, 12)
    batch_index = torch.arange(bsz, device=keys.device).view(bsz, 1, 1, 1)
    if groups > 1:
        rows = (rows * num + torch.arange(num, device=keys.device).view(1, 1, num, 1)) * bsz + batch_index
    else:
        rows = rows * bsz + batch_index
    return (rows.permute(1, 2, 3, 0).reshape(nq, -1).contiguous(),
            coef.permute(1, 2, 3, 0).unsqueeze(-2).contiguous())


class _Epanechnikov(_GLMEngine):
    """The paper's bumps: in-block prefix sums of ``w``, ``w t`` and ``w t^2`` (see
    :func:`_poly_tables`); O(L D) work per step whatever the history length."""

    def __init__(self, intensity: GLM, keys: torch.Tensor, batch: torch.Size) -> None:
        super().__init__(intensity, keys, batch)
        basis = intensity.basis
        self.centres = basis.centres.to(keys)
        self.width = basis.width
        self.block = 2.5 * basis.width
        self.rkeys = (-keys).flip(-1).contiguous()  # the reversed time line (for the adjoint)

    @staticmethod
    def _moments(keys: torch.Tensor, block: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``keep`` (``S x B``: same block as the previous step) and ``powers`` (``S x 3 x B``)."""
        bid = torch.floor(keys / block)
        delta = keys - (bid + 0.5) * block
        powers = torch.stack([torch.ones_like(delta), delta, delta * delta], 1)  # B x 3 x S
        keep = torch.zeros_like(keys)
        keep[:, 1:] = (bid[:, 1:] == bid[:, :-1]).to(keys.dtype)
        return keep.t().contiguous(), powers.permute(2, 1, 0).contiguous()

    def _chunk(self, keys: torch.Tensor, i: int, groups: int) -> tuple[int, torch.Tensor, torch.Tensor]:
        start = (i // _CHUNK) * _CHUNK
        stop = min(start + _CHUNK, self.S)
        rows, coef = _poly_tables(keys, start, stop, self.centres, self.width, self.block, groups)
        return start, rows, coef

    def start(self, store: bool) -> None:
        super().start(store)
        self.keep, self.powers = self._moments(self.keys, self.block)
        self.powers = self.powers.unsqueeze(2)  # S x 3 x 1 x B
        self.buf = self.keys.new_zeros((self.S + 1) * self.B, 3 * self.D)
        self.cur = self.keys.new_zeros(3, self.D, self.B)  # the last written row, batch-last
        self.table = (-_CHUNK, None, None)

    def drive(self, s: int) -> torch.Tensor:
        if s - self.table[0] >= _CHUNK:
            self.table = self._chunk(self.keys, s, 1)
        start, rows, coef = self.table
        gathered = self.buf.index_select(0, rows[s - start]).view(self.L * 4, self.B, 3 * self.D)
        gathered = gathered.transpose(1, 2).reshape(self.L, 12, self.D, self.B)
        return self._project(s, torch.sum(coef[s - start] * gathered, 1, out=self._features_out(s)))

    def push(self, s: int, h: torch.Tensor) -> None:
        cur = self.cur.mul_(self.keep[s]).add_(self.powers[s] * h.unsqueeze(0))
        self.buf[(s + 1) * self.B:(s + 2) * self.B].copy_(cur.view(3 * self.D, self.B).t())

    def start_reverse(self) -> None:
        keep, powers = self._moments(self.rkeys, self.block)
        self.rkeep, self.rpowers = keep, powers.view(self.S, 1, 3, 1, self.B)
        self.rbuf = self.keys.new_zeros((self.S + 1) * self.L * self.B, 3 * self.D)
        self.rcur = self.keys.new_zeros(self.L, 3, self.D, self.B)
        self.rtable = (-_CHUNK, None, None)

    def pull(self, s: int) -> torch.Tensor:
        i = self.S - 1 - s  # the step on the reversed time line
        if i - self.rtable[0] >= _CHUNK:
            self.rtable = self._chunk(self.rkeys, i, self.L)
        start, rows, coef = self.rtable
        gathered = self.rbuf.index_select(0, rows[i - start]).view(self.L * 4, self.B, 3 * self.D)
        gathered = gathered.transpose(1, 2).reshape(self.L * 12, self.D, self.B)
        return (coef[i - start].view(self.L * 12, 1, self.B) * gathered).sum(0)

    def push_reverse(self, s: int, g: torch.Tensor) -> None:
        i = self.S - 1 - s
        cur = self.rcur.mul_(self.rkeep[i]).add_(self.rpowers[i] * self._back_project(g).unsqueeze(1))
        block = self.L * self.B
        self.rbuf[(i + 1) * block:(i + 2) * block].view(self.L, self.B, 3 * self.D).copy_(
            cur.view(self.L, 3 * self.D, self.B).transpose(1, 2))


class _Band(_GLMEngine):
    """Any finite-support basis: per step, the band of time-line events within one support length,
    gathered from a buffer, weighted by the basis at their lags."""

    def __init__(self, intensity: GLM, keys: torch.Tensor, batch: torch.Size) -> None:
        super().__init__(intensity, keys, batch)
        self.basis = intensity.basis
        support = self.basis.support
        hi = torch.searchsorted(keys, keys, right=False)  # events strictly before
        lo = torch.searchsorted(keys, keys - support, right=True)
        self.width = max(int((hi - lo).max()), 1)
        self.fwd = self._band(hi - self.width, lo, hi, self.width)
        lo_r = torch.searchsorted(keys, keys, right=True)  # later events within the support
        hi_r = torch.searchsorted(keys, keys + support, right=False)
        self.width_r = max(int((hi_r - lo_r).max()), 1)
        self.rev = self._band(lo_r, lo_r, hi_r, self.width_r)

    def _band(self, first: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, width: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """``S x W x B`` time-line indices ``first + (0..W-1)`` and their validity (in ``[lo, hi)``)."""
        index = first.unsqueeze(-1) + torch.arange(width, device=first.device)
        valid = (index >= lo.unsqueeze(-1)) & (index < hi.unsqueeze(-1))
        index = index.clamp(0, self.S - 1)
        return index.permute(1, 2, 0).contiguous(), valid.permute(1, 2, 0).contiguous()

    def _phi(self, s: int, index: torch.Tensor, valid: torch.Tensor, forward: bool) -> torch.Tensor:
        """``W x L x B`` basis values at the band's lags."""
        near = self.keys_last.gather(0, index)  # W x B
        lag = (self.keys_last[s] - near) if forward else (near - self.keys_last[s])
        lag = torch.where(valid, lag, torch.zeros_like(lag))
        return (self.basis(lag) * valid.unsqueeze(-1).to(lag.dtype)).transpose(1, 2)

    def _rows(self, index: torch.Tensor) -> torch.Tensor:
        return (index * self.B + torch.arange(self.B, device=index.device)).reshape(-1)

    def start(self, store: bool) -> None:
        super().start(store)
        self.buf = self.keys.new_zeros(self.S * self.B, self.D)

    def drive(self, s: int) -> torch.Tensor:
        index, valid = self.fwd[0][s], self.fwd[1][s]
        phi = self._phi(s, index, valid, True)  # W x L x B
        rows = self.buf.index_select(0, self._rows(index)).view(self.width, self.B, self.D).transpose(1, 2)
        return self._project(s, torch.sum(phi.unsqueeze(2) * rows.unsqueeze(1), 0, out=self._features_out(s)))

    def push(self, s: int, h: torch.Tensor) -> None:
        self.buf[s * self.B:(s + 1) * self.B].copy_(h.t())

    def start_reverse(self) -> None:
        self.rbuf = self.keys.new_zeros(self.S * self.B, self.L * self.D)

    def pull(self, s: int) -> torch.Tensor:
        index, valid = self.rev[0][s], self.rev[1][s]
        phi = self._phi(s, index, valid, False)  # W x L x B
        rows = self.rbuf.index_select(0, self._rows(index)).view(self.width_r, self.B, self.L, self.D)
        rows = rows.permute(0, 2, 3, 1)  # W x L x D x B
        return (phi.unsqueeze(2) * rows).sum((0, 1))

    def push_reverse(self, s: int, g: torch.Tensor) -> None:
        self.rbuf[s * self.B:(s + 1) * self.B].copy_(self._back_project(g).view(self.L * self.D, self.B).t())


def make_engine(intensity: Intensity, keys: torch.Tensor, batch: torch.Size) -> _Engine:
    if isinstance(intensity, ExpHawkes):
        return _Hawkes(intensity, keys, batch)
    basis = intensity.basis
    if type(basis) is ExponentialBasis:
        return _ExpGLM(intensity, keys, batch)
    if type(basis) is EpanechnikovBasis:
        return _Epanechnikov(intensity, keys, batch)
    return _Band(intensity, keys, batch)


# ---- the scan --------------------------------------------------------------------------------------------
try:  # optional CPU kernels
    from . import _numba_scan as _nb
except ImportError:  # pragma: no cover - numba not installed
    _nb = None

#: ``"auto"``: the numba kernels for CPU tensors when numba is installed, else the torch engines;
#: ``"numba"`` or ``"torch"`` to force one (tests compare both with the reference).
BACKEND = "auto"

_ACTIVATION_CODES = {"sigmoid": 0, "exp": 1, "softplus": 2, "hardtanh": 3}


def _numba_kind(intensity: Intensity, device: torch.device) -> str | None:
    """Which numba kernel handles this intensity, if any."""
    if BACKEND == "torch" or _nb is None or device.type != "cpu":
        return None
    if isinstance(intensity, ExpHawkes):
        return "hawkes"
    basis = intensity.basis
    if type(basis) in (ExponentialBasis, EpanechnikovBasis, RaisedCosineBasis):
        return "glm"
    return None


def _numba_threads() -> None:
    import numba

    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


def _np(x: torch.Tensor):
    return x.detach().numpy()


class _NumbaGLM:
    """Arguments of the numba GLM kernels (batch-major)."""

    def __init__(self, intensity: GLM, keys: torch.Tensor, batch: torch.Size) -> None:
        bsz, steps = keys.shape
        basis = intensity.basis
        self.K, self.D, self.L, self.S, self.B, self.batch = (intensity.num_marks, intensity.num_history_marks,
                                                            basis.num_basis, steps, bsz, batch)
        dtype = keys.dtype
        weight = intensity.weight.detach().to(dtype).expand(batch + intensity.weight.shape[-3:])
        self.weight = weight.reshape(bsz, self.L, self.K, self.D).permute(0, 2, 1, 3).contiguous()
        bias = intensity.bias.detach().to(dtype).expand(batch + (self.K,)).reshape(bsz, 1, self.K)
        if intensity.future is not None:
            with torch.no_grad():
                ahead = intensity._anticausal(keys.reshape(batch + (steps,)))
            self.const = (ahead.reshape(bsz, steps, self.K) + bias).contiguous()
        else:
            self.const = bias.expand(bsz, steps, self.K)
        amplitude = intensity.amplitude.detach().to(dtype).expand(batch).reshape(bsz).contiguous()
        self.amp, self.log_amp = amplitude, torch.log(amplitude)
        self.act = _ACTIVATION_CODES[intensity.activation]
        dummy = keys.new_zeros(1)
        self.decay = keys.new_zeros(1, 1, 1)
        self.width = self.scale = self.offset = 0.0
        if isinstance(basis, ExponentialBasis):
            self.kind = _nb.EXPONENTIAL
            tau = basis.time_constants.to(keys)
            gaps = torch.diff(keys, dim=-1, prepend=keys.new_zeros(bsz, 1))
            self.decay = torch.exp(-gaps.unsqueeze(-1) / tau).contiguous()  # B x S x L
            self.centres, self.low, self.high = dummy, dummy, dummy
        elif isinstance(basis, EpanechnikovBasis):
            self.kind = _nb.EPANECHNIKOV
            self.centres = basis.centres.to(keys).contiguous()
            self.width = basis.width
            self.low = (self.centres - basis.width).clamp(min=0).contiguous()
            self.high = (self.centres + basis.width).contiguous()
        else:
            self.kind = _nb.RAISED_COSINE
            self.centres = basis.peaks.to(keys).contiguous()
            self.scale, self.offset = basis.scale, basis.offset
            self.low = (torch.exp((self.centres - math.pi) / self.scale) - self.offset).clamp(min=0).contiguous()
            self.high = (torch.exp((self.centres + math.pi) / self.scale) - self.offset).contiguous()

    def forward(self, keys, cand, hist, noise, log_bound, inv_t, relaxed, hard, out, stored, store):
        _nb.glm_forward(_np(keys), _np(cand), _np(hist), _np(noise), _np(log_bound), inv_t, relaxed, hard,
                        _np(self.const),
                        _np(self.weight), _np(self.log_amp), _np(self.amp), self.act, self.kind, _np(self.decay),
                        _np(self.centres), self.width, self.scale, self.offset, _np(self.low), _np(self.high),
                        *[_np(x) for x in out], _np(stored), store)

    def reverse(self, keys, log_pi, log_y, cand, drive, grad_marks, grad_logs, inv_t, glr):
        _nb.glm_reverse(_np(keys), self.kind, _np(self.decay), _np(self.centres), self.width, self.scale,
                        self.offset, _np(self.low), _np(self.high), _np(self.weight), self.act, _np(log_pi),
                        _np(log_y), _np(cand), _np(drive), _np(grad_marks), _np(grad_logs), inv_t, _np(glr))

    def log_rates(self, u: torch.Tensor) -> torch.Tensor:
        return log_activate(_ACTIVATION_NAMES[self.act], u, self.amp.view(-1, 1, 1))


_ACTIVATION_NAMES = {v: k for k, v in _ACTIVATION_CODES.items()}


class _NumbaHawkes:
    def __init__(self, intensity: ExpHawkes, keys: torch.Tensor, batch: torch.Size) -> None:
        bsz, steps = keys.shape
        self.K, self.D, self.S, self.B, self.batch = intensity.num_marks, intensity.num_history_marks, steps, bsz, batch
        dtype = keys.dtype
        decay = intensity.decay.detach().to(dtype)
        adjacency = intensity.adjacency.detach().to(dtype)
        self.base = intensity.baseline.detach().to(dtype).expand(batch + (self.K,)).reshape(bsz, self.K).contiguous()
        self.gain = (adjacency * decay).expand(batch + (self.K, self.D)).reshape(bsz, self.K, self.D).contiguous()
        self.uniform = decay.numel() == 1
        beta = decay.reshape(1, 1) if self.uniform else decay.expand(torch.broadcast_shapes(decay.shape,
                                                                                               adjacency.shape))
        self.beta = beta.expand(batch + (self.K, self.D)).reshape(bsz, self.K, self.D).contiguous()
        self.grad_decay = intensity.decay.requires_grad

    def forward(self, keys, cand, hist, noise, log_bound, inv_t, relaxed, hard, out, stored, store):
        _nb.hawkes_forward(_np(keys), _np(cand), _np(hist), _np(noise), _np(log_bound), inv_t, relaxed, hard,
                           _np(self.base),
                           _np(self.gain), _np(self.beta), self.uniform, *[_np(x) for x in out], _np(stored), store)

    def reverse(self, keys, log_pi, log_y, cand, drive, grad_marks, grad_logs, inv_t, glr):
        _nb.hawkes_reverse(_np(keys), _np(self.gain), _np(self.beta), self.uniform, _np(log_pi), _np(log_y),
                           _np(cand), _np(drive), _np(grad_marks), _np(grad_logs), inv_t, _np(glr))

    def log_rates(self, u: torch.Tensor) -> torch.Tensor:
        return safe_log(u)


def _glm_surrogate(intensity: GLM, feats: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
    """Log-rates on the time line from stored features (``batch x S x L x D``) as a function of the
    parameters (bias, weight, amplitude, anticausal weights)."""
    potential = intensity.bias.unsqueeze(-2) + torch.einsum("...sld,...lkd->...sk", feats, intensity.weight)
    if intensity.future is not None:
        potential = potential + intensity._anticausal(times)
    return log_activate(intensity.activation, potential, intensity.amplitude[..., None, None])


def _hawkes_surrogate(intensity: ExpHawkes, traces: torch.Tensor, lagged: torch.Tensor | None = None) -> torch.Tensor:
    """Log-rates from stored traces ``X`` (``batch x S x R x D``, ``R`` = 1 for a scalar decay, else
    ``K``). With the lag-weighted traces ``Y = -dX / d(decay)``, ``X - (decay - decay_0) Y`` carries
    the decay's gradient (first order, exact at the scan's decay)."""
    if lagged is not None and intensity.decay.requires_grad:
        if intensity._uniform_decay:
            shift = (intensity.decay - intensity.decay.detach()).reshape(())
        else:
            decay = intensity._decay_matrix()
            shift = (decay - decay.detach()).unsqueeze(-3)
        traces = traces - shift * lagged
    gain = intensity.adjacency * intensity.decay
    excitation = (traces * gain.unsqueeze(-3)).sum(-1)
    return safe_log(intensity.baseline.unsqueeze(-2) + excitation)


def _adjoint_parts(log_pi: torch.Tensor, drive: torch.Tensor, log_rates, grad_marks: torch.Tensor | None,
                   grad_logs: torch.Tensor | None, cand: torch.Tensor, inv_t: float, noise: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Local pieces of the adjoint (batch-major, ``B x S x ...``): ``direct`` (``B x S x K``, what the
    outputs of a step alone ask of its log-rates), ``jac`` (``B x S x K x K``: how the cotangent of
    the step's history weights adds to it) and ``dl`` (d log-rate / d drive)."""
    k = drive.shape[-1]
    with torch.enable_grad():
        u = drive.detach().requires_grad_()
        dl = torch.autograd.grad(log_rates(u).sum(), u)[0]  # elementwise d log-rate / d drive
    y = torch.log_softmax(noise + log_pi * inv_t, -1).exp()
    scaled = log_pi[..., :k].exp()  # rates / bound
    rest = 1 - scaled.sum(-1, keepdim=True)
    qr = torch.where(rest > 0, scaled / torch.where(rest > 0, rest, torch.ones_like(rest)), torch.zeros_like(rest))
    gly = torch.zeros_like(y) if grad_logs is None else grad_logs.clone()
    if grad_marks is not None:
        gly += grad_marks * y
    gz = (gly - y * gly.sum(-1, keepdim=True)) * inv_t
    direct = gz[..., :k] - qr * gz[..., k:]  # d log(rest) / d log r = -qr
    # jac[i, j] = cand / tau * y_j (delta_ij - y_i + qr_i y_K)
    yk = y[..., :k]
    jac = (qr * y[..., k:] - yk).unsqueeze(-1) * yk.unsqueeze(-2)
    jac.diagonal(dim1=-2, dim2=-1).add_(yk)
    jac.mul_((cand * inv_t)[..., None, None])
    return direct, jac, dl


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
        if isinstance(runner, _Engine):  # torch engines: bulk local parts, then the loop step-major, batch-last
            direct, jac, dl = _adjoint_parts(log_pi, drive, runner.log_rates, grad_marks, grad_logs,
                                             cand, inv_t, noise)
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
            _numba_threads()
            runner.reverse(keys, log_pi, log_y, cand, drive, grad_marks, grad_logs, inv_t, glr)
        return glr.reshape(batch + (steps, glr.shape[-1])), None, None, None


def _forward_torch(engine: _Engine, noise: torch.Tensor, cand: torch.Tensor, history: torch.Tensor,
                   log_pi: torch.Tensor, drive: torch.Tensor | None, log_bound: torch.Tensor, inv_t: float,
                   soft: bool, store: bool) -> None:
    """The scan with the torch engines (no autograd), batch-last: ``noise`` and ``log_pi``
    ``S x (K+1) x B``, ``cand`` ``S x 1 x B``, ``history`` ``S x D x B`` with the context columns filled
    in, ``drive`` ``S x K x B`` (kept for the adjoint when not None), ``log_bound`` ``1 x B``."""
    k = engine.K
    engine.start(store)
    one = log_pi.new_ones(())
    for s in range(engine.S):
        u = engine.drive(s)
        if drive is not None:
            drive[s] = u
        lp = log_pi[s]
        torch.sub(engine.log_rates_step(u), log_bound, out=lp[:k])
        ratio = lp[:k].exp().sum(0)
        torch.log1p(ratio.neg_().clamp_(min=-1), out=lp[k])
        z = torch.add(noise[s], lp, alpha=inv_t)
        z = z.sub_(z.amax(0, keepdim=True))
        row = history[s, :k]
        if soft:
            e = z.exp_()
            torch.div(e[:k], e.sum(0), out=row).mul_(cand[s])
        else:
            torch.heaviside(z[:k], one, out=row).mul_(cand[s])
        engine.push(s, history[s])


def _reverse_torch(engine: _Engine, direct_u: torch.Tensor, jac_u: torch.Tensor) -> torch.Tensor:
    """The adjoint scan with the torch engines: ``S x D x B`` pulled history cotangents, given the
    drive cotangent ``g_s = direct_u[s] + jac_u[s] @ pulled[s, :K]`` (``S x K x B``, ``S x K x K x B``)."""
    k = engine.K
    pulled = direct_u.new_empty(engine.S, engine.D, engine.B)
    engine.start_reverse()
    for s in range(engine.S - 1, -1, -1):
        gw = engine.pull(s)
        pulled[s] = gw
        engine.push_reverse(s, (jac_u[s] * gw[:k].unsqueeze(0)).sum(1).add_(direct_u[s]))
    return pulled


def scan(intensity: Intensity, times: torch.Tensor, is_cand: torch.Tensor, is_ctx: torch.Tensor,
         ctx_w: torch.Tensor, gumbel: torch.Tensor, bound: torch.Tensor, temperature: float,
         straight_through: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fast thinning scan on a merged time line (see :func:`pyro_dpp.thinning._scan`).

    :returns: ``marks`` and ``log_weights`` on the time line (``batch x S x (K+1)``, as the reference
        scan computes them before selecting candidate rows), the time line's history weights
        (``batch x S x (K+C)``, for the window check) and the summed rates (``batch x S``, for the
        bound check).
    """
    batch, steps = times.shape[:-1], times.shape[-1]
    k = intensity.num_marks
    if isinstance(intensity, Poisson):
        return _poisson(intensity, times, is_cand, gumbel, bound, temperature, straight_through)
    bsz = max(1, math.prod(batch))
    dtype, device = times.dtype, times.device
    d = intensity.num_history_marks
    real = (is_cand | is_ctx).reshape(bsz, steps)
    keys = times.detach().reshape(bsz, steps)
    keys = torch.where(real, keys, keys.amax(-1, keepdim=True))
    keys = torch.cummax(keys, -1).values.contiguous()  # padding rows (at the end) take the last time
    cand = is_cand.reshape(bsz, steps).to(dtype)
    history = torch.zeros(bsz, steps, d, dtype=dtype, device=device)
    if d > k:
        history[..., k:] = (ctx_w * is_ctx.unsqueeze(-1).to(dtype)).reshape(bsz, steps, -1)
    inv_t = 1.0 / temperature if temperature > 0 else 1.0
    noise = (gumbel.detach().reshape(bsz, steps, k + 1) * inv_t).contiguous()
    log_bound = torch.log(bound.detach()).to(dtype).expand(batch).reshape(bsz).contiguous()
    hard = temperature == 0 or straight_through
    grad = temperature > 0 and needs_grad(intensity)
    kind = _numba_kind(intensity, device)
    relaxed = temperature > 0
    with torch.no_grad():
        if kind is not None:
            runner = _NumbaGLM(intensity, keys, batch) if kind == "glm" else _NumbaHawkes(intensity, keys, batch)
            log_pi = torch.empty(bsz, steps, k + 1, dtype=dtype)
            log_y = torch.empty(bsz, steps, k + 1, dtype=dtype) if relaxed else log_pi
            marks = torch.empty(bsz, steps, k + 1, dtype=dtype)
            ratio = torch.empty(bsz, steps, dtype=dtype)
            drive = torch.empty(bsz, steps, k, dtype=dtype) if grad else keys.new_zeros(1, 1, 1)
            if kind == "glm":
                store_shape = (bsz, steps, runner.L, d)
            else:
                store_shape = (bsz, steps, 2, 1 if runner.uniform else k, d)
            stored = torch.empty(store_shape, dtype=dtype) if grad else keys.new_zeros((1,) * len(store_shape))
            _numba_threads()
            runner.forward(keys, cand, history, noise, log_bound, inv_t, relaxed, hard,
                           (log_pi, log_y, marks, ratio, drive),
                           stored, grad)
            total = ratio * bound.detach().to(dtype).expand(batch).reshape(bsz, 1)
        else:
            runner = make_engine(intensity, keys, batch)
            log_pi_t = torch.empty(steps, k + 1, bsz, dtype=dtype, device=device)
            drive_t = torch.empty(steps, k, bsz, dtype=dtype, device=device) if grad else None
            history_t = history.permute(1, 2, 0).contiguous()
            _forward_torch(runner, noise.permute(1, 2, 0).contiguous(), cand.t().unsqueeze(1).contiguous(),
                           history_t, log_pi_t, drive_t, log_bound.view(1, bsz), inv_t, soft=not hard, store=grad)
            log_pi, history = log_pi_t.permute(2, 0, 1), history_t.permute(2, 0, 1)
            drive = drive_t.permute(2, 0, 1) if grad else None
            stored = None
            if grad and isinstance(runner, _GLMEngine):
                stored = runner.feats.permute(3, 0, 1, 2)
            elif grad and isinstance(runner, _Hawkes) and runner.store:
                stored = runner.traces.permute(-1, *range(runner.traces.dim() - 1))
                stored = stored.unsqueeze(-2) if runner.uniform else stored
            z = noise + log_pi * inv_t
            if relaxed:
                log_y = torch.log_softmax(z, -1)
                marks = log_y.exp()
                if straight_through:
                    marks = (z >= z.amax(-1, keepdim=True)).to(dtype) + marks - marks
            else:
                log_y, marks = log_pi, (z >= z.amax(-1, keepdim=True)).to(dtype)
            total = log_pi[..., :k].exp().sum(-1) * bound.detach().to(dtype).expand(batch).reshape(bsz, 1)
    shape = batch + (steps, k + 1)
    out_marks, out_logs = marks.reshape(shape), log_y.reshape(shape)
    if grad:
        psi = None
        if isinstance(intensity, GLM):
            psi = _glm_surrogate(intensity, stored.reshape(batch + stored.shape[1:]), times.detach())
        elif kind is not None:  # numba: traces and lag-weighted traces
            traces = stored.reshape(batch + stored.shape[1:])
            psi = _hawkes_surrogate(intensity, traces[..., 0, :, :], traces[..., 1, :, :])
        elif stored is not None:  # torch engine (no decay gradient)
            psi = _hawkes_surrogate(intensity, stored.reshape(batch + stored.shape[1:]))
        if psi is None:
            psi = intensity.log_forward(times.detach(), history.reshape(batch + (steps, d)), times.detach())
        state = (runner, keys, log_pi, log_y, drive, cand, inv_t, noise, batch)
        out_marks, out_logs = _ScanAdjoint.apply(psi, out_marks, out_logs, state)
    return out_marks, out_logs, history.reshape(batch + (steps, d)), total.reshape(batch + (steps,))


def _poisson(intensity: Poisson, times: torch.Tensor, is_cand: torch.Tensor, gumbel: torch.Tensor,
             bound: torch.Tensor, temperature: float, straight_through: bool):
    """History-free: every step at once (with autograd, as the reference)."""
    k = intensity.num_marks
    batch, steps = times.shape[:-1], times.shape[-1]
    rates = intensity.rates_param.expand(batch + (k,))
    log_rates = safe_log(rates).unsqueeze(-2).expand(batch + (steps, k))
    total = rates.sum(-1, keepdim=True).unsqueeze(-1).expand(batch + (steps, 1))
    b = bound.detach().reshape(batch + (1, 1))
    rest = torch.clamp(1 - total / b, min=0)
    log_pi = torch.cat([log_rates - torch.log(b), safe_log(rest)], -1)
    if temperature > 0:
        log_y = torch.log_softmax((log_pi + gumbel) / temperature, -1)
        y = log_y.exp()
        if straight_through:
            hard = torch.nn.functional.one_hot(y.argmax(-1), k + 1).to(y)
            y = hard + y - y.detach()
    else:
        log_y = log_pi
        y = torch.nn.functional.one_hot((log_pi + gumbel).argmax(-1), k + 1).to(times.dtype)
    history = y[..., :k] * is_cand.unsqueeze(-1).to(times.dtype)
    history = torch.cat([history, times.new_zeros(batch + (steps, intensity.num_context_marks))], -1)
    return y, log_y, history.detach(), total.squeeze(-1).detach()


# ---- exact sampling of linear Hawkes processes without a bound (Ogata) -------------------------------------
def ogata_supported(intensity: Intensity, duration: torch.Tensor) -> bool:
    return (_nb is not None and BACKEND != "torch" and type(intensity) is ExpHawkes and not _overridden(intensity)
            and duration.device.type == "cpu")


def hawkes_ogata(intensity: ExpHawkes, duration: torch.Tensor, context: torch.Tensor | None,
                 max_events: int) -> torch.Tensor:
    """:func:`pyro_dpp.thinning.sample_ogata` for :class:`ExpHawkes` by the numba kernel."""
    from .events import event_mask, pad_realization

    batch = duration.shape
    bsz = max(1, math.prod(batch))
    k, c = intensity.num_marks, intensity.num_context_marks
    dtype = duration.dtype
    f64 = torch.float64
    base = intensity.baseline.detach().to(f64).expand(batch + (k,)).reshape(bsz, k).contiguous()
    decay = intensity.decay.detach().to(f64)
    adjacency = intensity.adjacency.detach().to(f64)
    d = k + c
    gain = (adjacency * decay).expand(batch + (k, d)).reshape(bsz, k, d).contiguous()
    uniform = decay.numel() == 1
    beta = decay.reshape(1, 1) if uniform else decay.expand(torch.broadcast_shapes(decay.shape, adjacency.shape))
    beta = beta.expand(batch + (k, d)).reshape(bsz, k, d).contiguous()
    if context is None or context.shape[-2] == 0:
        ctx_t = torch.zeros(bsz, 1, dtype=f64)
        ctx_w = torch.zeros(bsz, 1, max(c, 1), dtype=f64)
        ctx_n = torch.zeros(bsz, dtype=torch.long)
    else:
        context = context.expand(batch + context.shape[-2:])
        real = event_mask(context).reshape(bsz, -1)
        ctx_t = context[..., 0].reshape(bsz, -1).to(f64).contiguous()
        ctx_w = context[..., 1 : 1 + c].reshape(bsz, -1, c).to(f64).contiguous()
        ctx_n = real.sum(-1)
        if bool((real[:, 1:] & ~real[:, :-1]).any()):  # real rows must come first (validated contexts do)
            raise ValueError("context has real events after padding rows; put padding rows last")
    seeds = torch.randint(0, 2**31 - 1, (bsz,), dtype=torch.long)
    out_t = torch.zeros(bsz, max_events, dtype=f64)
    out_k = torch.zeros(bsz, max_events, dtype=torch.long)
    count = torch.zeros(bsz, dtype=torch.long)
    _numba_threads()
    _nb.hawkes_ogata(seeds.numpy(), duration.detach().to(f64).expand(batch).reshape(bsz).contiguous().numpy(),
                     base.numpy(), gain.numpy(), beta.numpy(), uniform, ctx_t.numpy(), ctx_w.numpy(), ctx_n.numpy(),
                     out_t.numpy(), out_k.numpy(), count.numpy())
    if bool((count < 0).any()):
        raise ValueError(f"a sequence exceeded max_events={max_events} events; pass a larger max_events")
    mask = torch.arange(max_events) < count.unsqueeze(-1)
    weights = torch.nn.functional.one_hot(out_k, k).to(dtype) * mask.unsqueeze(-1).to(dtype)
    times = out_t.to(dtype).reshape(batch + (max_events,))
    value = pad_realization(times, weights.reshape(batch + (max_events, k)),
                            times.new_zeros(batch + (max_events,)), duration)
    return value.to(duration.device)
