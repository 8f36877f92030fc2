"""Realizations of marked point processes as padded tensors, and the user-facing container.

**The realization tensor.** Every draw of a :class:`~pyro_dpp.PointProcess` with ``K`` marks is a
tensor of shape ``batch_shape + (max_events, K + 2)``. Row ``e`` holds one event (or one thinning
candidate)::

    value[..., e, 0]       time t_e in [0, duration]
    value[..., e, 1:K+1]   mark weights w_e (one-hot for exact events, soft for relaxed candidates)
    value[..., e, K+1]     "no event" weight (0 for exact events, 1 - sum(w_e) for candidates)

Real rows come first, in nondecreasing time order; their weights (marks and "no event" together)
sum to one. *Padding* rows come last: all weights are zero and the time equals the duration, so
padding never enters a history sum and keeps times sorted. :func:`event_mask` tells them apart.

**The index layout (exact data).** Exact events need no weights: an *index value* is a tensor of
shape ``batch_shape + (events, 2)`` whose row ``e`` holds::

    value[..., e, 0]       time t_e in [0, duration]
    value[..., e, 1]       mark id k_e in 0..K-1 (a whole number stored in the time's dtype); -1 for padding

with the same ordering rules (real rows first, nondecreasing times; padding rows last, their time
the duration). It costs two numbers per event whatever the number of marks ``K``, where the dense
layout above costs ``K + 2``: ``PointProcess.log_prob`` (at ``temperature == 0``) scores it without
ever building the one-hot weights. Ids are exact in float64 up to 2**53 and in float32 up to 2**24.
:func:`dense_to_index` and :func:`index_to_dense` convert; :func:`is_index` tells the layouts apart
(a dense value has ``K + 2 >= 3`` columns); :func:`validate_index` checks one.

**How many rows.** Data to score may have any number of rows: scoring never needs a size. A draw
has ``max_events`` rows, fixed before the draw by a rule that depends only on what the caller fixes,
never on parameter values (so that draws under different parameters stack, as in ``Predictive``):
an explicit ``max_events``; else a Poisson tail bound of the candidate count ``bound * duration``
when a ``bound`` is passed; else ``DEFAULT_MAX_EVENTS`` (1000) plus one row per context row. A
draw that does not fit raises a ``ValueError`` naming ``max_events``; nothing is truncated. (See
:class:`~pyro_dpp.PointProcess`, "Sample size".)

**Relaxed draws carry their log-weights.** At low temperature a soft weight underflows to zero in
float32 (and a straight-through draw stores one-hot weights), yet the DPP density needs the
log-weight of every class. So ``rsample`` returns a :class:`~pyro_dpp.relaxed.RelaxedRealization`
(module :mod:`pyro_dpp.relaxed`): a tensor with the
layout above (every reader of ``value[..., 1:K+1]`` sees the weights as usual) that also holds the
exact log-weights ``value._pyro_dpp_log_weights`` (``batch x events x (K+1)``, zero on padding
rows). They travel with the value through what Pyro and users do to tensors without changing their
entries: ``clone``, ``detach``, ``to``, indexing and slicing, ``reshape``/``view``/``expand``,
``torch.stack``/``torch.cat`` of relaxed values (``Predictive``), ``copy.deepcopy``, pickling and
``torch.save``/``torch.load`` (``weights_only`` loading included). Any other operation returns a
plain tensor. A plain relaxed value is scored from the logarithm of its weights, which raises a
``ValueError`` where a weight underflowed (:func:`~pyro_dpp.relaxed.plain` makes one).
:func:`~pyro_dpp.relaxed.carried_log_weights` checks that the carried
log-weights still match the weights (an in-place edit of the weights makes them stale and raises).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch

LOG_WEIGHTS_ATTR = "_pyro_dpp_log_weights"
_SIMPLEX_ATOL = {torch.float16: 1e-2, torch.bfloat16: 1e-2, torch.float32: 1e-4, torch.float64: 1e-9}


def num_marks_of(value: torch.Tensor) -> int:
    """Number of marks ``K`` of a realization tensor (its last dimension is ``K + 2``)."""
    return value.shape[-1] - 2


def event_mask(value: torch.Tensor) -> torch.Tensor:
    """Boolean ``batch x events`` mask of the real (non-padding) rows of a realization tensor."""
    return value[..., 1:].sum(-1) > 0.5


def pad_realization(
    times: torch.Tensor, weights: torch.Tensor, rest: torch.Tensor, duration: torch.Tensor
) -> torch.Tensor:
    """Assemble a realization tensor from ``times`` (batch x events), mark ``weights``
    (batch x events x marks), the "no event" weight ``rest`` (batch x events) and ``duration``
    (batch). Rows whose weights are all zero are padding; their time is set to the duration."""
    mask = (weights.sum(-1) + rest) > 0.5
    times = torch.where(mask, times, duration.unsqueeze(-1).expand_as(times))
    return torch.cat([times.unsqueeze(-1), weights, rest.unsqueeze(-1)], dim=-1)


def _atol(dtype: torch.dtype) -> float:
    return _SIMPLEX_ATOL.get(dtype, 1e-4)


#: units in the last place of the duration by which an event may pass the end of its window
WINDOW_ULPS = 4


def outside_window(times: torch.Tensor, duration: torch.Tensor) -> torch.Tensor:
    """Boolean mask of ``times`` (``batch x events``) outside ``[0, duration]`` (``batch``).

    The one rule for "inside the window", used by :func:`validate_realization`,
    :class:`SpikeTrains` and :meth:`SpikeTrains.from_events` (and so by every reader): an event may
    exceed the duration by :data:`WINDOW_ULPS` units in the last place *of the times' dtype*
    (rounding of a time computed as ``u * duration`` or converted between units), no more."""
    duration = torch.as_tensor(duration, dtype=times.dtype, device=times.device).unsqueeze(-1)
    slack = duration.abs() * (WINDOW_ULPS * torch.finfo(times.dtype).eps)
    return (times < 0) | (times > duration + slack)


def merged_times(before: torch.Tensor, after: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Boolean mask (``batch x (events - 1)``) of neighbouring real events whose distinct times
    ``before`` a cast became equal ``after`` it (the dtype cannot hold the data's time resolution)."""
    both = mask[..., 1:] & mask[..., :-1]
    return both & (before[..., 1:] != before[..., :-1]) & (after[..., 1:] == after[..., :-1])


def _resolution_error(where: str, before: torch.Tensor, merged: torch.Tensor, dtype: torch.dtype) -> ValueError:
    index = merged.reshape(-1).nonzero()[0, 0]
    flat = before.reshape(-1, before.shape[-1])[index // merged.shape[-1]]
    e = int(index % merged.shape[-1])
    return ValueError(
        f"{where}: {int(merged.sum())} pairs of distinct spike times become equal in {dtype} (e.g. "
        f"{float(flat[e])!r} and {float(flat[e + 1])!r}); this dtype cannot hold the times' resolution: "
        "use dtype=torch.float64 (or times measured from a nearer origin)"
    )


def validate_realization(
    value: torch.Tensor,
    num_marks: int,
    duration: torch.Tensor,
    name: str = "value",
    exact: bool | None = None,
) -> None:
    """Check a realization tensor and raise :class:`ValueError` saying what to change.

    :param value: tensor of shape ``batch x events x (num_marks + 2)``.
    :param num_marks: the number of marks the tensor must have.
    :param duration: window lengths, broadcastable to the batch shape of ``value``.
    :param name: how to call the tensor in error messages.
    :param exact: if True, real rows must have one-hot marks (an exact realization); if False, rows
        be thinning candidates (weights summing to one including "no event"); if None, either.

    A large tensor that passed is remembered (by identity and version counter, so an in-place
    change checks it again): data scored in a loop (MCMC, SVI) is checked once.
    """
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    key = _validation_key(value, num_marks, duration, exact)
    if key is not None and any(ref() is value and k == key for ref, k in _VALIDATED):
        return
    _validate_realization(value, num_marks, duration, name, exact)
    if key is not None:
        _VALIDATED.append((weakref.ref(value), key))
        del _VALIDATED[:-_VALIDATED_SIZE]


#: Tensors with at least this many entries that passed :func:`validate_realization`, remembered.
_VALIDATE_MEMO_MIN = 1 << 14
_VALIDATED_SIZE = 8
_VALIDATED: list[tuple[weakref.ref, tuple]] = []


def _validation_key(value: torch.Tensor, num_marks: int, duration: Any, exact: bool | None) -> tuple | None:
    if value.numel() < _VALIDATE_MEMO_MIN or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return None
    duration = torch.as_tensor(duration)
    if duration.numel() > 64:
        return None
    values = tuple(duration.detach().cpu().reshape(-1).tolist())
    return (value._version, num_marks, exact, tuple(duration.shape), values)


def check_layout(value: torch.Tensor, num_marks: int, name: str, columns: str, advice: str,
                 atol: float | None = None, before_sorted: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
                 ) -> torch.Tensor:
    """The layout checks every realization tensor passes, raising :class:`ValueError`: shape
    ``batch x events x (num_marks + 2)`` (else the message names ``columns`` and gives ``advice``),
    finite entries, weights on the simplex (within ``atol``, default by dtype) or all zero (padding),
    padding rows last, and real times sorted; ``before_sorted(times, real)`` runs its own checks just
    before the last one. Returns the real-row mask."""
    if value.dim() < 2 or value.shape[-1] != num_marks + 2:
        raise ValueError(
            f"{name} must have shape batch x events x {num_marks + 2} ({columns}), got {tuple(value.shape)}; {advice}"
        )
    if not torch.isfinite(value).all():
        raise ValueError(f"{name} contains NaN or inf; remove or fix those rows")
    times, weights = value[..., 0], value[..., 1:]
    atol = _atol(value.dtype) if atol is None else atol
    if (weights < -atol).any():
        raise ValueError(f"{name} has negative mark weights; weights must lie on the simplex")
    total = weights.sum(-1)
    real = total > 0.5
    if ((real & ((total - 1).abs() > atol)) | (~real & (total.abs() > atol))).any():
        raise ValueError(
            f"{name} has rows whose weights sum neither to 1 (an event) nor to 0 (padding); "
            "marks must lie on the simplex"
        )
    if (real[..., 1:] & ~real[..., :-1]).any():
        raise ValueError(f"{name} has real events after padding rows; put padding rows last")
    if before_sorted is not None:
        before_sorted(times, real)
    if (real[..., 1:] & real[..., :-1] & (times[..., 1:] < times[..., :-1])).any():
        raise ValueError(f"{name} has unsorted event times; sort events by time within each sequence")
    return real


def _validate_realization(
    value: torch.Tensor, num_marks: int, duration: torch.Tensor, name: str, exact: bool | None
) -> None:
    def inside_window(times: torch.Tensor, real: torch.Tensor) -> None:
        window = torch.as_tensor(duration, dtype=value.dtype, device=value.device)
        if (outside_window(times, window) & (real | (times < 0))).any():
            raise ValueError(
                f"{name} has event times outside the window [0, duration]; drop them or enlarge the duration"
            )

    real = check_layout(value, num_marks, name, f"time, {num_marks} mark weights, 'no event' weight",
                        "build it with SpikeTrains(...).to_tensor() or from_lists/from_events",
                        before_sorted=inside_window)
    weights, atol = value[..., 1:], _atol(value.dtype)
    if exact is True:
        one_hot = (weights[..., :num_marks] - (weights[..., :num_marks] > 0.5).to(value.dtype)).abs() <= atol
        if (real & ~(one_hot.all(-1) & (weights[..., num_marks].abs() <= atol))).any():
            raise ValueError(
                f"{name} has soft or 'no event' marks, but this process is exact (temperature=0): "
                "pass one-hot events, or use temperature > 0 to score relaxed candidates"
            )


def select_marks(value: torch.Tensor, marks: Sequence[int], duration: torch.Tensor) -> torch.Tensor:
    """The exact realization of a subset of marks: columns ``marks`` of ``value``; events of other
    marks become padding, moved last with the order of the rest kept.

    :param value: an exact realization tensor (one-hot rows).
    :param duration: the window lengths (batch).
    """
    index = torch.as_tensor(list(marks), dtype=torch.long, device=value.device)
    weights = value[..., 1:-1].index_select(-1, index)
    keep = weights.sum(-1) > 0.5
    order = (~keep).to(torch.int8).argsort(dim=-1, stable=True)
    times = value[..., 0].gather(-1, order)
    keep = keep.gather(-1, order)
    weights = weights.gather(-2, order.unsqueeze(-1).expand(order.shape + (weights.shape[-1],)))
    weights = weights * keep.unsqueeze(-1).to(weights.dtype)
    return pad_realization(times, weights, torch.zeros_like(times), duration.expand(times.shape[:-1]))


# ---- the index layout ------------------------------------------------------------------------
#: Columns of an index value: time, mark id.
INDEX_COLUMNS = 2
#: The mark id of a padding row of an index value.
PADDING_MARK = -1


def is_index(value: torch.Tensor) -> bool:
    """Whether ``value`` has the index layout (``... x events x 2``) rather than the dense one."""
    return isinstance(value, torch.Tensor) and value.dim() >= 2 and value.shape[-1] == INDEX_COLUMNS


def index_mask(value: torch.Tensor) -> torch.Tensor:
    """Boolean ``batch x events`` mask of the real (non-padding) rows of an index value."""
    return value[..., 1] >= 0


def index_marks(value: torch.Tensor) -> torch.Tensor:
    """``batch x events`` integer (int64) mark ids of an index value, -1 on padding rows."""
    return value[..., 1].round().to(torch.long).clamp(min=PADDING_MARK)


def dense_to_index(value: torch.Tensor) -> torch.Tensor:
    """The index value (``batch x events x 2``) of an exact dense realization (``batch x events x
    (K + 2)``, one-hot rows): each row's time and the column of its one. Padding stays padding.

    :raises ValueError: for rows with soft or "no event" weights (a relaxed realization has no marks
        to index)."""
    if not isinstance(value, torch.Tensor) or value.dim() < 2 or value.shape[-1] < 3:
        raise ValueError("value must be a dense realization tensor of shape batch x events x (marks + 2)")
    weights = value[..., 1:-1]
    real = event_mask(value)
    hot = weights > 0.5
    atol = _atol(value.dtype)
    one_hot = ((weights - hot.to(value.dtype)).abs() <= atol).all(-1) & (hot.sum(-1) == 1)
    if bool((real & ~(one_hot & (value[..., -1].abs() <= atol))).any()):
        raise ValueError(
            "only exact realizations (one-hot marks) have an index layout; this value has soft or 'no event' "
            "rows (a relaxed draw): keep it dense"
        )
    marks = torch.where(real, weights.argmax(-1), torch.full_like(real, PADDING_MARK, dtype=torch.long))
    return torch.stack([value[..., 0], marks.to(value.dtype)], -1)


def index_to_dense(value: torch.Tensor, num_marks: int) -> torch.Tensor:
    """The dense realization (``batch x events x (num_marks + 2)``, one-hot rows) of an index value.
    Costs ``num_marks + 2`` numbers per row: the size is checked against the memory limit first
    (:mod:`pyro_dpp.memory`)."""
    from .memory import check_allocation

    if not is_index(value):
        raise ValueError(f"value must be an index value of shape batch x events x 2, got {tuple(value.shape)}")
    check_allocation(
        value[..., 0].numel() * (num_marks + 2) * value.element_size(),
        f"the dense (one-hot) realization of {value[..., 0].numel()} rows x {num_marks} marks",
        "keep the data in the index layout (PointProcess.log_prob scores it directly)", value.device,
    )
    marks = index_marks(value)
    real = marks >= 0
    weights = torch.zeros(marks.shape + (num_marks,), dtype=value.dtype, device=value.device)
    weights.scatter_(-1, marks.clamp(min=0).unsqueeze(-1), real.unsqueeze(-1).to(value.dtype))
    times = value[..., 0]
    return torch.cat([times.unsqueeze(-1), weights, torch.zeros_like(times).unsqueeze(-1)], -1)


def validate_index(value: torch.Tensor, num_marks: int, duration: Any, name: str = "value") -> None:
    """Check an index value and raise :class:`ValueError` saying what to change: its shape, NaN or
    inf entries, mark ids that are not whole numbers in ``-1..num_marks-1``, real rows after padding,
    times outside the window or unsorted. Large values that passed are remembered, as in
    :func:`validate_realization`."""
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    key = _validation_key(value, num_marks, duration, "index")
    if key is not None and any(ref() is value and k == key for ref, k in _VALIDATED):
        return
    _validate_index(value, num_marks, duration, name)
    if key is not None:
        _VALIDATED.append((weakref.ref(value), key))
        del _VALIDATED[:-_VALIDATED_SIZE]


def _validate_index(value: torch.Tensor, num_marks: int, duration: Any, name: str) -> None:
    if value.dim() < 2 or value.shape[-1] != INDEX_COLUMNS or not value.is_floating_point():
        raise ValueError(
            f"{name} must be a floating tensor of shape batch x events x 2 (time, mark id), got "
            f"{tuple(value.shape)} {value.dtype}; build it with SpikeTrains(...).to_tensor(format='index')"
        )
    if not torch.isfinite(value).all():
        raise ValueError(f"{name} contains NaN or inf; remove or fix those rows")
    times, ids = value[..., 0], value[..., 1]
    if bool((ids != ids.round()).any()):
        raise ValueError(f"{name} has mark ids that are not whole numbers; column 1 must hold integer mark ids")
    if bool(((ids < PADDING_MARK) | (ids >= num_marks)).any()):
        raise ValueError(
            f"{name} has mark ids outside 0..{num_marks - 1} (and -1 for padding); check the number of marks "
            "(neurons) of the process against the data"
        )
    real = ids >= 0
    if bool((real[..., 1:] & ~real[..., :-1]).any()):
        raise ValueError(f"{name} has real events after padding rows (mark -1); put padding rows last")
    duration = torch.as_tensor(duration, dtype=value.dtype, device=value.device)
    if bool((outside_window(times, duration) & (real | (times < 0))).any()):
        raise ValueError(
            f"{name} has event times outside the window [0, duration]; drop them or enlarge the duration"
        )
    if bool((real[..., 1:] & real[..., :-1] & (times[..., 1:] < times[..., :-1])).any()):
        raise ValueError(f"{name} has unsorted event times; sort events by time within each sequence")


# the container lives in its own module; importing it from here keeps ``from .events import SpikeTrains``
from .spike_trains import SpikeTrains  # noqa: E402, F401
