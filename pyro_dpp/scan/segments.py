"""Checkpointed segments: what the generic scans (:mod:`pyro_dpp.scan.generic` for sampling,
:mod:`pyro_dpp.scan.generic_scoring` for scoring) share.

Both run a user's scan under ``torch.no_grad()``, keep the state every ``k`` steps, and in the
backward pass recompute one segment at a time under autograd and pull the cotangents through it
with one :func:`torch.autograd.grad` call: the intensity's tensors are found by walking the
module (:func:`intensity_tensors`), a tensor it uses but does not hold is refused
(:func:`check_captured`), and each segment's gradients are distributed to the carry, the
parameters and the other inputs (:func:`add_segment_grads`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils import _pytree as pytree

from ..intensity.base import Intensity, State


@dataclass
class SegmentPlan:
    """What every checkpointed scan needs besides its differentiable inputs: the intensity, the
    pytree spec of its state and the counts of state leaves and of the intensity's tensors
    (``params``) among the autograd function's inputs."""

    intensity: Intensity
    spec: Any
    num_state: int
    num_params: int
    params: list[torch.Tensor]


def default_checkpoint_every(steps: int) -> int:
    """``ceil(sqrt(steps))``: O(sqrt(S)) checkpoints and O(sqrt(S)) steps per recomputed segment."""
    return max(1, math.ceil(math.sqrt(max(steps, 1))))


def intensity_tensors(module: torch.nn.Module, requiring_grad: bool = True) -> list[torch.Tensor]:
    """The tensors requiring grad (all of them if not ``requiring_grad``) that ``module`` holds: its
    parameters and buffers, tensors in its ``__dict__`` (leaf or not), in its submodules, and in lists,
    tuples and dicts of those, each once."""
    found: list[torch.Tensor] = []
    seen: set[int] = set()
    stack: list[Any] = [module]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            if obj.requires_grad or not requiring_grad:
                found.append(obj)
        elif isinstance(obj, torch.nn.Module):
            stack.extend(reversed(list(vars(obj).values())))
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        elif isinstance(obj, dict):
            stack.extend(obj.values())
    return found


def _hidden_tensor(what: str) -> ValueError:
    return ValueError(
        f"the intensity's computation depends on a tensor requiring grad{what} that the intensity does not "
        "hold, so the generic scan cannot pass it its gradient; store it as an attribute of the intensity (or "
        "of a submodule, list or dict it holds), or run the reference scan (pyro_dpp.set_backend('reference'))"
    )


def check_captured(outputs: list[torch.Tensor], inputs: list[torch.Tensor]) -> None:
    """Raise if the graph of ``outputs`` reaches a tensor requiring grad other than through ``inputs``
    (its gradient would be lost)."""
    inside = {id(t) for t in inputs}
    stops = {t.grad_fn for t in inputs if t.grad_fn is not None}
    stack = [o.grad_fn for o in outputs if o.grad_fn is not None]
    seen = set()
    while stack:
        node = stack.pop()
        if node is None or node in seen or node in stops:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)
        if variable is not None:
            if id(variable) not in inside:
                raise _hidden_tensor(f" (shape {tuple(variable.shape)})")
            continue
        stack.extend(n for n, _ in node.next_functions)


def segment_vjp(pairs: list[tuple[torch.Tensor, torch.Tensor]], wanted: list[torch.Tensor],
                check: bool) -> list:
    """One vector-Jacobian product through a recomputed segment: the gradients of ``wanted`` given
    ``(output, cotangent)`` ``pairs`` (None where unused); with ``check``, first
    :func:`check_captured` (the graph of one segment, the last, is walked)."""
    if check:
        check_captured([o for o, _ in pairs], wanted)
    if not (pairs and wanted):
        return [None] * len(wanted)
    return list(torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs], allow_unused=True))


def add_segment_grads(grads: list, starts: list[torch.Tensor], grad_params: list,
                      targets: tuple[tuple[bool, torch.Tensor | None, Any], ...] = ()) -> list:
    """Distribute one segment's gradients, in the order :func:`segment_vjp` got them for ``wanted =
    [start leaves requiring grad] + params + [one per needed target]``: returns the cotangents of the
    start leaves (the carry into the segment before), adds the parameters' into ``grad_params`` and
    each needed target's into ``accumulator[where]`` for ``(need, accumulator, where)`` in ``targets``."""
    grads = list(grads)
    carry = [grads.pop(0) if x.requires_grad else None for x in starts]
    for i in range(len(grad_params)):
        g = grads.pop(0)
        if g is not None:
            grad_params[i] = g if grad_params[i] is None else grad_params[i] + g
    for need, accumulator, where in targets:
        if need:
            g = grads.pop(0)
            if g is not None:
                accumulator[where] += g
    return carry


def _leaves(state: State) -> tuple[list[torch.Tensor], Any]:
    leaves, spec = pytree.tree_flatten(state)
    if not all(isinstance(x, torch.Tensor) for x in leaves):
        raise ValueError("an intensity's scan state must be a (nested) tuple of tensors")
    return leaves, spec
