"""The intensity interface: history -> conditional intensity, in two evaluation modes.

An :class:`Intensity` describes ``lambda_k(t | H_t)`` for ``K`` *modelled* marks, given a history of
events over ``K + C`` marks: the modelled marks first, then ``C`` *context* marks (events that enter
the history but are not modelled, such as observed spikes when sampling hidden ones). History events
are weighted: ``weights[..., e, j]`` is event ``e``'s weight on mark ``j`` (one-hot for exact events,
soft for relaxed candidates, all zero for padding), and every intensity must be a function of the
weighted history, so that padding rows change nothing.

Two ways to evaluate (DESIGN §5), which must agree to float precision:

1. **Scan** (used by the samplers): :meth:`Intensity.initial_state`, :meth:`Intensity.rates` and
   :meth:`Intensity.update` step through events in time order with a compact state, batched over
   any leading batch shape. ``rates(state, t)`` is the intensity at ``t`` given the events folded
   into ``state`` so far (all of them before ``t``).
2. **Parallel** (used for scoring): :meth:`Intensity.forward` evaluates the intensity at many query
   times from a whole padded history at once, counting only events strictly before each query.

Writing your own: subclass :class:`Intensity`, set ``num_marks`` and ``num_context_marks``, implement
the four methods above and ``batch_shape``; optionally :meth:`compensator` (a closed form, else
quadrature is used), :meth:`breakpoints` (times where the intensity is not smooth, to place
quadrature nodes), :meth:`max_rate` (a constant bound on the summed rates, used when ``bound`` is
omitted), :meth:`local_bound` (for Ogata-style exact sampling without a global bound),
:meth:`history_support` (a lag beyond which events change nothing, which makes scoring linear) and
:meth:`history_reach` (how far back events count, for windows of long recordings,
:mod:`pyro_dpp.windows`). Parameter batch dimensions must broadcast against the data's batch
dimensions from the right.

**Speed.** The samplers run an intensity's scan through one engine (:mod:`pyro_dpp.scan`) when
:meth:`Intensity.scan_filter` hands it a :class:`~pyro_dpp.scan.ScanFilter`: the history filter
(how an event's weights enter the state, how the state drives the rates, and the reverse of both
for the backward pass). The stock intensities return theirs; a subclass keeps its parent's filter
(and numba kernel) unless it overrides one of :data:`MATH_METHODS`, or an instance attribute shadows
one, since the stock filter would then compute something else (see :func:`keeps_math`).

An intensity without a filter (a user's own, or a stock subclass that overrides its math) samples
through the generic checkpointed scan (:mod:`pyro_dpp.scan.generic`) under every backend but
``"reference"`` (the eager loop, the oracle). Under those backends an intensity whose
:attr:`Intensity.parallel_scoring` is False (the default) also scores (``log_prob``) by a scan over
the events (:mod:`pyro_dpp.scan.generic_scoring`), which stacks states along a new leading batch
dimension: the scan methods must accept any leading batch shape, keep the state a (nested) tuple of
tensors, and not modify a state in place. Tensors that require grad must be held by the intensity
(attributes, submodules, lists or dicts of them), so the generic paths can pass them their
gradients. Set :attr:`Intensity.parallel_scoring` to score through :meth:`forward` instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

State = tuple[torch.Tensor, ...]

#: The methods that define an intensity's values: a subclass overriding one loses the stock filter.
MATH_METHODS = ("rates", "log_rates", "update", "initial_state", "forward", "log_forward")


def keeps_math(obj: object, stock: type, names: tuple[str, ...] = MATH_METHODS) -> bool:
    """Whether ``obj`` (an instance of ``stock`` or of a subclass) computes with ``stock``'s own
    ``names``: no subclass between them overrides one and no instance attribute shadows one (a test
    spy, a monkeypatch)."""
    if any(name in vars(obj) for name in names):
        return False
    return all(getattr(type(obj), name) is getattr(stock, name) for name in names)


class Intensity(torch.nn.Module):
    """Base class of conditional intensities (see the module docstring for the contract).

    :ivar int num_marks: ``K``, the marks this intensity models.
    :ivar int num_context_marks: ``C``, marks that only enter the history.
    :ivar bool parallel_scoring: score (``log_prob``) through the parallel :meth:`forward` rather
        than as a linear-time scan over the events (:mod:`pyro_dpp.scan.generic_scoring`). False by
        default, since a parallel evaluation written by hand is often pairwise (O(events^2)); the
        stock intensities, whose parallel paths are chunked and linear, set it True. Set it on a
        class or an instance to force either way.
    """

    num_marks: int
    num_context_marks: int = 0
    parallel_scoring: bool = False

    @property
    def num_history_marks(self) -> int:
        """``K + C``: the width of the history weights."""
        return self.num_marks + self.num_context_marks

    @property
    def batch_shape(self) -> torch.Size:
        """Batch shape of the parameters (broadcast against the data's)."""
        raise NotImplementedError

    def like(self) -> torch.Tensor:
        """A tensor with the dtype and device computations should use: the first parameter or buffer,
        else the first floating tensor the intensity holds as a plain attribute (as a user's own
        intensity may hold ``softplus(pyro.param(...))``), else a default-dtype scalar."""
        for t in list(self.parameters()) + list(self.buffers()):
            return t
        for t in vars(self).values():
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                return t
        return torch.zeros(())

    # ---- scan ------------------------------------------------------------------------------
    def initial_state(self, batch_shape: torch.Size, like: torch.Tensor, num_steps: int) -> State:
        """The state of an empty history for data of shape ``batch_shape``; the scan will fold in
        at most ``num_steps`` events (finite-support kernels may size a history window by it)."""
        raise NotImplementedError

    def rates(self, state: State, time: torch.Tensor) -> torch.Tensor:
        """``batch x K`` intensities at ``time`` (``batch``) given the events in ``state``."""
        raise NotImplementedError

    def update(self, state: State, time: torch.Tensor, weights: torch.Tensor) -> State:
        """Fold an event at ``time`` (``batch``) with ``weights`` (``batch x (K + C)``) into the state."""
        raise NotImplementedError

    def log_rates(self, state: State, time: torch.Tensor) -> torch.Tensor:
        """``log rates(state, time)``; override where a stable log-space form exists (an intensity
        whose rates underflow to zero in float32 would otherwise give -inf log-likelihoods)."""
        return safe_log(self.rates(state, time))

    def scan_filter(self, keys: torch.Tensor, batch: torch.Size) -> Any:
        """The history filter of this intensity on a time line, for the scan engine, or None.

        :param keys: ``B x S`` nondecreasing step times (``B`` the flattened batch, no gradient).
        :param batch: the unflattened batch shape.
        :returns: a :class:`pyro_dpp.scan.ScanFilter` (see :mod:`pyro_dpp.scan.filter` for the
            protocol), or None (the default): the thinning sampler then runs the generic
            checkpointed scan (:mod:`pyro_dpp.scan.generic`) over :meth:`log_rates` and
            :meth:`update` (the eager reference loop under backend ``"reference"``).
        """
        return None

    # ---- parallel --------------------------------------------------------------------------
    def log_forward(self, times: torch.Tensor, weights: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """``log forward(times, weights, query)``, in a stable log-space form where one exists."""
        return safe_log(self(times, weights, query))

    def forward(self, times: torch.Tensor, weights: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """``batch x Q x K`` intensities at ``query`` (``batch x Q``) given the history ``times``
        (``batch x E``) with ``weights`` (``batch x E x (K + C)``), counting events strictly before."""
        raise NotImplementedError

    # ---- optional --------------------------------------------------------------------------
    def integrate_intervals(
        self, times: torch.Tensor, weights: torch.Tensor, centre: torch.Tensor, half: torch.Tensor, nodes: int
    ) -> torch.Tensor | None:
        """``batch`` sum over intervals ``[centre - half, centre + half]`` (``batch x P`` each) of the
        integral of the summed intensity, by Gauss-Legendre quadrature with (at most) ``nodes``
        nodes, where no breakpoint (event time or :meth:`breakpoints`) lies inside an interval. An
        intensity may use that to evaluate the history once per interval instead of once per node;
        None (the default) means "evaluate at every node"."""
        return None

    def compensator(
        self, times: torch.Tensor, weights: torch.Tensor, duration: torch.Tensor
    ) -> torch.Tensor | None:
        """``batch`` integral of the summed intensity over ``[0, duration]`` in closed form, or None."""
        return None

    def breakpoints(self, times: torch.Tensor, weights: torch.Tensor) -> torch.Tensor | None:
        """``batch x P`` extra times where the intensity has kinks (besides event times), or None."""
        return None

    def history_support(self) -> float:
        """The largest lag at which a history event still changes the intensity (``inf``, the
        default: any). Scoring evaluates each chunk of query times from the events within this lag
        before it only, which makes its cost linear in the events for kernels of finite support.

        The same concept as :meth:`history_reach`, held to a stricter rule: scoring's cut must
        never change a log-likelihood beyond the model's float precision, and must not trust a
        parent's kernels. The stock history kernels return their :meth:`history_reach` at their
        own dtype where the events beyond it change the intensity below precision *in total*
        (finite supports; exponential tails), else ``inf``: power laws without a support (each
        event beyond the reach changes the intensity below precision, but their heavy tail can
        sum above it), and any subclass that overrides one of :data:`MATH_METHODS`."""
        return math.inf

    def history_reach(self, dtype: torch.dtype | None = None) -> float | None:
        r"""How far back (seconds) an event still changes the intensity: the past each window of a
        long recording carries (:mod:`pyro_dpp.windows`), so that the windows' log-likelihoods sum
        to the recording's.

        The lag beyond which every history kernel has fallen below ``dtype``'s epsilon relative to
        its largest value: a finite kernel's support, ``log(1 / eps)`` slowest time constants for
        exponentials (:meth:`negligible_lag`), ``c (eps^{-1/b} - 1)`` for a power law
        ``(c + lag)^{-b}``, ``0`` for no history. Windows shift time (each starts
        at 0), so an intensity that depends on absolute time raises here.

        The default is :meth:`history_support` where it is finite, else None (not known:
        :func:`pyro_dpp.windows.history_reach` then asks for ``history=``). Override it next to
        your kernels' math. A subclass of a stock intensity keeps its parent's reach, also where it
        overrides the math (the kernels' shape is taken as the parent's, as a nonlinear or
        rescaled variant keeps it): override this method where a subclass looks further back.

        :param dtype: the data's dtype (where an override needs one and none is given: the
            intensity's, :meth:`like`); kernels of infinite support are cut where they fall below
            its epsilon.
        :returns: the reach in seconds (``>= 0``; ``inf``: all earlier events), or None if unknown.
        :raises ValueError: where windows cannot be used at all (an intensity of absolute time).
        """
        support = self.history_support()
        return float(support) if math.isfinite(support) else None

    @staticmethod
    def negligible_lag(slowest_rate: Any, dtype: torch.dtype) -> float:
        """``log(1 / eps) / slowest_rate``: the lag beyond which an exponential kernel of the slowest
        decay rate has fallen below ``dtype``'s epsilon relative to its value at lag 0 (the history
        support of exponential kernels: older events change the intensity below float precision)."""
        rate = float(torch.as_tensor(slowest_rate).detach().min())
        return math.log(1 / torch.finfo(dtype).eps) / rate if rate > 0 else math.inf

    def max_rate(self) -> torch.Tensor | None:
        """A constant bound on the summed intensity over any history (parameter batch shape), or None."""
        return None

    def local_bound(self, state: State, time: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(bound, horizon)``: the summed intensity stays below ``bound`` on ``(time, time + horizon]``
        if no event happens there. None if the intensity offers no such bound."""
        return None

    def mean_count(self, duration: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(mean, std)`` guesses of the number of events in ``[0, duration]``, used to size
        ``max_events`` when no bound is given; None if unknown."""
        return None


def as_param(value: Any, like: torch.Tensor | None = None) -> torch.Tensor:
    """A tensor from user input, keeping a given tensor (and its graph) as it is."""
    if isinstance(value, torch.Tensor):
        return value
    dtype = like.dtype if like is not None else torch.get_default_dtype()
    device = like.device if like is not None else None
    return torch.as_tensor(value, dtype=dtype, device=device)


def check_finite(name: str, value: torch.Tensor) -> None:
    if not torch.isfinite(value).all():
        raise ValueError(f"{name} contains NaN or inf")


def within(tensors: Sequence[torch.Tensor], lower: float, strict: bool = False) -> bool:
    """Whether every entry of ``tensors`` is finite and ``>= lower`` (``> lower`` if ``strict``):
    one reduction and one host synchronisation for all of them, the fast path of argument checks
    that say, when it fails, what is wrong. False where it cannot tell (mixed devices)."""
    flat = [t.detach().reshape(-1) for t in tensors if t.numel()]
    if not flat:
        return True
    try:
        lo, hi = torch.stack(torch.aminmax(flat[0] if len(flat) == 1 else torch.cat(flat))).tolist()
    except RuntimeError:  # mixed devices, unsupported dtypes: leave it to the detailed checks
        return False
    return (lo > lower if strict else lo >= lower) and hi < math.inf  # False for NaN


def broadcast_shapes(*shapes: Sequence[int]) -> torch.Size:
    """:func:`torch.broadcast_shapes` for plain shapes, without its per-call overhead (it runs on
    every distribution built in a model); raises ``RuntimeError`` alike on shapes that do not
    broadcast."""
    first = shapes[0]
    if all(s == first for s in shapes[1:]):
        return torch.Size(first)
    out = [1] * max(len(s) for s in shapes)
    for shape in shapes:
        for i, n in enumerate(shape, len(out) - len(shape)):
            if n != 1 and out[i] != n:
                if out[i] != 1:
                    raise RuntimeError(f"shapes {[tuple(s) for s in shapes]} do not broadcast")
                out[i] = n
    return torch.Size(out)


def safe_log(x: torch.Tensor) -> torch.Tensor:
    """``log x`` with -inf at zero and a zero (not NaN) gradient there."""
    positive = x > 0
    return torch.where(positive, torch.log(torch.where(positive, x, torch.ones_like(x))), -torch.inf)


def pairwise_lags(times: torch.Tensor, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch x Q x E`` lags ``query - times`` clamped at zero, and the mask of strictly positive lags."""
    lag = query.unsqueeze(-1) - times.unsqueeze(-2)
    before = lag > 0
    return torch.where(before, lag, torch.zeros_like(lag)), before
