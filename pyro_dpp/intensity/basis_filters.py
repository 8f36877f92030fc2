"""Scan filters of the GLM bases (the torch engine's side of :mod:`pyro_dpp.intensity.basis`).

A GLM's drive is its membrane potential ``u = b + (anticausal term) + sum_l W_l F_l`` with the
history features ``F_lj(t) = sum_{n: t_n < t} w_nj phi_l(t - t_n)``; each filter keeps ``F`` on the
time line with O(L D) work per step and sequence, and runs the adjoint (``sum_l W_l^T g`` pushed
through the anti-causal filter) backwards:

- :class:`ExponentialFilter`: one recursive trace per (time constant, source);
- :class:`EpanechnikovFilter`: in-block prefix sums of ``w``, ``w t`` and ``w t^2`` (each bump is a
  quadratic in the event time on its support);
- :class:`BandFilter`: any finite-support basis that keeps the generic window state: the band of
  events within one support length, weighted by the basis at their lags
  (:class:`RaisedCosineFilter` is its stock instance, with its own numba kernel).

numba twins: :mod:`pyro_dpp.intensity._basis_filters_numba`.
"""

from __future__ import annotations

import torch

from ..scan.accelerators import register_accelerator
from ..scan.filter import ScanFilter, batch_last
from .basis import epanechnikov_moments
from .glm import log_activate


class BasisFilter(ScanFilter):
    """GLM drive ``u = b + (anticausal term) + sum_l W_l F_l``; subclasses provide the features
    ``F`` (``L x D x B``)."""

    def __init__(self, intensity, keys: torch.Tensor, batch: torch.Size) -> None:
        super().__init__(intensity, keys, batch)
        self.L = intensity.basis.num_basis

    def _setup(self) -> None:
        intensity, keys, batch = self.intensity, self.keys, self.batch
        weight = batch_last(intensity.weight.detach(), batch, 3)  # L x K x D x B
        self.wf = weight.permute(1, 0, 2, 3).reshape(self.K, self.L * self.D, self.B).contiguous()
        self.wt = weight.permute(0, 2, 1, 3).reshape(self.L * self.D, self.K, self.B).contiguous()
        self.bias = batch_last(intensity.bias.detach(), batch, 1)  # K x B
        self.const = None
        if intensity.future is not None:
            with torch.no_grad():
                ahead = intensity._anticausal(keys.reshape(batch + keys.shape[-1:]))  # batch x S x K
            self.const = ahead.reshape(self.B, self.S, self.K).permute(1, 2, 0) + self.bias  # S x K x B
        self.activation = intensity.activation
        amplitude = intensity.amplitude.detach()
        self.amplitude = batch_last(amplitude.reshape(amplitude.shape + (1,)), batch, 1)  # 1 x B

    def start(self, store: bool) -> None:
        self._setup()
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
        return log_activate(self.activation, u, self.amplitude)

    def stored(self) -> torch.Tensor | None:
        """``B x S x L x D``: the features of every step."""
        return None if self.feats is None else self.feats.permute(3, 0, 1, 2)

    def surrogate(self, stored: torch.Tensor | None, times: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """Log-rates from the stored features (``batch x S x L x D``) as a function of the bias, the
        filter weights, the amplitude and the anticausal weights."""
        if stored is None:
            return super().surrogate(stored, times, history)
        intensity = self.intensity
        potential = intensity.bias.unsqueeze(-2) + torch.einsum("...sld,...lkd->...sk", stored, intensity.weight)
        if intensity.future is not None:
            potential = potential + intensity._anticausal(times)
        return log_activate(intensity.activation, potential, intensity.amplitude[..., None, None])


class ExponentialFilter(BasisFilter):
    """Exponential basis: one recursive trace per (time constant, source)."""

    def start(self, store: bool) -> None:
        super().start(store)
        tau = self.intensity.basis.time_constants.to(self.keys)
        decay = torch.exp(-self.gaps().unsqueeze(1) / tau.view(1, -1, 1))
        self.decay = decay.unsqueeze(2).contiguous()  # S x L x 1 x B
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
        return epanechnikov_moments(q - centres - (b + 0.5) * block, width, 0)[..., 0, :]

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


class EpanechnikovFilter(BasisFilter):
    """The paper's bumps: in-block prefix sums of ``w``, ``w t`` and ``w t^2`` (see
    :func:`_poly_tables`); O(L D) work per step whatever the history length."""

    def __init__(self, intensity, keys: torch.Tensor, batch: torch.Size) -> None:
        super().__init__(intensity, keys, batch)
        basis = intensity.basis
        self.centres = basis.centres.to(keys)
        self.width = basis.width
        self.block = 2.5 * basis.width

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
        self.rkeys = (-self.keys).flip(-1).contiguous()  # the reversed time line
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


class BandFilter(BasisFilter):
    """Any finite-support basis: per step, the band of time-line events within one support length,
    gathered from a buffer, weighted by the basis at their lags."""

    def __init__(self, intensity, keys: torch.Tensor, batch: torch.Size) -> None:
        super().__init__(intensity, keys, batch)
        self.basis = intensity.basis
        self.keys_last = keys.t().contiguous()  # S x B

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
        keys = self.keys
        hi = torch.searchsorted(keys, keys, right=False)  # events strictly before
        lo = torch.searchsorted(keys, keys - self.basis.support, right=True)
        self.width = max(int((hi - lo).max()), 1)
        self.fwd = self._band(hi - self.width, lo, hi, self.width)
        self.buf = self.keys.new_zeros(self.S * self.B, self.D)

    def drive(self, s: int) -> torch.Tensor:
        index, valid = self.fwd[0][s], self.fwd[1][s]
        phi = self._phi(s, index, valid, True)  # W x L x B
        rows = self.buf.index_select(0, self._rows(index)).view(self.width, self.B, self.D).transpose(1, 2)
        return self._project(s, torch.sum(phi.unsqueeze(2) * rows.unsqueeze(1), 0, out=self._features_out(s)))

    def push(self, s: int, h: torch.Tensor) -> None:
        self.buf[s * self.B:(s + 1) * self.B].copy_(h.t())

    def start_reverse(self) -> None:
        keys = self.keys
        lo_r = torch.searchsorted(keys, keys, right=True)  # later events within the support
        hi_r = torch.searchsorted(keys, keys + self.basis.support, right=False)
        self.width_r = max(int((hi_r - lo_r).max()), 1)
        self.rev = self._band(lo_r, lo_r, hi_r, self.width_r)
        self.rbuf = self.keys.new_zeros(self.S * self.B, self.L * self.D)

    def pull(self, s: int) -> torch.Tensor:
        index, valid = self.rev[0][s], self.rev[1][s]
        phi = self._phi(s, index, valid, False)  # W x L x B
        rows = self.rbuf.index_select(0, self._rows(index)).view(self.width_r, self.B, self.L, self.D)
        rows = rows.permute(0, 2, 3, 1)  # W x L x D x B
        return (phi.unsqueeze(2) * rows).sum((0, 1))

    def push_reverse(self, s: int, g: torch.Tensor) -> None:
        self.rbuf[s * self.B:(s + 1) * self.B].copy_(self._back_project(g).view(self.L * self.D, self.B).t())


class RaisedCosineFilter(BandFilter):
    """:class:`~pyro_dpp.intensity.basis.RaisedCosineBasis`: the band filter, with a numba kernel."""


_KERNELS = "pyro_dpp.intensity._basis_filters_numba:"
register_accelerator(ExponentialFilter, _KERNELS + "ExponentialKernels")
register_accelerator(EpanechnikovFilter, _KERNELS + "EpanechnikovKernels")
register_accelerator(RaisedCosineFilter, _KERNELS + "RaisedCosineKernels")
