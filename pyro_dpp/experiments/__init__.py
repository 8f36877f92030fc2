"""The paper's experiments as functions (used by the ``pyro-dpp reproduce`` command and tutorials)."""

from .paper import (
    QUICK,
    Setting,
    compare_training,
    experiment1,
    experiment2,
    experiment3,
    relaxation_bias,
)

__all__ = ["QUICK", "Setting", "compare_training", "experiment1", "experiment2", "experiment3", "relaxation_bias"]
