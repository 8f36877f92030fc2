"""Helpers shared by several test modules (``tests/`` is on ``sys.path`` under pytest)."""

from __future__ import annotations

import numpy as np
import torch

from pyro_dpp.events import pad_realization

DT = torch.float64


def in_float64(make):
    """Build a module with float64 as the default dtype, so that buffers computed at construction
    (centres, peaks) are exact to float64 rather than float32-rounded and then cast."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return make()
    finally:
        torch.set_default_dtype(old)


def make_context(times_list, marks_list, num_marks, duration, rows=None):
    """A float64 realization tensor (batch x rows x (num_marks + 2)) from per-sequence arrays of
    times and integer marks; ``rows`` defaults to the longest sequence."""
    rows = rows or max(1, max(len(t) for t in times_list))
    b = len(times_list)
    t = torch.full((b, rows), float(duration), dtype=DT)
    w = torch.zeros(b, rows, num_marks, dtype=DT)
    for s, (ts, ms) in enumerate(zip(times_list, marks_list, strict=True)):
        order = np.argsort(ts, kind="stable")
        t[s, : len(ts)] = torch.tensor(np.asarray(ts)[order], dtype=DT)
        w[s, torch.arange(len(ts)), torch.tensor(np.asarray(ms)[order], dtype=torch.long)] = 1.0
    return pad_realization(t, w, torch.zeros(b, rows, dtype=DT), torch.full((b,), float(duration), dtype=DT))


def poisson_context(batch, duration, rate, seed, num_marks=1):
    """``(context, times, marks)``: ``batch`` homogeneous Poisson sequences of ``rate`` per unit time
    on ``[0, duration)`` with uniform marks (NumPy generator seeded by ``seed``), as a realization
    tensor (:func:`make_context`) and as per-sequence arrays of times and integer marks."""
    rng = np.random.default_rng(seed)
    times, marks = [], []
    for _ in range(batch):
        n = rng.poisson(rate * duration)
        times.append(np.sort(rng.uniform(0, duration, n)))
        marks.append(rng.integers(0, num_marks, n))
    return make_context(times, marks, num_marks, duration), times, marks
