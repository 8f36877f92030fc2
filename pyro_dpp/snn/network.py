"""The spiking neural network (DESIGN §3) as a :class:`torch.nn.Module` that makes point processes."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..distribution import PointProcess
from ..events import SpikeTrains, event_mask, index_marks, index_to_dense, is_index, select_marks
from ..intensity.basis import Basis, EpanechnikovBasis, ExponentialBasis, RaisedCosineBasis
from ..intensity.glm import ACTIVATIONS, GLM
from ..thinning import default_max_events

BASES = ("epanechnikov", "exponential", "raised_cosine")

#: Thinning candidates per sequence in one piece of :meth:`SNN.simulate` (bounds its memory).
SIMULATION_PIECE_CANDIDATES = 200_000


def make_basis(name: str | Basis, num_basis: int = 2) -> Basis:
    """A basis by name: ``"epanechnikov"`` (the paper's: centres 0..10, width 1), ``"exponential"``
    (time constants log-spaced 1..10) or ``"raised_cosine"`` (peaks up to lag 10)."""
    if isinstance(name, Basis):
        return name
    if name == "epanechnikov":
        return EpanechnikovBasis(num_basis, 0.0, 10.0, 1.0)
    if name == "exponential":
        return ExponentialBasis(torch.logspace(0, 1, num_basis) if num_basis > 1 else [3.0])
    if name == "raised_cosine":
        return RaisedCosineBasis(num_basis, last_peak=10.0)
    raise ValueError(f"unknown basis {name!r}; choose one of {BASES} or pass a Basis")


class SNN(torch.nn.Module):
    r"""A spiking neural network of ``n_observed + n_hidden`` neurons (observed first):

    .. math::
        u_i(t) = b_i + \sum_l \sum_j W_{lij} \sum_{n: t_n < t} w_{nj}\, \phi_l(t - t_n), \qquad
        \lambda_i(t) = a\, g(u_i(t))

    It builds the point processes of a model/guide pair: :meth:`hidden_process` (hidden neurons,
    observed spikes as context) and :meth:`observed_process` (observed neurons, hidden soft events
    as context), and simulates data with :meth:`simulate`.

    **References**

    [1] H. Kajino, "A Differentiable Point Process with Its Application to Spiking Neural
        Networks", ICML 2021.
    [2] D. Jimenez Rezende, W. Gerstner, "Stochastic variational learning in recurrent spiking
        networks", Frontiers in Computational Neuroscience, 2014.

    :param int n_observed: observed neurons ``D_o``.
    :param int n_hidden: hidden neurons ``D_h``.
    :param basis: a :class:`~pyro_dpp.intensity.Basis` or a name from :data:`BASES`.
    :param int num_basis: ``L`` when ``basis`` is a name (paper: 2).
    :param str activation: ``"sigmoid"`` (paper), ``"hardtanh"``, ``"softplus"`` or ``"exp"``.
    :param float amplitude: ``a`` (paper: 5).
    :param float neuron_bound: per-neuron bound on the rate; required for softplus/exp (sampling
        raises if a rate exceeds it), defaults to ``a`` for the bounded activations.
    :param connection_mask: ``D x D`` boolean mask of allowed connections (target x source).
    :param float refractory: if set, self-connections are projected to ``W[l, i, i] <= refractory``
        by :meth:`project_` (paper: -0.1).
    :param str init: ``"paper"`` (W ~ U[-5, 5], b ~ U[-1, 1], self-connections ~ U[-5, -0.1]) or
        ``"small"`` (W ~ N(0, 0.1^2), b = 0, self-connections -1).
    :param bool acausal: add anticausal filters through which hidden neurons see future observed
        spikes (for a guide).
    """

    def __init__(
        self,
        n_observed: int,
        n_hidden: int,
        basis: str | Basis = "epanechnikov",
        num_basis: int = 2,
        activation: str = "sigmoid",
        amplitude: float = 5.0,
        neuron_bound: float | None = None,
        connection_mask: Any = None,
        refractory: float | None = -0.1,
        init: str = "paper",
        acausal: bool = False,
    ) -> None:
        super().__init__()
        self.config = {
            "n_observed": n_observed, "n_hidden": n_hidden, "basis": basis if isinstance(basis, str) else None,
            "num_basis": num_basis, "activation": activation, "amplitude": amplitude, "neuron_bound": neuron_bound,
            "refractory": refractory, "acausal": acausal,
        }
        if n_observed < 1 or n_hidden < 0:
            raise ValueError("an SNN needs n_observed >= 1 and n_hidden >= 0")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {ACTIVATIONS}")
        if not (amplitude > 0 and math.isfinite(amplitude)):
            raise ValueError(f"amplitude must be positive and finite, got {amplitude}")
        if activation in ("sigmoid", "hardtanh"):
            neuron_bound = amplitude if neuron_bound is None else neuron_bound
            if neuron_bound < amplitude:
                raise ValueError(
                    f"neuron_bound={neuron_bound} is below the activation's maximum {amplitude}; "
                    "thinning needs a bound >= the largest rate"
                )
        elif neuron_bound is None or not neuron_bound > 0:
            raise ValueError(f"activation {activation!r} is unbounded: pass neuron_bound > 0 (a rate bound per neuron)")
        self.n_observed, self.n_hidden = n_observed, n_hidden
        self.basis = make_basis(basis, num_basis)
        self.activation, self.amplitude, self.neuron_bound = activation, float(amplitude), float(neuron_bound)
        self.refractory = refractory
        d, n_basis = n_observed + n_hidden, self.basis.num_basis
        self.weight = torch.nn.Parameter(torch.zeros(n_basis, d, d))
        self.bias = torch.nn.Parameter(torch.zeros(d))
        self.future_weight = torch.nn.Parameter(torch.zeros(n_basis, n_hidden, n_observed)) if acausal else None
        if connection_mask is not None:
            connection_mask = torch.as_tensor(connection_mask, dtype=torch.bool)
            if connection_mask.shape != (d, d):
                raise ValueError(f"connection_mask must have shape ({d}, {d}), got {tuple(connection_mask.shape)}")
        self.register_buffer("connection_mask", connection_mask)
        self.config["connection_mask"] = None if connection_mask is None else connection_mask.tolist()
        self.reset_parameters(init)

    def save(self, path: str | Any) -> None:
        """Save the configuration and parameters (restore with :meth:`load`), atomically: an
        interrupted save leaves the previous file. Only tensors and plain values are written, so
        :meth:`load` can read the file with ``weights_only=True``."""
        from ..checkpoint import atomic_save

        if self.config["basis"] is None:
            raise ValueError("only networks built with a named basis can be saved; pass basis='epanechnikov' etc.")
        atomic_save({"format": "pyro_dpp.SNN", "config": dict(self.config), "state": self.state_dict()}, path)

    @classmethod
    def load(cls, path: str | Any) -> SNN:
        """A network saved by :meth:`save`, in the dtype it was saved in. The file is read with
        ``weights_only=True``: a file holding other Python objects raises :class:`ValueError`
        rather than running their code."""
        from ..checkpoint import safe_load

        saved = safe_load(path, "network saved by SNN.save")
        try:
            if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
                raise KeyError("config")
            net = cls(**saved["config"], init="small")
            net.to(saved["state"]["weight"].dtype)
            net.load_state_dict(saved["state"])
        except (KeyError, RuntimeError, TypeError, ValueError) as err:
            raise ValueError(f"{path} is not a network saved by SNN.save: {err}") from err
        return net

    @property
    def num_neurons(self) -> int:
        return self.n_observed + self.n_hidden

    @property
    def observed_index(self) -> list[int]:
        return list(range(self.n_observed))

    @property
    def hidden_index(self) -> list[int]:
        return list(range(self.n_observed, self.num_neurons))

    def history_reach(self, dtype: torch.dtype | None = None) -> float | None:
        """How far back a spike still changes the network's potentials: its basis's
        :meth:`~pyro_dpp.intensity.Basis.history_reach` (see
        :meth:`pyro_dpp.intensity.Intensity.history_reach`).

        :param dtype: the data's dtype (default: the weights').
        """
        return self.basis.history_reach(self.weight.dtype if dtype is None else dtype)

    @torch.no_grad()
    def reset_parameters(self, init: str = "paper") -> None:
        """Random initialisation: ``"paper"`` or ``"small"`` (see the class docstring)."""
        eye = torch.eye(self.num_neurons, dtype=torch.bool, device=self.weight.device)
        if init == "paper":
            self.weight.uniform_(-5, 5)
            self.bias.uniform_(-1, 1)
            self_conn = torch.empty_like(self.weight).uniform_(-5, -0.1)
        elif init == "small":
            self.weight.normal_(0, 0.1)
            self.bias.zero_()
            self_conn = torch.full_like(self.weight, -1.0)
        else:
            raise ValueError(f"unknown init {init!r}; choose 'paper' or 'small'")
        self.weight.copy_(torch.where(eye, self_conn, self.weight))
        if self.future_weight is not None:
            self.future_weight.normal_(0, 0.1)

    @torch.no_grad()
    def project_(self) -> None:
        """Project onto the constraint set: self-connections ``<= refractory`` (if set)."""
        if self.refractory is None:
            return
        index = torch.arange(self.num_neurons, device=self.weight.device)
        diag = self.weight[:, index, index]
        self.weight[:, index, index] = diag.clamp(max=self.refractory)

    def regularizer(self) -> torch.Tensor:
        """The Frobenius norm of the filter weights (the paper adds 0.1 times it to the loss)."""
        norm = self.weight.pow(2).sum()
        if self.future_weight is not None:
            norm = norm + self.future_weight.pow(2).sum()
        return norm.sqrt()

    # ---- point processes --------------------------------------------------------------------
    def _effective_weight(self, weight: torch.Tensor | None) -> torch.Tensor:
        weight = self.weight if weight is None else weight
        if self.connection_mask is not None:
            weight = weight * self.connection_mask.to(weight)
        return weight

    def intensity(
        self, targets: list[int], context: list[int], window: int | None = None,
        future: torch.Tensor | None = None, params: dict[str, torch.Tensor] | None = None,
    ) -> GLM:
        """The :class:`~pyro_dpp.intensity.GLM` of neurons ``targets`` with ``context`` neurons as
        context marks. ``params`` may override ``bias``/``weight``/``future_weight`` with tensors
        that have extra leading batch dimensions (e.g. one copy per gradient draw)."""
        params = params or {}
        device = self.weight.device
        rows = torch.as_tensor(targets, dtype=torch.long, device=device)
        cols = torch.as_tensor(list(targets) + list(context), dtype=torch.long, device=device)
        weight = self._effective_weight(params.get("weight"))
        weight = weight.index_select(-2, rows).index_select(-1, cols)
        bias = params.get("bias", self.bias).index_select(-1, rows)
        future_weight = None
        if future is not None:
            future_weight = params.get("future_weight", self.future_weight)
        return GLM(bias, weight, self.basis, self.activation, self.amplitude, window=window,
                   future=future, future_weight=future_weight)

    def _window(self, rate: float, context: torch.Tensor | None) -> int | None:
        """Scan window for finite-support bases: a Poisson tail bound of the candidates within one
        support length, plus the most context events found in any such stretch of the data."""
        support = self.basis.support
        if not math.isfinite(support):
            return None
        window = default_max_events(torch.tensor(rate * support))
        if context is not None and context.shape[-2]:
            times = torch.where(event_mask(context), context[..., 0], torch.full_like(context[..., 0], math.inf))
            flat = times.detach().reshape(-1, times.shape[-1]).contiguous()
            ends = torch.searchsorted(flat, (flat + support).contiguous())
            window += int((ends - torch.arange(flat.shape[-1], device=flat.device)).max())
        return window

    def _check_data(self, value: torch.Tensor, marks: int, what: str) -> None:
        if marks > 0 and is_index(value):  # an index value (time, neuron id)
            ids = index_marks(value)
            if ids.numel() and int(ids.max()) >= marks:
                raise ValueError(
                    f"{what} spikes have neuron id {int(ids.max())} but the network has {marks} {what} neurons"
                )
            return
        if value.dim() < 2 or value.shape[-1] != marks + 2:
            raise ValueError(
                f"{what} spikes have {value.shape[-1] - 2 if value.dim() >= 2 else '?'} neurons but the network "
                f"has {marks} {what} neurons"
            )

    def hidden_process(
        self, observed: SpikeTrains | torch.Tensor, duration: Any = None, temperature: float = 0.0,
        straight_through: bool = False, params: dict[str, torch.Tensor] | None = None,
        max_events: int | None = None, relaxed_log_prob: str = "dpp", past: torch.Tensor | None = None,
    ) -> PointProcess:
        """The hidden neurons' process given the observed spikes (context; for an acausal network
        also seen ahead of time). ``temperature > 0``: the DPP; 0: exact. ``relaxed_log_prob``: see
        :class:`~pyro_dpp.PointProcess`. The observed spikes may be :class:`~pyro_dpp.SpikeTrains`,
        a dense realization or an index value (``batch x events x 2``); the context itself is dense
        (``batch x events x (D_o + 2)``: the samplers read context weights). ``past``: observed
        spikes before the window (times ``< 0``, a window of a longer recording,
        :mod:`pyro_dpp.windows`): they join the context; the hidden process itself starts without
        past hidden spikes."""
        observed, duration = _value_and_duration(observed, duration)
        self._check_data(observed, self.n_observed, "observed")
        if is_index(observed):
            observed = index_to_dense(observed, self.n_observed)
        observed = observed.to(self.weight)
        bound = self.neuron_bound * self.n_hidden
        future = observed if self.future_weight is not None else None
        context = observed
        if past is not None:
            from ..windows import prepend_past

            context = prepend_past(past.to(self.weight), observed, torch.as_tensor(duration).to(self.weight))
        window = self._window(bound, context)
        intensity = self.intensity(self.hidden_index, self.observed_index, window, future, params)
        return PointProcess(intensity, duration, bound=bound, temperature=temperature, context=context,
                            straight_through=straight_through, max_events=max_events,
                            relaxed_log_prob=relaxed_log_prob)

    def observed_process(
        self, hidden: torch.Tensor | SpikeTrains, duration: Any = None, params: dict[str, torch.Tensor] | None = None,
        past: torch.Tensor | None = None,
    ) -> PointProcess:
        """The observed neurons' exact process given hidden events (soft or hard) as context, and
        the observed spikes before the window as ``past`` (times ``< 0``; see :mod:`pyro_dpp.past`).
        Its ``log_prob`` scores the observed spikes as a dense realization or, at O(events) memory,
        as an index value (``SpikeTrains.to_tensor(format="index")``; see
        :class:`~pyro_dpp.PointProcess`)."""
        hidden, duration = _value_and_duration(hidden, duration)
        self._check_data(hidden, self.n_hidden, "hidden")
        bound = self.neuron_bound * self.n_observed
        window = self._window(bound, hidden)
        if window is not None and past is not None:
            window += past.shape[-2]  # past observed events also fill the scan's window
        intensity = self.intensity(self.observed_index, self.hidden_index, window, None, params)
        return PointProcess(intensity, duration, bound=bound, context=hidden.to(self.weight), past=past)

    def joint_process(self, duration: Any, max_events: int | None = None) -> PointProcess:
        """The exact process of all neurons together (observed first), for simulation."""
        bound = self.neuron_bound * self.num_neurons
        intensity = self.intensity(list(range(self.num_neurons)), [], self._window(bound, None))
        return PointProcess(intensity, torch.as_tensor(duration, dtype=self.weight.dtype), bound=bound,
                            max_events=max_events)

    @torch.no_grad()
    def simulate(self, num_sequences: int, duration: float, seed: int | None = None,
                 piece: float | None = None) -> tuple[SpikeTrains, SpikeTrains]:
        """Sample ``num_sequences`` sequences of all neurons jointly by exact thinning.

        A long recording is sampled in pieces of ``piece`` seconds, each given the spikes of the
        pieces before it within the basis's history reach (:func:`pyro_dpp.windows.history_reach`) as
        ``past``: the same process (the intensity on a piece depends only on those spikes), with
        memory bounded by a piece rather than by ``duration``.

        :param piece: seconds per piece; default: about :data:`SIMULATION_PIECE_CANDIDATES` thinning
            candidates per sequence and piece (``bound x piece``); ``inf``: one piece.
        :returns: ``(observed, hidden)`` spike trains.
        """
        if seed is not None:
            torch.manual_seed(seed)
        duration = float(duration)
        bound = self.neuron_bound * self.num_neurons
        if piece is None:
            piece = SIMULATION_PIECE_CANDIDATES / bound
        if not piece > 0:
            raise ValueError(f"piece must be a positive number of seconds, got {piece}")
        if piece >= duration:
            process = self.joint_process(duration)
            value = process.sample((num_sequences,))
            durations = process.duration.expand(num_sequences)
            observed = select_marks(value, self.observed_index, durations)
            hidden = select_marks(value, self.hidden_index, durations)
            return (SpikeTrains.from_tensor(_trim(observed), durations),
                    SpikeTrains.from_tensor(_trim(hidden), durations))
        return self._simulate_in_pieces(num_sequences, duration, piece, bound)

    def _simulate_in_pieces(self, num_sequences: int, duration: float, piece: float,
                            bound: float) -> tuple[SpikeTrains, SpikeTrains]:
        from ..windows import history_reach

        like = self.weight
        reach = history_reach(self, like.dtype)
        times: list[list[torch.Tensor]] = [[] for _ in range(num_sequences)]
        marks: list[list[torch.Tensor]] = [[] for _ in range(num_sequences)]
        start = 0.0
        while start < duration:
            length = min(piece, duration - start)
            past = self._past(times, marks, start, reach)
            window = self._window(bound, past)
            intensity = self.intensity(list(range(self.num_neurons)), [], window)
            process = PointProcess(intensity, torch.as_tensor(length, dtype=like.dtype, device=like.device),
                                   bound=bound, past=past)
            value = process.sample(() if past is not None else (num_sequences,))  # past has the batch
            real = event_mask(value)
            for s in range(num_sequences):
                rows = value[s][real[s]]
                times[s].append(rows[:, 0].double().cpu() + start)
                marks[s].append(rows[:, 1:-1].argmax(-1).cpu())
            start += length
        t = [torch.cat(x) if x else torch.zeros(0, dtype=torch.float64) for x in times]
        m = [torch.cat(x) if x else torch.zeros(0, dtype=torch.long) for x in marks]
        durations = torch.full((num_sequences,), duration, dtype=like.dtype, device=like.device)
        out = []
        for lo, count in ((0, self.n_observed), (self.n_observed, self.n_hidden)):
            if count == 0:  # no neurons: one padding row per sequence, as the one-piece path returns
                empty = torch.cat([durations[:, None, None], durations.new_zeros(num_sequences, 1, 1)], -1)
                out.append(SpikeTrains.from_tensor(empty, durations))
                continue
            keep = [(mm >= lo) & (mm < lo + count) for mm in m]
            trains = SpikeTrains.from_events([tt[k] for tt, k in zip(t, keep)], [mm[k] - lo for mm, k in zip(m, keep)],
                                             count, durations, dtype=like.dtype, device=like.device)
            out.append(trains)
        return out[0], out[1]

    def _past(self, times: list[list[torch.Tensor]], marks: list[list[torch.Tensor]], start: float,
              reach: float) -> torch.Tensor | None:
        """``batch x P x (D + 2)``: the spikes of ``times``/``marks`` within ``reach`` before
        ``start``, shifted by ``-start`` (padding rows last)."""
        if start == 0:
            return None
        like = self.weight
        rows = []
        for t_seq, m_seq in zip(times, marks):
            t = torch.cat(t_seq) if t_seq else torch.zeros(0, dtype=torch.float64)
            m = torch.cat(m_seq) if m_seq else torch.zeros(0, dtype=torch.long)
            keep = t >= start - reach
            rows.append((t[keep] - start, m[keep]))
        most = max(1, max(len(t) for t, _ in rows))
        past = torch.zeros(len(rows), most, self.num_neurons + 2, dtype=like.dtype, device=like.device)
        for s, (t, m) in enumerate(rows):
            past[s, : len(t), 0] = t.to(like)
            past[s, torch.arange(len(t), device=like.device), 1 + m.to(like.device)] = 1.0
        return past

def _trim(value: torch.Tensor) -> torch.Tensor:
    """Drop trailing all-padding rows, keeping one."""
    rows = int(event_mask(value).sum(-1).max()) + 1 if value.numel() else 1
    return value[..., : min(rows, value.shape[-2]), :]


def _value_and_duration(data: SpikeTrains | torch.Tensor, duration: Any) -> tuple[torch.Tensor, Any]:
    if isinstance(data, SpikeTrains):
        return data.to_tensor(), data.duration if duration is None else duration
    if not isinstance(data, torch.Tensor):
        raise ValueError(f"spikes must be SpikeTrains or a realization tensor, got {type(data).__name__}")
    if duration is None:
        raise ValueError("pass duration= with a realization tensor (or pass SpikeTrains)")
    return data, duration
