"""The paper's experiments as functions (used by the ``pyro-dpp reproduce`` command and tutorials)."""

from .paper import (
    GUIDES,
    QUICK,
    Setting,
    compare_training,
    experiment1,
    experiment1_run,
    experiment2,
    experiment3,
    paired_guides,
    relaxation_bias,
)
from .variance import pathwise_source_draws, pathwise_variance_sources

__all__ = [
    "GUIDES",
    "QUICK",
    "Setting",
    "compare_training",
    "experiment1",
    "experiment1_run",
    "experiment2",
    "experiment3",
    "paired_guides",
    "pathwise_source_draws",
    "pathwise_variance_sources",
    "relaxation_bias",
]
