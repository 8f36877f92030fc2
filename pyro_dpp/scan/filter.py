"""The public filter protocol: the only intensity-specific part of a thinning scan (DESIGN §5).

A scan steps through a *time line* known before the loop starts: the thinning candidates merged with
the context events, sorted. Every intensity with a filter has the form

    log lambda_s = log_rates(u_s),   u_s = (drive from the history weights h_n of the steps n < s)

where ``h_n`` (``D = K + C`` sources) are the soft or hard marks of earlier candidates and the
context weights, and the map from the ``h_n`` to ``u_s`` is linear. The engine
(:mod:`pyro_dpp.scan.engine`) owns everything else: the thinning step (exact, relaxed,
straight-through), its adjoint, the loop, the custom autograd function. A filter supplies

- the *forward* (causal) filter: :meth:`ScanFilter.start`, then per step ``s`` in increasing order
  :meth:`ScanFilter.drive` (``u_s`` from the steps folded in so far) and :meth:`ScanFilter.push`
  (fold in ``h_s``);
- its *reverse* (the anti-causal adjoint), steps in decreasing order: :meth:`ScanFilter.start_reverse`,
  :meth:`ScanFilter.pull` (``sum_{n > s} (du_n / dh_s)^T g_n``) and :meth:`ScanFilter.push_reverse`
  (fold in the drive cotangent ``g_s``);
- :meth:`ScanFilter.log_rates`, the elementwise map from the drive to the log-rates;
- :meth:`ScanFilter.surrogate`: the log-rates on the whole time line rebuilt from what the forward
  pass stored, as a differentiable function of the intensity's parameters (history held fixed).
  The engine's backward pass gives the cotangent of every step's log-rates; one vector-Jacobian
  product through the surrogate turns it into parameter gradients, whatever the parameter layout.

Layout: the flattened batch ``B`` is the *last* dimension of every per-step tensor (``K x B``,
``D x B``), so that elementwise work runs over contiguous batch entries. ``keys`` (``B x S``) are the
step times, nondecreasing (padding steps at the end repeat the last time).

An intensity hands out its filter through :meth:`pyro_dpp.intensity.Intensity.scan_filter`. numba
kernels are optional accelerators registered per filter class
(:func:`pyro_dpp.scan.accelerators.register_accelerator`).
"""

from __future__ import annotations

import torch


def batch_last(x: torch.Tensor, batch: torch.Size, event_dims: int) -> torch.Tensor:
    """Broadcast ``x`` to ``batch + event`` and return it batch-last: ``event + (B,)``."""
    event = x.shape[x.dim() - event_dims:]
    flat = x.expand(batch + event).reshape((-1,) + event)
    return flat.permute(tuple(range(1, event_dims + 1)) + (0,)).contiguous()


def module_tensors(module: torch.nn.Module) -> list[torch.Tensor]:
    """Every tensor a module holds (parameters, buffers and plain tensor attributes, submodules
    included): what the parameter gradient of a scan may flow into."""
    out = [v for v in vars(module).values() if isinstance(v, torch.Tensor)]
    out += [v for v in module._parameters.values() if v is not None]
    out += [v for v in module._buffers.values() if v is not None]
    for child in module._modules.values():
        if child is not None:
            out += module_tensors(child)
    return out


class ScanFilter:
    """The history filter of one intensity on one time line, forward (causal) and reverse.

    Sizes: ``B`` flattened batch, ``S`` steps, ``K`` marks, ``D = K + C`` history sources.
    Constructors should stay cheap (a numba accelerator may replace the torch loop): do the
    per-time-line work in :meth:`start` and :meth:`start_reverse`.

    :param intensity: the intensity (an :class:`~pyro_dpp.intensity.Intensity`).
    :param keys: ``B x S`` nondecreasing step times (no gradient).
    :param batch: the unflattened batch shape (``prod(batch) == B``, or ``()`` with ``B == 1``).
    """

    def __init__(self, intensity, keys: torch.Tensor, batch: torch.Size) -> None:
        self.intensity = intensity
        self.keys = keys  # B x S
        self.B, self.S = keys.shape
        self.K = intensity.num_marks
        self.D = intensity.num_history_marks
        self.batch = batch

    # ---- forward ----------------------------------------------------------------------------------
    def start(self, store: bool) -> None:
        """Reset to an empty history. With ``store``, keep what :meth:`stored` returns (the engine
        asks for it when parameter gradients are needed)."""
        raise NotImplementedError

    def drive(self, s: int) -> torch.Tensor:
        """``K x B`` drive ``u_s`` at step ``s`` from the history weights pushed so far."""
        raise NotImplementedError

    def push(self, s: int, h: torch.Tensor) -> None:
        """Fold in step ``s``'s history weights ``h`` (``D x B``); called once per step, after
        :meth:`drive`."""
        raise NotImplementedError

    # ---- reverse ----------------------------------------------------------------------------------
    def start_reverse(self) -> None:
        """Reset the adjoint state (after a forward pass on the same time line)."""
        raise NotImplementedError

    def pull(self, s: int) -> torch.Tensor:
        """``D x B``: ``sum_{n > s} (du_n / dh_s)^T g_n`` from the drive cotangents pushed so far."""
        raise NotImplementedError

    def push_reverse(self, s: int, g: torch.Tensor) -> None:
        """Fold in the drive cotangent ``g_s`` (``K x B``); called once per step, after :meth:`pull`."""
        raise NotImplementedError

    # ---- the map to the log-rates and the parameter surrogate -------------------------------------
    def log_rates(self, u: torch.Tensor) -> torch.Tensor:
        """Elementwise log-rates of batch-major drives ``u`` (``B x S x K``)."""
        raise NotImplementedError

    def log_rates_step(self, u: torch.Tensor) -> torch.Tensor:
        """Elementwise log-rates of one step's drive ``u`` (``K x B``); override for speed."""
        return self.log_rates(u.t().unsqueeze(1)).squeeze(1).t()

    def history_free_log_rates(self, times: torch.Tensor) -> torch.Tensor | None:
        """For intensities that ignore the history: ``batch x S x K`` log-rates at ``times``
        (``batch x S``) with autograd; the engine then skips the loop. None (default) otherwise."""
        return None

    def stored(self) -> torch.Tensor | None:
        """What the last forward pass with ``store`` kept, batch-major (``B x S x ...``), or None."""
        return None

    def surrogate(self, stored: torch.Tensor | None, times: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """``batch x S x K`` log-rates on the time line as a differentiable function of the
        intensity's parameters, with the history held fixed; its values must be the scan's.

        :param stored: :meth:`stored` (or what a numba accelerator stored in the same layout),
            reshaped to ``batch + (S, ...)``.
        :param times: ``batch x S`` step times (no gradient).
        :param history: ``batch x S x D`` history weights of the steps (no gradient).

        The default evaluates the intensity's parallel ``log_forward`` at the steps (correct for
        any intensity, but as costly as its parallel evaluation)."""
        return self.intensity.log_forward(times, history, times)

    def tensors(self) -> list[torch.Tensor]:
        """The tensors the surrogate may differentiate (default: all the intensity holds)."""
        return module_tensors(self.intensity)

    def gaps(self) -> torch.Tensor:
        """``S x B`` time since the previous step (the first step: since 0, as the reference state, or
        0 if it lies before 0, as past events do: the state is empty then)."""
        keys = self.keys.t()
        return torch.diff(keys, dim=0, prepend=keys[:1].clamp(max=0))
