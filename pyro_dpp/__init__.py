"""pyro_dpp: temporal point processes as Pyro distributions, with a differentiable sampler."""

from . import intensity, snn
from .distribution import PointProcess
from .events import SpikeTrains, event_mask

__version__ = "0.1.0"

__all__ = [
    "PointProcess",
    "SpikeTrains",
    "__version__",
    "event_mask",
    "intensity",
    "snn",
]
