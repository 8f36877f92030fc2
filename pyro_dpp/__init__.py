"""pyro_dpp: temporal point processes as Pyro distributions, with a differentiable sampler."""

from . import intensity, snn
from .distribution import PointProcess
from .events import SpikeTrains, event_mask
from .scan.backend import backend, get_backend, set_backend

__version__ = "0.1.0"

__all__ = [
    "PointProcess",
    "SpikeTrains",
    "__version__",
    "backend",
    "event_mask",
    "get_backend",
    "intensity",
    "set_backend",
    "snn",
]
