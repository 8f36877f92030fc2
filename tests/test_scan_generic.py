"""The generic checkpointed paths (:mod:`pyro_dpp.scan.generic`, :mod:`pyro_dpp.scan.generic_scoring`)
on intensities written as a user would (no stock class, no filter; the first two in
``user_intensities.py``, shared with ``benchmarks/bench_generic.py``): a power-law Hawkes kernel
(full-history scan state, pairwise parallel forward), a small neural intensity (an MLP over
exponential traces, ``nn.Linear`` parameters) and a subclass-free copy of ``ExpHawkes`` with context
marks and non-leaf parameters. Against the reference (eager loop, parallel forward) in float64 with
the same random numbers: draws, log-weights and gradients; the autograd functions by ``gradcheck``;
the checkpoint bookkeeping; and that the ``PointProcess`` API and a Pyro SVI step take these paths."""

from __future__ import annotations

import math

import pyro
import pyro.optim
import pytest
import torch
import torch.nn.functional as F
from _helpers import make_context
from user_intensities import NeuralIntensity, UserPowerLaw

from pyro_dpp import PointProcess, backend, event_mask, likelihood, thinning
from pyro_dpp.events import LOG_WEIGHTS_ATTR
from pyro_dpp.intensity.base import Intensity, pairwise_lags
from pyro_dpp.likelihood import gauss_legendre, history
from pyro_dpp.scan import generic
from pyro_dpp.scan.generic_scoring import scan_score, scores_by_scan
from pyro_dpp.thinning import draw_candidates, merge_timeline

DT = torch.float64
DURATION = 5.0


class UserExpHawkes(Intensity):
    """``ExpHawkes`` as a user would write it (scalar decay, closed-form compensator)."""

    def __init__(self, baseline, adjacency, decay):
        super().__init__()
        self.baseline, self.adjacency, self.decay = baseline, adjacency, decay
        self.num_marks = baseline.shape[-1]
        self.num_context_marks = adjacency.shape[-1] - self.num_marks

    @property
    def batch_shape(self):
        return self.baseline.shape[:-1]

    def _decayed(self, state, time):
        traces, last = state
        return traces * torch.exp(-self.decay * (time - last)).unsqueeze(-1)

    def initial_state(self, batch_shape, like, num_steps):
        return like.new_zeros(batch_shape + (self.num_history_marks,)), like.new_zeros(batch_shape)

    def rates(self, state, time):
        return self.baseline + (self._decayed(state, time).unsqueeze(-2) * self.adjacency * self.decay).sum(-1)

    def update(self, state, time, weights):
        return self._decayed(state, time) + weights, time

    def forward(self, times, weights, query):
        lag, before = pairwise_lags(times, query)
        kernel = torch.where(before, torch.exp(-self.decay * lag), torch.zeros_like(lag))
        return self.baseline.unsqueeze(-2) + (kernel @ weights) @ (self.adjacency * self.decay).transpose(-1, -2)

    def compensator(self, times, weights, duration):
        inside = -torch.expm1(-self.decay * (duration.unsqueeze(-1) - times).clamp(min=0))  # batch x E
        triggered = ((inside.unsqueeze(-1) * weights).sum(-2) * self.adjacency.sum(-2)).sum(-1)
        return self.baseline.sum(-1) * duration + triggered


def make(name, device="cpu"):
    """``(intensity, leaf parameters, bound, build)`` with ``build(*leaves)`` the intensity of given
    leaves; parameters through non-leaf transforms where a user would write them so
    (``softplus(pyro.param(...))``)."""
    if name == "neural":
        intensity = NeuralIntensity(2, torch.tensor([0.5, 2.0], dtype=DT), num_context_marks=1).to(device)
        intensity.decays = intensity.decays.to(device)
        return intensity, list(intensity.parameters()), 4.0, lambda *leaves: intensity
    p = torch.tensor([0.3, 0.1], dtype=DT, device=device, requires_grad=True)
    alpha = torch.tensor([[0.2, 0.1, 0.3], [0.05, 0.3, 0.1]], dtype=DT, device=device, requires_grad=True)
    if name == "powerlaw":
        beta = torch.tensor(1.5, dtype=DT, device=device, requires_grad=True)
        delta = torch.tensor(1.0, dtype=DT, device=device)

        def build(p, alpha, beta):
            return UserPowerLaw(F.softplus(p), alpha, delta, beta)

        return build(p, alpha, beta), [p, alpha, beta], 12.0, build
    log_decay = torch.tensor(0.3, dtype=DT, device=device, requires_grad=True)

    def build(p, alpha, log_decay):
        return UserExpHawkes(F.softplus(p), alpha, log_decay.exp())

    return build(p, alpha, log_decay), [p, alpha, log_decay], 8.0, build


NAMES = ["powerlaw", "neural", "user-exphawkes"]


def context():
    return make_context([[0.5, 1.0, 2.5, 2.5, 4.0], [1.2, 3.3]], [[0] * 5, [0, 0]], 1, DURATION)


class Spy:
    """Counts the calls of ``module.name`` (an instance attribute shadowing the method)."""

    def __init__(self, module, name):
        self.calls, self.inner = 0, getattr(module, name)
        setattr(module, name, self)

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.inner(*args, **kwargs)


@pytest.fixture
def generic_calls(monkeypatch):
    calls = []

    def spy(*args, **kwargs):
        calls.append(1)
        return generic.generic_scan(*args, **kwargs)

    monkeypatch.setattr(thinning, "generic_scan", spy)
    return calls


def _backend(fast: bool) -> str:
    """The generic paths run under every backend but "reference" (the eager loop, parallel scoring)."""
    return "auto" if fast else "reference"


def draw(name, fast, mode, seed=3, backend_name=None, device="cpu"):
    intensity, params, bound, _ = make(name, device)
    temperature = 0.0 if mode == "exact" else 0.3
    torch.manual_seed(seed)
    with backend(backend_name or _backend(fast)):
        process = PointProcess(intensity, DURATION, bound=bound, temperature=temperature,
                               context=context().to(device), straight_through=mode == "straight-through")
        if temperature == 0:
            return process.sample(), None, None
        value = process.rsample()
        logs = getattr(value, LOG_WEIGHTS_ATTR)
        loss = (value[..., 1:] * torch.linspace(0.3, 1.7, value.shape[-1] - 1, dtype=DT, device=device)).sum()
        loss = loss + 0.1 * logs.clamp(min=-30).sum()
        grads = torch.autograd.grad(loss, params)
    return value.detach(), logs.detach(), grads


@pytest.mark.parametrize(("mode", "checkpointed"), [("exact", False)] + [
    (mode, checkpointed) for mode in ("relaxed", "straight-through") for checkpointed in (False, True)])
@pytest.mark.parametrize("name", NAMES)
def test_generic_draw_matches_reference(name, mode, checkpointed, generic_calls, monkeypatch):
    """Both ways of the generic scan with a graph: keeping it (small scans) and checkpointing."""
    if checkpointed:
        monkeypatch.setattr(generic, "GRAPH_BUDGET_BYTES", 0)
    ref = draw(name, False, mode)
    assert not generic_calls
    got = draw(name, True, mode)
    assert generic_calls
    assert int(event_mask(ref[0]).sum()) >= 5
    torch.testing.assert_close(got[0], ref[0], rtol=1e-12, atol=1e-12)
    if mode != "exact":
        real = event_mask(ref[0])
        torch.testing.assert_close(got[1][real], ref[1][real], rtol=1e-12, atol=1e-12)
        for g, r in zip(got[2], ref[2], strict=True):
            assert r.abs().sum() > 0
            torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


def _timeline(intensity, bound, batch=2, seed=0, duration=2.0):
    """A small merged time line (candidates and a context) and its Gumbel noise."""
    torch.manual_seed(seed)
    bound = torch.full((batch,), bound, dtype=DT)
    cand, mask = draw_candidates(bound, torch.full((batch,), duration, dtype=DT), 1000)
    ctx = make_context([[0.3, 1.1], [0.7]], [[0, 0], [0]], intensity.num_context_marks, duration)
    times, is_cand, is_ctx, ctx_w, _ = merge_timeline(cand, mask, ctx, intensity.num_context_marks)
    gumbel = -torch.log(-torch.log(torch.rand(times.shape + (intensity.num_marks + 1,), dtype=DT)))
    return times, is_cand, is_ctx, ctx_w, gumbel, bound


@pytest.mark.parametrize("name", NAMES)
def test_generic_function_gradcheck(name):
    """The custom autograd function in float64, with respect to the intensity's tensors, the context
    weights and the bound, over several checkpointed segments."""
    intensity, params, bound, build = make(name)
    times, is_cand, is_ctx, ctx_w, gumbel, bound = _timeline(intensity, 5.0, duration=1.5)
    assert 8 <= times.shape[-1] <= 16

    def scan(*inputs):
        *leaves, w, b = inputs
        marks, logs, _, _ = generic.generic_scan(build(*leaves), times, is_cand, is_ctx, w, gumbel, b, 0.4, False,
                                                 checkpoint_every=3)
        return marks, logs.clamp(min=-40)

    inputs = params + [ctx_w.clone().requires_grad_(), bound.clone().requires_grad_()]
    assert torch.autograd.gradcheck(scan, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_checkpoint_bookkeeping_is_sqrt():
    """O(S / k) checkpointed states, one O(k) segment recomputed at a time, every step recomputed
    exactly once, and a single autograd node for the whole scan (no per-step graph)."""
    intensity, params, _, build = make("user-exphawkes")
    times, is_cand, is_ctx, ctx_w, gumbel, bound = _timeline(intensity, 40.0)
    steps = times.shape[-1]
    assert steps >= 50
    for every in (None, 5):
        intensity = build(*params)
        updates = Spy(intensity, "update")
        stats = {}
        marks, logs, _, _ = generic.generic_scan(intensity, times, is_cand, is_ctx, ctx_w, gumbel, bound, 0.5,
                                                 False, checkpoint_every=every, stats=stats, graph_budget=0)
        assert type(marks.grad_fn).__name__ == "_GenericScanBackward"
        k = math.ceil(math.sqrt(steps)) if every is None else every
        assert stats["every"] == k and stats["checkpoints"] == math.ceil(steps / k)
        assert updates.calls == steps
        torch.autograd.grad((marks.sum() + logs.sum()), params)
        assert stats["recomputed_segments"] == stats["checkpoints"]
        assert stats["longest_segment"] == k and stats["recomputed_steps"] == steps
        assert updates.calls == 2 * steps


def test_generic_bound_violation_raises():
    intensity = make("powerlaw")[0]
    torch.manual_seed(0)
    for temperature in (0.0, 0.5):
        process = PointProcess(intensity, DURATION, bound=0.35, temperature=temperature, context=context())
        with pytest.raises(ValueError, match="bound"):
            process.sample() if temperature == 0 else process.rsample()


def test_generic_scan_finds_hidden_tensors():
    """A tensor requiring grad that the intensity uses but does not hold would lose its gradient:
    the backward pass says so."""
    intensity, _, bound, _ = make("user-exphawkes")
    hidden = torch.tensor(0.2, dtype=DT, requires_grad=True)
    inner = intensity.rates
    intensity.rates = lambda state, time: inner(state, time) + hidden
    times, is_cand, is_ctx, ctx_w, gumbel, bound = _timeline(intensity, bound)
    marks, _, _, _ = generic.generic_scan(intensity, times, is_cand, is_ctx, ctx_w, gumbel, bound, 0.5, False,
                                          graph_budget=0)
    with pytest.raises(ValueError, match="does not hold"):
        marks.sum().backward()
    # a scan small enough to keep its graph carries that gradient, as the reference loop does
    stats = {}
    marks, _, _, _ = generic.generic_scan(intensity, times, is_cand, is_ctx, ctx_w, gumbel, bound, 0.5, False,
                                          stats=stats)
    assert stats["graph"] and torch.autograd.grad(marks[..., :-1].sum(), hidden)[0].abs() > 0


def test_generic_scan_probes_hidden_tensors_before_a_graphless_run(monkeypatch):
    """When the only tensor requiring grad is one the intensity does not hold, the scan would run
    without a graph and drop its gradient silently: it raises up front; the reference loop, which
    runs under autograd, carries that gradient."""
    monkeypatch.setattr(generic, "GRAPH_BUDGET_BYTES", 0)  # checkpoint however small
    intensity, params, bound, _ = make("user-exphawkes")
    for p in params:
        p.requires_grad_(False)
    intensity = make("user-exphawkes")[3](*params)  # parameters without gradients
    hidden = torch.tensor(0.2, dtype=DT, requires_grad=True)
    inner = intensity.rates
    intensity.rates = lambda state, time: inner(state, time) + hidden
    process = PointProcess(intensity, DURATION, bound=bound, temperature=0.5, context=context())
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="does not hold"):
        process.rsample()
    with backend("reference"):
        value = process.rsample()
    assert torch.autograd.grad(value[..., 1:-1].sum(), hidden)[0].abs() > 0  # the soft marks


# ---- scoring ---------------------------------------------------------------------------------------------
def _score_value(intensity, bound, relaxed):
    if relaxed:
        torch.manual_seed(1)
        value = PointProcess(intensity, DURATION, bound=bound, temperature=0.3, context=context()).rsample()
        return value.detach().requires_grad_()  # soft weights: a gradient with respect to the value too
    # exact data with ties: within the value and with the context
    return make_context([[0.5, 1.7, 1.7, 3.0, 4.2], [1.2, 2.0, 3.3]], [[0, 1, 0, 1, 1], [1, 0, 0]],
                        intensity.num_marks, DURATION)


@pytest.mark.parametrize("kind", ["exact", "dpp", "exact-formula-soft"])
@pytest.mark.parametrize("name", NAMES)
def test_scan_scoring_matches_parallel(name, kind):
    intensity, params, bound, build = make(name)
    assert scores_by_scan(intensity)
    temperature = 0.0 if kind == "exact" else 0.3
    value = _score_value(intensity, bound, temperature > 0)
    process = PointProcess(intensity, DURATION, bound=bound, temperature=temperature, context=context(),
                           relaxed_log_prob="dpp" if kind == "dpp" else "exact")
    wrt = params + ([value] if value.requires_grad else [])
    out = {}
    for fast in (False, True):
        process.intensity = intensity = build(*params)  # a fresh graph from the leaves
        forward = Spy(intensity, "forward")
        with backend(_backend(fast)):
            log_prob = process.log_prob(value)
            out[fast] = (log_prob, torch.autograd.grad(log_prob.sum(), wrt))
        assert (forward.calls > 0) != fast  # the scan never calls the parallel forward
        del intensity.forward
    torch.testing.assert_close(out[True][0], out[False][0], rtol=1e-11, atol=1e-11)
    for g, r in zip(out[True][1], out[False][1], strict=True):
        assert r.abs().sum() > 0
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-11)


def test_parallel_scoring_attribute_forces_the_parallel_path():
    intensity, _, bound, _ = make("neural")
    value = _score_value(intensity, bound, False)
    forward = Spy(intensity, "forward")
    process = PointProcess(intensity, DURATION, bound=bound, context=context())
    process.log_prob(value)
    assert forward.calls == 0
    intensity.parallel_scoring = True
    assert not scores_by_scan(intensity)
    process.log_prob(value)
    assert forward.calls > 0


@pytest.mark.parametrize("wrt_weights", [True, False], ids=["params-and-weights", "params-only"])
@pytest.mark.parametrize("name", NAMES)
def test_scan_score_gradcheck(name, wrt_weights):
    """The scoring function in float64 with respect to the intensity's tensors and the history
    weights, with ties and several segments; with constant weights (exact data) and an update that
    uses no parameter, the states need no gradient and only the evaluation on them is differentiated."""
    intensity, params, _, build = make(name)
    value = _score_value(intensity, 8.0, False)
    times, weights = history(value, intensity.num_marks, context(), intensity.num_context_marks)
    nodes = torch.stack(gauss_legendre(4, times))
    duration = torch.full(times.shape[:-1], DURATION, dtype=DT)

    def score(*inputs):
        leaves, w = (inputs[:-1], inputs[-1]) if wrt_weights else (inputs, weights)
        stats = {}
        out = scan_score(build(*leaves), times, w, duration, nodes, checkpoint_every=3, stats=stats)
        assert stats["checkpoints"] == math.ceil(times.shape[-1] / 3)
        # the user ExpHawkes decays its traces by a learned decay: its states need a gradient
        assert stats["constant_states"] == (not wrt_weights and name != "user-exphawkes")
        return out

    inputs = params + ([weights.clone().requires_grad_()] if wrt_weights else [])
    assert torch.autograd.gradcheck(score, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_svi_step_takes_the_generic_paths(generic_calls):
    """A Pyro model with a relaxed latent site and an observed site on a user intensity: one
    ``Trace_ELBO`` step samples through the generic scan, scores by the scan (the parallel forward
    is never called) and moves every parameter."""
    pyro.clear_param_store()
    data = _score_value(make("user-exphawkes")[0], 8.0, False)
    spies = []

    def build(prefix):
        p = pyro.param(f"{prefix}_p", torch.tensor([0.3, 0.1], dtype=DT))
        alpha = pyro.param(f"{prefix}_alpha", torch.tensor([[0.2, 0.1, 0.3], [0.05, 0.3, 0.1]], dtype=DT),
                           constraint=torch.distributions.constraints.positive)
        intensity = UserExpHawkes(F.softplus(p), alpha, torch.tensor(1.3, dtype=DT))
        spies.append(Spy(intensity, "forward"))
        return intensity

    def model():
        with pyro.plate("sequences", 2):
            hidden = pyro.sample("hidden", PointProcess(build("m"), DURATION, bound=8.0, temperature=0.5,
                                                        context=context(), max_events=80))
            assert hidden.requires_grad
            pyro.sample("observed", PointProcess(build("o"), DURATION, context=context(), max_events=20), obs=data)

    def guide():
        with pyro.plate("sequences", 2):
            pyro.sample("hidden", PointProcess(build("g"), DURATION, bound=8.0, temperature=0.5,
                                               context=context(), max_events=80))

    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), pyro.infer.Trace_ELBO())
    svi.step()
    assert generic_calls and all(s.calls == 0 for s in spies)
    store = pyro.get_param_store()
    before = {key: store[key].detach().clone() for key in store.keys()}
    assert set(before) == {"m_p", "g_p", "o_p", "m_alpha", "g_alpha", "o_alpha"}
    svi.step()
    for key, old in before.items():
        assert not torch.equal(old, store[key].detach()), key


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", NAMES)
def test_generic_paths_on_cuda(name):
    """The generic scan and scoring run on CUDA and agree with the CPU (same candidates and noise)."""
    out = {}
    for device in ("cpu", "cuda"):
        intensity, params, bound, _ = make(name, device)
        times, is_cand, is_ctx, ctx_w, gumbel, b = (x.to(device) for x in _timeline(intensity, bound))
        marks, logs, _, _ = generic.generic_scan(intensity, times, is_cand, is_ctx, ctx_w, gumbel, b, 0.4, False)
        value = _score_value(intensity, bound, False).to(device)
        h_t, h_w = history(value, intensity.num_marks, context().to(device), intensity.num_context_marks)
        lr, comp = scan_score(intensity, h_t, h_w, torch.full(h_t.shape[:-1], DURATION, dtype=DT, device=device),
                              torch.stack(gauss_legendre(8, h_t)))
        loss = marks.sum() + logs.clamp(min=-30).sum() + lr.sum() - comp.sum()
        out[device] = [x.detach().cpu() for x in (marks, logs, lr, comp, *torch.autograd.grad(loss, params))]
    for g, r in zip(out["cuda"], out["cpu"], strict=True):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))])
def test_scoring_path_by_device(device):
    """On the CPU a user intensity with a scan is scored by the scan at any size; on a CUDA device by
    the parallel ``forward`` while its pairwise tensors fit (one pass of large kernels against a launch
    per event) and by the scan beyond; ``log_prob`` gives the reference's value either way."""
    intensity, _, bound, _ = make("powerlaw", device)
    small = torch.zeros(2, 50, dtype=DT, device=device)
    assert likelihood.use_scan(intensity, small, 50 * 9) == (device == "cpu")
    assert likelihood.use_scan(intensity, torch.zeros(1, 10**6, dtype=DT, device=device), 9 * 10**6)
    value = _score_value(intensity, bound, False).to(device)
    process = PointProcess(intensity, DURATION)
    with torch.no_grad():
        fast = process.log_prob(value)
        with backend("reference"):
            torch.testing.assert_close(fast, process.log_prob(value), rtol=1e-9, atol=1e-9)


# ---- the sampler's log-rates reused by the DPP density of the same draw ---------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_dpp_density_of_own_draw_reuses_the_sampler(name, monkeypatch):
    """``log_prob`` of the very tensor ``rsample`` returned (Trace_ELBO's guide) takes the sampler's
    log-rates (no scoring scan, no parallel forward) and equals, in value and in the gradient with
    respect to every parameter, the scoring of a copy of the value (which does not hit), with the
    context (an expanded view of the distribution's) in the history."""
    from pyro_dpp.scan import generic_scoring, reuse

    _, params, bound, build = make(name)
    scans = []
    original = generic_scoring.scan_score
    monkeypatch.setattr("pyro_dpp.likelihood.scan_score", lambda *a, **k: scans.append(1) or original(*a, **k))
    out = {}
    for reused in (True, False):
        intensity = build(*params)  # a fresh graph from the leaves
        process = PointProcess(intensity, DURATION, bound=bound, temperature=0.3, context=context())
        torch.manual_seed(2)
        value = process.rsample((2,))
        scored = value if reused else value.clone()  # a clone carries the log-weights, not the log-rates
        assert (reuse.recall(scored, intensity, process.context) is not None) == reused
        scans.clear()
        forward = Spy(intensity, "forward")
        log_prob = process.log_prob(scored)
        del intensity.forward
        assert bool(scans) != reused and forward.calls == 0
        out[reused] = (log_prob, torch.autograd.grad(log_prob.sum(), params))
    assert int(event_mask(value).sum()) >= 5
    torch.testing.assert_close(out[True][0], out[False][0], rtol=1e-11, atol=1e-11)
    for g, r in zip(out[True][1], out[False][1], strict=True):
        assert r.abs().sum() > 0
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-11)


def test_reused_log_rates_only_for_the_same_unmodified_draw():
    """No reuse for a detached value (a score-function estimator: only the direct gradient), another
    intensity, another context, an edited value or parameter, or under the reference backend."""
    from pyro_dpp.scan import reuse

    intensity, params, bound, build = make("user-exphawkes")
    process = PointProcess(intensity, DURATION, bound=bound, temperature=0.3, context=context())
    torch.manual_seed(2)
    value = process.rsample((2,))
    assert reuse.recall(value, intensity, process.context) is not None
    assert reuse.recall(value.detach(), intensity, process.context) is None
    assert reuse.recall(value, build(*params), process.context) is None
    assert reuse.recall(value, intensity, context()) is None and reuse.recall(value, intensity, None) is None
    with backend("reference"):
        assert reuse.recall(value, intensity, process.context) is None
    for i in range(len(generic.intensity_tensors(intensity, requiring_grad=False))):
        with torch.no_grad():  # an in-place edit of a tensor the intensity holds (its version changes)
            generic.intensity_tensors(intensity, requiring_grad=False)[i].add_(0.0)
        assert reuse.recall(value, intensity, process.context) is None
        intensity = build(*params)
        process = PointProcess(intensity, DURATION, bound=bound, temperature=0.3, context=context())
        torch.manual_seed(2)
        value = process.rsample((2,))
        assert reuse.recall(value, intensity, process.context) is not None
    torch.manual_seed(2)
    value = process.rsample((2,))
    with torch.no_grad():
        value[..., 0, 0] += 0.0
    assert reuse.recall(value, intensity, process.context) is None


@pytest.mark.parametrize(("name", "mode", "checkpointed", "device"), [
    ("neural", "exact", False, "cpu"), ("neural", "relaxed", True, "cpu"), ("powerlaw", "relaxed", False, "cpu"),
    pytest.param("neural", "relaxed", True, "cuda", marks=pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA device"))])
def test_compiled_backend_matches_reference(name, mode, checkpointed, device, generic_calls, monkeypatch):
    """Backend "compiled": the generic scan's chunks of steps through torch.compile (and its backward
    through the compiled graph, recomputed per checkpointed segment) agree with the reference to
    float64 precision, on the CPU (C++ kernels) and on CUDA (Triton kernels); the steps that do not fill
    a chunk run eagerly. (Chunks of 4 steps: the compilation takes a while and grows with the chunk.)"""
    import torch._dynamo.config

    monkeypatch.setattr(generic, "COMPILED_CHUNK", 4)
    if checkpointed:
        monkeypatch.setattr(generic, "GRAPH_BUDGET_BYTES", 0)
    ref = draw(name, False, mode, device=device)
    original, chunks = generic.compiled_steps, []

    def spy(key=()):
        steps = original(key)
        return None if steps is None else (lambda *args: chunks.append(1) or steps(*args))

    monkeypatch.setattr(generic, "compiled_steps", spy)
    original_run, runs = generic._run, []

    def run_spy(plan, state, lo, hi, *args, **kwargs):
        runs.append((hi - lo, kwargs.get("last", False)))
        return original_run(plan, state, lo, hi, *args, **kwargs)

    monkeypatch.setattr(generic, "_run", run_spy)
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):  # no silent eager fallback
        got = draw(name, True, mode, backend_name="compiled", device=device)
    assert generic_calls and chunks
    if mode == "exact":  # no graph: one segment, its tail padded into one more compiled chunk
        (steps, last), = runs
        assert last and steps % 4 and len(chunks) == -(-steps // 4)
    assert ref[0].shape[-2] > 4
    torch.testing.assert_close(got[0], ref[0], rtol=1e-9, atol=1e-10)
    if mode != "exact":
        real = event_mask(ref[0])
        torch.testing.assert_close(got[1][real], ref[1][real], rtol=1e-9, atol=1e-10)
        for g, r in zip(got[2], ref[2], strict=True):
            torch.testing.assert_close(g, r, rtol=1e-8, atol=1e-10)


def test_scan_without_autograd_runs_in_bounded_segments(generic_calls, monkeypatch):
    """An exact draw (no autograd, no checkpoints) runs in segments of ``UNCHECKPOINTED_SEGMENT``
    steps, which bound the per-step tensors a segment holds; only the last is the scan's last, and
    the draw is the reference's."""
    monkeypatch.setattr(generic, "UNCHECKPOINTED_SEGMENT", 8)
    original_run, runs = generic._run, []

    def run_spy(plan, state, lo, hi, *args, **kwargs):
        runs.append((hi - lo, kwargs.get("last", False)))
        return original_run(plan, state, lo, hi, *args, **kwargs)

    monkeypatch.setattr(generic, "_run", run_spy)
    ref = draw("neural", False, "exact")
    got = draw("neural", True, "exact")
    assert generic_calls and len(runs) > 2
    assert all(n <= 8 for n, _ in runs) and [last for _, last in runs] == [False] * (len(runs) - 1) + [True]
    torch.testing.assert_close(got[0], ref[0], rtol=1e-12, atol=1e-12)


def test_compiled_backend_falls_back_to_eager_steps_when_compilation_fails(monkeypatch):
    """A failed torch.compile (no C++ compiler, say) warns once and the draw is the reference's."""
    import torch._dynamo.exc

    def failing(*args):
        raise torch._dynamo.exc.BackendCompilerFailed(failing, RuntimeError("no C++ compiler"), None)

    monkeypatch.setattr(generic, "_compiled", {})
    monkeypatch.setattr(generic.torch, "compile", lambda fn, **options: failing)
    ref = draw("neural", False, "relaxed")
    with pytest.warns(RuntimeWarning, match="(?s)torch.compile failed.*no C\\+\\+ compiler"):
        got = draw("neural", True, "relaxed", backend_name="compiled")
    with backend("compiled"):
        assert not generic.compiling() and generic.compiled_steps() is None
    torch.testing.assert_close(got[0], ref[0], rtol=1e-12, atol=1e-12)
    for g, r in zip(got[2], ref[2], strict=True):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)
