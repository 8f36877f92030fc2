"""Helpers shared by the benchmarks that measure in fresh child processes (so that a run's peak
memory is its own): the child's memory probes (source text to prepend to a child's code) and the
parent's side (environment, spawn, reading the child's JSON line). Scripts import it as a sibling
module (``python benchmarks/bench_x.py`` puts ``benchmarks/`` on ``sys.path``)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

__all__ = ["PEAK_PROBE", "ROOT", "RSS_PROBE", "child_env", "environment", "last_json", "run_code"]

ROOT = Path(__file__).resolve().parent.parent

#: child-side ``rss()``: the resident bytes now (``/proc/self/statm``), to subtract from ``ru_maxrss``
#: after the measured step (the memory that step added on top of what was built before it)
RSS_PROBE = r"""
import resource

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()
"""

#: child-side ``peak_mb()``: the peak resident set of this process's own memory, /proc's VmHWM (Linux).
#: ``ru_maxrss`` is not it: a child of a large benchmark process starts from the parent's RSS at the
#: fork and keeps that; it is only the fallback where /proc cannot tell.
PEAK_PROBE = """
def peak_mb():
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
"""


def environment() -> dict[str, object]:
    """What a result file records about the machine and the software: torch and Python versions,
    the platform and the CPU count."""
    import torch

    return {"torch": torch.__version__, "python": sys.version.split()[0], "platform": platform.platform(),
            "cpu_count": os.cpu_count()}


def child_env() -> dict[str, str]:
    """This process's environment with the repository root first on ``PYTHONPATH`` (the child imports
    this checkout's ``pyro_dpp``) and ``OMP_NUM_THREADS`` 1 unless set."""
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


def run_code(code: str, *args: object, timeout: float | None = None) -> subprocess.CompletedProcess:
    """``python -c code args...`` in a fresh process (:func:`child_env`), output captured as text,
    the exit status left to the caller; raises ``subprocess.TimeoutExpired`` past ``timeout`` seconds."""
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          env=child_env(), check=False, timeout=timeout)


def last_json(stdout: str) -> dict:
    """The JSON object a child printed as its last line."""
    return json.loads(stdout.strip().splitlines()[-1])
