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
