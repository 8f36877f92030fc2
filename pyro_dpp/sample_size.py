"""The rows of a :class:`~pyro_dpp.PointProcess` draw: the sizing rule (see the class docstring,
"Sample size"), the memory check of a draw before it is allocated, and the hint a draw that does
not fit a default size adds to its error."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from .past import negative_rows
from .thinning import default_max_events

__all__ = ["DEFAULT_MAX_EVENTS", "check_draw_memory", "sample_rows", "sizing_hint"]

#: Rows of a sample when neither ``max_events`` nor ``bound`` is given, before one row per context
#: row is added (the sizing rule of :class:`~pyro_dpp.PointProcess`).
DEFAULT_MAX_EVENTS = 1000


def sample_rows(
    max_events: int | None, bound: torch.Tensor | None, duration: torch.Tensor, context: torch.Tensor | None
) -> int:
    """The rows of a sample (see :class:`~pyro_dpp.PointProcess`, "Sample size"): ``max_events`` if
    given, else a Poisson tail bound of ``bound * duration`` if a ``bound`` is given, else
    :data:`DEFAULT_MAX_EVENTS` plus the context's rows (those before the window, at times ``< 0``,
    not counted; nor are ``past`` rows). No parameter value enters.

    :param bound: the bound the caller passed (not the intensity's ``max_rate()``), or None.
    """
    if max_events is not None:
        if isinstance(max_events, bool) or int(max_events) != max_events or max_events < 1:
            raise ValueError(f"max_events must be a positive integer, got {max_events!r}")
        return int(max_events)
    if bound is not None:
        return default_max_events(bound * duration)
    return DEFAULT_MAX_EVENTS + (0 if context is None else context.shape[-2] - negative_rows(context))


@contextlib.contextmanager
def sizing_hint(max_events: int, explicit: bool) -> Iterator[None]:
    """Say where a default ``max_events`` came from when a draw does not fit it (``explicit``: the
    caller chose ``max_events``, and the error stands as it is)."""
    try:
        yield
    except ValueError as err:
        if explicit or "max_events" not in str(err):
            raise
        raise ValueError(
            f"{err} (max_events={max_events} is the default sample size, which depends only on "
            "duration, bound and context, never on parameter values: see PointProcess, 'Sample size'; "
            "pass max_events= large enough for the parameters you sample with)"
        ) from err


def check_draw_memory(shape: torch.Size, max_events: int, num_marks: int, like: torch.Tensor) -> None:
    """Refuse, before allocating, a draw whose tensors (candidate times, marks, log-weights, the
    padded result: about four ``shape x max_events x (K + 2)`` tensors) exceed the memory limit."""
    from .memory import check_allocation

    check_allocation(
        4.0 * shape.numel() * max_events * (num_marks + 2) * like.element_size(),
        f"a draw of {shape.numel()} sequence(s) x max_events={max_events} rows x {num_marks + 2} columns",
        "pass a smaller bound, a shorter duration, or draw fewer sequences at once",
        like.device,
    )
