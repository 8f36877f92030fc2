"""The one scan engine (DESIGN §5): the thinning step and its adjoint, the driver, numba accelerators
registered per filter class, Ogata sampling, the generic checkpointed path and the backend setting.

- :mod:`pyro_dpp.scan.filter`: the public filter protocol (:class:`ScanFilter`) an intensity hands
  out through :meth:`~pyro_dpp.intensity.Intensity.scan_filter`;
- :mod:`pyro_dpp.scan.step`: the thinning step and the local parts of its adjoint;
- :mod:`pyro_dpp.scan.engine`: the driver, the custom autograd function, :func:`scan`;
- :mod:`pyro_dpp.scan.accelerators`: the registry of numba accelerators;
- :mod:`pyro_dpp.scan.ogata`: exact sampling without a constant bound by an accelerator;
- :mod:`pyro_dpp.scan.generic`: the checkpointed thinning scan for any intensity without a filter,
  built from its scan interface (``initial_state`` / ``log_rates`` / ``update``);
- :mod:`pyro_dpp.scan.generic_scoring`: log-likelihoods and DPP densities of any such intensity as a
  checkpointed scan over the events (linear in events, no pairwise history);
- :mod:`pyro_dpp.scan.backend`: :func:`set_backend`, :func:`get_backend` and the context manager
  :func:`pyro_dpp.backend`.
"""

from .accelerators import find_accelerator, register_accelerator
from .backend import BACKENDS, get_backend, set_backend
from .engine import scan
from .filter import ScanFilter

__all__ = [
    "BACKENDS",
    "ScanFilter",
    "find_accelerator",
    "get_backend",
    "register_accelerator",
    "scan",
    "set_backend",
]
