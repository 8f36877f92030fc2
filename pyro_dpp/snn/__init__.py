"""Spiking neural networks with hidden neurons: networks, model/guide pairs, training, evaluation."""

from .evaluation import ESTIMATORS, exact_elbo, gradient_draws, gradient_variance, log_marginal
from .inference import CountBaseline, snn_guide, snn_model
from .network import BASES, SNN, make_basis
from .training import FitResult, TrainingDiverged, TrainingInterrupted, fit, temperature_schedule

__all__ = [
    "BASES",
    "ESTIMATORS",
    "SNN",
    "CountBaseline",
    "FitResult",
    "TrainingDiverged",
    "TrainingInterrupted",
    "exact_elbo",
    "fit",
    "gradient_draws",
    "gradient_variance",
    "log_marginal",
    "make_basis",
    "snn_guide",
    "snn_model",
    "temperature_schedule",
]
