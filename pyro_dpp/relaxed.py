"""Relaxed realizations that carry the exact log-weights of their candidates.

The realization format, and why relaxed values carry their log-weights, is documented in
:mod:`pyro_dpp.events`. Here: the tensor subclass that carries them through operations that only
move, copy, convert or select entries (each such operation is applied to the value and to its
log-weights alike, so the two stay in correspondence element by element), and the helpers to
build, strip and read them.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from .events import LOG_WEIGHTS_ATTR, _atol, event_mask


def _structural_ops() -> frozenset:
    """Operations that only move, copy, convert or select entries: applied to the value and to its
    log-weights (kept with the value's shape) alike, they keep the two in correspondence."""
    t = torch.Tensor
    return frozenset({
        t.__getitem__, t.clone, t.detach, t.to, t.cpu, t.cuda, t.float, t.double, t.contiguous,
        t.expand, t.expand_as, t.reshape, t.view, t.unsqueeze, t.squeeze, t.flatten, t.narrow,
        t.index_select, t.select, t.repeat, t.flip, t.roll, t.pin_memory, t.share_memory_,
        torch.clone, torch.stack, torch.cat, torch.concat, torch.concatenate, torch.unsqueeze,
        torch.squeeze, torch.flatten, torch.narrow, torch.index_select, torch.select, torch.reshape,
        torch.flip, torch.roll, torch.detach,
    })


_STRUCTURAL = _structural_ops()


class RelaxedRealization(torch.Tensor):
    """A relaxed realization tensor that carries the exact log-weights of its candidates (see the
    module docstring). Build it with :func:`with_log_weights`; read them with
    :func:`carried_log_weights`."""

    _log_weights: torch.Tensor  # the value's shape: column 0 zero, columns 1: the log-weights
    # (value version, log-weights version) when the pair is known to match (a draw as the sampler made
    # it, and structural operations of such draws); an in-place edit of either changes its version
    _matched_at: tuple[int, int] | None = None

    @property
    def _pyro_dpp_log_weights(self) -> torch.Tensor:
        return self._log_weights[..., 1:]

    @_pyro_dpp_log_weights.setter
    def _pyro_dpp_log_weights(self, log_weights: torch.Tensor) -> None:
        self._log_weights = _pad_time_column(log_weights)

    def __deepcopy__(self, memo: dict) -> RelaxedRealization:
        if id(self) not in memo:
            memo[id(self)] = _wrap(copy.deepcopy(plain(self), memo), copy.deepcopy(self._log_weights, memo))
        return memo[id(self)]

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*args, **kwargs)
            if func not in _STRUCTURAL or not isinstance(out, torch.Tensor):
                return out
            companions, complete = _companions(args)
            if not complete:
                return out
            logs = func(*companions, **kwargs)
        if not isinstance(logs, torch.Tensor) or logs.shape != out.shape:
            return out
        return _wrap(out, logs, matched=all(_still_matched(x) for x in _relaxed_args(args)))


def _pad_time_column(log_weights: torch.Tensor) -> torch.Tensor:
    return torch.cat([log_weights.new_zeros(log_weights.shape[:-1] + (1,)), log_weights], -1)


def _wrap(value: torch.Tensor, logs: torch.Tensor, matched: bool = False) -> RelaxedRealization:
    with torch._C.DisableTorchFunctionSubclass():
        out = value.as_subclass(RelaxedRealization)
    out._log_weights = logs
    if matched:
        out._matched_at = (out._version, logs._version)
    return out


def _still_matched(value: RelaxedRealization) -> bool:
    """Whether ``value`` was made matching its log-weights and neither was edited in place since."""
    return value._matched_at == (value._version, value._log_weights._version)


def _relaxed_args(args: Any) -> list[RelaxedRealization]:
    found = []
    for x in args:
        if isinstance(x, RelaxedRealization):
            found.append(x)
        elif isinstance(x, (list, tuple)):
            found.extend(_relaxed_args(x))
    return found


def _companions(args: Any) -> tuple[Any, bool]:
    """``args`` with every relaxed value replaced by its log-weights; ``False`` if a sequence
    (``torch.stack``/``cat``) mixes relaxed values with plain tensors."""
    complete = True

    def swap(x: Any, in_sequence: bool) -> Any:
        nonlocal complete
        if isinstance(x, RelaxedRealization):
            return x._log_weights
        if isinstance(x, (list, tuple)):
            return type(x)(swap(y, True) for y in x)
        if in_sequence and isinstance(x, torch.Tensor):
            complete = False
        return x

    return tuple(swap(a, False) for a in args), complete


def with_log_weights(value: torch.Tensor, log_weights: torch.Tensor) -> RelaxedRealization:
    """``value`` (a relaxed realization, ``batch x events x (K+2)``) carrying ``log_weights``
    (``batch x events x (K+1)``, zero on padding rows); keeps autograd history of both."""
    if log_weights.shape != value.shape[:-1] + (value.shape[-1] - 1,):
        raise ValueError(
            f"log_weights must have shape {tuple(value.shape[:-1]) + (value.shape[-1] - 1,)} for a value of shape "
            f"{tuple(value.shape)}, got {tuple(log_weights.shape)}"
        )
    return _wrap(value, _pad_time_column(log_weights.to(value.dtype)))


def sampled(value: torch.Tensor, log_weights: torch.Tensor) -> RelaxedRealization:
    """:func:`with_log_weights` for a draw whose weights are the exponentials of ``log_weights`` (or
    their one-hot argmax, straight-through) by construction: :func:`carried_log_weights` skips its
    consistency check until the value or its log-weights are edited in place."""
    out = with_log_weights(value, log_weights)
    return _wrap(plain(out), out._log_weights, matched=True)


def plain(value: torch.Tensor) -> torch.Tensor:
    """``value`` as a plain :class:`torch.Tensor` (a relaxed value without its log-weights; autograd
    history kept)."""
    if isinstance(value, RelaxedRealization):
        with torch._C.DisableTorchFunctionSubclass():
            return value.as_subclass(torch.Tensor)
    return value


def carried_log_weights(value: torch.Tensor) -> torch.Tensor | None:
    """The exact log-weights ``batch x events x (K+1)`` a relaxed value carries, or None.

    :raises ValueError: if they no longer match the weights (the value was edited in place): each
        real row's weights must be their exponentials, or for a straight-through draw the one-hot
        of their largest entry.
    """
    logs = getattr(value, LOG_WEIGHTS_ATTR, None)
    if logs is None:
        return None
    if isinstance(value, RelaxedRealization) and _still_matched(value):
        return plain(logs)
    value, logs = plain(value), plain(logs)
    with torch.no_grad():
        weights = value[..., 1:]
        real = event_mask(value).unsqueeze(-1)
        atol = _atol(value.dtype)
        soft = ((logs.exp() - weights).abs() <= atol).all(-1)
        hard = (weights - torch.nn.functional.one_hot(logs.argmax(-1), logs.shape[-1]).to(weights)).abs() <= atol
        ok = ~real.squeeze(-1) | soft | hard.all(-1)
        if not bool(ok.all()):
            raise ValueError(
                "a relaxed value's carried log-weights no longer match its weights (was it edited in place?); "
                "score an unmodified draw, or a plain tensor (pyro_dpp.relaxed.plain(value)) if no weight underflowed"
            )
    return logs


torch.serialization.add_safe_globals([RelaxedRealization])
