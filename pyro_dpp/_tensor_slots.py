"""The tensors an intensity holds, for the conformance suite's gradient checks
(:mod:`pyro_dpp.testing`): found with their owners (:func:`tensor_slots`), copied in another dtype
(:func:`cast_copy`), replaced by fresh leaves requiring gradients (:func:`with_leaves`) and rebound
to other values (:func:`bind`, for ``gradcheck``)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ._conformance import ConformanceError
from .intensity.base import Intensity


def tensor_slots(module: torch.nn.Module) -> list[tuple[str, torch.nn.Module, str, str, torch.Tensor]]:
    """Every tensor a module holds: ``(qualified name, owner, attribute, kind, tensor)`` with kind
    ``"parameter"``, ``"buffer"`` or ``"attribute"`` (a plain tensor attribute); shared tensors once."""
    seen: set[int] = set()
    out = []
    for prefix, owner in module.named_modules():
        dot = prefix + "." if prefix else ""
        groups = (("parameter", owner._parameters), ("buffer", owner._buffers),
                  ("attribute", {n: v for n, v in vars(owner).items() if isinstance(v, torch.Tensor)}))
        for kind, entries in groups:
            for name, tensor in entries.items():
                if tensor is not None and id(tensor) not in seen:
                    seen.add(id(tensor))
                    out.append((dot + name, owner, name, kind, tensor))
    return out


def cast_copy(intensity: Intensity, dtype: torch.dtype) -> Intensity:
    """A deep copy with every floating tensor detached and cast to ``dtype``."""
    memo: dict[int, Any] = {}
    for _, _, _, kind, tensor in tensor_slots(intensity):
        new = tensor.detach().to(dtype if tensor.is_floating_point() else tensor.dtype).clone()
        memo[id(tensor)] = torch.nn.Parameter(new, requires_grad=False) if kind == "parameter" else new
    try:
        return copy.deepcopy(intensity, memo)
    except Exception as err:
        raise ConformanceError("interface", f"cannot copy the intensity ({type(err).__name__}: {err}); pass "
                               "make=lambda dtype: ... building an equal intensity in that dtype") from err


def _leaves(intensity: Intensity, params: Sequence[str] | None) -> dict[str, tuple[torch.nn.Module, str, str]]:
    slots = tensor_slots(intensity)
    names = [s[0] for s in slots]
    if params is not None:
        missing = [p for p in params if p not in names]
        if missing:
            raise ConformanceError("interface", f"params {missing} are not tensors of the intensity; it holds {names}")
    chosen = {}
    for name, owner, attr, kind, tensor in slots:
        wanted = name in params if params is not None else kind != "buffer"
        if wanted and tensor.is_floating_point():
            chosen[name] = (owner, attr, kind)
    return chosen


def _store(owner: torch.nn.Module, kind: str) -> dict:
    """Where ``owner`` keeps a tensor of ``kind`` (see :func:`tensor_slots`)."""
    return {"parameter": owner._parameters, "buffer": owner._buffers}.get(kind, owner.__dict__)


def bind(slots: dict[str, tuple[torch.nn.Module, str, str]], values: Sequence[torch.Tensor]) -> None:
    """Put ``values`` in the ``slots`` of :func:`with_leaves`, in order."""
    for (owner, attr, kind), value in zip(slots.values(), values):
        _store(owner, kind)[attr] = value


def with_leaves(intensity: Intensity, dtype: torch.dtype, params: Sequence[str] | None,
                 make: Callable[[torch.dtype], Intensity] | None = None
                 ) -> tuple[Intensity, dict[str, tuple[torch.nn.Module, str, str]], list[torch.Tensor]]:
    """A copy in ``dtype`` whose checked tensors are fresh leaves requiring gradients."""
    model = cast_copy(make(dtype) if make is not None else intensity, dtype)
    slots = _leaves(model, params)
    leaves = []
    for owner, attr, kind in slots.values():
        leaves.append(_store(owner, kind)[attr].requires_grad_(True))
    return model, slots, leaves
