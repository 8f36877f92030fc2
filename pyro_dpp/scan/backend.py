"""The one backend setting of the scans and the scoring kernels (DESIGN §5).

===============  ======================================================================================
name             what runs
===============  ======================================================================================
``"auto"``       (default) numba kernels for CPU tensors where one is registered for the intensity's
                 filter, the torch engine elsewhere (CUDA tensors, float16/bfloat16, unregistered
                 filters, intensities whose filter has no kernel)
``"torch"``      the torch engine everywhere (any device), torch implementations of the scoring kernels
``"numba"``      as ``"auto"``, but setting it raises if numba is not installed
``"compiled"``   as ``"auto"``, and the generic scan (intensities without a filter) runs its steps in
                 chunks compiled by :func:`torch.compile` (the first call of each configuration
                 compiles: seconds to a minute; later calls reuse it)
``"reference"``  the eager loop over the intensity's own ``log_rates`` / ``update`` under autograd (the
                 oracle the other backends are tested against), the torch scoring implementations,
                 and scoring through the parallel ``forward`` for every intensity
===============  ======================================================================================

Intensities without a scan filter (and scans that need gradients with respect to the context or
the bound, which the engine does not carry) run the generic checkpointed scan
(:mod:`pyro_dpp.scan.generic`) under every backend but ``"reference"``; intensities whose
``parallel_scoring`` is False score by a scan over the events (:mod:`pyro_dpp.scan.generic_scoring`)
under the same backends.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch

#: The backend names, in the order of the table above.
BACKENDS = ("auto", "torch", "numba", "compiled", "reference")

_current = "auto"


@functools.cache
def numba_available() -> bool:
    """Whether numba can be imported (CUDA-only installs may lack it)."""
    try:
        import numba  # noqa: F401
    except ImportError:  # pragma: no cover - numba is a default dependency
        return False
    return True


def get_backend() -> str:
    """The current backend name (see the module docstring)."""
    return _current


def set_backend(name: str) -> str:
    """Select the backend of the scans and scoring kernels globally; returns the previous name.

    :param str name: one of ``"auto"``, ``"torch"``, ``"numba"``, ``"compiled"``, ``"reference"``.
    :raises ValueError: for an unknown name, or ``"numba"`` without numba installed.
    """
    global _current
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(map(repr, BACKENDS))}")
    if name == "numba" and not numba_available():
        raise ValueError("backend 'numba' needs numba (pip install numba); use 'auto' or 'torch' without it")
    previous, _current = _current, name
    return previous


@contextlib.contextmanager
def backend(name: str) -> Iterator[str]:
    """Context manager: ``with pyro_dpp.backend("reference"): ...`` runs the block with ``name``."""
    previous = set_backend(name)
    try:
        yield name
    finally:
        set_backend(previous)


_NUMBA_DTYPES = (torch.float32, torch.float64)


def numba_usable(*tensors: torch.Tensor) -> bool:
    """Whether numba kernels may run on these tensors under the current backend: ``"auto"``,
    ``"numba"`` or ``"compiled"``, numba installed, every tensor on the CPU in float32 or float64."""
    return (_current in ("auto", "numba", "compiled") and numba_available()
            and all(t.device.type == "cpu" and t.dtype in _NUMBA_DTYPES for t in tensors))


def numba_threads() -> None:
    """Let numba's parallel loops use torch's intra-op thread count (callers set it, e.g. tests)."""
    import numba

    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
