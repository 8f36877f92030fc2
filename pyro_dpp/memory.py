"""A memory budget checked before large tensors are allocated.

A draw of :class:`~pyro_dpp.PointProcess` allocates ``sample x batch x max_events x (K + 2)``
values several times over (candidate times, soft marks, log-weights, the padded result), and
:meth:`~pyro_dpp.SpikeTrains.from_events` a ``sequences x events x neurons`` weight tensor. Where
those sizes come from a typo (a rate of 1e5, a neuron id of 100000) the allocator would fail late
and without a message, or the machine would swap. :func:`check_allocation` compares the estimate
with :func:`memory_limit` first and raises :class:`ValueError` saying what to change.

The limit is, in order: what :func:`set_memory_limit` set; the environment variable
``PYRO_DPP_MEMORY_LIMIT`` (bytes, or with a suffix ``K``, ``M``, ``G``, ``T``: ``"8G"``); half of
the memory available at the time of the check (Linux ``sysconf``; 8 GiB where that is unknown; on a
CUDA device the device's free memory plus what torch's caching allocator holds but does not use,
which a new tensor reuses first).
"""

from __future__ import annotations

import os
from typing import Any

import torch

_limit: int | None = None
_SUFFIX = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
ENV = "PYRO_DPP_MEMORY_LIMIT"


def _parse(text: str) -> int:
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = text[-1] if text and text[-1] in _SUFFIX else ""
    try:
        value = float(text[: len(text) - len(unit)]) * _SUFFIX[unit]
    except ValueError:
        raise ValueError(f"{ENV}={text!r} is not a size; use bytes or e.g. '8G'") from None
    if not value > 0:
        raise ValueError(f"{ENV} must be positive, got {text!r}")
    return int(value)


def _available() -> int:
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 16 * 2**30  # half of it: the 8 GiB of the docstring


def memory_limit(device: Any = None) -> int:
    """The number of bytes one allocation estimate may reach (see the module docstring); on a CUDA
    ``device`` the default is half of that device's free memory."""
    if _limit is not None:
        return _limit
    if os.environ.get(ENV):
        return _parse(os.environ[ENV])
    if device is not None and torch.device(device).type == "cuda":
        device = torch.device(device)
        # blocks the caching allocator keeps after earlier tensors were freed count as free: the driver
        # reports them as used, so a second draw as large as the first would otherwise be refused
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return (int(torch.cuda.mem_get_info(device)[0]) + max(0, int(cached))) // 2
    return _available() // 2


def set_memory_limit(limit: int | str | None) -> None:
    """Set the limit in bytes (or ``"8G"`` etc.); None restores the default."""
    global _limit
    _limit = None if limit is None else (_parse(limit) if isinstance(limit, str) else int(limit))
    if _limit is not None and _limit <= 0:
        raise ValueError(f"the memory limit must be positive, got {limit!r}")


def _human(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if nbytes < 1024 or unit == "PiB":
            return f"{nbytes:.3g} {unit}"
        nbytes /= 1024
    return f"{nbytes:.3g} B"  # pragma: no cover


def check_allocation(nbytes: float, what: str, advice: str, device: Any = None) -> None:
    """Raise :class:`ValueError` if ``nbytes`` exceeds :func:`memory_limit`.

    :param what: what would be allocated (``"this draw"``).
    :param advice: what the user can change (``"pass a smaller bound"``).
    :param device: where it would be allocated (default: host memory).
    """
    limit = memory_limit(device)
    if nbytes > limit:
        raise ValueError(
            f"{what} would need about {_human(nbytes)} of memory, over the limit of {_human(limit)}; {advice} "
            f"(the limit: pyro_dpp.memory.set_memory_limit or the environment variable {ENV})"
        )


__all__ = ["ENV", "check_allocation", "memory_limit", "set_memory_limit"]
