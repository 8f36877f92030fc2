"""The sampler's log-rates reused by the DPP density of the same draw (DESIGN §5).

The DPP density of a relaxed draw (:func:`pyro_dpp.likelihood.dpp_log_density`) needs the
log-intensities at the draw's candidates given its soft history: exactly what the thinning scan
computed while drawing it. Pyro scores a guide's sample with the distribution that drew it
(``Trace_ELBO``: ``rsample`` then ``log_prob`` of the same tensor), so the generic scan
(:mod:`pyro_dpp.scan.generic`) keeps its per-step log-rates, as a differentiable output, and
:func:`remember` ties them to the value it returns. :func:`recall` hands them back only for that
very tensor, unmodified (its version counter), scored with the same intensity object whose tensors
are unmodified, and the same context tensor; anything else (a clone, a detached copy, another
distribution, the ``"reference"`` backend) scores by a new scan.

The gradient is the same: the log-rates at candidate ``s`` are a function of the parameters and of
the soft weights of the earlier candidates, and those weights *are* the value's, carrying the
sampler's graph; scoring the value anew composes the same function with the same graph. The stored
log-rates live as long as the value (a weak key).
"""

from __future__ import annotations

import weakref

import torch
from torch.utils.weak import WeakTensorKeyDictionary

from .backend import get_backend
from .segments import intensity_tensors

_STORE = WeakTensorKeyDictionary()


def _versions(tensors: list[torch.Tensor]) -> tuple[int, ...]:
    return tuple(t._version for t in tensors)


def _same_context(drawn: torch.Tensor | None, scored: torch.Tensor | None) -> bool:
    """Whether the context ``scored`` with is the one ``drawn`` with, or the tensor that was expanded to
    it (the distribution expands its context to the sample shape): the same memory, broadcast."""
    if drawn is None or scored is None:
        return drawn is None and scored is None
    if scored.data_ptr() != drawn.data_ptr() or scored.dtype != drawn.dtype or scored.device != drawn.device:
        return False
    try:
        expanded = scored.expand(drawn.shape)
    except RuntimeError:
        return False
    return expanded.stride() == drawn.stride()


def remember(value: torch.Tensor, intensity, context: torch.Tensor | None, log_rates: torch.Tensor) -> None:
    """Tie ``log_rates`` (``batch x rows x K``, the value's rows) to ``value``, as drawn by ``intensity``
    with ``context``."""
    tensors = intensity_tensors(intensity, requiring_grad=False) + ([] if context is None else [context])
    _STORE[value] = (weakref.ref(intensity), context, value._version, tensors, _versions(tensors), log_rates)


def recall(value: torch.Tensor, intensity, context: torch.Tensor | None) -> torch.Tensor | None:
    """The log-rates :func:`remember` tied to this very ``value`` if it, ``intensity`` and ``context``
    are the ones it was drawn with and none was modified since (and the backend is not
    ``"reference"``); else None."""
    entry = _STORE.get(value) if get_backend() != "reference" else None
    if entry is None:
        return None
    owner, drawn_context, version, tensors, versions, log_rates = entry
    if owner() is not intensity or value._version != version or not _same_context(drawn_context, context):
        return None
    now = intensity_tensors(intensity, requiring_grad=False)
    if len(now) + (context is not None) != len(tensors) or any(a is not b for a, b in zip(now, tensors)):
        return None  # the intensity holds other tensors now
    return log_rates if _versions(tensors) == versions else None  # (the context's version: its view's)
