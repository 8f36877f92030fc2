"""Checks and conversions of :class:`~pyro_dpp.PointProcess`'s arguments (``ValueError`` with what
to change), kept apart from the distribution's logic."""

from __future__ import annotations

import math
from typing import Any

import torch

from .events import SpikeTrains, num_marks_of
from .intensity.base import Intensity, within
from .past import check_context
from .relaxed import plain

#: The floating dtypes a :class:`~pyro_dpp.PointProcess` computes in.
SUPPORTED_DTYPES = (torch.float32, torch.float64)


def refuse_tracing() -> None:
    """Refuse to draw under ``torch.jit.trace`` (the trace would freeze the number of candidates)."""
    if torch.jit.is_tracing():
        raise ValueError(
            "a PointProcess cannot be sampled under torch.jit.trace (e.g. Pyro's JitTrace_ELBO): the number "
            "of thinning candidates is random and the trace would freeze it at the traced draw, silently "
            "truncating later draws; use Trace_ELBO (or torch.compile, which handles it)"
        )


def check_intensity_dtype(intensity: Intensity, like: torch.Tensor) -> None:
    """Refuse an intensity whose floating tensors are not all float32 or all float64, or not all on
    one device."""
    # the intensity's own tensors (its parameters); submodules such as a basis hold constants that
    # are converted where they are used
    tensors = list(intensity._parameters.values()) + list(intensity._buffers.values())
    tensors += [v for v in vars(intensity).values() if isinstance(v, torch.Tensor)]
    dtypes = {like.dtype} | {t.dtype for t in tensors if t is not None and t.is_floating_point()}
    unsupported = sorted(str(d) for d in dtypes if d not in SUPPORTED_DTYPES)
    if unsupported:
        raise ValueError(
            f"the intensity holds {', '.join(unsupported)} tensors; pyro_dpp computes in float32 or float64: "
            "build the intensity from .float() or .double() tensors"
        )
    if len(dtypes) > 1:
        raise ValueError(
            f"the intensity mixes {' and '.join(sorted(str(d) for d in dtypes))} tensors; give all its "
            "parameters one dtype (float32 or float64)"
        )
    # a CPU scalar among CUDA parameters (decay=torch.tensor(1.5)) passes some operations as a
    # scalar and breaks others deep inside a scan: say so here
    devices = {like.device} | {t.device for t in tensors if t is not None and t.is_floating_point()}
    if len(devices) > 1:
        raise ValueError(
            f"the intensity holds tensors on {' and '.join(sorted(str(d) for d in devices))}; build all its "
            "parameters on one device (e.g. torch.tensor(1.5, device=baseline.device))"
        )


def as_dtype(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``value`` in ``like``'s floating dtype and device (a structural conversion: the log-weights a
    relaxed value carries convert with it)."""
    if value.dtype == like.dtype and value.device == like.device:
        return value
    return value.to(dtype=like.dtype, device=like.device)


def as_positive(name: str, value: Any, like: torch.Tensor) -> torch.Tensor:
    """``value`` as a tensor in ``like``'s dtype and device, refused unless positive and finite."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        valid = 0 < value < math.inf  # a number: no tensor reduction (a distribution per model step)
        value = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    else:
        value = torch.as_tensor(value, dtype=like.dtype, device=like.device)
        valid = within((value,), 0.0, strict=True)
    if not valid:
        raise ValueError(f"{name} must be positive and finite, got {value}")
    return value


def as_temperature(value: Any) -> float:
    """The relaxation temperature as a float, refused unless ``>= 0`` and finite."""
    try:
        value = float(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"temperature must be a number, got {value!r}") from err
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"temperature must be >= 0 and finite (0: exact process), got {value}")
    return value


def as_context(context: Any, intensity: Intensity, like: torch.Tensor, duration: torch.Tensor) -> torch.Tensor | None:
    """The context realization (from a tensor or :class:`~pyro_dpp.SpikeTrains`) in ``like``'s dtype
    and device, without log-weights, checked against the intensity's context marks and ``duration``."""
    if context is None:
        return None
    if isinstance(context, SpikeTrains):
        context = context.to_tensor()
    if not isinstance(context, torch.Tensor):
        raise ValueError(f"context must be a realization tensor or SpikeTrains, got {type(context).__name__}")
    c = intensity.num_context_marks
    if context.dim() < 2 or num_marks_of(context) != c:
        raise ValueError(
            f"context must have shape batch x events x {c + 2} ({c} context marks, as the intensity's "
            f"num_context_marks), got {tuple(context.shape)}"
        )
    context = plain(as_dtype(context, like))  # a relaxed context's log-weights are not needed
    try:
        torch.broadcast_shapes(context.shape[:-2], duration.shape)
    except RuntimeError as err:
        raise ValueError(
            f"context batch shape {tuple(context.shape[:-2])} does not broadcast with duration {tuple(duration.shape)}"
        ) from err
    check_context(context, c, duration)
    return context
