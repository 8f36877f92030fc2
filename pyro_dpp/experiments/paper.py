"""The experiments of Kajino (ICML 2021) on the synthetic SNN setting, as functions.

- :func:`experiment1`: gradient variance (E[std]) of path-wise vs score-function estimators;
- :func:`experiment2`: exact test ELBO against the number of training sequences;
- :func:`experiment3`: seconds per training epoch against the amplitude ``a``;
- :func:`relaxation_bias`: cosine similarity of the path-wise gradient with the exact gradient as
  the temperature falls;
- :func:`compare_training`: path-wise vs score-function training at equal steps over seeds.

Every experiment but the third takes ``guide``, the variational distribution of the hidden spikes
(:data:`GUIDES`): ``"model"`` is the paper's configuration (``q = p``: the model's own hidden
dynamics, the same network object, so that the hidden-site terms of model and guide cancel draw by
draw; the paper's code has ``use_variational=False`` in every experiment), ``"separate"`` a causal
guide network of its own (initialised from another seed) and ``"acausal"`` the same with
anti-causal filters through which it also sees future observed spikes. The last two are extensions,
outside the paper's setting.

Every function returns a JSON-serialisable dict. Sizes default to the paper's; pass smaller ones for
quick runs (the ``pyro-dpp reproduce --quick`` presets are in :data:`QUICK`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from ..events import SpikeTrains
from ..snn import SNN, TrainingDiverged, exact_elbo, fit, gradient_draws, gradient_variance, log_marginal

ESTIMATOR_NAMES = ("pathwise", "pathwise_exact", "score_function", "score_function_baseline")
#: The guide choices: ``"model"`` (q = p, the paper's), ``"separate"`` and ``"acausal"`` (extensions).
GUIDES = ("model", "separate", "acausal")


@dataclass
class Setting:
    """The paper's synthetic setting: a random SNN generates train and test spike trains."""

    n_observed: int = 2
    n_hidden: int = 4
    amplitude: float = 5.0
    duration: float = 50.0
    basis: str = "epanechnikov"
    num_basis: int = 2

    def network(self, seed: int, amplitude: float | None = None, acausal: bool = False) -> SNN:
        """A network of this family with the paper's random initialisation (``acausal``: with
        anti-causal filters from the observed to the hidden neurons, drawn after the others)."""
        torch.manual_seed(seed)
        return SNN(self.n_observed, self.n_hidden, basis=self.basis, num_basis=self.num_basis,
                   amplitude=self.amplitude if amplitude is None else amplitude, init="paper", acausal=acausal)

    def pair(self, seed: int, guide: str = "model") -> tuple[SNN, SNN, bool]:
        """``(model, guide network, shared)`` for a guide choice from :data:`GUIDES`: the model is
        ``network(seed + 1)``; the guide is the same object for ``"model"`` (``shared`` is True:
        q = p), else ``network(seed + 2)``, with anti-causal filters for ``"acausal"`` (its other
        weights equal the separate guide's, so the two choices differ only by the filters)."""
        if guide not in GUIDES:
            raise ValueError(f"unknown guide {guide!r}; choose one of {GUIDES}")
        model = self.network(seed + 1)
        if guide == "model":
            return model, model, True
        return model, self.network(seed + 2, acausal=guide == "acausal"), False

    def data(self, seed: int, num_train: int, num_test: int) -> tuple[SNN, SpikeTrains, SpikeTrains]:
        """``(true network, train observed, test observed)``, all from ``seed``."""
        true = self.network(10_000 + seed)
        train, _ = true.simulate(num_train, self.duration, seed=20_000 + seed)
        test, _ = true.simulate(num_test, self.duration, seed=30_000 + seed)
        return true, train, test


def _elbo_summary(values: torch.Tensor) -> dict[str, float]:
    """Mean and standard error over the finite values; ``diverged`` counts the runs whose training
    stopped on an infinite loss (NaN entries), so that they are reported, not averaged."""
    values = values.double()
    finite = values[torch.isfinite(values)]
    return {"mean": float(finite.mean()), "se": float(finite.std() / math.sqrt(max(len(finite), 1))),
            "diverged": int(len(values) - len(finite))}


def _spread(values: list[float]) -> dict[str, Any]:
    """Median, range and the values themselves."""
    ordered = sorted(values)
    mid = len(ordered) // 2
    median = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
    return {"median": median, "min": ordered[0], "max": ordered[-1], "per_seed": list(values)}


def experiment1_run(num_draws: int = 1000, num_sequences: int = 10, temperature: float = 0.3, seed: int = 0,
                    setting: Setting | None = None, chunk: int = 50, guide: str = "model") -> dict[str, Any]:
    """Experiment 1 at one seed: per-coordinate standard deviation of single-particle ELBO gradients
    at the initial parameters, averaged over coordinates (E[std]), for each estimator. The seed
    draws the data set, the networks and the gradient draws."""
    setting = setting or Setting()
    _, train, _ = setting.data(seed, num_sequences, 1)
    model, guide_net, shared = setting.pair(seed, guide)
    out: dict[str, Any] = {"num_draws": num_draws, "num_sequences": num_sequences, "temperature": temperature,
                           "seed": seed, "guide": guide}
    for estimator in ESTIMATOR_NAMES:
        torch.manual_seed(seed)
        start = time.perf_counter()
        result = gradient_variance(model, guide_net, train, estimator, num_draws, temperature, chunk=chunk,
                                   shared=shared)
        out[estimator] = {"e_std": result["e_std"], "seconds": time.perf_counter() - start}
    return out


def experiment1(num_draws: int = 1000, num_sequences: int = 10, temperature: float = 0.3, seed: int = 0,
                setting: Setting | None = None, chunk: int = 50, guide: str = "model",
                seeds: tuple[int, ...] | None = None, progress: bool = False) -> dict[str, Any]:
    """Experiment 1 over ``seeds`` (default ``(seed,)``): :func:`experiment1_run` at each.

    :returns: ``runs`` (one :func:`experiment1_run` dict per seed); per estimator, as before,
        ``{"e_std", "seconds"}``, now the median E[std] over the seeds and the summed seconds,
        with ``min``, ``max`` and ``per_seed`` E[std]; ``ratios``: per seed, plain score function
        over each path-wise estimator and plain over baselined score function, with their
        median and range. With one seed the per-estimator entries are that run's.
    """
    seeds = (seed,) if seeds is None else tuple(seeds)
    if not seeds:
        raise ValueError("seeds must name at least one seed")
    runs = []
    for s in _progress_iter(seeds, progress, "exp1 seeds"):
        runs.append(experiment1_run(num_draws, num_sequences, temperature, s, setting, chunk, guide))
    out: dict[str, Any] = {"num_draws": num_draws, "num_sequences": num_sequences, "temperature": temperature,
                           "seed": seeds[0], "seeds": list(seeds), "guide": guide, "runs": runs}
    for estimator in ESTIMATOR_NAMES:
        spread = _spread([run[estimator]["e_std"] for run in runs])
        out[estimator] = {"e_std": spread.pop("median"), **spread,
                          "seconds": sum(run[estimator]["seconds"] for run in runs)}
    pairs = [("score_function", "pathwise"), ("score_function", "pathwise_exact"),
             ("score_function_baseline", "pathwise"), ("score_function", "score_function_baseline")]
    out["ratios"] = {f"{a} / {b}": _spread([run[a]["e_std"] / run[b]["e_std"] for run in runs]) for a, b in pairs}
    return out


def _progress_iter(items: Any, enabled: bool, desc: str) -> Any:
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, leave=False)


def relaxation_bias(temperatures: tuple[float, ...] = (3.0, 1.0, 0.3, 0.1, 0.03), num_draws: int = 1000,
                    reference_draws: int = 4000, num_sequences: int = 4, seed: int = 0,
                    setting: Setting | None = None, chunk: int = 50,
                    estimators: tuple[str, ...] = ("pathwise", "pathwise_exact"),
                    guide: str = "model") -> dict[str, Any]:
    """Cosine similarity between the mean path-wise gradient at each temperature and the exact
    ELBO gradient, estimated by ``reference_draws`` score-function draws with a baseline.

    ``"pathwise"`` differentiates the paper's relaxed ELBO (DPP densities at the hidden sites), whose
    hidden-site term keeps a bias at every temperature; ``"pathwise_exact"`` scores the same draws by
    the exact log-likelihood formula and tends to the exact gradient as the temperature falls.
    ``relative_noise`` is the part of ``relative_error`` that Monte Carlo noise alone explains (both
    means' standard errors); a relative error well above it is bias.

    With ``guide="model"`` (q = p) both path-wise objectives are ``E[log p(X | soft Z)]``: the
    hidden-site terms cancel draw by draw, so the paper's estimator loses the temperature-independent
    bias that the Concrete log-ratios of a separate guide carry."""
    setting = setting or Setting()
    _, train, _ = setting.data(seed, num_sequences, 1)
    model, guide_net, shared = setting.pair(seed, guide)
    torch.manual_seed(seed)
    reference = gradient_draws(model, guide_net, train, "score_function_baseline", reference_draws, chunk=chunk,
                               shared=shared)
    exact, exact_se = reference.mean(0), reference.std(0) / math.sqrt(reference_draws)
    out: dict[str, Any] = {"reference_draws": reference_draws, "num_draws": num_draws, "guide": guide,
                           "num_sequences": num_sequences, "seed": seed,
                           "reference_relative_se": float(exact_se.norm() / exact.norm()), "estimators": {}}
    for estimator in estimators:
        rows = out["estimators"][estimator] = {}
        for tau in temperatures:
            torch.manual_seed(seed + 1)
            draws = gradient_draws(model, guide_net, train, estimator, num_draws, tau, chunk=chunk, shared=shared)
            mean, se = draws.mean(0), draws.std(0) / math.sqrt(num_draws)
            rows[str(tau)] = {
                "e_std": float(draws.std(0).mean()),
                "cosine": float(torch.nn.functional.cosine_similarity(mean, exact, dim=0)),
                "relative_error": float((mean - exact).norm() / exact.norm()),
                # the part of relative_error that Monte Carlo noise alone would explain
                "relative_noise": float((se.square().sum() + exact_se.square().sum()).sqrt() / exact.norm()),
            }
    return out


def _evaluate(model: SNN, guide: SNN, test: SpikeTrains, seed: int, eval_particles: int,
              marginal_particles: int) -> tuple[float, float]:
    """Exact test ELBO and importance-sampled ``log p(X)`` per test sequence (means over the test
    set), each from its own seeded stream so that runs compare draw for draw."""
    torch.manual_seed(seed)
    elbo = exact_elbo(model, guide, test, num_particles=eval_particles).mean()
    if not marginal_particles:
        return float(elbo), math.nan
    torch.manual_seed(seed + 1)
    marginal = log_marginal(model, guide, test, num_particles=marginal_particles).mean()
    return float(elbo), float(marginal)


def _train_and_test(setting: Setting, train: SpikeTrains, test: SpikeTrains, estimator: str, seed: int,
                    num_epochs: int, batch_size: int | None, eval_particles: int, lr: float,
                    progress: bool = False, guide: str = "model", marginal_particles: int = 0) -> dict[str, Any]:
    """Train one model/guide pair; exact test ELBO (``before``/``after``) and, with
    ``marginal_particles``, importance-sampled ``log p(X)`` (``log_marginal_before``/``_after``)."""
    model, guide_net, shared = setting.pair(seed, guide)
    before, marginal_before = _evaluate(model, guide_net, test, seed, eval_particles, marginal_particles)
    start = time.perf_counter()
    try:
        result = fit(model, train, None if shared else guide_net, estimator=estimator, num_epochs=num_epochs,
                     batch_size=batch_size, lr=lr, progress=progress, seed=seed)
    except TrainingDiverged as err:  # one run out of many: report it, keep the others
        seconds = time.perf_counter() - start
        return {"before": before, "after": math.nan, "log_marginal_before": marginal_before,
                "log_marginal_after": math.nan, "seconds": seconds, "losses": [],
                "seconds_per_epoch": seconds / max(num_epochs, 1), "diverged": str(err)}
    after, marginal_after = _evaluate(model, guide_net, test, seed, eval_particles, marginal_particles)
    return {"before": before, "after": after, "log_marginal_before": marginal_before,
            "log_marginal_after": marginal_after, "seconds": result.seconds,
            "losses": result.losses, "seconds_per_epoch": result.seconds / max(num_epochs, 1)}


def compare_training(seeds: tuple[int, ...] = (0, 1, 2, 3, 4), num_train: int = 10, num_test: int = 10,
                     num_epochs: int = 10, batch_size: int | None = None, eval_particles: int = 16,
                     lr: float = 0.05, setting: Setting | None = None, progress: bool = False,
                     estimators: tuple[str, ...] = ESTIMATOR_NAMES, guide: str = "model",
                     marginal_particles: int = 64) -> dict[str, Any]:
    """Path-wise vs score-function training at equal steps: exact test ELBO and importance-sampled
    ``log p(X)`` (``marginal_particles`` draws; 0 to skip) before and after, and the gains (after
    minus before) per seed; each seed is its own data set and initialisation, the same for every
    estimator (and every ``guide`` choice), so gains can be compared seed by seed."""
    setting = setting or Setting()
    out: dict[str, Any] = {"seeds": list(seeds), "num_epochs": num_epochs, "guide": guide,
                           "num_train": num_train, "num_test": num_test, "eval_particles": eval_particles,
                           "marginal_particles": marginal_particles, "runs": {}}
    for estimator in estimators:
        runs = []
        for seed in seeds:
            _, train, test = setting.data(seed, num_train, num_test)
            runs.append(_train_and_test(setting, train, test, estimator, seed, num_epochs, batch_size,
                                        eval_particles, lr, progress, guide, marginal_particles))
        gain = torch.tensor([r["after"] - r["before"] for r in runs])
        out["runs"][estimator] = {"runs": runs, "gain": _elbo_summary(gain),
                                  "after": _elbo_summary(torch.tensor([r["after"] for r in runs]))}
        if marginal_particles:
            out["runs"][estimator]["log_marginal_after"] = _elbo_summary(
                torch.tensor([r["log_marginal_after"] for r in runs]))
    out["paired"] = paired_gains(out)
    if marginal_particles:
        out["paired_log_marginal"] = paired_gains(out, "log_marginal_")
    return out


def paired_gains(result: dict[str, Any], prefix: str = "") -> dict[str, dict[str, float]]:
    """Seed-by-seed differences of test-ELBO gains (``prefix="log_marginal_"``: of ``log p(X)``
    gains), path-wise minus score-function estimator (the seeds share data and initialisation, so
    the pairing removes their variation): mean and standard error per pair, e.g.
    ``"pathwise - score_function"``."""
    gains = {name: torch.tensor([r[prefix + "after"] - r[prefix + "before"] for r in entry["runs"]])
             for name, entry in result["runs"].items()}
    return {f"{a} - {b}": _elbo_summary(gains[a] - gains[b])
            for a in gains if a.startswith("pathwise") for b in gains if b.startswith("score_function")}


def paired_guides(first: dict[str, Any], second: dict[str, Any], key: str = "after") -> dict[str, dict[str, float]]:
    """Seed-by-seed differences between two :func:`compare_training` results (e.g. two ``guide``
    choices on the same seeds), per estimator: ``first - second`` of ``key`` (``"after"``: exact
    test ELBO after training; ``"log_marginal_after"``: importance-sampled ``log p(X)``)."""
    if first["seeds"] != second["seeds"]:
        raise ValueError(f"the results have different seeds: {first['seeds']} and {second['seeds']}")
    return {name: _elbo_summary(torch.tensor([a[key] - b[key] for a, b in
                                              zip(entry["runs"], second["runs"][name]["runs"], strict=True)]))
            for name, entry in first["runs"].items() if name in second["runs"]}


def _experiment2_cell(task: tuple[Setting, int, str, int, int, int, int | None, int, int, float, str]) -> float:
    setting, size, estimator, trial, seed, num_test, batch_size, num_epochs, eval_particles, lr, guide = task
    _, train, test = setting.data(seed + 1000 * trial, size, num_test)
    run = _train_and_test(setting, train, test, estimator, seed + trial, num_epochs, batch_size, eval_particles, lr,
                          guide=guide)
    return run["after"]


def experiment2(sizes: tuple[int, ...] = (10, 20, 30, 40, 50, 75, 100, 200), trials: int = 24,
                num_epochs: int = 10, num_test: int = 10, batch_size: int | None = 1,
                eval_particles: int = 16, lr: float = 0.05, seed: int = 0,
                setting: Setting | None = None, progress: bool = False, workers: int = 1,
                guide: str = "model") -> dict[str, Any]:
    """Experiment 2: exact test ELBO (per test sequence) after training on ``size`` sequences, mean
    and standard error over ``trials`` independent data sets and initialisations (``values``: per
    trial, the same data and initialisation for both estimators, so they pair).

    Every (size, estimator, trial) cell is seeded on its own, so ``workers > 1`` (spawned processes
    with one thread each) gives the same numbers as a serial run, only sooner; scripts that use it
    need the usual ``if __name__ == "__main__":`` guard of :mod:`multiprocessing`. ``batch_size=1``
    is the paper's schedule (one optimizer step per sequence)."""
    setting = setting or Setting()
    estimators = ("pathwise", "score_function")
    if guide not in GUIDES:
        raise ValueError(f"unknown guide {guide!r}; choose one of {GUIDES}")
    tasks = [(setting, size, estimator, trial, seed, num_test, batch_size, num_epochs, eval_particles, lr, guide)
             for size in sizes for estimator in estimators for trial in range(trials)]
    finals = _map(_experiment2_cell, tasks, workers, progress, "exp2 cells")
    out: dict[str, Any] = {"sizes": list(sizes), "trials": trials, "num_epochs": num_epochs,
                           "batch_size": batch_size, "workers": workers, "guide": guide, "results": {}}
    by_cell = iter(finals)
    for size in sizes:
        values = {estimator: [next(by_cell) for _ in range(trials)] for estimator in estimators}
        row = out["results"][str(size)] = {
            estimator: {**_elbo_summary(torch.tensor(v)), "values": v} for estimator, v in values.items()
        }
        row["paired"] = {"pathwise - score_function": _elbo_summary(
            torch.tensor(values["pathwise"]) - torch.tensor(values["score_function"]))}
    return out


def _map(fn: Any, tasks: list[Any], workers: int, progress: bool, desc: str) -> list[Any]:
    """``[fn(t) for t in tasks]``, in ``workers`` spawned processes (one thread each, this process's
    fast-path switches and default dtype) when ``workers > 1``."""
    if workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers}")
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(tasks), desc=desc)
    if workers == 1:
        results = []
        for task in tasks:
            results.append(fn(task))
            if bar is not None:
                bar.update()
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        from ..scan.backend import get_backend

        state = (get_backend(), torch.get_default_dtype())
        # spawn, not fork: a forked child of a process that has run torch's thread pool can deadlock.
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_worker_init, initargs=state)
        try:
            futures = [pool.submit(fn, task) for task in tasks]
            for future in futures:
                future.add_done_callback(lambda _: bar.update() if bar is not None else None)
            results = [future.result() for future in futures]
        finally:
            pool.shutdown(cancel_futures=True)
    if bar is not None:
        bar.close()
    return results


def _worker_init(backend: str, dtype: torch.dtype) -> None:
    from ..scan.backend import set_backend

    torch.set_num_threads(1)
    set_backend(backend)
    torch.set_default_dtype(dtype)


def experiment3(amplitudes: tuple[float, ...] = (1, 2, 5, 10, 20), num_sequences: int = 10,
                num_epochs: int = 1, seed: int = 0, setting: Setting | None = None) -> dict[str, Any]:
    """Experiment 3: wall-clock seconds per training epoch against the amplitude ``a``, with the
    paper's schedule (one optimizer step per sequence) and with all sequences in one batched step.
    A short untimed warm-up first, so that one-off costs (numba compiling or loading its cache) do
    not land on the first amplitude."""
    setting = setting or Setting()
    out: dict[str, Any] = {"amplitudes": list(amplitudes), "num_sequences": num_sequences, "results": {}}
    for warmup, a in [(True, amplitudes[0])] + [(False, a) for a in amplitudes]:
        local = Setting(setting.n_observed, setting.n_hidden, float(a), setting.duration, setting.basis,
                        setting.num_basis)
        _, train, _ = local.data(seed, 1 if warmup else num_sequences, 1)
        row = {}
        for estimator in ("pathwise", "score_function"):
            for schedule, batch_size in (("per_sequence", 1), ("batched", None)):
                model, guide = local.network(seed + 1), local.network(seed + 2)
                result = fit(model, train, guide, estimator=estimator, num_epochs=1 if warmup else num_epochs,
                             batch_size=batch_size, progress=False, seed=seed)
                row[f"{estimator}/{schedule}"] = {"seconds_per_epoch": result.seconds / num_epochs}
        if not warmup:
            out["results"][str(a)] = row
    return out


#: Reduced sizes for ``pyro-dpp reproduce --quick`` (about a minute each on 2 cores).
QUICK: dict[str, dict[str, Any]] = {
    "exp1": {"num_draws": 20, "num_sequences": 4, "chunk": 10},
    "exp2": {"sizes": (5, 10), "trials": 2, "num_epochs": 3, "num_test": 4, "eval_particles": 4},
    "exp3": {"amplitudes": (1, 5, 10), "num_sequences": 3},
    "training": {"seeds": (0, 1), "num_train": 4, "num_test": 4, "num_epochs": 3, "eval_particles": 4,
                 "marginal_particles": 4},
    "sources": {"temperatures": (1.0, 0.3), "num_draws": 10, "num_sequences": 3, "chunk": 5},
    "bias": {"temperatures": (1.0, 0.1), "num_draws": 20, "reference_draws": 40, "num_sequences": 2, "chunk": 10},
}
