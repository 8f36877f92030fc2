"""Every plot function draws a figure that saves as a non-empty PNG, without touching the backend."""

from __future__ import annotations

import numpy as np
import pytest
import torch

matplotlib = pytest.importorskip("matplotlib")

from pyro_dpp import PointProcess, SpikeTrains, plot  # noqa: E402
from pyro_dpp.intensity import ExpHawkes, Poisson  # noqa: E402
from pyro_dpp.snn import SNN, gradient_variance  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def plt():
    import matplotlib.pyplot as plt

    yield plt
    plt.close("all")


def _save(ax, path) -> None:
    ax.figure.savefig(path, dpi=60)
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000, f"{path} is not a non-empty PNG"


def _hawkes() -> ExpHawkes:
    return ExpHawkes(torch.tensor([0.5, 0.3]), torch.tensor([[0.3, 0.2], [0.1, 0.4]]), torch.tensor(1.2))


def test_raster_exact_and_relaxed(tmp_path, plt):
    torch.manual_seed(0)
    trains = SpikeTrains.from_lists([[[0.5, 1.5], [1.0]], [[0.2], []]], duration=2.0)
    ax = plot.raster(trains, sequence=0, labels=["a", "b"], title="exact")
    assert ax.get_xlim() == (0.0, 2.0)
    _save(ax, tmp_path / "raster.png")
    relaxed = PointProcess(Poisson(torch.tensor([1.0, 2.0])), duration=5.0, bound=6.0, temperature=0.3).rsample((2,))
    _save(plot.raster(relaxed, sequence=1), tmp_path / "raster_relaxed.png")  # a tensor works too


def test_intensity_trace_with_and_without_context(tmp_path, plt):
    torch.manual_seed(1)
    hawkes = _hawkes()
    trains = SpikeTrains.from_tensor(PointProcess(hawkes, duration=10.0).sample((2,)), 10.0)
    ax = plot.intensity_trace(hawkes, trains, sequence=1, num_points=200)
    assert len(ax.get_lines()) == 2
    _save(ax, tmp_path / "intensity.png")
    # an intensity with context marks: hidden neurons of an SNN seeing observed spikes
    snn = SNN(2, 1, basis="exponential", num_basis=1, init="small")
    observed, hidden = snn.simulate(2, 10.0, seed=2)
    intensity = snn.intensity(snn.hidden_index, snn.observed_index)
    _save(plot.intensity_trace(intensity, hidden, context=observed, num_points=100), tmp_path / "hidden.png")


def test_time_rescaling(tmp_path, plt):
    torch.manual_seed(2)
    hawkes = _hawkes()
    trains = SpikeTrains.from_tensor(PointProcess(hawkes, duration=50.0).sample((4,)), 50.0)
    intervals = plot.rescaled_intervals(hawkes, trains)
    assert len(intervals) == int(trains.num_events.sum())
    # the time-rescaling theorem: Exp(1) intervals under the true intensity
    assert abs(intervals.mean() - 1) < 4 / np.sqrt(len(intervals))
    _save(plot.time_rescaling(intervals, title="KS"), tmp_path / "ks.png")


def test_training_curves(tmp_path, plt):
    ax = plot.training_curves({"pathwise": [3.0, 2.0, 1.5], "score function": [3.0, 2.8, 2.9]}, ylabel="-ELBO")
    assert len(ax.get_lines()) == 2
    _save(ax, tmp_path / "curves.png")


def test_gradient_variance_bars(tmp_path, plt):
    torch.manual_seed(3)
    model = SNN(2, 1, basis="exponential", num_basis=1, init="small")
    guide = SNN(2, 1, basis="exponential", num_basis=1, init="small")
    observed, _ = model.simulate(2, 5.0, seed=3)
    measured = gradient_variance(model, guide, observed, "pathwise", num_draws=8, chunk=8)
    values = {"pathwise": measured, "score_function": [2.0, 2.5, 3.0], "baseline": 0.5}
    ax = plot.gradient_variance_bars(values, title="E[std]")
    assert [t.get_text() for t in ax.get_xticklabels()] == list(values)
    assert ax.get_yscale() == "log"
    heights = [p.get_height() for p in ax.patches]
    assert heights == pytest.approx([measured["e_std"], 2.5, 0.5])
    _save(ax, tmp_path / "variance.png")
    _, ax2 = plt.subplots()
    assert plot.gradient_variance_bars({"a": 0.0, "b": 1.0}, ax=ax2, log=True) is ax2  # a zero keeps a linear axis
    assert ax2.get_yscale() == "linear"
    with pytest.raises(ValueError, match="empty"):
        plot.gradient_variance_bars({})
    with pytest.raises(ValueError, match="nonnegative"):
        plot.gradient_variance_bars({"a": float("nan")})
    with pytest.raises(ValueError, match="e_std"):
        plot.gradient_variance_bars({"a": {"std": 1.0}})


def test_plots_do_not_switch_the_backend(plt):
    """A library must not call matplotlib.use(): notebooks need their inline backend."""
    before = matplotlib.get_backend()
    plt.switch_backend("svg")
    try:
        plot.training_curves({"x": [1.0, 2.0]})
        plot.raster(SpikeTrains.from_lists([[[0.5]]], 1.0))
        assert matplotlib.get_backend() == "svg"
    finally:
        plt.close("all")
        plt.switch_backend(before)
