"""SNN networks, model/guide pairs, estimators, training and evaluation (small, seeded)."""

import functools

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceGraph_ELBO

from pyro_dpp import SpikeTrains
from pyro_dpp.snn import (
    SNN,
    CountBaseline,
    exact_elbo,
    fit,
    gradient_draws,
    gradient_variance,
    log_marginal,
    snn_guide,
    snn_model,
    temperature_schedule,
)


@pytest.fixture(autouse=True)
def _clean_param_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


def small_data(seed=0, n_seq=3, duration=10.0, basis="epanechnikov", dtype=torch.float64):
    torch.manual_seed(seed)
    true = SNN(2, 2, basis=basis, amplitude=2.0).to(dtype)
    observed, hidden = true.simulate(n_seq, duration, seed=seed + 1)
    return true, observed, hidden


@pytest.mark.parametrize("basis", ["epanechnikov", "exponential", "raised_cosine"])
def test_simulate_splits_neurons(basis):
    true, observed, hidden = small_data(basis=basis)
    assert observed.num_marks == 2 and hidden.num_marks == 2
    assert observed.batch_shape == (3,) and hidden.batch_shape == (3,)
    assert (observed.num_events > 0).all() and (hidden.num_events > 0).all()
    # one-hot events of the right neurons, inside the window and sorted
    for trains in (observed, hidden):
        real = trains.mask
        assert torch.allclose(trains.weights[real].sum(-1), torch.ones(()).double())
        assert (trains.times[real] <= 10.0).all()


def test_paper_initialisation_and_projection():
    torch.manual_seed(0)
    net = SNN(2, 4, init="paper")
    eye = torch.eye(6, dtype=torch.bool)
    assert (net.weight[:, eye] <= -0.1).all() and (net.weight[:, eye] >= -5).all()
    assert (net.weight.abs() <= 5).all() and (net.bias.abs() <= 1).all()
    with torch.no_grad():
        net.weight.fill_(1.0)
    net.project_()
    assert (net.weight[:, eye] == -0.1).all() and (net.weight[:, ~eye] == 1.0).all()
    assert torch.isclose(net.regularizer(), net.weight.detach().pow(2).sum().sqrt())


def test_connection_mask_removes_influence():
    true, observed, _ = small_data()
    mask = torch.ones(4, 4, dtype=torch.bool)
    mask[:2, 2:] = False  # hidden neurons do not drive observed ones
    net = SNN(2, 2, amplitude=2.0, connection_mask=mask).double()
    with torch.no_grad():
        net.weight.copy_(true.weight)
        net.bias.copy_(true.bias)
    q = net.hidden_process(observed, temperature=0.3)
    a, b = q.rsample(), q.rsample()
    la = net.observed_process(a, observed.duration).log_prob(observed.to_tensor())
    lb = net.observed_process(b, observed.duration).log_prob(observed.to_tensor())
    assert torch.allclose(la, lb)


def test_q_equals_p_elbo_is_expected_observed_loglik():
    """With the model's own hidden dynamics as the guide, log p(Z|X) and log q(Z) cancel, so every
    ELBO particle equals log p(X | Z) (checked exactly through Pyro's traces)."""
    true, observed, _ = small_data()
    value, duration = observed.to_tensor(), observed.duration
    for tau in (0.0, 0.3):
        guide = functools.partial(snn_guide, network=true, temperature=tau, name="model")
        model = functools.partial(snn_model, network=true, temperature=tau)
        guide_tr = pyro.poutine.trace(guide).get_trace(value, duration)
        model_tr = pyro.poutine.trace(pyro.poutine.replay(model, trace=guide_tr)).get_trace(value, duration)
        guide_tr.compute_log_prob()
        model_tr.compute_log_prob()
        hidden_p = model_tr.nodes["hidden"]["log_prob"]
        hidden_q = guide_tr.nodes["hidden"]["log_prob"]
        assert torch.allclose(hidden_p, hidden_q, rtol=0, atol=1e-9)
        elbo = model_tr.log_prob_sum() - guide_tr.log_prob_sum()
        assert torch.isclose(elbo, model_tr.nodes["observed"]["log_prob"].sum(), atol=1e-8)


def test_pyro_elbos_run_with_validation():
    true, observed, _ = small_data()
    model_net = SNN(2, 2, amplitude=2.0, init="small").double()
    guide_net = SNN(2, 2, amplitude=2.0, init="small", acausal=True).double()
    value, duration = observed.to_tensor(), observed.duration
    pyro.enable_validation(True)
    baseline = CountBaseline(2).double()
    cases = [
        (Trace_ELBO(), 0.3, None),
        (Trace_ELBO(), 0.0, None),
        (TraceGraph_ELBO(), 0.0, baseline.options(value, duration)),
    ]
    for elbo, tau, options in cases:
        model = functools.partial(snn_model, network=model_net, temperature=tau)
        guide = functools.partial(snn_guide, network=guide_net, temperature=tau, baseline=options)
        loss = elbo.loss_and_grads(model, guide, value, duration)
        assert torch.isfinite(torch.tensor(loss))
        assert guide_net.weight.grad is not None and torch.isfinite(guide_net.weight.grad).all()
        assert guide_net.future_weight.grad is not None and guide_net.future_weight.grad.abs().sum() > 0
        guide_net.zero_grad()
        model_net.zero_grad()


@pytest.mark.parametrize("estimator", ["pathwise", "pathwise_exact", "score_function"])
def test_vectorised_gradient_draw_matches_pyro(estimator):
    """One vectorised draw (parameters with a draw dimension) reproduces Pyro's Trace_ELBO gradient
    for the same random numbers."""
    true, observed, _ = small_data(basis="exponential")
    torch.manual_seed(3)
    model_net = SNN(2, 2, basis="exponential", amplitude=2.0, init="small").double()
    guide_net = SNN(2, 2, basis="exponential", amplitude=2.0, init="small").double()
    tau = 0.3 if estimator.startswith("pathwise") else 0.0
    scoring = "exact" if estimator == "pathwise_exact" else "dpp"
    torch.manual_seed(11)
    draws = gradient_draws(model_net, guide_net, observed, estimator, num_draws=1, temperature=0.3, chunk=1)
    value, duration = observed.to_tensor(), observed.duration
    model = functools.partial(snn_model, network=model_net, temperature=tau, relaxed_log_prob=scoring)
    guide = functools.partial(snn_guide, network=guide_net, temperature=tau, relaxed_log_prob=scoring)
    torch.manual_seed(11)
    Trace_ELBO().loss_and_grads(model, guide, value, duration)
    pyro_grad = -torch.cat([p.grad.reshape(-1) for m in (model_net, guide_net) for p in (m.bias, m.weight)])
    ours = draws[0]
    # our layout per network: bias, weight
    assert torch.allclose(ours, pyro_grad, rtol=1e-6, atol=1e-6)
    if estimator == "pathwise_exact":  # the scoring switch reaches the densities: same draw, other gradient
        torch.manual_seed(11)
        dpp = gradient_draws(model_net, guide_net, observed, "pathwise", num_draws=1, temperature=0.3, chunk=1)
        assert not torch.allclose(dpp[0], ours, rtol=1e-3)


def test_gradient_variance_orders_estimators():
    """Path-wise gradients vary far less than plain score-function ones (the paper's Experiment 1),
    and a baseline reduces score-function variance."""
    # The paper's network family (Epanechnikov filters, a = 5), smaller. With 40 draws each E[std]
    # is known to about 1/sqrt(2 * 40) ~ 11%, far below the factor-2 margin tested.
    torch.manual_seed(0)
    true = SNN(2, 2, amplitude=5.0).double()
    observed, _ = true.simulate(2, 10.0, seed=1)
    torch.manual_seed(5)
    model_net = SNN(2, 2, amplitude=5.0).double()
    guide_net = SNN(2, 2, amplitude=5.0).double()
    e_std = {
        est: gradient_variance(model_net, guide_net, observed, est, num_draws=40, temperature=0.3, chunk=20)["e_std"]
        for est in ("pathwise", "score_function", "score_function_baseline")
    }
    assert e_std["pathwise"] < e_std["score_function"] / 2
    assert e_std["score_function_baseline"] < e_std["score_function"]


def test_pathwise_exact_bias_vanishes_as_temperature_falls():
    """The exact ELBO gradient, estimated by 4,000 score-function draws with a baseline, against the
    mean of 1,000 path-wise draws. Scoring the soft draws by the exact formula ("pathwise_exact"),
    the error falls from many standard errors at tau = 1 to within noise at tau = 0.1; the paper's
    DPP densities ("pathwise") stay biased (measured: relative errors 0.31 / 0.035 and 6.7, noise
    0.03-0.1)."""
    torch.manual_seed(0)
    true = SNN(2, 2, amplitude=2.0).double()
    observed, _ = true.simulate(2, 10.0, seed=1)
    torch.manual_seed(5)
    model_net, guide_net = SNN(2, 2, amplitude=2.0).double(), SNN(2, 2, amplitude=2.0).double()
    torch.manual_seed(0)
    reference = gradient_draws(model_net, guide_net, observed, "score_function_baseline", 4000, chunk=100)
    exact, exact_se = reference.mean(0), reference.std(0) / 4000**0.5

    def error_and_noise(estimator, tau):
        torch.manual_seed(1)
        draws = gradient_draws(model_net, guide_net, observed, estimator, 1000, tau, chunk=100)
        se = draws.std(0) / 1000**0.5
        noise = (se.square().sum() + exact_se.square().sum()).sqrt()
        return float((draws.mean(0) - exact).norm() / noise), float((draws.mean(0) - exact).norm() / exact.norm())

    hot_z, hot_rel = error_and_noise("pathwise_exact", 1.0)
    cold_z, cold_rel = error_and_noise("pathwise_exact", 0.1)
    dpp_z, _ = error_and_noise("pathwise", 0.1)
    assert hot_z > 4 and cold_z < 3 and cold_rel < hot_rel / 3
    assert dpp_z > 20


def test_exact_elbo_and_log_marginal():
    true, observed, _ = small_data()
    elbo = exact_elbo(true, true, observed, num_particles=32)
    assert elbo.shape == (3,) and torch.isfinite(elbo).all()
    logml = log_marginal(true, true, observed, num_particles=64)
    # Jensen: the importance-sampled estimate exceeds the ELBO (both from q = p), up to MC noise
    assert (logml > elbo - 1.0).all()


def test_fit_pathwise_improves_exact_elbo(tmp_path):
    true, observed, _ = small_data(n_seq=4, basis="exponential")
    torch.manual_seed(0)
    model_net = SNN(2, 2, basis="exponential", amplitude=2.0).double()
    guide_net = SNN(2, 2, basis="exponential", amplitude=2.0).double()
    before = exact_elbo(model_net, guide_net, observed, num_particles=16).mean()
    result = fit(model_net, observed, guide_net, estimator="pathwise", num_epochs=6, batch_size=None,
                 lr=0.1, progress=False, seed=0, checkpoint=tmp_path / "ck.pt")
    after = exact_elbo(model_net, guide_net, observed, num_particles=16).mean()
    assert after > before + 5.0
    assert len(result.losses) == 6 and result.epochs_done == 6
    assert result.temperatures == pytest.approx([temperature_schedule(e) for e in range(6)])
    # resuming from the checkpoint continues the epoch count (with the same options: a checkpoint of
    # other options, such as another lr, raises since issue 13)
    resumed = fit(model_net, observed, guide_net, num_epochs=7, batch_size=None, lr=0.1, progress=False,
                  checkpoint=tmp_path / "ck.pt")
    assert resumed.epochs_done == 7 and len(resumed.losses) == 7


def test_fit_score_function_estimators_run():
    true, observed, _ = small_data(n_seq=2, basis="exponential")
    model_net = SNN(2, 2, basis="exponential", amplitude=2.0).double()
    for est in ("score_function", "score_function_baseline"):
        result = fit(model_net, observed, estimator=est, num_epochs=2, batch_size=1, progress=False, seed=0)
        assert len(result.losses) == 4 and all(torch.isfinite(torch.tensor(result.losses)))
        assert result.temperatures == [0.0, 0.0]
        eye = torch.eye(4, dtype=torch.bool)
        assert (model_net.weight.detach()[:, eye] <= -0.1).all()


def test_bad_configurations_raise():
    with pytest.raises(ValueError, match="below the activation's maximum"):
        SNN(2, 2, amplitude=5.0, neuron_bound=3.0)
    with pytest.raises(ValueError, match="amplitude must be positive"):
        SNN(2, 2, amplitude=-1.0)
    with pytest.raises(ValueError, match="unbounded"):
        SNN(2, 2, activation="softplus")
    with pytest.raises(ValueError, match="unknown basis"):
        SNN(2, 2, basis="gaussian")
    with pytest.raises(ValueError, match="connection_mask"):
        SNN(2, 2, connection_mask=torch.ones(3, 3))
    net = SNN(3, 2)
    data = SpikeTrains.from_lists([[[1.0], [2.0]]], duration=10.0)
    with pytest.raises(ValueError, match="neurons"):
        net.hidden_process(data)
    with pytest.raises(ValueError, match="neurons"):
        fit(net, data, progress=False)
    with pytest.raises(ValueError, match="outside"):
        SpikeTrains.from_lists([[[1.0], [12.0], []]], duration=10.0)
    good = SpikeTrains.from_lists([[[1.0], [2.0], []]], duration=10.0)
    with pytest.raises(ValueError, match="unknown estimator"):
        fit(net, good, estimator="reinforce", progress=False)
    with pytest.raises(ValueError, match="temperature > 0"):
        fit(net, good, temperature=0.0, progress=False)


def test_softplus_network_with_bound_detects_violation():
    net = SNN(1, 1, activation="softplus", neuron_bound=1.0, basis="exponential", init="small")
    with torch.no_grad():
        net.bias.fill_(3.0)  # softplus(3) ~ 3.05 > 1
    data = SpikeTrains.from_lists([[[1.0, 2.0]]], duration=5.0)
    with pytest.raises(ValueError, match="bound"):
        net.hidden_process(data, temperature=0.3).rsample()


def test_fit_without_hidden_neurons_says_what_to_do():
    data = SpikeTrains.from_lists([[[1.0], [2.0]]], duration=10.0)
    with pytest.raises(ValueError, match="no hidden neurons"):
        fit(SNN(2, 0), data, progress=False)


def test_underflowed_weight_of_a_possible_class_keeps_density_finite():
    """A guide whose 'no event' probability rounded to zero (saturated sigmoids in float32) yields
    candidates with an exactly-zero 'no event' weight; a model for which that class is possible
    must still give a finite density and gradient (it used to be inf - inf)."""
    from pyro_dpp.likelihood import concrete_log_density

    log_pi = torch.log(torch.tensor([[0.3, 0.6, 0.1]])).requires_grad_()
    log_y = torch.tensor([[-0.1, -2.4, -float("inf")]])
    density = concrete_log_density(log_y, log_pi, 0.3)
    density.sum().backward()
    assert torch.isfinite(density).all() and torch.isfinite(log_pi.grad).all()


@pytest.mark.parametrize("estimator, optimizer", [("pathwise", "adagrad"), ("score_function_baseline", "adam")])
def test_fit_interrupted_and_resumed_is_bit_identical(tmp_path, monkeypatch, estimator, optimizer):
    from pyro_dpp.snn import TrainingInterrupted

    _, observed, _ = small_data(n_seq=3, duration=6.0, basis="exponential")

    def run(checkpoint, interrupt_after=None):
        torch.manual_seed(7)
        model, guide = (SNN(2, 2, basis="exponential", amplitude=2.0).double() for _ in range(2))
        options = dict(estimator=estimator, optimizer=optimizer, num_epochs=3, batch_size=2, progress=False, seed=0,
                       checkpoint=checkpoint)
        if interrupt_after is not None:  # the hook raises KeyboardInterrupt after this epoch's checkpoint
            monkeypatch.setenv("PYRO_DPP_TEST_INTERRUPT_AFTER_EPOCH", str(interrupt_after))
            with pytest.raises(TrainingInterrupted, match=f"after {interrupt_after} of 3 epochs"):
                fit(model, observed, guide, **options)
            monkeypatch.delenv("PYRO_DPP_TEST_INTERRUPT_AFTER_EPOCH")
            # a fresh process would rebuild the networks from the seed, then resume
            torch.manual_seed(7)
            model, guide = (SNN(2, 2, basis="exponential", amplitude=2.0).double() for _ in range(2))
        result = fit(model, observed, guide, **options)
        return result, [p.detach().clone() for p in list(model.parameters()) + list(guide.parameters())]

    plain, plain_params = run(tmp_path / "a.pt")
    resumed, resumed_params = run(tmp_path / "b.pt", interrupt_after=1)
    assert resumed.losses == plain.losses and resumed.epochs_done == 3
    assert all(torch.equal(a, b) for a, b in zip(plain_params, resumed_params))


# ---- windows of long recordings (fit(window=...), exact_elbo/log_marginal(window=...)) ------------


def _no_hidden_recurrence(net):
    """The network with its hidden-to-hidden weights zeroed: the hidden process then does not depend
    on its own past, so windows lose nothing."""
    with torch.no_grad():
        for i in net.hidden_index:
            for j in net.hidden_index:
                net.weight[:, i, j] = 0.0
    return net


@pytest.mark.parametrize("basis", ["epanechnikov", "exponential", "raised_cosine"])
def test_network_processes_in_windows_sum_to_the_whole(basis):
    """The observed process of each window gets the observed past (past=) and the hidden past and
    window as context; the hidden process gets the observed past and window as context. Without
    hidden-to-hidden weights both sum over windows to the whole recording's log-likelihoods."""
    true, observed, hidden = small_data(basis=basis, n_seq=2, duration=30.0)
    net = _no_hidden_recurrence(true)
    whole_obs = net.observed_process(hidden).log_prob(observed.to_tensor())
    whole_hid = net.hidden_process(observed).log_prob(hidden.to_tensor())
    obs_w = observed.windows(8.0, model=net)
    hid_w = hidden.windows(8.0, history=obs_w.history)
    assert torch.equal(obs_w.sequence, hid_w.sequence)
    obs_parts = net.observed_process(hid_w.with_past(), obs_w.duration, past=obs_w.past).log_prob(obs_w.value())
    hid_parts = net.hidden_process(obs_w.value(), obs_w.duration, past=obs_w.past).log_prob(hid_w.value())
    for whole, parts in ((whole_obs, obs_parts), (whole_hid, hid_parts)):
        per_seq = torch.zeros_like(whole).index_add(0, obs_w.sequence, parts)
        # the GLM compensator is a quadrature (8 nodes per interval) whose intervals the window edges
        # change: the two sums differ by its error, up to a few 1e-7 of the log-likelihood
        torch.testing.assert_close(per_seq, whole, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("shared", [True, False])
def test_fit_on_windows(shared):
    true, observed, _ = small_data(n_seq=2, duration=20.0)
    torch.manual_seed(0)
    model = SNN(2, 2, amplitude=2.0, init="small").double()
    guide = None if shared else SNN(2, 2, amplitude=2.0, init="small").double()
    windows = observed.windows(6.0, model=model)
    assert len(windows) == 8  # 4 per sequence, the last 2 s long
    result = fit(model, observed, guide, estimator="pathwise_exact", num_epochs=2, batch_size=3, progress=False,
                 seed=0, window=6.0)
    assert len(result.losses) == 2 * 3  # batch_size counts windows: ceil(8 / 3) steps per epoch
    assert all(torch.isfinite(torch.tensor(result.losses)))


def test_fit_window_enters_the_checkpoint(tmp_path):
    _, observed, _ = small_data(n_seq=2, duration=12.0)
    torch.manual_seed(0)
    model = SNN(2, 1, amplitude=2.0, init="small").double()
    path = tmp_path / "ck.pt"
    fit(model, observed, num_epochs=1, progress=False, seed=0, window=6.0, checkpoint=path)
    with pytest.raises(ValueError, match="window"):
        fit(model, observed, num_epochs=2, progress=False, seed=0, window=4.0, checkpoint=path)
    with pytest.raises(ValueError, match="window"):
        fit(model, observed, num_epochs=2, progress=False, seed=0, checkpoint=path)
    with pytest.raises(ValueError, match="history"):
        fit(model, observed, num_epochs=2, progress=False, seed=0, window=6.0, history=1.0, checkpoint=path)
    again = fit(model, observed, num_epochs=2, progress=False, seed=0, window=6.0, checkpoint=path)
    assert again.epochs_done == 2


@pytest.mark.parametrize("window", [0.0, -1.0, float("nan"), "6"])
def test_fit_bad_window_raises(window):
    _, observed, _ = small_data(n_seq=1, duration=5.0)
    model = SNN(2, 1, amplitude=2.0, init="small").double()
    with pytest.raises(ValueError, match="window must be a positive number"):
        fit(model, observed, num_epochs=1, progress=False, window=window)


def test_windowed_evaluation():
    true, observed, _ = small_data(n_seq=2, duration=10.0)
    for fn in (exact_elbo, log_marginal):
        torch.manual_seed(4)
        whole = fn(true, true, observed, num_particles=4)
        torch.manual_seed(4)
        one_window = fn(true, true, observed, num_particles=4, window=10.0)  # one window, no past
        torch.testing.assert_close(one_window, whole, rtol=1e-12, atol=1e-12)
        windowed = fn(true, true, observed, num_particles=4, window=3.0)
        assert windowed.shape == (2,) and torch.isfinite(windowed).all()
    with pytest.raises(ValueError, match="SpikeTrains"):
        exact_elbo(true, true, observed.to_tensor(), duration=observed.duration, window=3.0)


def _joint_trains(observed, hidden):
    lists = [a + b for a, b in zip(observed.to_lists(), hidden.to_lists())]
    return SpikeTrains.from_lists(lists, observed.duration, dtype=torch.float64)


@pytest.mark.parametrize("carry_past", [True, False])
def test_simulate_in_pieces_is_the_same_process(carry_past, monkeypatch):
    """Pieces carry the spikes within the history reach as past: the recording is a draw of the whole
    process (time-rescaling KS under the joint intensity on the whole window). Without the past, the
    same check fails: the strong paper weights make every piece boundary visible."""
    import pyro_dpp.windows as windows
    from pyro_dpp.testing import ks_pvalue, rescaled_gaps

    if not carry_past:
        monkeypatch.setattr(windows, "history_reach", lambda *args, **kwargs: 0.0)
    torch.manual_seed(0)
    net = SNN(3, 2, init="paper").double()
    observed, hidden = net.simulate(32, 40.0, seed=2, piece=2.0)
    assert observed.times.dtype == torch.float64 and (observed.duration == 40.0).all()
    value = _joint_trains(observed, hidden).to_tensor()
    p = ks_pvalue(rescaled_gaps(net.intensity(list(range(5)), [], None), value, 40.0))
    assert (p > 1e-3) if carry_past else (p < 1e-6)


def test_simulate_in_pieces_options():
    torch.manual_seed(0)
    net = SNN(3, 0, init="small").double()
    observed, hidden = net.simulate(2, 20.0, seed=1, piece=3.0)
    assert hidden.num_marks == 0 and observed.num_marks == 3 and (observed.num_events > 0).all()
    whole = net.simulate(2, 20.0, seed=1, piece=float("inf"))[0]
    assert whole.batch_shape == observed.batch_shape
    with pytest.raises(ValueError, match="piece must be a positive"):
        net.simulate(2, 20.0, piece=0.0)


# ---- the observed site in the index layout ----------------------------------------------------


@pytest.mark.parametrize("tau, elbo_class", [(0.3, Trace_ELBO), (0.0, Trace_ELBO), (0.0, TraceGraph_ELBO)])
def test_observed_site_scores_index_values_like_dense(tau, elbo_class):
    """The model/guide pair with the observed spikes as an index value (what fit passes) gives the
    loss and gradients of the dense value, for the same random numbers; the observed site's value
    has two columns (time, neuron id) whatever the number of neurons."""
    _, observed, _ = small_data()
    model_net = SNN(2, 2, amplitude=2.0, init="small").double()
    guide_net = SNN(2, 2, amplitude=2.0, init="small", acausal=True).double()
    dense, index, duration = observed.to_tensor(), observed.to_tensor(format="index"), observed.duration
    baseline = CountBaseline(2).double()
    results = []
    for value in (dense, index):
        options = baseline.options(value, duration) if elbo_class is TraceGraph_ELBO else None
        model = functools.partial(snn_model, network=model_net, temperature=tau)
        guide = functools.partial(snn_guide, network=guide_net, temperature=tau, baseline=options)
        torch.manual_seed(5)
        loss = elbo_class().loss_and_grads(model, guide, value, duration)
        results.append((loss, model_net.weight.grad.clone(), guide_net.weight.grad.clone()))
        model_net.zero_grad()
        guide_net.zero_grad()
        trace = pyro.poutine.trace(model).get_trace(value, duration)
        assert trace.nodes["observed"]["value"].shape == value.shape
    (loss_d, gm_d, gg_d), (loss_i, gm_i, gg_i) = results
    assert loss_i == pytest.approx(loss_d, rel=1e-10)
    assert torch.allclose(gm_i, gm_d, rtol=1e-8, atol=1e-10)
    assert torch.allclose(gg_i, gg_d, rtol=1e-8, atol=1e-10)
    assert torch.equal(CountBaseline.features(index, duration, 2), CountBaseline.features(dense, duration))


def test_fit_passes_the_observed_spikes_as_an_index_value(monkeypatch):
    """fit hands the model the observed spikes as ``batch x events x 2`` (not ``x (D_o + 2)``)."""
    import pyro_dpp.snn.training as training

    _, observed, _ = small_data(n_seq=2, duration=5.0)
    seen = []

    def spy(observed_value, *args, **kwargs):
        seen.append(observed_value.shape)
        return snn_model(observed_value, *args, **kwargs)

    monkeypatch.setattr(training, "snn_model", spy)
    model = SNN(2, 2, amplitude=2.0, init="small").double()
    fit(model, observed, SNN(2, 2, amplitude=2.0, init="small").double(), estimator="pathwise_exact",
        num_epochs=1, temperature=0.5, progress=False)
    assert seen and all(shape[-1] == 2 for shape in seen)


def test_evaluation_accepts_index_values():
    torch.manual_seed(2)
    true, observed, _ = small_data()
    torch.manual_seed(3)
    a = exact_elbo(true, true, observed, num_particles=8)
    torch.manual_seed(3)
    b = exact_elbo(true, true, observed.to_tensor(), duration=observed.duration, num_particles=8)
    assert torch.allclose(a, b, rtol=1e-10)
