"""Fit an SNN with hidden neurons on several CPU worker processes (DDP, gloo backend) with Lightning.

    pip install -e '.[distributed]'
    python examples/distributed_fit.py                 # 2 workers
    python examples/distributed_fit.py --devices 1     # the same fit in one process

A teacher network (4 observed + 2 hidden neurons) simulates the data; a student model and an acausal
guide are trained with the path-wise (DPP) estimator. Every worker gets its own share of every epoch's
sequences and its own random draws; DDP averages the gradients, so the workers stay identical. Rank 0
prints the per-epoch loss (negative ELBO per sequence, averaged over workers) and the exact ELBO of the
data (the paper's evaluation protocol) before and after training.
"""

from __future__ import annotations

import argparse
import math
import os
import time

import torch

from pyro_dpp.distributed import SNNLightningModule, SpikeTrainDataset, collate_spike_trains, ddp_trainer
from pyro_dpp.snn import SNN, exact_elbo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=2, help="worker processes (CPU)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--sequences", type=int, default=8)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--batch-size", type=int, default=2, help="sequences per worker and step")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)  # many tiny ops per thinning step: one thread per worker is fastest

    # The same data and initial parameters in every worker (DDP also broadcasts rank 0's parameters).
    torch.manual_seed(args.seed)
    teacher = SNN(4, 2, basis="exponential", num_basis=2, init="paper").double()
    observed, _ = teacher.simulate(args.sequences, args.duration, seed=args.seed + 1)
    torch.manual_seed(args.seed + 2)
    model = SNN(4, 2, basis="exponential", num_basis=2, init="small").double()
    guide = SNN(4, 2, basis="exponential", num_basis=2, init="small", acausal=True).double()
    module = SNNLightningModule(model, guide, estimator="pathwise", temperature=0.3, lr=0.05, seed=args.seed)

    loader = torch.utils.data.DataLoader(SpikeTrainDataset(observed), batch_size=args.batch_size, shuffle=True,
                                         collate_fn=collate_spike_trains)
    trainer = ddp_trainer(devices=args.devices, max_epochs=args.epochs, enable_progress_bar=False)

    # Lightning starts the other workers by rerunning this script with LOCAL_RANK set: only the first
    # process evaluates (the loaded data and initial parameters are the same in all of them)
    first = int(os.environ.get("LOCAL_RANK", 0)) == 0
    torch.manual_seed(args.seed + 3)
    before = float(exact_elbo(model, guide, observed, num_particles=8).mean()) if first else math.nan
    start = time.perf_counter()
    trainer.fit(module, loader)
    seconds = time.perf_counter() - start
    if not trainer.is_global_zero:
        return
    torch.manual_seed(args.seed + 3)
    after = float(exact_elbo(model, guide, observed, num_particles=8).mean())
    print(f"{trainer.world_size} worker(s), {args.sequences} sequences of length {args.duration:g}, "
          f"{int(observed.num_events.sum())} observed spikes, {args.batch_size} sequences per worker and step")
    for epoch, loss in enumerate(module.history):
        print(f"epoch {epoch}: temperature {module.temperature(epoch):.3f}  loss (-ELBO per sequence) {loss:.2f}")
    print(f"exact ELBO per sequence: {before:.2f} before, {after:.2f} after training ({seconds:.1f} s)")


if __name__ == "__main__":
    main()
