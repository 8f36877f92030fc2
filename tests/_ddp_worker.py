"""One worker of the DDP check in tests/test_distributed.py (not a test module itself).

Run as ``python tests/_ddp_worker.py OUT``: Lightning starts the second worker by running the same
command again. Each worker writes what it saw to ``OUT/<mode>_rank<r>.pt``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from pyro_dpp.distributed import SNNLightningModule, SpikeTrainDataset, collate_spike_trains, ddp_trainer
from pyro_dpp.snn import SNN

NUM_SEQUENCES, DURATION, LR = 4, 5.0, 0.1
WINDOW = 2.0  # the "windows" mode: 3 windows per sequence (2, 2 and 1 s), 12 in all


def network(seed: int) -> SNN:
    torch.manual_seed(seed)
    return SNN(2, 1, basis="exponential", num_basis=1, init="small").double()


def data():
    """``(observed, hidden)`` spike trains of a teacher network (the same in every process)."""
    return network(100).simulate(NUM_SEQUENCES, DURATION, seed=101)


class Recording(SNNLightningModule):
    """Keeps the (already all-reduced) gradients of the first optimiser step."""

    first_grads: dict[str, torch.Tensor] | None = None
    seen: list | None = None

    def on_train_batch_start(self, batch, batch_idx):
        if self.seen is not None:
            self.seen.append([x.detach().clone() for x in (batch.observed, batch.duration, batch.past)])

    def on_before_optimizer_step(self, optimizer):
        if self.first_grads is None:
            self.first_grads = {n: p.grad.detach().clone() for n, p in self.named_parameters() if p.grad is not None}


def run(out: Path, mode: str) -> None:
    observed, hidden = data()
    if mode == "complete":  # exact complete-data loss: deterministic, one SGD step on 2 x 2 sequences
        module = Recording(network(0), estimator="score_function", optimizer="sgd", lr=LR, regularizer=0.1)
        dataset, batch_size, limits = SpikeTrainDataset(observed, hidden), 2, {"max_steps": 1}
    elif mode == "windows":  # path-wise ELBO (q = p) on windows, sharded: 1 epoch of 3 steps of 2 windows
        module = Recording(network(0), estimator="pathwise", seed=7)
        module.seen = []
        dataset = SpikeTrainDataset(observed, window=WINDOW, model=module.network)
        batch_size, limits = 2, {"max_epochs": 1}
    else:  # path-wise ELBO with a separate guide, 2 epochs of 2 steps
        module = Recording(network(0), network(1), estimator="pathwise", seed=7)
        dataset, batch_size, limits = SpikeTrainDataset(observed), 1, {"max_epochs": 2}
    initial = {n: p.detach().clone() for n, p in module.named_parameters()}
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate_spike_trains)
    trainer = ddp_trainer(devices=2, enable_progress_bar=False, **limits)
    trainer.fit(module, loader)
    final = {n: p.detach().clone() for n, p in module.named_parameters()}
    torch.save({"initial": initial, "final": final, "grads": module.first_grads, "history": module.history,
                "world_size": trainer.world_size, "seen": module.seen}, out / f"{mode}_rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    torch.set_num_threads(1)
    target = Path(sys.argv[1])
    for name in ("complete", "pathwise", "windows"):
        run(target, name)
