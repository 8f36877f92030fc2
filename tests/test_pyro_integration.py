"""Pyro's inference machinery on :class:`pyro_dpp.PointProcess`, as a table (like NumPyro's tests).

``ROWS`` lists one configuration per stock intensity (Poisson, ExpHawkes, GLM), exact and relaxed.
Each row has a prior over the intensity's parameters, so that the same row drives

- an *observed* model (the process observes data drawn at ``truth``; parameters latent): handlers,
  ``Predictive``, ``NUTS``, autoguides with their default initialisation, ``JitTrace_ELBO``;
- a *latent* model (the process is a latent site, its guide the same family with ``pyro.param``
  parameters; a Normal observation of its soft count): replay, ``TraceGraph_ELBO``, vectorised
  particles, ``JitTrace_ELBO`` (which must raise: a trace would freeze the candidate count).

Every call uses default arguments (no ``max_events``): sample sizes come from what the row fixes.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import MCMC, NUTS, SVI, JitTrace_ELBO, Predictive, Trace_ELBO, TraceGraph_ELBO
from pyro.infer.autoguide import AutoDelta, AutoNormal
from pyro.optim import Adam

from pyro_dpp import PointProcess, event_mask
from pyro_dpp.events import validate_realization
from pyro_dpp.intensity import GLM, ExpHawkes, ExponentialBasis, Poisson
from pyro_dpp.relaxed import carried_log_weights

DURATION = 5.0


@dataclass
class Row:
    """``prior()`` samples the parameters (a dict) with ``pyro.sample``; ``intensity(params)``
    builds the intensity; ``kwargs`` go to :class:`PointProcess` (with ``duration=DURATION``);
    ``truth`` are the parameters the data are drawn at; ``guide_param`` names the entry of
    ``truth`` the latent model's guide learns."""

    name: str
    prior: Callable[[], dict[str, torch.Tensor]]
    intensity: Callable[[dict[str, torch.Tensor]], Any]
    truth: dict[str, torch.Tensor]
    guide_param: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def relaxed(self) -> bool:
        return self.kwargs.get("temperature", 0.0) > 0

    def process(self, params: dict[str, torch.Tensor]) -> PointProcess:
        return PointProcess(self.intensity(params), DURATION, **self.kwargs)


def _poisson_prior(high: float | None = None) -> Callable[[], dict[str, torch.Tensor]]:
    def prior():
        base = dist.Gamma(2.0, 2.0) if high is None else dist.Uniform(0.1, high)
        return {"rate": pyro.sample("rate", base.expand([2]).to_event(1))}
    return prior


def _hawkes_prior(bounded: bool) -> Callable[[], dict[str, torch.Tensor]]:
    def prior():
        # unbounded: NUTS and the autoguides' initialisations visit supercritical adjacencies;
        # bounded: the relaxed process's bound of 20 dominates every intensity of the support
        base = dist.Uniform(0.1, 1.0) if bounded else dist.Gamma(2.0, 3.0)
        baseline = pyro.sample("baseline", base.expand([2]).to_event(1))
        adj = dist.Uniform(0.0, 0.5) if bounded else dist.Exponential(4.0)
        return {"baseline": baseline, "adjacency": pyro.sample("adjacency", adj.expand([2, 2]).to_event(2))}
    return prior


def _glm_prior():
    bias = pyro.sample("bias", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
    return {"bias": bias, "weight": pyro.sample("weight", dist.Normal(0.0, 0.5).expand([1, 2, 2]).to_event(3))}


def _glm(params):
    return GLM(params["bias"], params["weight"], ExponentialBasis([1.0]), "sigmoid", 2.0)


def _hawkes(params):
    return ExpHawkes(params["baseline"], params["adjacency"], 1.0)


_POISSON_TRUTH = {"rate": torch.tensor([0.8, 1.5])}
_HAWKES_TRUTH = {"baseline": torch.tensor([0.6, 0.4]), "adjacency": torch.tensor([[0.3, 0.2], [0.1, 0.3]])}
_GLM_TRUTH = {"bias": torch.tensor([0.0, -0.5]), "weight": torch.tensor([[[-0.5, 0.5], [0.3, -0.4]]])}

ROWS = [
    Row("poisson-exact", _poisson_prior(), lambda p: Poisson(p["rate"]), _POISSON_TRUTH, "rate"),
    Row("poisson-relaxed", _poisson_prior(2.0), lambda p: Poisson(p["rate"]), _POISSON_TRUTH, "rate",
        dict(bound=5.0, temperature=0.5)),
    Row("hawkes-exact", _hawkes_prior(False), _hawkes, _HAWKES_TRUTH, "baseline"),
    Row("hawkes-relaxed", _hawkes_prior(True), _hawkes, _HAWKES_TRUTH, "baseline", dict(bound=20.0, temperature=0.5)),
    Row("glm-exact", _glm_prior, _glm, _GLM_TRUTH, "bias"),
    Row("glm-relaxed", _glm_prior, _glm, _GLM_TRUTH, "bias", dict(temperature=0.5)),
]
IDS = [row.name for row in ROWS]


@pytest.fixture(autouse=True)
def _clear_param_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


def _data(row: Row, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    d = row.process(row.truth)
    return d.rsample().detach() if row.relaxed else d.sample()


def observed_model(row: Row) -> Callable:
    def model(data=None):
        return pyro.sample("x", row.process(row.prior()), obs=data)
    return model


def latent_pair(row: Row) -> tuple[Callable, Callable]:
    """The latent model (process at ``truth``, a Normal observation of its soft count) and its guide
    (the same process with the ``guide_param`` entry a positive or real ``pyro.param``)."""

    def model(target):
        x = pyro.sample("x", row.process(row.truth))
        pyro.sample("y", dist.Normal(x[..., 1:3].sum((-1, -2)), 3.0), obs=target)

    def guide(target):
        init = row.truth[row.guide_param]
        positive = row.guide_param in ("rate", "baseline")
        param = pyro.param("q", init * 0.8 if positive else init - 0.2,
                           constraint=dist.constraints.positive if positive else dist.constraints.real)
        pyro.sample("x", row.process({**row.truth, row.guide_param: param}))

    return model, guide


def _check_value(value: torch.Tensor, row: Row, shape: tuple[int, ...]) -> None:
    assert value.shape[:-2] == shape and value.shape[-1] == 4
    validate_realization(value, 2, torch.tensor(DURATION), exact=not row.relaxed)
    if row.relaxed:
        assert carried_log_weights(value) is not None


# ---- handlers ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_handlers(row):
    data = _data(row)
    model = observed_model(row)
    pyro.set_rng_seed(1)
    tr = poutine.trace(model).get_trace(data)
    params = {k: tr.nodes[k]["value"] for k in tr.nodes if k != "x" and tr.nodes[k]["type"] == "sample"}
    expected = row.process(params).log_prob(data)
    tr.compute_log_prob()
    torch.testing.assert_close(tr.nodes["x"]["log_prob"], expected)
    assert torch.isfinite(expected)
    # replay: the same parameters give the same density
    replayed = poutine.trace(poutine.replay(model, trace=tr)).get_trace(data)
    replayed.compute_log_prob()
    torch.testing.assert_close(replayed.nodes["x"]["log_prob"], expected)
    # condition: the latent model's process site becomes observed
    latent, _ = latent_pair(row)
    cond = poutine.trace(poutine.condition(latent, data={"x": data})).get_trace(torch.tensor(8.0))
    cond.compute_log_prob()
    assert cond.nodes["x"]["is_observed"]
    torch.testing.assert_close(cond.nodes["x"]["log_prob"], row.process(row.truth).log_prob(data))
    # scale and mask
    scaled = poutine.trace(poutine.scale(poutine.replay(model, trace=tr), scale=0.25)).get_trace(data)
    scaled.compute_log_prob()
    torch.testing.assert_close(scaled.nodes["x"]["log_prob"], 0.25 * expected)
    masked = poutine.trace(poutine.mask(poutine.replay(model, trace=tr), mask=False)).get_trace(data)
    masked.compute_log_prob()
    assert float(masked.nodes["x"]["log_prob"]) == 0.0


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_replay_guide_into_latent_model(row):
    model, guide = latent_pair(row)
    target = torch.tensor(8.0)
    pyro.set_rng_seed(2)
    guide_trace = poutine.trace(guide).get_trace(target)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(target)
    value = guide_trace.nodes["x"]["value"]
    assert model_trace.nodes["x"]["value"] is value
    model_trace.compute_log_prob()
    torch.testing.assert_close(model_trace.nodes["x"]["log_prob"], row.process(row.truth).log_prob(value))
    assert torch.isfinite(model_trace.log_prob_sum())


# ---- Predictive ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("parallel", [False, True], ids=["sequential", "parallel"])
@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_predictive_over_latent_parameters(row, parallel):
    """Prior predictive draws under different parameter values stack (default arguments)."""
    model = observed_model(row)
    pyro.set_rng_seed(3)
    samples = Predictive(model, num_samples=4, parallel=parallel)()
    x = samples["x"]
    _check_value(x, row, (4,))
    for i in range(4):  # each draw is scored under its own parameters
        params = {k: v[i] for k, v in samples.items() if k != "x"}
        assert torch.isfinite(row.process(params).log_prob(x[i]))
    assert event_mask(x).sum(-1).max() > 0


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_posterior_predictive(row):
    data = _data(row)
    model = observed_model(row)
    guide = AutoDelta(model)
    SVI(model, guide, Adam({"lr": 0.01}), Trace_ELBO()).step(data)
    pyro.set_rng_seed(4)
    samples = Predictive(model, guide=guide, num_samples=3, return_sites=["x"])()
    _check_value(samples["x"], row, (3,))


# ---- NUTS and autoguides ---------------------------------------------------------------------------------
@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_nuts_short_chain(row):
    data = _data(row)
    pyro.set_rng_seed(5)
    mcmc = MCMC(NUTS(observed_model(row), max_tree_depth=4), num_samples=10, warmup_steps=10,
                disable_progbar=True)
    mcmc.run(data)
    for name, value in mcmc.get_samples().items():
        assert value.shape[0] == 10 and torch.isfinite(value).all(), name
        assert value.unique(dim=0).shape[0] > 1, f"{name}: the chain never moved"


@pytest.mark.parametrize("guide_class", [AutoNormal, AutoDelta])
@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_autoguide_default_init(row, guide_class):
    data = _data(row)
    model = observed_model(row)
    pyro.set_rng_seed(6)
    svi = SVI(model, guide_class(model), Adam({"lr": 0.02}), Trace_ELBO())
    losses = [svi.step(data) for _ in range(5)]
    assert all(torch.isfinite(torch.tensor(losses)))


# ---- ELBOs ------------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_jit_trace_elbo_observed_is_correct_or_raises(row):
    """Observed data: the traced loss equals Trace_ELBO's, before and after a parameter update and
    on other data (the trace must freeze neither the data's event count nor parameter values). The
    DPP density of observed relaxed values raises instead: their log-weights are no trace inputs."""
    data = _data(row)
    other = _data(row, seed=1)
    model = observed_model(row)
    guide = AutoDelta(model)
    pyro.set_rng_seed(7)
    guide(data)  # initialise the guide's parameters
    optim = Adam({"lr": 0.05})
    jit_elbo = JitTrace_ELBO(ignore_jit_warnings=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if row.relaxed:
            with pytest.raises(ValueError, match="cannot be traced.*Trace_ELBO"):
                jit_elbo.loss_and_grads(model, guide, data)
            return
        for step in range(3):
            value = data if step != 1 else other
            expected = Trace_ELBO().loss(model, guide, value)
            got = jit_elbo.loss_and_grads(model, guide, value)
            assert got == pytest.approx(expected, rel=1e-5, abs=1e-4)
            params = {site: pyro.param(site).unconstrained() for site in pyro.get_param_store()}
            optim(params.values())
            for p in params.values():
                p.grad = None


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_jit_trace_elbo_latent_raises(row):
    model, guide = latent_pair(row)
    pyro.set_rng_seed(8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="torch.jit.trace.*Trace_ELBO"):
            JitTrace_ELBO(ignore_jit_warnings=True).loss_and_grads(model, guide, torch.tensor(8.0))


def _grad_of_guide_param(elbo, row: Row) -> tuple[float, torch.Tensor]:
    model, guide = latent_pair(row)
    pyro.set_rng_seed(9)
    loss = elbo.loss_and_grads(model, guide, torch.tensor(8.0))
    return loss, pyro.param("q").unconstrained().grad


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_trace_graph_elbo(row):
    loss, grad = _grad_of_guide_param(TraceGraph_ELBO(), row)
    assert torch.isfinite(torch.tensor(loss)) and torch.isfinite(grad).all() and (grad != 0).any()


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_vectorized_particles(row):
    loss, grad = _grad_of_guide_param(Trace_ELBO(num_particles=2, vectorize_particles=True, max_plate_nesting=0), row)
    assert torch.isfinite(torch.tensor(loss)) and torch.isfinite(grad).all() and (grad != 0).any()


# ---- NUTS recovers a 2-D Hawkes process (default arguments) ---------------------------------------------
@pytest.mark.slow
def test_nuts_recovers_hawkes_parameters():
    """Issue 12: NUTS on an observed 2-D Hawkes process with default arguments (the initialisation
    and leapfrog steps visit supercritical adjacencies) recovers the truth within the posterior's
    uncertainty: every posterior mean within 3.5 posterior standard deviations of the truth
    (a two-sided normal tail of 5e-4 per parameter, six parameters)."""
    truth = ExpHawkes(torch.tensor([0.5, 0.3], dtype=torch.float64),
                      torch.tensor([[0.3, 0.2], [0.1, 0.4]], dtype=torch.float64), 1.2)
    duration = 300.0
    torch.manual_seed(10)
    data = PointProcess(truth, duration, max_events=2000).sample()
    assert event_mask(data).sum() > 300

    def model(data):
        baseline = pyro.sample("baseline", dist.Gamma(2.0, 2.0).expand([2]).to_event(1))
        adjacency = pyro.sample("adjacency", dist.Exponential(2.0).expand([2, 2]).to_event(2))
        pyro.sample("x", PointProcess(ExpHawkes(baseline, adjacency, 1.2), duration), obs=data)

    pyro.set_rng_seed(11)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # the priors' parameters, as the data
    try:
        mcmc = MCMC(NUTS(model), num_samples=150, warmup_steps=100, disable_progbar=True)
        mcmc.run(data)
    finally:
        torch.set_default_dtype(default)
    samples = mcmc.get_samples()
    for name, true in (("baseline", truth.baseline), ("adjacency", truth.adjacency)):
        draws = samples[name]
        z = (draws.mean(0) - true) / draws.std(0)
        assert (z.abs() < 3.5).all(), (name, draws.mean(0), draws.std(0))
    diagnostics = mcmc.diagnostics()
    assert all((diagnostics[name]["n_eff"] > 20).all() for name in ("baseline", "adjacency"))


# ---- observed index values (time, mark id) ------------------------------------------------------

EXACT_ROWS = [row for row in ROWS if not row.relaxed]
EXACT_IDS = [row.name for row in EXACT_ROWS]


def _batched_data(row: Row, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three sequences as a dense value and as an index value (built independently of pyro_dpp)."""
    torch.manual_seed(seed)
    dense = row.process(row.truth).sample((3,))
    real = event_mask(dense)
    ids = torch.where(real, dense[..., 1:-1].argmax(-1).to(dense.dtype), torch.full_like(dense[..., 0], -1.0))
    return dense, torch.stack([dense[..., 0], ids], -1)


def plate_model(row: Row) -> Callable:
    def model(data, mask=True, scale=1.0):
        params = row.prior()
        with pyro.plate("sequences", data.shape[0]), poutine.scale(scale=scale), poutine.mask(mask=mask):
            pyro.sample("x", row.process(params), obs=data)
    return model


@pytest.mark.parametrize("row", EXACT_ROWS, ids=EXACT_IDS)
def test_observed_index_values_through_handlers(row):
    """Trace log-densities under a plate, a mask and a scale equal those of the dense value."""
    dense, index = _batched_data(row)
    model = plate_model(row)
    mask = torch.tensor([True, False, True])
    for kwargs in ({}, {"mask": mask}, {"scale": 0.25}):
        torch.manual_seed(1)
        trace_d = poutine.trace(model).get_trace(dense, **kwargs)
        cond = poutine.condition(model, {name: site["value"] for name, site in trace_d.nodes.items()
                                         if site["type"] == "sample" and not site["is_observed"]})
        trace_i = poutine.trace(cond).get_trace(index, **kwargs)
        trace_d.compute_log_prob()
        trace_i.compute_log_prob()
        assert trace_i.nodes["x"]["value"].shape == (3,) + index.shape[1:]
        assert trace_i.nodes["x"]["log_prob"].shape == (3,)
        assert torch.allclose(trace_i.nodes["x"]["log_prob"], trace_d.nodes["x"]["log_prob"], rtol=1e-5)
        assert torch.allclose(trace_i.log_prob_sum(), trace_d.log_prob_sum(), rtol=1e-5)


@pytest.mark.parametrize("row", EXACT_ROWS, ids=EXACT_IDS)
def test_observed_index_values_in_svi(row):
    """Trace_ELBO with an AutoNormal guide: the same loss and gradients for dense and index data."""
    dense, index = _batched_data(row)
    model = plate_model(row)
    guide = AutoNormal(model)
    guide(dense)  # create the parameters
    results = []
    for data in (dense, index):
        torch.manual_seed(2)
        loss = Trace_ELBO().differentiable_loss(model, guide, data)
        params = [p.unconstrained() for p in pyro.get_param_store().values()]
        results.append((loss, torch.autograd.grad(loss, params)))
    (loss_d, grads_d), (loss_i, grads_i) = results
    assert torch.allclose(loss_i, loss_d, rtol=1e-5)
    for a, b in zip(grads_d, grads_i, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("row", EXACT_ROWS, ids=EXACT_IDS)
def test_predictive_in_index_format(row):
    """A process built with value_format='index' draws index values that Predictive stacks."""
    def model(data=None):
        params = row.prior()
        with pyro.plate("sequences", 2):
            return pyro.sample("x", PointProcess(row.intensity(params), DURATION, value_format="index",
                                                 **row.kwargs), obs=data)

    samples = Predictive(model, num_samples=4)()["x"]
    assert samples.shape[0] == 4 and samples.shape[1] == 2 and samples.shape[-1] == 2
    ids = samples[..., 1]
    assert ((ids == ids.round()) & (ids >= -1) & (ids < 2)).all()
    real = ids >= 0
    assert not (real[..., 1:] & ~real[..., :-1]).any()  # padding last
    times = samples[..., 0]
    assert (torch.where(real[..., 1:], times[..., 1:] - times[..., :-1], torch.zeros_like(times[..., 1:])) >= 0).all()
    # and such draws score as observed data
    trace = poutine.trace(model).get_trace(samples[0])
    trace.compute_log_prob()
    assert torch.isfinite(trace.nodes["x"]["log_prob"]).all()
