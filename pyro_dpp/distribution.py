"""The :class:`PointProcess` distribution."""

from __future__ import annotations

import math
from typing import Any

import torch
from pyro.distributions import TorchDistribution
from torch.distributions import constraints

from .events import SpikeTrains, num_marks_of, validate_realization
from .intensity.base import Intensity
from .likelihood import DEFAULT_QUADRATURE_NODES, dpp_log_density, exact_log_likelihood
from .thinning import default_max_events, sample_exact, sample_ogata, sample_relaxed

#: What ``PointProcess.log_prob`` scores at ``temperature > 0``: the DPP density, or the exact
#: log-likelihood formula at the soft realization.
RELAXED_LOG_PROBS = ("dpp", "exact")


class _Realization(constraints.Constraint):
    """Padded realization tensors (see :mod:`pyro_dpp.events`); :meth:`PointProcess.log_prob` checks
    them in detail and raises with a message, so this only checks the layout."""

    event_dim = 2

    def check(self, value: torch.Tensor) -> torch.Tensor:
        weights = value[..., 1:]
        total = weights.sum(-1)
        ok = torch.isfinite(value).all(-1) & (weights >= 0).all(-1) & (((total - 1).abs() < 1e-3) | (total == 0))
        return ok.all(-1)


realization = _Realization()


class PointProcess(TorchDistribution):
    r"""A marked temporal point process on ``[0, duration]`` as a Pyro distribution.

    With ``temperature == 0`` this is the exact process: :meth:`sample` is exact thinning (with the
    constant ``bound``, or Ogata's local bounds when the intensity offers them) and
    :meth:`log_prob` the exact log-likelihood

    .. math:: \log p = \sum_e \log\lambda_{k_e}(t_e \mid H_{t_e}) - \sum_k \int_0^T \lambda_k(t \mid H_t)\,dt.

    With ``temperature > 0`` it is the *differentiable point process* (DPP): :meth:`rsample`
    draws candidates :math:`s_1 < \dots < s_N` from a Poisson process of rate :math:`\bar\lambda`
    (``bound``) and gives every candidate a Concrete soft mark
    :math:`y_n = \mathrm{softmax}((\log\pi_n + g_n)/\tau)` over the ``K`` marks and "no event", where
    :math:`\pi_n = (\lambda_1, \dots, \lambda_K, \bar\lambda - \sum_k\lambda_k)/\bar\lambda` is computed
    from the *soft* history; :meth:`log_prob` is its density

    .. math:: \log q = N\log\bar\lambda - \bar\lambda T + \sum_n \log\mathrm{Concrete}_\tau(y_n;\pi_n).

    Values are padded realization tensors ``batch_shape + (max_events, K + 2)`` (layout in
    :mod:`pyro_dpp.events`; :class:`~pyro_dpp.SpikeTrains` converts). :meth:`log_prob` accepts any
    number of rows, so observed data need not be padded to ``max_events``.

    **References**

    [1] H. Kajino, "A Differentiable Point Process with Its Application to Spiking Neural
        Networks", ICML 2021.
    [2] Y. Ogata, "On Lewis' simulation method for point processes", IEEE Trans. Inf. Theory, 1981.
    [3] C. J. Maddison, A. Mnih, Y. W. Teh, "The Concrete Distribution", ICLR 2017.

    :param Intensity intensity: the conditional intensity (:mod:`pyro_dpp.intensity`).
    :param duration: window length ``T`` (scalar or per sequence).
    :param bound: a constant :math:`\bar\lambda \ge \sum_k \lambda_k(t \mid H_t)`; defaults to the
        intensity's ``max_rate()``. Required for ``temperature > 0`` if the intensity has none.
    :param float temperature: 0 for the exact process, > 0 for the DPP.
    :param context: events of other marks that enter the history but are not modelled: a
        realization tensor ``batch x M x (C + 2)`` or :class:`~pyro_dpp.SpikeTrains` with ``C =
        intensity.num_context_marks``.
    :param int max_events: rows of a sample (events, or candidates for the DPP); defaults to a
        Poisson tail bound of ``bound * duration``. A draw that would need more rows raises.
    :param bool straight_through: one-hot marks in the forward pass, soft gradients backward.
    :param int quadrature_nodes: Gauss-Legendre nodes per interval for compensators without a
        closed form.
    :param str relaxed_log_prob: what :meth:`log_prob` scores when ``temperature > 0``: ``"dpp"``
        (default) the DPP density above; ``"exact"`` the exact log-likelihood formula evaluated at the
        soft realization, :math:`\sum_n\sum_k y_{nk}\log\lambda_k(s_n) - \sum_k\int_0^T\lambda_k\,dt`
        with the soft history. The latter is not the density of the draws, but as
        :math:`\tau \to 0` it tends to the exact log-likelihood of the hard realization, so a
        path-wise ELBO built from it tends to the *exact* ELBO; the DPP density's
        Concrete log-ratios do not: per candidate, given its rates, the expected log-ratio (the
        relaxed KL) is the same at every :math:`\tau` and differs from the categorical KL.
    """

    arg_constraints: dict[str, constraints.Constraint] = {}
    support = realization
    has_rsample = False

    def __init__(
        self,
        intensity: Intensity,
        duration: Any,
        bound: Any = None,
        temperature: float = 0.0,
        context: Any = None,
        max_events: int | None = None,
        straight_through: bool = False,
        validate_args: bool | None = None,
        quadrature_nodes: int = DEFAULT_QUADRATURE_NODES,
        relaxed_log_prob: str = "dpp",
    ) -> None:
        if not isinstance(intensity, Intensity):
            raise ValueError(f"intensity must be a pyro_dpp.intensity.Intensity, got {type(intensity).__name__}")
        like = intensity.like()
        self.intensity = intensity
        self.duration = _positive("duration", duration, like)
        self.temperature = _temperature(temperature)
        if straight_through and self.temperature == 0:
            raise ValueError("straight_through=True needs temperature > 0 (a relaxation to pass gradients through)")
        self.straight_through = bool(straight_through)
        if relaxed_log_prob not in RELAXED_LOG_PROBS:
            raise ValueError(f"relaxed_log_prob must be one of {RELAXED_LOG_PROBS}, got {relaxed_log_prob!r}")
        self.relaxed_log_prob = relaxed_log_prob
        self.quadrature_nodes = int(quadrature_nodes)
        if bound is None:
            bound = intensity.max_rate()
            if bound is not None:
                bound = bound.detach()
                if not (torch.isfinite(bound).all() and (bound > 0).all()):
                    raise ValueError(
                        f"this intensity's largest rate (max_rate(), used as the thinning bound since no bound= "
                        f"was passed) is {bound}, not positive and finite: give the intensity positive finite "
                        "rates, or pass bound="
                    )
        if bound is not None:
            bound = _positive("bound", bound, like)
        elif self.temperature > 0:
            raise ValueError(
                "temperature > 0 needs a constant bound on the summed intensity and this intensity offers "
                "none (max_rate() is None): pass bound="
            )
        self.bound = bound
        self.context = _context(context, intensity, like, self.duration)
        shapes = [intensity.batch_shape, self.duration.shape]
        if bound is not None:
            shapes.append(bound.shape)
        if self.context is not None:
            shapes.append(self.context.shape[:-2])
        try:
            batch_shape = torch.broadcast_shapes(*shapes)
        except RuntimeError as err:
            raise ValueError(
                "the batch shapes of intensity, duration, bound and context do not broadcast: "
                f"{[tuple(s) for s in shapes]}"
            ) from err
        self.max_events = self._max_events(max_events)
        self.has_rsample = self.temperature > 0
        event_shape = torch.Size((self.max_events, intensity.num_marks + 2))
        super().__init__(batch_shape, event_shape, validate_args=validate_args)

    def _max_events(self, max_events: int | None) -> int:
        if max_events is not None:
            if int(max_events) != max_events or max_events < 1:
                raise ValueError(f"max_events must be a positive integer, got {max_events!r}")
            return int(max_events)
        if self.bound is not None:
            return default_max_events(self.bound * self.duration)
        guess = self.intensity.mean_count(self.duration)
        if guess is None:
            raise ValueError(
                "cannot size max_events: this intensity has no bound and no mean count "
                "(e.g. a supercritical Hawkes process); pass max_events= or bound="
            )
        return default_max_events(*guess)

    @property
    def num_marks(self) -> int:
        return self.intensity.num_marks

    def expand(self, batch_shape: Any, _instance: Any = None) -> PointProcess:
        new = self._get_checked_instance(PointProcess, _instance)
        batch_shape = torch.Size(batch_shape)
        new.intensity = self.intensity
        new.temperature, new.straight_through = self.temperature, self.straight_through
        new.relaxed_log_prob = self.relaxed_log_prob
        new.quadrature_nodes, new.max_events = self.quadrature_nodes, self.max_events
        new.has_rsample = self.has_rsample
        new.duration = self.duration.expand(batch_shape)
        new.bound = None if self.bound is None else self.bound.expand(batch_shape)
        new.context = None if self.context is None else self.context.expand(batch_shape + self.context.shape[-2:])
        super(PointProcess, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def _broadcast(self, sample_shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        shape = torch.Size(sample_shape) + self.batch_shape
        _check_draw_memory(shape, self.max_events, self.num_marks, self.duration)
        duration = self.duration.expand(shape)
        bound = None if self.bound is None else self.bound.expand(shape)
        context = None if self.context is None else self.context.expand(shape + self.context.shape[-2:])
        return duration, bound, context

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        """A differentiable draw (the DPP); needs ``temperature > 0``."""
        if self.temperature <= 0:
            raise ValueError(
                "rsample needs temperature > 0 (the relaxed, differentiable process); use sample() for the "
                "exact process"
            )
        duration, bound, context = self._broadcast(torch.Size(sample_shape))
        return sample_relaxed(
            self.intensity, bound, duration, context, self.max_events, self.temperature, self.straight_through
        )

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        """A draw without gradients: exact thinning if ``temperature == 0``, else a detached DPP draw."""
        if self.temperature > 0:
            with torch.no_grad():
                return self.rsample(sample_shape)
        duration, bound, context = self._broadcast(torch.Size(sample_shape))
        if bound is not None:
            return sample_exact(self.intensity, bound, duration, context, self.max_events)
        if type(self.intensity).local_bound is Intensity.local_bound:
            raise ValueError("this intensity offers no bound for exact sampling: pass bound=")
        return sample_ogata(self.intensity, duration, context, self.max_events)

    def _validate_sample(self, value: torch.Tensor) -> None:
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"value must be a torch.Tensor realization, got {type(value).__name__}")
        k = self.num_marks
        if value.dim() < 2 or value.shape[-1] != k + 2:
            raise ValueError(
                f"value must have shape batch x events x {k + 2} for {k} marks, got {tuple(value.shape)}; "
                "check the number of neurons of the data against the process"
            )
        try:
            torch.broadcast_shapes(value.shape[:-2], self.batch_shape)
        except RuntimeError as err:
            raise ValueError(
                f"value batch shape {tuple(value.shape[:-2])} does not broadcast with batch_shape "
                f"{tuple(self.batch_shape)}"
            ) from err
        validate_realization(value, k, self.duration, exact=self.temperature == 0)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """The exact log-likelihood (``temperature == 0``) or the DPP density (``temperature > 0``,
        unless ``relaxed_log_prob="exact"``)."""
        if self._validate_args:
            self._validate_sample(value)
        if self.temperature > 0 and self.relaxed_log_prob == "dpp":
            bound = self.bound
            return dpp_log_density(self.intensity, value, self.duration, bound, self.temperature, self.context)
        return exact_log_likelihood(self.intensity, value, self.duration, self.context, self.quadrature_nodes)


def _check_draw_memory(shape: torch.Size, max_events: int, num_marks: int, like: torch.Tensor) -> None:
    """Refuse, before allocating, a draw whose tensors (candidate times, marks, log-weights, the
    padded result: about four ``shape x max_events x (K + 2)`` tensors) exceed the memory limit."""
    from .memory import check_allocation

    check_allocation(
        4.0 * shape.numel() * max_events * (num_marks + 2) * like.element_size(),
        f"a draw of {shape.numel()} sequence(s) x max_events={max_events} rows x {num_marks + 2} columns",
        "pass a smaller bound, a shorter duration, or draw fewer sequences at once",
        like.device,
    )


def _positive(name: str, value: Any, like: torch.Tensor) -> torch.Tensor:
    value = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if not torch.isfinite(value).all() or (value <= 0).any():
        raise ValueError(f"{name} must be positive and finite, got {value}")
    return value


def _temperature(value: Any) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"temperature must be a number, got {value!r}") from err
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"temperature must be >= 0 and finite (0: exact process), got {value}")
    return value


def _context(context: Any, intensity: Intensity, like: torch.Tensor, duration: torch.Tensor) -> torch.Tensor | None:
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
    context = context.to(dtype=like.dtype, device=like.device)
    try:
        torch.broadcast_shapes(context.shape[:-2], duration.shape)
    except RuntimeError as err:
        raise ValueError(
            f"context batch shape {tuple(context.shape[:-2])} does not broadcast with duration {tuple(duration.shape)}"
        ) from err
    validate_realization(context, c, duration, name="context")
    return context
