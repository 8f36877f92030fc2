"""numba accelerators, registered per filter class (DESIGN §5): never a dispatcher.

An accelerator replaces the torch loop of one :class:`~pyro_dpp.scan.filter.ScanFilter` class by a
fused numba kernel on CPU tensors. The lookup walks the filter's MRO, so a subclass of a stock
filter keeps the stock kernel. Where numba cannot run (CUDA tensors, float16/bfloat16, numba not
installed, backend ``"torch"``) or nothing is registered, the torch engine runs the filter itself.

Register a class, or a ``"module:attribute"`` string resolved on first use (so that numba is
imported, and kernels compiled, only when an accelerator is actually used)::

    @register_accelerator(MyFilter)
    class MyKernels:
        ...

The ``"scan"`` accelerator protocol (``filt`` the torch filter; arrays batch-major, ``B x S x ...``):

- ``Accelerator(filt)``;
- ``store_shape`` (a tuple): per-step shape of what ``forward`` stores for the surrogate (in the
  layout :meth:`ScanFilter.surrogate` of that filter class expects);
- ``forward(keys, cand, hist, noise, log_bound, inv_t, relaxed, hard, out, stored, store)`` with
  ``out = (log_pi, log_y, marks, ratio, drive)``, all written in place;
- ``reverse(keys, log_pi, log_y, cand, drive, grad_marks, grad_logs, inv_t, glr)`` writing the
  log-rate cotangents ``glr`` (``B x S x K``).

An ``"ogata"`` accelerator is a function ``(intensity, duration, context, max_events) ->
realization`` (exact sampling without a constant bound).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from .backend import numba_available

_REGISTRY: dict[tuple[type, str], Any] = {}


def register_accelerator(filter_class: type, accelerator: Any = None, kind: str = "scan") -> Any:
    """Register ``accelerator`` (a class, a function, or a ``"module:attribute"`` string) for
    ``filter_class``; used as a decorator when ``accelerator`` is omitted."""
    if accelerator is None:
        def decorate(obj: Any) -> Any:
            _REGISTRY[(filter_class, kind)] = obj
            return obj
        return decorate
    _REGISTRY[(filter_class, kind)] = accelerator
    return accelerator


def find_accelerator(filter_class: type, kind: str = "scan") -> Callable | None:
    """The accelerator of the nearest class in ``filter_class``'s MRO with one registered, or None
    (also when numba is not installed)."""
    if not numba_available():
        return None
    for cls in filter_class.__mro__:
        found = _REGISTRY.get((cls, kind))
        if found is None:
            continue
        if isinstance(found, str):
            module, _, name = found.partition(":")
            try:
                found = getattr(importlib.import_module(module), name)
            except ImportError:  # pragma: no cover - numba present but broken
                return None
            _REGISTRY[(cls, kind)] = found
        return found
    return None
