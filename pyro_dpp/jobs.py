"""The jobs behind the ``pyro-dpp`` command: demo, simulate, fit, evaluate, reproduce."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from .checkpoint import atomic_write
from .events import SpikeTrains

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def check_outputs(paths: list[Path], force: bool, inputs: tuple[Path | None, ...] = ()) -> None:
    """Check output files before any work starts: each must be a file path (not a folder) whose
    parent is a folder or can be made one, must not be one of the ``inputs``, and must not exist
    unless ``force``. Raise :class:`ValueError` naming the path and what to change."""
    sources = {p.resolve() for p in inputs if p is not None}
    for path in paths:
        if path.resolve() in sources:
            raise ValueError(f"the output {path} is also an input; write the results to another path")
        if path.is_dir():
            raise ValueError(f"the output {path} is a folder; give a file path (e.g. {path / path.name}.json)")
        parent = path.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise ValueError(f"cannot write {path}: {parent} is a file, not a folder; choose another output path")
        if not os.access(parent, os.W_OK):
            raise ValueError(f"cannot write {path}: the folder {parent} is not writable")
    taken = [str(p) for p in paths if p.exists()]
    if taken and not force:
        raise ValueError(f"{', '.join(taken)} already exist(s); pass --force to overwrite")


def _check_free(paths: list[Path], force: bool) -> None:
    check_outputs(paths, force)


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: tmp.write_text(text))


def _savefig(fig: Any, path: Path, **kwargs: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", **kwargs))


def _agg() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # jobs only write files
    import matplotlib.pyplot as plt

    return plt


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: "  ".join(str(x).rjust(w) for x, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def demo(out: Path, seed: int = 0, epochs: int = 60, draws: int = 200, num_train: int = 10, num_test: int = 10,
         duration: float = 50.0, force: bool = False, progress: bool = True) -> dict[str, Any]:
    """The paper's synthetic setting end to end: data from a random SNN (2 observed + 4 hidden
    neurons), gradient E[std] of the four estimators, short path-wise and score-function training,
    exact test ELBO before and after, and figures."""
    from . import plot
    from .experiments.paper import ESTIMATOR_NAMES, Setting
    from .snn import exact_elbo, fit, gradient_variance

    files = [out / "demo.json", out / "demo.png"]
    _check_free(files, force)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    setting = Setting(duration=duration)
    true, train, test = setting.data(seed, num_train, num_test)
    print(f"Data: {num_train} training and {num_test} test sequences on [0, {duration}] from a random SNN "
          f"(2 observed + 4 hidden neurons, a = {setting.amplitude}); "
          f"{float(train.num_events.double().mean()):.0f} observed spikes per sequence")
    results: dict[str, Any] = {"seed": seed, "epochs": epochs, "draws": draws, "estimators": {}}
    curves, rows = {}, []
    for estimator in ESTIMATOR_NAMES:
        model, guide = setting.network(seed + 1), setting.network(seed + 2)
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        e_std = gradient_variance(model, guide, train, estimator, num_draws=draws, chunk=min(draws, 10))["e_std"]
        grad_seconds = time.perf_counter() - t0
        before = float(exact_elbo(model, guide, test, num_particles=8).mean())
        track = lambda epoch, m, g: float(exact_elbo(m, g, test, num_particles=4).mean())  # noqa: E731
        run = fit(model, train, guide, estimator=estimator, num_epochs=epochs, batch_size=None, progress=progress,
                  seed=seed, callback=track)
        after = float(exact_elbo(model, guide, test, num_particles=8).mean())
        curves[estimator] = [before] + run.callback_values
        results["estimators"][estimator] = {"e_std": e_std, "gradient_seconds": grad_seconds,
                                            "test_elbo_before": before, "test_elbo_after": after,
                                            "train_seconds": run.seconds, "losses": run.losses}
        rows.append([estimator, f"{e_std:.1f}", f"{before:.1f}", f"{after:.1f}", f"{run.seconds:.1f}"])
        if estimator == "pathwise":
            trained_guide = guide
    print(_table(rows, ["estimator", "gradient E[std]", "test ELBO before", "after", "train s"]))
    results["true_test_elbo"] = float(exact_elbo(true, true, test, num_particles=8).mean())
    print(f"Exact test ELBO of the true network with q = p: {results['true_test_elbo']:.1f}")

    plt = _agg()
    fig, axes = plt.subplots(2, 2, figsize=(13, 7))
    plot.raster(test, ax=axes[0, 0], title="observed spikes (test sequence 0)")
    with torch.no_grad():
        soft = trained_guide.hidden_process(test, temperature=0.3).rsample()
    plot.raster(SpikeTrains.from_tensor(soft, test.duration), ax=axes[0, 1],
                title="hidden spikes from the trained path-wise guide (tau = 0.3)")
    plot.training_curves(curves, ax=axes[1, 0], ylabel="exact test ELBO per sequence")
    axes[1, 0].set_xlabel("epoch")
    axes[1, 1].bar(list(ESTIMATOR_NAMES), [results["estimators"][e]["e_std"] for e in ESTIMATOR_NAMES])
    axes[1, 1].set_yscale("log")
    axes[1, 1].tick_params(axis="x", labelsize="small")
    axes[1, 1].set_ylabel("gradient E[std]")
    fig.tight_layout()
    _savefig(fig, out / "demo.png", dpi=110)
    plt.close(fig)
    results["seconds"] = time.perf_counter() - start
    _write_text(out / "demo.json", json.dumps(results, indent=1))
    print(f"Wrote {out / 'demo.json'} and {out / 'demo.png'} ({results['seconds']:.0f} s)")
    return results


def simulate(out: Path, n_observed: int, n_hidden: int, sequences: int, duration: float, seed: int,
             amplitude: float, basis: str, force: bool = False, dtype: str = "float64") -> None:
    """Simulate a random SNN; write the observed spikes (npz or csv by suffix), the hidden spikes
    beside them (``<stem>_hidden<suffix>``, if there are hidden neurons) and the network
    (``<stem>_network.pt``). ``dtype`` is the network's and the spike times' floating type."""
    from .io import save_spikes
    from .snn import SNN

    hidden_path = out.with_name(out.stem + "_hidden" + out.suffix) if n_hidden else None
    net_path = out.with_name(out.stem + "_network.pt")
    _check_free([p for p in (out, hidden_path, net_path) if p is not None], force)
    torch.manual_seed(seed)
    net = SNN(n_observed, n_hidden, basis=basis, amplitude=amplitude, init="paper").to(_dtype(dtype))
    observed, hidden = net.simulate(sequences, duration, seed=seed + 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    written = [f"{save_spikes(observed, out)} (observed)"]
    if hidden_path is not None:
        written.append(f"{save_spikes(hidden, hidden_path)} (hidden)")
    net.save(net_path)
    written.append(f"{net_path} (network)")
    print(f"Wrote {sequences} sequences: {', '.join(written)}")


def _dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose one of {tuple(DTYPES)}")
    return DTYPES[name]


def train(data: Path, out: Path, n_hidden: int, estimator: str, epochs: int, temperature: float,
          temperature_decay: float, optimizer: str, lr: float, batch_size: int | None, guide: str,
          basis: str, amplitude: float, seed: int, duration: float | None, force: bool = False,
          progress: bool = True, checkpoint: Path | None = None, resume: bool = False, dtype: str = "float64",
          num_neurons: int | None = None, window: float | None = None, history: float | None = None) -> None:
    """Fit an SNN with hidden neurons to observed spikes; save model and guide networks.

    Every epoch is checkpointed atomically to ``checkpoint`` (default ``<stem>_checkpoint.pt``,
    removed after a successful run); an interrupted run (Ctrl-C, SIGTERM) continues bit-identically
    with ``resume=True``. ``dtype`` is the data's and the networks' floating type. ``window``: train
    on windows of that many seconds with ``history`` seconds of past (:func:`pyro_dpp.snn.fit`)."""
    from .io import load_spikes
    from .snn import SNN, fit

    model_path = out.with_name(out.stem + "_model.pt")
    guide_path = out.with_name(out.stem + "_guide.pt")
    check_outputs([out, model_path, guide_path], force, inputs=(data,))
    keep_checkpoint = checkpoint is not None
    checkpoint = checkpoint if checkpoint is not None else out.with_name(out.stem + "_checkpoint.pt")
    check_outputs([checkpoint], True, inputs=(data, out, model_path, guide_path))
    if resume and not checkpoint.exists():
        raise ValueError(f"--resume: there is no checkpoint at {checkpoint} to resume from")
    if checkpoint.exists() and not resume:
        if not force:
            raise ValueError(f"a checkpoint of an earlier run exists at {checkpoint}: pass --resume to continue it "
                             "or --force to start over")
        checkpoint.unlink()
    dtype = _dtype(dtype)
    observed = load_spikes(data, duration=duration, num_neurons=num_neurons, dtype=dtype)
    torch.manual_seed(seed)
    model = SNN(observed.num_marks, n_hidden, basis=basis, amplitude=amplitude, init="paper").to(dtype)
    if guide == "prior":
        guide_net = None
    else:
        guide_net = SNN(observed.num_marks, n_hidden, basis=basis, amplitude=amplitude, init="paper",
                        acausal=guide == "acausal").to(dtype)
    result = fit(model, observed, guide_net, estimator=estimator, num_epochs=epochs,
                 temperature=temperature, temperature_decay=temperature_decay, optimizer=optimizer, lr=lr,
                 batch_size=batch_size, progress=progress, seed=seed, checkpoint=checkpoint, window=window,
                 history=history)
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(model_path)
    (guide_net or model).save(guide_path)
    _write_text(out, json.dumps({"data": str(data), "estimator": estimator, "epochs": epochs, "guide": guide,
                                 "window": window,
                                 "losses": result.losses, "temperatures": result.temperatures,
                                 "seconds": result.seconds, "model": str(model_path),
                                 "guide_network": str(guide_path)}, indent=1))
    if not keep_checkpoint:
        checkpoint.unlink(missing_ok=True)
    print(f"Trained {epochs} epochs in {result.seconds:.1f} s; final loss {result.losses[-1]:.2f}. "
          f"Wrote {out}, {model_path}, {guide_path}")


def evaluate(data: Path, model_path: Path, guide_path: Path | None, particles: int, out: Path | None,
             duration: float | None, force: bool = False, window: float | None = None) -> dict[str, Any]:
    """Exact ELBO and importance-sampled log-likelihood per sequence (with ``window``: summed over
    windows of that many seconds, as :func:`pyro_dpp.snn.exact_elbo` says)."""
    from .io import load_spikes
    from .snn import SNN, exact_elbo, log_marginal

    if out is not None:
        check_outputs([out], force, inputs=(data, model_path, guide_path))
    model = SNN.load(model_path)
    guide = SNN.load(guide_path) if guide_path is not None else model
    if (guide.n_observed, guide.n_hidden) != (model.n_observed, model.n_hidden):
        raise ValueError(
            f"the guide {guide_path} has {guide.n_observed} observed + {guide.n_hidden} hidden neurons but the "
            f"model {model_path} has {model.n_observed} + {model.n_hidden}; pass the guide fitted with this model"
        )
    observed = load_spikes(data, duration=duration, dtype=torch.float64)
    if observed.num_marks != model.n_observed:
        raise ValueError(
            f"{data} has {observed.num_marks} neurons but the model has {model.n_observed} observed neurons; "
            "evaluate the file the model was fitted to (if its last neurons never spike, declare the count: "
            "a 'num_neurons' array in npz, a '# num_neurons: N' line in csv)"
        )
    observed = observed.to(model.weight.dtype)
    elbo = exact_elbo(model, guide, observed, num_particles=particles, window=window)
    logml = log_marginal(model, guide, observed, num_particles=particles, window=window)
    rows = [[str(i), f"{e:.2f}", f"{m:.2f}"] for i, (e, m) in enumerate(zip(elbo.tolist(), logml.tolist()))]
    print(_table(rows, ["sequence", "exact ELBO", f"log p(X) (IS, {particles})"]))
    print(f"mean exact ELBO {elbo.mean():.2f}, mean log p(X) {logml.mean():.2f}")
    result = {"elbo": elbo.tolist(), "log_marginal": logml.tolist(), "particles": particles, "window": window}
    if out is not None:
        _write_text(out, json.dumps(result, indent=1))
    return result


def reproduce(experiment: str, out: Path, quick: bool, seed: int, draws: int | None, force: bool = False,
              progress: bool = True, workers: int = 1, guide: str = "model",
              seeds: list[int] | None = None, sizes: list[int] | None = None,
              trials: int | None = None) -> dict[str, Any]:
    """Run one of the paper's experiments; write ``out/NAME.json`` and ``out/NAME.png``, where
    ``NAME`` is the experiment, with ``_GUIDE`` appended for a guide other than the paper's
    ``"model"`` (q = p).

    ``workers`` spreads exp2's independent trials over that many processes; ``seeds`` (exp1 and
    training, sources) runs several seeds in one go; ``draws`` sets exp1's and bias's path-wise draws
    (per estimator, per temperature) and sources's draws; ``sizes`` and ``trials`` set exp2's."""
    from .experiments import paper

    if guide not in paper.GUIDES:
        raise ValueError(f"unknown guide {guide!r}; choose one of {paper.GUIDES}")
    if guide != "model" and experiment in ("exp3", "sources"):
        raise ValueError(f"{experiment} has no guide choice (exp3 times its own fixed pair; sources is the q = p "
                         "decomposition); --guide applies to exp1, exp2, training and bias")
    if seeds is not None and experiment not in ("exp1", "training", "sources"):
        raise ValueError("--seeds applies to exp1, training and sources; use --seed for the others")
    if draws is not None and experiment not in ("exp1", "bias", "sources"):
        raise ValueError("--draws applies to exp1, bias and sources")
    if (sizes is not None or trials is not None) and experiment != "exp2":
        raise ValueError("--sizes and --trials apply to exp2")
    name = experiment if guide == "model" else f"{experiment}_{guide}"
    json_path, png_path = out / f"{name}.json", out / f"{name}.png"
    _check_free([json_path, png_path], force)
    options = dict(paper.QUICK[experiment]) if quick else {}
    if draws is not None:
        options["num_draws"] = draws
    if sizes is not None:
        options["sizes"] = tuple(sizes)
    if trials is not None:
        options["trials"] = trials
    start = time.perf_counter()
    if experiment == "exp1":
        result = paper.experiment1(seed=seed, seeds=seeds, guide=guide, progress=progress, **options)
    elif experiment == "exp2":
        result = paper.experiment2(seed=seed, progress=progress, workers=workers, guide=guide, **options)
    elif experiment == "exp3":
        result = paper.experiment3(seed=seed, **options)
    elif experiment == "training":
        if seeds is not None:
            options["seeds"] = tuple(seeds)
        result = paper.compare_training(progress=progress, guide=guide, **options)
    elif experiment == "bias":
        result = paper.relaxation_bias(seed=seed, guide=guide, **options)
    elif experiment == "sources":
        from .experiments.variance import format_sources, pathwise_variance_sources

        result = pathwise_variance_sources(seeds=tuple(seeds) if seeds is not None else (seed,), **options)
    else:
        raise ValueError(f"unknown experiment {experiment!r}; choose exp1, exp2, exp3, training, bias or sources")
    result["quick"], result["wall_seconds"] = quick, time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=1))
    _plot_experiment(experiment, result, png_path)
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1)[:4000])
    if experiment == "exp1":
        print(_exp1_table(result))
    elif experiment == "sources":
        print(format_sources(result))
    print(f"Wrote {json_path} and {png_path} ({result['wall_seconds']:.0f} s)")
    return result


def _exp1_table(result: dict[str, Any]) -> str:
    """Experiment 1 per seed: E[std] of each estimator and the score-function / path-wise ratio."""
    from .experiments.paper import ESTIMATOR_NAMES

    rows = [[str(run["seed"])] + [f"{run[e]['e_std']:.1f}" for e in ESTIMATOR_NAMES]
            + [f"{run['score_function']['e_std'] / run['pathwise']['e_std']:.1f}"] for run in result["runs"]]
    title = f"Experiment 1, guide {result['guide']!r}, {result['num_draws']} draws, tau = {result['temperature']}"
    return title + "\n" + _table(rows, ["seed", *ESTIMATOR_NAMES, "SF / PW"])


def _plot_experiment(experiment: str, result: dict[str, Any], path: Path) -> None:
    plt = _agg()
    if experiment in ("bias", "training"):
        fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    else:
        fig, ax = plt.subplots(figsize=(6, 4))
    if experiment == "exp1":
        from .experiments.paper import ESTIMATOR_NAMES

        names = [e for e in ESTIMATOR_NAMES if e in result]
        ax.bar(names, [result[e]["e_std"] for e in names], alpha=0.4)
        for i, e in enumerate(names):  # one dot per seed over the bar of the median
            per_seed = result[e].get("per_seed", [result[e]["e_std"]])
            ax.plot([i] * len(per_seed), per_seed, "o", color="k", ms=3)
        ax.tick_params(axis="x", labelsize="small")
        ax.set_yscale("log")
        ax.set_ylabel("gradient E[std] (bar: median; dots: seeds)")
        seeds = len(result.get("seeds", [0]))
        ax.set_title(f"Experiment 1, guide {result.get('guide', 'separate')!r} "
                     f"({result['num_draws']} draws, {seeds} seed{'s' if seeds > 1 else ''})", fontsize="medium")
    elif experiment == "exp2":
        sizes = [int(s) for s in result["sizes"]]
        for estimator in ("pathwise", "score_function"):
            mean = [result["results"][str(s)][estimator]["mean"] for s in sizes]
            se = [result["results"][str(s)][estimator]["se"] for s in sizes]
            ax.errorbar(sizes, mean, yerr=se, marker="o", capsize=3, label=estimator)
        ax.set_xlabel("training sequences")
        ax.set_ylabel("exact test ELBO per sequence")
        ax.legend()
        ax.set_title(f"Experiment 2, guide {result.get('guide', 'separate')!r} ({result['trials']} trials)",
                     fontsize="medium")
    elif experiment == "training":
        for estimator, entry in result["runs"].items():
            ax[0].plot(result["seeds"], [run["after"] - run["before"] for run in entry["runs"]], marker="o",
                       label=estimator)
        ax[0].set_xlabel("seed (data set and initialisation)")
        ax[0].set_ylabel("exact test ELBO gain per sequence")
        ax[0].set_xticks(result["seeds"])
        ax[0].legend(fontsize="small")
        pairs = result.get("paired", {})
        ax[1].bar(range(len(pairs)), [p["mean"] for p in pairs.values()], yerr=[p["se"] for p in pairs.values()],
                  capsize=4)
        short = [k.replace("score_function_baseline", "SF + baseline").replace("score_function", "SF")
                 .replace(" - ", "\n- ") for k in pairs]
        ax[1].set_xticks(range(len(pairs)), short, fontsize="small")
        ax[1].axhline(0, color="k", lw=0.6)
        ax[1].set_ylabel("gain difference, paired by seed")
        fig.suptitle(f"Training at equal steps: {result['num_epochs']} epochs, guide "
                     f"{result.get('guide', 'separate')!r}", fontsize="medium")
    elif experiment == "bias":
        for i, (estimator, rows) in enumerate(result["estimators"].items()):
            taus = [float(t) for t in rows]
            color = f"C{i}"
            ax[0].plot(taus, [row["cosine"] for row in rows.values()], marker="o", color=color, label=estimator)
            ax[1].plot(taus, [row["relative_error"] for row in rows.values()], marker="o", color=color,
                       label=f"{estimator}: |mean - exact| / |exact|")
            ax[1].plot(taus, [row["relative_noise"] for row in rows.values()], ls=":", color=color,
                       label=f"{estimator}: Monte Carlo noise")
        ax[0].set_ylim(top=1.05)
        ax[0].axhline(1.0, color="grey", lw=0.5)
        ax[0].set_ylabel("cosine(mean path-wise gradient, exact gradient)")
        ax[1].set_yscale("log")
        ax[1].set_ylabel("relative error")
        for a in ax:
            a.set_xscale("log")
            a.set_xlabel("temperature")
            a.legend(fontsize="small")
        fig.suptitle(f"Relaxation bias, guide {result.get('guide', 'separate')!r} ({result['num_draws']} path-wise "
                     f"draws per point, "
                     f"{result['reference_draws']} score-function draws as the exact gradient)", fontsize="medium")
    elif experiment == "sources":
        pieces = [p for p in result["pieces"] if p != "hidden_sites"]
        taus = result["temperatures"]
        width = 0.8 / len(taus)
        for j, tau in enumerate(taus):
            rows = [result["results"][seed][str(tau)] for seed in result["results"]]
            median = [sorted(r[p] for r in rows)[len(rows) // 2] for p in pieces]
            ax.bar([i + j * width for i in range(len(pieces))], median, width, label=f"tau = {tau}")
        exact = sorted(rows["score_observed"] for rows in result["results"].values())
        ax.axhline(exact[len(exact) // 2], color="k", ls=":", lw=1, label="observed-site score, exact Z")
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(pieces))], [p.replace("_", "\n") for p in pieces],
                      fontsize="small")
        ax.set_yscale("log")
        ax.set_ylabel("gradient E[std] (median over seeds)")
        ax.legend(fontsize="small")
        ax.set_title(f"Path-wise gradient with q = p, by source ({result['num_draws']} draws, "
                     f"{len(result['seeds'])} seeds)", fontsize="medium")
    else:
        amps = [float(a) for a in result["amplitudes"]]
        for key in result["results"][str(result["amplitudes"][0])]:
            ax.plot(amps, [result["results"][str(a)][key]["seconds_per_epoch"] for a in result["amplitudes"]],
                    marker="o", label=key)
        ax.set_xlabel("amplitude a")
        ax.set_ylabel("seconds per epoch")
        ax.legend(fontsize="small")
        ax.set_title("Experiment 3")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
