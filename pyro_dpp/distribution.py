"""The :class:`PointProcess` distribution."""

from __future__ import annotations

from typing import Any

import torch
from pyro.distributions import TorchDistribution
from torch.distributions import constraints

from ._arguments import (  # noqa: F401 - SUPPORTED_DTYPES: re-exported
    SUPPORTED_DTYPES,
    as_context,
    as_dtype,
    as_positive,
    as_temperature,
    check_intensity_dtype,
    refuse_tracing,
)
from .dense_twin import dense_twin
from .events import INDEX_COLUMNS, dense_to_index, is_index, validate_index, validate_realization
from .intensity.base import Intensity, broadcast_shapes
from .intensity.hawkes import ExpHawkes
from .intensity.hawkes_stats import cached_statistics
from .likelihood import DEFAULT_QUADRATURE_NODES, dpp_log_density, exact_log_likelihood
from .past import check_past
from .sample_size import (
    DEFAULT_MAX_EVENTS,  # noqa: F401 - re-exported: the constant of the sizing rule below
    check_draw_memory,
    sample_rows,
    sizing_hint,
)
from .thinning import sample_exact, sample_ogata, sample_relaxed

#: What ``PointProcess.log_prob`` scores at ``temperature > 0``: the DPP density, or the exact
#: log-likelihood formula at the soft realization.
RELAXED_LOG_PROBS = ("dpp", "exact")

#: The layouts :class:`PointProcess` draws in (``value_format``); see :mod:`pyro_dpp.events`.
VALUE_FORMATS = ("dense", "index")


class _Realization(constraints.Constraint):
    """Padded realization tensors (see :mod:`pyro_dpp.events`); :meth:`PointProcess.log_prob` checks
    them in detail and raises with a message, so this only checks the layout."""

    event_dim = 2

    def check(self, value: torch.Tensor) -> torch.Tensor:
        if value.shape[-1] == INDEX_COLUMNS:  # an index value: time, mark id (-1 padding)
            ids = value[..., 1]
            return (torch.isfinite(value).all(-1) & (ids >= -1) & (ids == ids.round())).all(-1)
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

    **Value formats** (layouts in :mod:`pyro_dpp.events`; :class:`~pyro_dpp.SpikeTrains` converts
    from and to both, ``to_tensor(format=...)``):

    - *dense*: ``batch_shape + (events, K + 2)``: time, ``K`` mark weights, "no event" weight. What
      :meth:`sample` and :meth:`rsample` return by default; the only format of relaxed values
      (``temperature > 0``: soft weights over all marks).
    - *index*: ``batch_shape + (events, 2)``: time and integer mark id (-1 on padding rows), for
      exact events (``temperature == 0``) only. Two numbers per event whatever ``K``: observed spike
      trains of hundreds of neurons cost O(events), and :meth:`log_prob` scores them without building
      their one-hot weights (:func:`~pyro_dpp.likelihood.index_log_likelihood`; the same values as
      the dense layout). Pass it as ``pyro.sample(name, process, obs=value)``: plates, masks,
      ``poutine.scale``, ``Trace_ELBO`` and ``Predictive`` work as with dense values. With
      ``value_format="index"``, :meth:`sample` draws in this layout (``event_shape = (max_events,
      2)``), so that ``Predictive`` returns it too.

    :meth:`log_prob` accepts either format (two columns: index; ``K + 2``: dense) and any number of
    rows, so observed data need not be padded to ``max_events``, and scoring never needs a size: any
    valid parameters (a supercritical Hawkes process included) can be scored.

    **Sample size.** ``event_shape = (max_events, K + 2)`` depends only on what the caller fixes, never
    on parameter values, so that draws under different parameters (``Predictive`` over latent
    parameters, MCMC) stack:

    1. ``max_events`` if given;
    2. else, if ``bound`` is given, a Poisson tail bound of the candidate count: about
       ``bound * duration + 10 * sqrt(bound * duration) + 10`` (largest over the batch); a bound
       dominates the intensity with its context, so context events need no extra rows;
    3. else :data:`~pyro_dpp.sample_size.DEFAULT_MAX_EVENTS` plus one row per context row (``context.shape[-2]``, less
       the rows before the window, at times ``< 0``, that every sequence has; ``past`` rows never
       count: they are history, not sample rows).

    The intensity's own ``max_rate()`` (a Poisson rate, a GLM's amplitude) is used as the thinning
    bound when ``bound`` is omitted, but not for sizing, since it may be a latent parameter; for the
    same reason a ``bound`` computed from latent parameters makes the size parameter dependent
    (pass ``max_events`` then). A draw that does not fit raises a ``ValueError`` naming
    ``max_events``; nothing is truncated.

    **Dtypes.** Computation runs in the intensity's dtype, which must be float32 or float64 and the
    same for all its tensors (float16, bfloat16 or a mix raise a ``ValueError``). Every other input
    (``duration``, ``bound``, ``context``, values to score) is converted to that dtype, so results
    always have the intensity's dtype.

    **Tracing.** Sampling under :func:`torch.jit.trace` (e.g. Pyro's ``JitTrace_ELBO``) raises: the
    number of thinning candidates is random, and a trace would freeze it at the traced draw.
    :func:`torch.compile` is fine (the data-dependent sizes become graph breaks).

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
        Context events may lie before the window (times ``< 0``; see ``past``).
    :param past: events of the *modelled* marks before the window (times ``< 0``), a realization
        tensor ``batch x P x (K + 2)``: they enter the history, so the intensity on ``[0, duration]``
        is the one that follows them, but they are neither scored nor part of a sample (a window of
        a longer recording with the events before it: :meth:`~pyro_dpp.SpikeTrains.windows`;
        :mod:`pyro_dpp.past`).
    :param int max_events: rows of a sample (events, or candidates for the DPP); the default
        follows the sizing rule below. A draw that would need more rows raises a ``ValueError``.
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
    :param str value_format: the layout :meth:`sample` returns: ``"dense"`` (default) or
        ``"index"`` (exact process only); :meth:`log_prob` accepts both whatever this says.
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
        past: Any = None,
        value_format: str = "dense",
    ) -> None:
        if not isinstance(intensity, Intensity):
            raise ValueError(f"intensity must be a pyro_dpp.intensity.Intensity, got {type(intensity).__name__}")
        like = intensity.like()
        check_intensity_dtype(intensity, like)
        self.intensity = intensity
        self.duration = as_positive("duration", duration, like)
        self.temperature = as_temperature(temperature)
        if straight_through and self.temperature == 0:
            raise ValueError("straight_through=True needs temperature > 0 (a relaxation to pass gradients through)")
        self.straight_through = bool(straight_through)
        if relaxed_log_prob not in RELAXED_LOG_PROBS:
            raise ValueError(f"relaxed_log_prob must be one of {RELAXED_LOG_PROBS}, got {relaxed_log_prob!r}")
        self.relaxed_log_prob = relaxed_log_prob
        if value_format not in VALUE_FORMATS:
            raise ValueError(f"value_format must be one of {VALUE_FORMATS}, got {value_format!r}")
        if value_format == "index" and self.temperature > 0:
            raise ValueError(
                "value_format='index' holds exact events (integer marks); relaxed draws (temperature > 0) have "
                "soft marks: use value_format='dense'"
            )
        self.value_format = value_format
        self.quadrature_nodes = int(quadrature_nodes)
        explicit_bound = bound is not None
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
            bound = as_positive("bound", bound, like)
        elif self.temperature > 0:
            raise ValueError(
                "temperature > 0 needs a constant bound on the summed intensity and this intensity offers "
                "none (max_rate() is None): pass bound="
            )
        self.bound = bound
        self.context = as_context(context, intensity, like, self.duration)
        self.past = check_past(past, intensity.num_marks, like)
        shapes = [intensity.batch_shape, self.duration.shape]
        if bound is not None:
            shapes.append(bound.shape)
        if self.context is not None:
            shapes.append(self.context.shape[:-2])
        if self.past is not None:
            shapes.append(self.past.shape[:-2])
        try:
            batch_shape = broadcast_shapes(*shapes)
        except RuntimeError as err:
            raise ValueError(
                "the batch shapes of intensity, duration, bound, context and past do not broadcast: "
                f"{[tuple(s) for s in shapes]}"
            ) from err
        self.max_events = sample_rows(max_events, bound if explicit_bound else None, self.duration, self.context)
        self._explicit_size = max_events is not None
        self.has_rsample = self.temperature > 0
        columns = INDEX_COLUMNS if value_format == "index" else intensity.num_marks + 2
        event_shape = torch.Size((self.max_events, columns))
        super().__init__(batch_shape, event_shape, validate_args=validate_args)

    @property
    def num_marks(self) -> int:
        return self.intensity.num_marks

    def expand(self, batch_shape: Any, _instance: Any = None) -> PointProcess:
        batch_shape = torch.Size(batch_shape)
        try:
            ok = torch.broadcast_shapes(batch_shape, self.batch_shape) == batch_shape
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(
                f"cannot expand batch_shape {tuple(self.batch_shape)} to {tuple(batch_shape)}: the new shape must "
                "keep every dimension of size > 1 (as torch's expand); add dimensions on the left"
            )
        new = self._get_checked_instance(PointProcess, _instance)
        new.intensity = self.intensity
        new.temperature, new.straight_through = self.temperature, self.straight_through
        new.relaxed_log_prob, new.value_format = self.relaxed_log_prob, self.value_format
        new.quadrature_nodes, new.max_events = self.quadrature_nodes, self.max_events
        new._explicit_size = self._explicit_size
        new.has_rsample = self.has_rsample
        new.duration = self.duration.expand(batch_shape)
        new.bound = None if self.bound is None else self.bound.expand(batch_shape)
        new.context = None if self.context is None else self.context.expand(batch_shape + self.context.shape[-2:])
        new.past = None if self.past is None else self.past.expand(batch_shape + self.past.shape[-2:])
        super(PointProcess, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def _broadcast(self, sample_shape: torch.Size) -> tuple[torch.Tensor, ...]:
        shape = torch.Size(sample_shape) + self.batch_shape
        check_draw_memory(shape, self.max_events, self.num_marks, self.duration)
        duration = self.duration.expand(shape)
        bound = None if self.bound is None else self.bound.expand(shape)
        context = None if self.context is None else self.context.expand(shape + self.context.shape[-2:])
        past = None if self.past is None else self.past.expand(shape + self.past.shape[-2:])
        return duration, bound, context, past

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        """A differentiable draw (the DPP); needs ``temperature > 0``."""
        if self.temperature <= 0:
            raise ValueError(
                "rsample needs temperature > 0 (the relaxed, differentiable process); use sample() for the "
                "exact process"
            )
        refuse_tracing()
        duration, bound, context, past = self._broadcast(torch.Size(sample_shape))
        with sizing_hint(self.max_events, self._explicit_size):
            return sample_relaxed(
                self.intensity, bound, duration, context, self.max_events, self.temperature, self.straight_through,
                past=past,
            )

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        """A draw without gradients: exact thinning if ``temperature == 0``, else a detached DPP draw."""
        if self.temperature > 0:
            with torch.no_grad():
                return self.rsample(sample_shape)
        refuse_tracing()
        duration, bound, context, past = self._broadcast(torch.Size(sample_shape))
        if bound is None and type(self.intensity).local_bound is Intensity.local_bound:
            raise ValueError("this intensity offers no bound for exact sampling: pass bound=")
        with sizing_hint(self.max_events, self._explicit_size):
            if bound is not None:
                value = sample_exact(self.intensity, bound, duration, context, self.max_events, past=past)
            else:
                value = sample_ogata(self.intensity, duration, context, self.max_events, past=past)
        return dense_to_index(value) if self.value_format == "index" else value

    def _validate_sample(self, value: torch.Tensor) -> None:
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"value must be a torch.Tensor realization, got {type(value).__name__}")
        k = self.num_marks
        index = is_index(value)
        if index and self.temperature > 0:
            raise ValueError(
                "an index value (batch x events x 2: time, mark id) holds exact events, but this process is "
                "relaxed (temperature > 0): score dense relaxed values, or use temperature=0"
            )
        if value.dim() < 2 or (value.shape[-1] != k + 2 and not index):
            raise ValueError(
                f"value must have shape batch x events x {k + 2} for {k} marks (dense), or batch x events x 2 "
                f"(index: time, mark id), got {tuple(value.shape)}; check the number of neurons of the data "
                "against the process"
            )
        try:
            broadcast_shapes(value.shape[:-2], self.batch_shape)
        except RuntimeError as err:
            raise ValueError(
                f"value batch shape {tuple(value.shape[:-2])} does not broadcast with batch_shape "
                f"{tuple(self.batch_shape)}"
            ) from err
        if index:
            validate_index(value, k, self.duration)
        else:
            validate_realization(value, k, self.duration, exact=self.temperature == 0)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """The exact log-likelihood (``temperature == 0``) or the DPP density (``temperature > 0``,
        unless ``relaxed_log_prob="exact"``) of a dense or index value (see "Value formats")."""
        if self._validate_args:
            self._validate_sample(value)
        if self.temperature > 0 and is_index(value):
            raise ValueError(
                "an index value (batch x events x 2: time, mark id) holds exact events, but this process is "
                "relaxed (temperature > 0): score dense relaxed values, or use temperature=0"
            )
        value = as_dtype(value, self.duration)
        if self.temperature > 0 and self.relaxed_log_prob == "dpp":
            bound = self.bound
            return dpp_log_density(self.intensity, value, self.duration, bound, self.temperature, self.context,
                                   past=self.past)
        if self.temperature == 0 and type(self.intensity) is ExpHawkes and self.past is None:
            # the same data scored again (MCMC, SVI, MLE) reuses statistics that do not depend on
            # baseline and adjacency (small index values through their dense twin, built once)
            dense = dense_twin(value, self.intensity) if is_index(value) else value
            stats = None if dense is None else cached_statistics(self.intensity, dense, self.duration, self.context)
            if stats is not None:
                return stats.log_likelihood(self.intensity.baseline, self.intensity.adjacency)
        return exact_log_likelihood(self.intensity, value, self.duration, self.context, self.quadrature_nodes,
                                    past=self.past)
