"""Safe files: atomic writes, ``weights_only`` loading, and the random-number state of a run.

Everything :mod:`pyro_dpp` writes goes through :func:`atomic_write`: the data are written to a
temporary file in the target's folder, flushed, then moved over the target with :func:`os.replace`,
so an interrupted write leaves the old file (or none), never half a file.

Everything it reads back with :func:`torch.load` goes through :func:`safe_load`, which uses
``weights_only=True``: only tensors and plain containers (dict, list, tuple, str, numbers, None) are
unpickled, so a ``.pt`` file from someone else cannot run code. Writers therefore save only such
values (:func:`rng_state` turns the numpy and Python generator states into them).

A training checkpoint (:func:`pyro_dpp.snn.fit`) holds the module and optimizer states, the
progress so far and :func:`rng_state`: torch's CPU (and CUDA, if initialised) generators, numpy's
global generator and Python's :mod:`random`. Restoring all of them at an epoch boundary makes the
resumed run draw exactly the numbers the uninterrupted run drew, so both end bit-identical.
(:func:`pyro_dpp.snn.fit` keeps its parameters in the modules and its optimizer, not in Pyro's
global param store, so that store holds no training state to save.)
"""

from __future__ import annotations

import os
import pickle
import random
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

#: ``format`` entry of a training checkpoint
CHECKPOINT_FORMAT = "pyro_dpp.fit_checkpoint"
CHECKPOINT_VERSION = 1


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` with a temporary path beside ``path`` (same suffix), then move it onto
    ``path`` atomically. On any error (or interrupt) the temporary file is removed and ``path`` is
    left as it was.

    :returns: ``path``.
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        # mkstemp makes the file private (0600); give it the mode a plain open() would have
        os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_umask())
        write(tmp)
        with open(tmp, "rb+") as handle:  # the data must be on disk before the rename makes them visible
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_save(obj: Any, path: str | Path) -> Path:
    """:func:`torch.save` through :func:`atomic_write`."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def safe_load(path: str | Path, what: str = "file") -> Any:
    """:func:`torch.load` with ``weights_only=True`` onto the CPU, every failure a :class:`ValueError`
    naming the file and the cause (missing, truncated, not a torch file, or holding Python objects
    that are not plain data)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no {what} at {path}" + (" (it is a directory)" if path.is_dir() else ""))
    if not zipfile.is_zipfile(path):  # what torch.save writes; a cut-off one lacks its directory
        raise ValueError(f"{path} is not a complete {what} (truncated or corrupt, or not written by torch.save)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path} holds Python objects other than tensors and plain containers, which are not loaded "
            f"(loading them could run code); it is not a {what} written by pyro_dpp ({str(err).splitlines()[0]})"
        ) from err
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, KeyError, ValueError, AttributeError) as err:
        raise ValueError(f"{path} is not a complete {what} (truncated or corrupt?): {err}") from err


def rng_state() -> dict[str, Any]:
    """The states of every random-number generator a run uses, as tensors and plain values."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "atomic_save", "atomic_write", "rng_state", "safe_load",
           "set_rng_state"]
