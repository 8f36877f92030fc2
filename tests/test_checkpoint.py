"""Atomic writes, ``weights_only`` loading and the random-number state of a run."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from pyro_dpp.checkpoint import atomic_save, atomic_write, rng_state, safe_load, set_rng_state


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")

    def half(tmp):
        tmp.write_text("half of the new")
        raise KeyboardInterrupt  # an interrupt in the middle of a write

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, half)
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]  # no temporary file left
    atomic_write(path, lambda tmp: tmp.write_text("new"))
    assert path.read_text() == "new"


def test_atomic_write_gives_the_mode_of_a_plain_write(tmp_path):
    (tmp_path / "plain").write_text("x")
    atomic_write(tmp_path / "atomic", lambda tmp: tmp.write_text("x"))
    assert (tmp_path / "atomic").stat().st_mode == (tmp_path / "plain").stat().st_mode
    (tmp_path / "plain").chmod(0o640)
    atomic_write(tmp_path / "plain", lambda tmp: tmp.write_text("y"))  # an existing file keeps its mode
    assert (tmp_path / "plain").stat().st_mode & 0o777 == 0o640


def test_rng_state_restores_every_generator(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    atomic_save(rng_state(), tmp_path / "rng.pt")
    first = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    set_rng_state(safe_load(tmp_path / "rng.pt"))  # through a weights_only load
    second = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    assert torch.equal(first[0], second[0])
    assert np.array_equal(first[1], second[1]) and first[2] == second[2]


def test_safe_load_errors(tmp_path):
    with pytest.raises(ValueError, match="no file at"):
        safe_load(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="it is a directory"):
        safe_load(tmp_path)
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="not a complete file"):
        safe_load(tmp_path / "junk.pt")
    torch.save({"x": np.arange(3)}, tmp_path / "numpy.pt")  # numpy arrays are not plain data
    with pytest.raises(ValueError, match="Python objects other than tensors"):
        safe_load(tmp_path / "numpy.pt")
