"""Distributed training: data set and collation, module-based model/guide, Lightning fits, and a real
two-process DDP run (gloo on loopback) checked against the single-process gradient."""

from __future__ import annotations

import functools
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO

pytest.importorskip("lightning")

import _ddp_worker as worker  # noqa: E402  (tests/ is on sys.path)

from pyro_dpp import SpikeTrains, event_mask  # noqa: E402
from pyro_dpp import distributed as dist  # noqa: E402
from pyro_dpp.snn import snn_guide, snn_model  # noqa: E402

WORKER = Path(worker.__file__).resolve()
# lightning 2.6 with torch 2.13: a deprecation inside lightning itself
pytestmark = pytest.mark.filterwarnings(r"ignore:.*isinstance\(treespec, LeafSpec\)")


@pytest.fixture(autouse=True)
def _clean_param_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


def _loader(dataset, batch_size):
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=dist.collate_spike_trains)


def test_dataset_and_collate_pad_to_the_batch_maximum():
    observed, hidden = worker.data()
    dataset = dist.SpikeTrainDataset(observed, hidden)
    assert len(dataset) == worker.NUM_SEQUENCES
    counts = observed.num_events.tolist()
    rows, duration, hid = dataset[1]
    assert rows.shape == (counts[1], 4) and float(duration) == worker.DURATION and hid.shape[-1] == 3
    batch = dist.collate_spike_trains([dataset[0], dataset[2]])
    assert isinstance(batch, dist.SpikeBatch)
    assert batch.observed.shape == (2, max(counts[0], counts[2]) + 1, 4)  # the batch's maximum plus one
    full = observed.to_tensor()
    for row, s in enumerate((0, 2)):
        again = SpikeTrains.from_tensor(batch.observed[row])
        assert torch.equal(again.to_tensor(), full[s, : counts[s] + 1])
        assert not event_mask(batch.observed[row])[counts[s]:].any()
        assert (batch.observed[row, counts[s]:, 0] == worker.DURATION).all()
    assert batch.hidden.shape[0] == 2 and dist.collate_spike_trains([dataset[0]]).hidden is not None
    assert dist.collate_spike_trains([dist.SpikeTrainDataset(observed)[0]]).hidden is None
    other = SpikeTrains.from_lists([[[0.5]]] * worker.NUM_SEQUENCES, 1.0)
    with pytest.raises(ValueError, match="same sequences"):
        dist.SpikeTrainDataset(observed, other)
    with pytest.raises(ValueError, match="SpikeTrains"):
        dist.SpikeTrainDataset(observed.to_tensor())


def test_module_model_guide_match_the_functions_and_keep_the_param_store_empty():
    observed, _ = worker.data()
    batch = dist.collate_spike_trains([dist.SpikeTrainDataset(observed)[i] for i in range(3)])
    net = worker.network(0)
    elbo = Trace_ELBO(max_plate_nesting=1)(dist.SNNModel(net, 0.3), dist.SNNGuide(net, 0.3))
    torch.manual_seed(5)
    loss = elbo(batch.observed, batch.duration)
    assert len(pyro.get_param_store()) == 0  # module-local parameters only
    loss.backward()
    assert net.weight.grad is not None and torch.isfinite(net.weight.grad).all()
    torch.manual_seed(5)
    model = functools.partial(snn_model, network=net, temperature=0.3)
    guide = functools.partial(snn_guide, network=net, temperature=0.3, name="model")
    reference = Trace_ELBO(max_plate_nesting=1).loss(model, guide, batch.observed, batch.duration)
    assert loss.item() == pytest.approx(reference, rel=1e-12)


@pytest.mark.parametrize("estimator", ["pathwise", "score_function", "score_function_baseline"])
def test_single_process_fit(estimator):
    observed, _ = worker.data()
    module = dist.SNNLightningModule(worker.network(0), worker.network(1), estimator=estimator, seed=3)
    if estimator == "score_function_baseline":
        assert isinstance(module.elbo, dist.SurrogateELBOModule)
        baseline = module.elbo.guide.baseline
        before = [p.detach().clone() for p in baseline.parameters()]
    before_weight = module.network.weight.detach().clone()
    trainer = dist.ddp_trainer(devices=1, max_epochs=2, enable_progress_bar=False)
    trainer.fit(module, _loader(dist.SpikeTrainDataset(observed), 2))
    assert len(module.history) == 2 and all(math.isfinite(x) for x in module.history)
    assert not torch.equal(module.network.weight, before_weight)
    assert module.elbo.model.temperature == module.temperature(1)
    assert (module.temperature(1) > 0) == (estimator == "pathwise")
    if estimator == "score_function_baseline":  # the baseline is a module, trained alongside
        assert any(not torch.equal(a, b) for a, b in zip(before, baseline.parameters()))
    assert len(pyro.get_param_store()) == 0


def test_bad_arguments_and_missing_lightning(monkeypatch):
    with pytest.raises(ValueError, match="unknown estimator"):
        dist.SNNLightningModule(worker.network(0), estimator="magic")
    with pytest.raises(ValueError, match="temperature > 0"):
        dist.SNNLightningModule(worker.network(0), temperature=0.0)
    monkeypatch.setattr(dist, "pl", None)
    with pytest.raises(ImportError, match=r"pyro-dpp\[distributed\]"):
        dist.SNNLightningModule(worker.network(0))
    with pytest.raises(ImportError, match=r"pyro-dpp\[distributed\]"):
        dist.ddp_trainer()


def _single_process_step() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Gradient and parameters after one SGD step of the complete-data loss on all sequences at once."""
    observed, hidden = worker.data()
    module = dist.SNNLightningModule(worker.network(0), estimator="score_function", optimizer="sgd", lr=worker.LR)
    net = module.network
    batch = dist.collate_spike_trains([dist.SpikeTrainDataset(observed, hidden)[i] for i in range(len(observed))])
    loss = -dist.complete_log_likelihood(net, batch.observed, batch.duration, batch.hidden).mean()
    (loss + 0.1 * net.regularizer()).backward()
    grads = {n: p.grad.detach().clone() for n, p in module.named_parameters()}
    with torch.no_grad():
        for p in module.parameters():
            p -= worker.LR * p.grad
        net.project_()
    return grads, {n: p.detach().clone() for n, p in module.named_parameters()}


def test_two_process_ddp(tmp_path):
    """Two CPU workers (DDP, gloo on 127.0.0.1): after one step on the exact complete-data loss their
    averaged gradient is the single-process gradient over all four sequences; after path-wise ELBO
    training with different random draws per worker their parameters are identical."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "GLOBAL_RANK", "MASTER_PORT", "PL_GLOBAL_SEED")}
    env["MASTER_ADDR"] = "127.0.0.1"
    env["OMP_NUM_THREADS"] = "1"
    # its own session, so that a hung run can be ended with both workers (the second is its child)
    proc = subprocess.Popen([sys.executable, str(WORKER), str(tmp_path)], cwd=WORKER.parent.parent, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail("the DDP run did not finish in 180 s:\n" + stdout[-2000:] + stderr[-2000:])
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    runs = {(mode, r): torch.load(tmp_path / f"{mode}_rank{r}.pt")
            for mode in ("complete", "pathwise", "windows") for r in (0, 1)}
    assert all(run["world_size"] == 2 for run in runs.values())

    grads, params = _single_process_step()
    for r in (0, 1):
        run = runs["complete", r]
        assert set(run["grads"]) == set(grads)
        for name, g in grads.items():
            torch.testing.assert_close(run["grads"][name], g, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(run["final"][name], params[name], rtol=1e-10, atol=1e-12)
        assert any(not torch.equal(run["initial"][n], run["final"][n]) for n in run["final"])

    first, second = runs["pathwise", 0], runs["pathwise", 1]
    for name in first["final"]:
        assert torch.equal(first["initial"][name], second["initial"][name])
        assert torch.equal(first["final"][name], second["final"][name]), name
    assert any(not torch.equal(first["initial"][n], first["final"][n]) for n in first["final"])
    assert len(first["history"]) == 2 and first["history"] == second["history"]  # synced across workers
    assert all(math.isfinite(x) for x in first["history"])

    # with window= the workers shard windows: each window once, on one worker; parameters stay in sync
    observed, _ = worker.data()
    dataset = dist.SpikeTrainDataset(observed, window=worker.WINDOW, model=worker.network(0))
    assert len(dataset) == 3 * worker.NUM_SEQUENCES
    items = [dataset[i] for i in range(len(dataset))]
    visited = []
    for r in (0, 1):
        for obs, duration, past in runs["windows", r]["seen"]:
            for row in range(obs.shape[0]):
                rows = obs[row][event_mask(obs[row])]
                past_rows = past[row][event_mask(past[row])]
                match = [i for i, (o, d, _, p) in enumerate(items)
                         if torch.equal(o, rows) and float(d) == float(duration[row]) and torch.equal(p, past_rows)]
                assert len(match) >= 1
                visited.append((r, match))
    assert len(visited) == len(dataset)  # 12 windows, 6 per worker, none repeated
    assert len({i for _, m in visited for i in m}) == len(dataset)
    first, second = runs["windows", 0], runs["windows", 1]
    for name in first["final"]:
        assert torch.equal(first["final"][name], second["final"][name]), name
    assert any(not torch.equal(first["initial"][n], first["final"][n]) for n in first["final"])


def test_example_runs():
    """examples/distributed_fit.py, shrunk (one process: the two-process path is checked above)."""
    example = WORKER.parent.parent / "examples" / "distributed_fit.py"
    done = subprocess.run([sys.executable, str(example), "--devices", "1", "--epochs", "2", "--sequences", "2",
                           "--duration", "5"], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "epoch 1:" in done.stdout and "exact ELBO per sequence" in done.stdout


def test_windows_dataset_and_single_process_fit():
    observed, hidden = worker.data()
    net = worker.network(0)
    dataset = dist.SpikeTrainDataset(observed, window=worker.WINDOW, model=net)
    assert len(dataset) == 3 * worker.NUM_SEQUENCES
    windows = observed.windows(worker.WINDOW, model=net)
    rows, duration, hid, past = dataset[4]
    assert hid is None and float(duration) == float(windows.duration[4])
    assert torch.equal(past, windows.past[4][event_mask(windows.past[4])])
    batch = dist.collate_spike_trains([dataset[i] for i in (1, 4)])
    assert batch.past.shape[0] == 2
    assert (batch.past[..., 0][event_mask(batch.past)] < 0).all()
    module = dist.SNNLightningModule(net, estimator="pathwise_exact", seed=3)
    before = module.network.weight.detach().clone()
    trainer = dist.ddp_trainer(devices=1, max_epochs=1, enable_progress_bar=False)
    trainer.fit(module, _loader(dataset, 4))
    assert len(module.history) == 1 and math.isfinite(module.history[0])
    assert not torch.equal(module.network.weight, before)
    with pytest.raises(ValueError, match="hidden=None"):
        dist.SpikeTrainDataset(observed, hidden, window=worker.WINDOW, model=net)
    with pytest.raises(ValueError, match="history="):
        dist.SpikeTrainDataset(observed, window=worker.WINDOW)
