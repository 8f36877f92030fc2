"""Conditional intensities: history -> lambda (see :mod:`pyro_dpp.intensity.base` for the contract)."""

from .base import Intensity
from .basis import Basis, EpanechnikovBasis, ExponentialBasis, RaisedCosineBasis
from .glm import GLM
from .hawkes import ExpHawkes
from .poisson import Poisson

__all__ = [
    "GLM",
    "Basis",
    "EpanechnikovBasis",
    "ExpHawkes",
    "ExponentialBasis",
    "Intensity",
    "Poisson",
    "RaisedCosineBasis",
]
