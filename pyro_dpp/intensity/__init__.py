"""Conditional intensities: history -> lambda (see :mod:`pyro_dpp.intensity.base` for the contract)."""

from .base import Intensity
from .basis import Basis, EpanechnikovBasis, ExponentialBasis, RaisedCosineBasis
from .glm import GLM
from .hawkes import ExpHawkes
from .inhomogeneous import InhomogeneousPoisson, PiecewisePoisson
from .poisson import Poisson
from .powerlaw import PowerLawHawkes
from .sumexp import SumExpHawkes

__all__ = [
    "GLM",
    "Basis",
    "EpanechnikovBasis",
    "ExpHawkes",
    "ExponentialBasis",
    "InhomogeneousPoisson",
    "Intensity",
    "PiecewisePoisson",
    "Poisson",
    "PowerLawHawkes",
    "RaisedCosineBasis",
    "SumExpHawkes",
]
