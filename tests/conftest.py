"""Test-wide settings."""

import torch

# Many tiny tensor ops per scan step: one intra-op thread per worker is fastest and avoids
# oversubscribing the cores when pytest-xdist runs workers in parallel.
torch.set_num_threads(1)
