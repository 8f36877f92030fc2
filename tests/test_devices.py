"""Any dtype and device: sample / rsample / log_prob / backward keep the parameters' dtype and device.

Each check runs with the parameters in one floating dtype while torch's *default* dtype is the other
one, so that a tensor created with the default dtype (instead of the data's) shows up as a dtype
mismatch. The CUDA cases are skipped without a GPU.
"""

from __future__ import annotations

import pytest
import torch

from pyro_dpp import PointProcess, SpikeTrains
from pyro_dpp.intensity import (
    GLM,
    EpanechnikovBasis,
    ExpHawkes,
    InhomogeneousPoisson,
    PiecewisePoisson,
    Poisson,
    PowerLawHawkes,
    RaisedCosineBasis,
    SumExpHawkes,
)
from pyro_dpp.snn import SNN, exact_elbo, gradient_variance, log_marginal

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")),
]
DTYPES = [torch.float32, torch.float64]


@pytest.fixture(params=DTYPES, ids=["float32", "float64"])
def dtype(request):
    other = torch.float64 if request.param == torch.float32 else torch.float32
    default = torch.get_default_dtype()
    torch.set_default_dtype(other)
    yield request.param
    torch.set_default_dtype(default)


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


def _check(x: torch.Tensor, dtype: torch.dtype, device: torch.device) -> None:
    assert x.dtype == dtype, (x.dtype, dtype)
    assert x.device.type == device.type, (x.device, device)


def _intensities(dtype, device):
    """Leaf parameters and the intensities built from them."""
    kw = {"dtype": dtype, "device": device}
    rates = torch.tensor([0.5, 1.0], **kw, requires_grad=True)
    baseline = torch.tensor([0.4, 0.3], **kw, requires_grad=True)
    adjacency = torch.tensor([[0.3, 0.1], [0.2, 0.2]], **kw, requires_grad=True)
    bias = torch.tensor([-0.5, 0.2], **kw, requires_grad=True)
    weight = (0.3 * torch.ones(2, 2, 2, **kw)).requires_grad_()
    cases = {
        "poisson": (Poisson(rates), [rates]),
        "hawkes": (ExpHawkes(baseline, adjacency, torch.tensor(1.5, **kw)), [baseline, adjacency]),
        "glm_epanechnikov": (GLM(bias, weight, EpanechnikovBasis(2, 0.0, 2.0, 1.0).to(device), amplitude=2.0),
                             [bias, weight]),
        "glm_raised_cosine": (GLM(bias, weight, RaisedCosineBasis(2, 2.0).to(device), amplitude=2.0), [bias, weight]),
    }
    sum_adjacency = (0.1 * torch.ones(2, 2, 3, **kw)).requires_grad_()
    exponent = torch.tensor(1.5, **kw, requires_grad=True)
    bin_rates = torch.tensor([[0.5, 1.0], [1.5, 0.2], [0.3, 0.9]], **kw, requires_grad=True)
    cases.update({
        "sumexp_hawkes": (SumExpHawkes(baseline, sum_adjacency, torch.tensor([0.5, 1.0, 4.0], **kw)),
                          [baseline, sum_adjacency]),
        "powerlaw_hawkes": (PowerLawHawkes(baseline, adjacency, torch.tensor(1.0, **kw), exponent, support=2.0),
                            [baseline, adjacency, exponent]),
        "piecewise_poisson": (PiecewisePoisson(torch.tensor([0.0, 1.0, 2.5, 6.0], **kw), bin_rates), [bin_rates]),
        "inhomogeneous_poisson": (InhomogeneousPoisson(lambda t: rates * (1 + 0.5 * torch.sin(t)).unsqueeze(-1),
                                                       bound=torch.tensor(3.0, **kw)), [rates]),
    })
    return cases


@pytest.mark.parametrize("name", ["poisson", "hawkes", "glm_epanechnikov", "glm_raised_cosine", "sumexp_hawkes",
                                  "powerlaw_hawkes", "piecewise_poisson", "inhomogeneous_poisson"])
def test_point_process_dtype_device(name, dtype, device):
    torch.manual_seed(0)
    intensity, params = _intensities(dtype, device)[name]
    bound = 5.0
    exact = PointProcess(intensity, duration=4.0, bound=bound)
    value = exact.sample((3,))
    _check(value, dtype, device)
    log_p = exact.log_prob(value)
    _check(log_p, dtype, device)
    relaxed = PointProcess(intensity, duration=4.0, bound=bound, temperature=0.5)
    soft = relaxed.rsample((3,))
    _check(soft, dtype, device)
    log_q = relaxed.log_prob(soft)
    _check(log_q, dtype, device)
    straight = PointProcess(intensity, duration=4.0, bound=bound, temperature=0.5, straight_through=True).rsample((2,))
    _check(straight, dtype, device)
    loss = -(log_p.sum() + log_q.sum() + soft[..., 1:-1].sum() + straight[..., 1:-1].sum())
    loss.backward()
    for p in params:
        assert p.grad is not None
        _check(p.grad, dtype, device)
        assert torch.isfinite(p.grad).all()
    # SpikeTrains round trip on the same dtype and device
    trains = SpikeTrains.from_tensor(value, exact.duration.expand(3))
    _check(trains.to_tensor(), dtype, device)
    # the index format (time, mark id) scores as the dense one, on the same device
    index = trains.to_tensor(format="index")
    _check(index, dtype, device)
    torch.testing.assert_close(exact.log_prob(index), log_p.detach())


@pytest.mark.parametrize("name", ["hawkes", "sumexp_hawkes", "powerlaw_hawkes", "piecewise_poisson"])
def test_ogata_sampling_without_bound(name, dtype, device):
    torch.manual_seed(1)
    intensity, _ = _intensities(dtype, device)[name]
    value = PointProcess(intensity, duration=5.0).sample((2,))  # local bounds (Ogata)
    _check(value, dtype, device)
    _check(PointProcess(intensity, duration=5.0).log_prob(value), dtype, device)
    # with past events before the window (folded into the start state)
    past = torch.tensor([[-1.0, 1.0, 0.0, 0.0], [-0.5, 0.0, 1.0, 0.0]], dtype=dtype, device=device)
    process = PointProcess(intensity, duration=5.0, past=past)
    value = process.sample((2,))
    _check(value, dtype, device)
    log_p = process.log_prob(value)
    _check(log_p, dtype, device)
    assert torch.isfinite(log_p).all()


def test_spike_trains_dtype_device(dtype, device):
    trains = SpikeTrains.from_lists([[[0.5, 1.0], []], [[0.2], [0.7]]], 2.0, dtype=dtype, device=device)
    _check(trains.to_tensor(), dtype, device)
    _check(trains.duration, dtype, device)
    events = SpikeTrains.from_events(torch.tensor([0.1, 0.3], device=device), torch.tensor([1, 0], device=device),
                                     2, torch.tensor(1.0, dtype=dtype, device=device))
    _check(events.to_tensor(), dtype, device)  # a floating duration tensor sets dtype and device
    assert events.to_lists()[0][1].tolist() == pytest.approx([0.1])


@pytest.mark.parametrize("basis", ["exponential", "epanechnikov", "raised_cosine"])
def test_snn_dtype_device(basis, dtype, device):
    torch.manual_seed(2)
    model = SNN(2, 1, basis=basis, num_basis=2, init="small").to(device=device, dtype=dtype)
    guide = SNN(2, 1, basis=basis, num_basis=2, init="small", acausal=True).to(device=device, dtype=dtype)
    observed, hidden = model.simulate(2, 5.0, seed=3)
    _check(observed.to_tensor(), dtype, device)
    _check(hidden.to_tensor(), dtype, device)
    q = guide.hidden_process(observed, temperature=0.3)
    z = q.rsample()
    log_q = q.log_prob(z)
    log_p = model.hidden_process(observed, temperature=0.3).log_prob(z)
    log_x = model.observed_process(z, observed.duration).log_prob(observed.to_tensor())
    for x in (z, log_q, log_p, log_x):
        _check(x, dtype, device)
    (log_p + log_x - log_q).sum().backward()
    for p in list(model.parameters()) + list(guide.parameters()):
        assert p.grad is not None and torch.isfinite(p.grad).all()
        _check(p.grad, dtype, device)
    _check(exact_elbo(model, guide, observed, num_particles=2), dtype, device)
    _check(log_marginal(model, guide, observed, num_particles=2), dtype, device)
    variance = gradient_variance(model, guide, observed, "score_function_baseline", num_draws=4, chunk=4)
    _check(variance["std"], dtype, device)


def test_snn_pieces_and_windows_dtype_device(dtype, device):
    """Simulation in pieces (each with the spikes before it as past events), and the windowed
    evaluation and training (windows cut on the CPU, each with its past observed spikes)."""
    from pyro_dpp.snn import fit

    model = SNN(2, 1, basis="epanechnikov", num_basis=2, init="small").to(device=device, dtype=dtype)
    guide = SNN(2, 1, basis="epanechnikov", num_basis=2, init="small", acausal=True).to(device=device, dtype=dtype)
    observed, hidden = model.simulate(2, 6.0, seed=5, piece=2.5)
    _check(observed.to_tensor(), dtype, device)
    _check(hidden.to_tensor(), dtype, device)
    for value in (exact_elbo(model, guide, observed, num_particles=2, window=2.5),
                  log_marginal(model, guide, observed, num_particles=2, window=2.5)):
        _check(value, dtype, device)
        assert value.shape == (2,) and torch.isfinite(value).all()
    result = fit(model, observed, guide, estimator="pathwise", num_epochs=1, batch_size=2, window=2.5, seed=0,
                 progress=False)
    assert all(torch.isfinite(torch.tensor(result.losses)))
    _check(model.weight, dtype, device)


def test_snn_fit_dtype_device(dtype, device):
    from pyro_dpp.snn import fit

    model = SNN(2, 1, basis="exponential", num_basis=1, init="small").to(device=device, dtype=dtype)
    observed, _ = model.simulate(2, 5.0, seed=4)
    for estimator in ("pathwise", "score_function_baseline"):
        result = fit(model, observed, estimator=estimator, num_epochs=1, batch_size=None, seed=0, progress=False)
        assert all(torch.isfinite(torch.tensor(result.losses)))
    _check(model.weight, dtype, device)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cpu_scalar_among_cuda_parameters_is_refused():
    """``decay=torch.tensor(1.5)`` (CPU) with CUDA baseline and adjacency: a clear ValueError when the
    process is built, not a device error inside the scan."""
    kw = {"device": "cuda"}
    hawkes = ExpHawkes(torch.tensor([0.4, 0.3], **kw), torch.tensor([[0.3, 0.1], [0.2, 0.2]], **kw), torch.tensor(1.5))
    with pytest.raises(ValueError, match="build all its parameters on one device"):
        PointProcess(hawkes, duration=4.0, bound=5.0)
