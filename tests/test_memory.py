"""The memory budget checked before large allocations."""

from __future__ import annotations

import pytest
import torch

from pyro_dpp import PointProcess
from pyro_dpp.intensity import Poisson
from pyro_dpp.memory import ENV, check_allocation, memory_limit, set_memory_limit


@pytest.fixture(autouse=True)
def _restore_limit():
    yield
    set_memory_limit(None)


def test_limit_settings(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert memory_limit() > 0
    monkeypatch.setenv(ENV, "8G")
    assert memory_limit() == 8 * 2**30
    set_memory_limit("1.5M")  # the function's setting wins over the environment
    assert memory_limit() == int(1.5 * 2**20)
    set_memory_limit(None)
    monkeypatch.setenv(ENV, "lots")
    with pytest.raises(ValueError, match="is not a size"):
        memory_limit()
    with pytest.raises(ValueError, match="must be positive"):
        set_memory_limit(0)


def test_check_allocation_names_the_size_and_the_fix():
    set_memory_limit(1000)
    check_allocation(1000, "x", "y")
    with pytest.raises(ValueError, match=r"this would need about 1.95 KiB .* limit of 1e\+03 B; do less"):
        check_allocation(2000, "this", "do less")


def test_a_draw_is_sized_against_the_limit():
    # 1 x max_events x 4 columns x 4 bytes x 4 tensors: the smallest limit that passes
    process = PointProcess(Poisson(torch.tensor([5.0, 5.0])), 10.0, temperature=0.3, max_events=500)
    set_memory_limit(4 * 500 * 4 * 4)
    process.rsample()
    set_memory_limit(4 * 500 * 4 * 4 - 1)
    with pytest.raises(ValueError, match="a draw of 1 sequence"):
        process.rsample()
    with pytest.raises(ValueError, match="a draw of 3 sequence"):
        process.sample((3,))


def test_cuda_limit_counts_the_caching_allocators_unused_blocks(monkeypatch):
    """On a CUDA device the limit is half of the driver's free memory plus what torch's caching
    allocator reserved but does not use (freed tensors' blocks, which the driver reports as used)."""
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (6 * 2**30, 80 * 2**30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 50 * 2**30)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 10 * 2**30)
    assert memory_limit("cuda") == (6 + 50 - 10) * 2**30 // 2
    assert memory_limit(torch.device("cuda", 0)) == (6 + 50 - 10) * 2**30 // 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_limit_on_the_device(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    free = torch.cuda.mem_get_info()[0]
    block = torch.empty(2**28, dtype=torch.uint8, device="cuda")  # 256 MiB, then freed into the cache
    del block
    assert memory_limit("cuda") >= free // 2 - 2**25  # the unused block counts (without it: 128 MiB less)
