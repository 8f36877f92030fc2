"""The dense twin of a small index value: the dense realization built once per index tensor (and
per in-place version of it), so that :func:`~pyro_dpp.intensity.hawkes_stats.cached_statistics`,
keyed on the dense tensor, applies when the same index data are scored again (MCMC, SVI, MLE)."""

from __future__ import annotations

import weakref

import torch

from .events import index_to_dense
from .intensity.base import Intensity

__all__ = ["dense_twin"]

#: ``(index value, (version, K, dtype, device), dense twin)`` of the latest few index values
_TWINS: list[tuple[weakref.ref, tuple, torch.Tensor]] = []


def dense_twin(value: torch.Tensor, intensity: Intensity) -> torch.Tensor | None:
    """The dense realization of a small index value (the statistics of
    :class:`~pyro_dpp.intensity.hawkes_stats.ExpHawkesStatistics` cost ``events x K x (K + C)``
    anyway), the same tensor while the index value is unchanged, so that their cache applies; None
    for larger values (scored by :func:`~pyro_dpp.likelihood.index_log_likelihood`)."""
    from . import index_likelihood

    k, d = intensity.num_marks, intensity.num_history_marks
    if value.requires_grad or value[..., 0].numel() * k * d > index_likelihood.INDEX_DENSE_ENTRIES:
        return None
    key = (value._version, k, value.dtype, value.device)
    _TWINS[:] = [entry for entry in _TWINS if entry[0]() is not None]
    for ref, old, dense in _TWINS:
        if ref() is value and old == key:
            return dense
    dense = index_to_dense(value, k)
    _TWINS.append((weakref.ref(value), key, dense))
    del _TWINS[:-4]
    return dense
