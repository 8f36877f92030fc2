"""Linear-cost sums of exponentially decaying kernels (the parallel path of exponential kernels).

``decayed_sums(times, weights, query, rates)[..., q, r, d] = sum_{t_n < q_q} w_nd exp(-rate_rd (q_q - t_n))``

The reference evaluation builds the ``Q x E`` matrix of lags; here events are sorted and cut into
chunks of ``C`` consecutive events: the state ``X_n = sum_{m <= n} w_m exp(-rate (t_n - t_m))`` is a
pairwise sum inside a chunk plus the carried state of the previous chunks (a linear recurrence over
chunks, solved by a doubling scan), and a query takes the state of the last event before it, decayed
to the query. Every exponent is <= 0 and every sum adds nonnegative-scale terms of the same sign
structure as the reference, so nothing overflows or cancels; memory is O((E + Q) C) per rate.
Differentiable in ``weights`` and ``rates`` (and in the times, as the reference).
"""

from __future__ import annotations

import torch

CHUNK = 16


def decayed_sums(times: torch.Tensor, weights: torch.Tensor, query: torch.Tensor, rates: torch.Tensor) -> torch.Tensor:
    """``batch x Q x R x D``; ``rates`` is ``R x D`` (or broadcastable to it, batch dims allowed in front)."""
    batch = torch.broadcast_shapes(times.shape[:-1], weights.shape[:-2], query.shape[:-1], rates.shape[:-2])
    n, d = times.shape[-1], weights.shape[-1]
    q_len = query.shape[-1]
    r_len = rates.shape[-2]
    rates = rates.expand(batch + (r_len, d))
    if n == 0:
        return weights.new_zeros(batch + (q_len, r_len, d))
    times = times.expand(batch + (n,))
    order = times.detach().argsort(-1)
    t = times.gather(-1, order)
    w = weights.expand(batch + (n, d)).gather(-2, order.unsqueeze(-1).expand(batch + (n, d)))
    c = CHUNK
    chunks = -(-n // c)
    pad = chunks * c - n
    if pad:
        t = torch.cat([t, t[..., -1:].expand(batch + (pad,))], -1)
        w = torch.cat([w, w.new_zeros(batch + (pad, d))], -2)
    tc = t.reshape(batch + (chunks, c))
    wc = w.reshape(batch + (chunks, c, d))
    lag = tc.unsqueeze(-1) - tc.unsqueeze(-2)  # ... x chunks x c(i) x c(j): t_i - t_j
    lower = torch.ones(c, c, dtype=torch.bool, device=t.device).tril()
    lag = torch.where(lower, lag, torch.zeros_like(lag))
    ends = tc[..., -1]  # ... x chunks: time of each chunk's last event
    gaps = torch.diff(ends, dim=-1, prepend=ends[..., :1])  # chunk 0: no carry in anyway
    states = []
    for r in range(r_len):
        rate = rates[..., r, :]  # batch x D
        # inside a chunk: X_i = sum_{j <= i} w_j exp(-rate (t_i - t_j))
        kern = torch.exp(-lag.unsqueeze(-1) * rate[..., None, None, None, :]) * lower.unsqueeze(-1)
        inside = (kern * wc.unsqueeze(-3)).sum(-2)  # ... x chunks x c x D
        # carry: C_k = a_k C_{k-1} + S_k with S_k the last row of chunk k, a_k the decay between ends
        carry = inside[..., -1, :]
        decay = torch.exp(-gaps.unsqueeze(-1) * rate.unsqueeze(-2))  # ... x chunks x D
        step = 1
        while step < chunks:
            shifted = carry[..., step:, :] + decay[..., step:, :] * carry[..., :-step, :]
            carry = torch.cat([carry[..., :step, :], shifted], -2)
            decay = torch.cat([decay[..., :step, :], decay[..., step:, :] * decay[..., :-step, :]], -2)
            step *= 2
        previous = torch.cat([torch.zeros_like(carry[..., :1, :]), carry[..., :-1, :]], -2)  # state at the last end
        since = tc - torch.cat([tc[..., :1, :1].expand(batch + (1, 1)), ends[..., :-1, None]], -2)
        state = inside + previous.unsqueeze(-2) * torch.exp(-since.unsqueeze(-1) * rate[..., None, None, :])
        states.append(state.reshape(batch + (chunks * c, d)))
    state = torch.stack(states, -2)  # batch x E' x R x D
    last = torch.searchsorted(t.detach().contiguous(), query.detach().expand(batch + (q_len,)).contiguous()) - 1
    has = last >= 0
    idx = last.clamp(min=0)
    picked = state.gather(-3, idx[..., None, None].expand(batch + (q_len, r_len, d)))
    lag_q = torch.where(has, query.expand(batch + (q_len,)) - t.gather(-1, idx), torch.zeros_like(idx, dtype=t.dtype))
    out = picked * torch.exp(-lag_q[..., None, None] * rates.unsqueeze(-3))
    return torch.where(has[..., None, None], out, torch.zeros_like(out))
