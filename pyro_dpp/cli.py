"""The ``pyro-dpp`` command line."""

from __future__ import annotations

import argparse
import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def _hawkes(args: argparse.Namespace) -> int:
    from . import PointProcess, SpikeTrains
    from . import plot as dpp_plot
    from .intensity import ExpHawkes
    from .jobs import _savefig, check_outputs

    out = Path(args.out)
    figure = out / "hawkes.png"
    check_outputs([figure], args.force)
    torch.manual_seed(args.seed)
    dtype = torch.float64
    baseline = torch.tensor([0.4, 0.2, 0.3], dtype=dtype, requires_grad=True)
    adjacency = torch.tensor([[0.3, 0.0, 0.2], [0.4, 0.2, 0.0], [0.0, 0.3, 0.3]], dtype=dtype, requires_grad=True)
    decay = torch.tensor(1.5, dtype=dtype)
    hawkes = ExpHawkes(baseline, adjacency, decay)
    start = time.perf_counter()

    exact = PointProcess(hawkes, duration=args.duration)
    data = exact.sample((args.sequences,))
    trains = SpikeTrains.from_tensor(data)
    loglik = exact.log_prob(data)
    print(f"Simulated {args.sequences} sequences of a 3-mark exponential Hawkes process on [0, {args.duration}]")
    print(f"  events per sequence: mean {trains.num_events.double().mean():.1f}")
    print(f"  exact log-likelihood per sequence: mean {loglik.mean():.3f}")
    score = torch.autograd.grad(loglik.sum(), baseline)[0]
    print(f"  score d log p / d baseline (sum over sequences): {score.numpy().round(3).tolist()}")

    # The relaxed process needs a constant bound on the (soft-history) Hawkes intensity, which is
    # unbounded in principle; 8x the stationary rate is exceeded rarely (4x failed for most seeds).
    bound = args.bound or 8.0 * float(hawkes.mean_count(torch.tensor(1.0, dtype=dtype))[0].detach())
    relaxed = PointProcess(hawkes, duration=args.duration, bound=bound, temperature=args.temperature,
                           max_events=None)
    soft = relaxed.rsample((args.particles,))
    soft_count = soft[..., 1:4].sum((-1, -2))
    grad = torch.autograd.grad(soft_count.mean(), baseline)[0]
    print(f"Differentiable point process (temperature {args.temperature}, bound {bound:.2f}):")
    print(f"  soft event count: mean {soft_count.mean():.2f} over {args.particles} particles")
    print(f"  path-wise d E[count] / d baseline: {grad.numpy().round(2).tolist()}")
    print(f"  DPP log density of the draw: mean {relaxed.log_prob(soft).mean():.2f}")

    intervals = dpp_plot.rescaled_intervals(hawkes, trains)
    import matplotlib

    matplotlib.use("Agg")  # the demo only writes files: no windows
    plt = dpp_plot._pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.6), gridspec_kw={"width_ratios": [3, 3, 1.6]})
    dpp_plot.raster(trains, ax=axes[0], title="exact sample")
    dpp_plot.raster(SpikeTrains.from_tensor(soft.detach()), ax=axes[1],
                    title=f"relaxed sample (tau={args.temperature})")
    dpp_plot.time_rescaling(intervals, ax=axes[2], title="time rescaling")
    fig.tight_layout()
    _savefig(fig, figure, dpi=120)
    print(f"Saved {figure} ({time.perf_counter() - start:.1f} s)")
    return 0


def _checked(parse: Callable[[str], Any], kind: str, valid: Callable[[Any], bool], rule: str) -> Callable[[str], Any]:
    """An argparse ``type``: ``parse(text)`` ("expected {kind}" where it fails) that ``valid`` accepts
    (else the ``rule`` it breaks)."""

    def convert(text: str) -> Any:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
        if not valid(value):
            raise argparse.ArgumentTypeError(f"{rule}, got {text}")
        return value

    return convert


_positive_float = _checked(float, "a number", lambda v: math.isfinite(v) and v > 0, "must be positive and finite")
_nonnegative_float = _checked(float, "a number", lambda v: not math.isnan(v) and v >= 0,
                              "must be >= 0 (inf: every earlier spike)")
_positive_int = _checked(int, "an integer", lambda v: v >= 1, "must be a positive integer")


def _demo(args: argparse.Namespace) -> int:
    from .jobs import demo

    demo(Path(args.out), seed=args.seed, epochs=args.epochs, draws=args.draws, duration=args.duration,
         force=args.force, progress=not args.no_progress)
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from .jobs import simulate

    simulate(Path(args.out), args.observed, args.hidden, args.sequences, args.duration, args.seed, args.amplitude,
             args.basis, force=args.force, dtype=args.dtype)
    return 0


def _fit(args: argparse.Namespace) -> int:
    from .jobs import train

    train(Path(args.data), Path(args.out), args.hidden, args.estimator, args.epochs, args.temperature,
          args.temperature_decay, args.optimizer, args.lr, args.batch_size, args.guide, args.basis, args.amplitude,
          args.seed, args.duration, force=args.force, progress=not args.no_progress,
          checkpoint=Path(args.checkpoint) if args.checkpoint else None, resume=args.resume, dtype=args.dtype,
          num_neurons=args.num_neurons, window=args.window, history=args.history)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .jobs import evaluate

    evaluate(Path(args.data), Path(args.model), Path(args.guide) if args.guide else None, args.particles,
             Path(args.out) if args.out else None, args.duration, force=args.force, window=args.window)
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from .jobs import reproduce

    reproduce(args.experiment, Path(args.out), args.quick, args.seed, args.draws, force=args.force,
              progress=not args.no_progress, workers=args.workers, guide=args.guide, seeds=args.seeds,
              sizes=args.sizes, trials=args.trials)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .snn.network import BASES
    from .snn.training import OPTIMIZERS

    parser = argparse.ArgumentParser(prog="pyro-dpp", description="Differentiable point processes in Pyro.")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, out_default: str | None = None, progress: bool = False) -> None:
        if out_default is not None:
            p.add_argument("--out", default=out_default, help=f"output location (default {out_default})")
        p.add_argument("--force", action="store_true", help="overwrite existing results")
        p.add_argument("--seed", type=int, default=0)
        if progress:
            p.add_argument("--no-progress", action="store_true", help="no progress bars")

    demo = sub.add_parser("demo", help="the paper's synthetic SNN: gradient variance, training, figures")
    common(demo, "demo-output", progress=True)
    demo.add_argument("--epochs", type=_positive_int, default=60)
    demo.add_argument("--draws", type=_positive_int, default=200, help="gradient draws per estimator for E[std]")
    demo.add_argument("--duration", type=_positive_float, default=50.0)
    demo.set_defaults(func=_demo)

    hawkes = sub.add_parser("hawkes", help="simulate, score and differentiate a Hawkes process; save plots")
    hawkes.add_argument("--out", default="demo-output", help="folder for the figures")
    hawkes.add_argument("--duration", type=_positive_float, default=50.0)
    hawkes.add_argument("--sequences", type=_positive_int, default=8)
    hawkes.add_argument("--particles", type=_positive_int, default=16)
    hawkes.add_argument("--temperature", type=_positive_float, default=0.3,
                        help="relaxation temperature of the differentiable sampler (> 0)")
    hawkes.add_argument("--bound", type=_positive_float, default=None,
                        help="constant bound on the summed intensity for the differentiable sampler "
                             "(default: 8 x the stationary event rate)")
    hawkes.add_argument("--seed", type=int, default=0)
    hawkes.add_argument("--force", action="store_true", help="overwrite an existing hawkes.png")
    hawkes.set_defaults(func=_hawkes)

    sim = sub.add_parser("simulate", help="simulate spike trains of a random SNN into a .npz or .csv file")
    common(sim, "spikes.npz")
    sim.add_argument("--observed", type=_positive_int, default=2)
    sim.add_argument("--hidden", type=int, default=4)
    sim.add_argument("--sequences", type=_positive_int, default=10)
    sim.add_argument("--duration", type=_positive_float, default=50.0)
    sim.add_argument("--amplitude", type=_positive_float, default=5.0)
    sim.add_argument("--basis", choices=BASES, default="epanechnikov")
    sim.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                     help="floating type of the network and the spike times (default float64)")
    sim.set_defaults(func=_simulate)

    fit = sub.add_parser("fit", help="fit an SNN with hidden neurons to spike trains (.npz or .csv)")
    fit.add_argument("data", help="spike-train file (see README: npz arrays or a time,neuron[,sequence] csv)")
    common(fit, "fit.json", progress=True)
    fit.add_argument("--hidden", type=int, default=4, help="number of hidden neurons")
    fit.add_argument("--estimator", choices=("pathwise", "pathwise_exact", "score_function", "score_function_baseline"),
                     default="pathwise")
    fit.add_argument("--epochs", type=_positive_int, default=20)
    fit.add_argument("--temperature", type=_positive_float, default=0.3, help="initial temperature tau_0")
    fit.add_argument("--temperature-decay", type=_positive_float, default=0.95, help="tau_e = tau_0 * r^e")
    fit.add_argument("--optimizer", choices=tuple(OPTIMIZERS), default="adagrad")
    fit.add_argument("--lr", type=_positive_float, default=0.05)
    fit.add_argument("--batch-size", type=_positive_int, default=1,
                     help="sequences per step (paper: 1); windows per step with --window")
    fit.add_argument("--window", type=_positive_float, default=None, metavar="SECONDS",
                     help="train on windows of this length cut from each recording, each with the spikes before it "
                          "within the filters' reach (memory per step independent of the recording's length; "
                          "hidden spikes before a window are not carried: see pyro_dpp.snn.fit)")
    fit.add_argument("--history", type=_nonnegative_float, default=None, metavar="SECONDS",
                     help="with --window: seconds of spikes before each window that it carries (default: the "
                          "filters' reach, where they fall below float precision)")
    fit.add_argument("--guide", choices=("causal", "acausal", "prior"), default="causal",
                     help="variational network: causal, acausal (sees future observed spikes) or q = p")
    fit.add_argument("--basis", choices=BASES, default="epanechnikov")
    fit.add_argument("--amplitude", type=_positive_float, default=5.0)
    fit.add_argument("--duration", type=_positive_float, default=None,
                     help="window length (default: read from the file)")
    fit.add_argument("--num-neurons", type=_positive_int, default=None,
                     help="number of observed neurons (default: from the file); needed when ids are not 0..N-1")
    fit.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                     help="floating type of the spike times and the networks (default float64; float32 is "
                          "refused where it would merge distinct spike times)")
    fit.add_argument("--checkpoint", default=None,
                     help="checkpoint file, written atomically after every epoch and on Ctrl-C/SIGTERM "
                          "(default: <out stem>_checkpoint.pt, removed after a successful run)")
    fit.add_argument("--resume", action="store_true",
                     help="continue an interrupted run from its checkpoint (ends bit-identical to an "
                          "uninterrupted run)")
    fit.set_defaults(func=_fit)

    ev = sub.add_parser("evaluate", help="exact ELBO and log-likelihood of spike trains under a fitted SNN")
    ev.add_argument("data")
    ev.add_argument("--model", required=True, help="a *_model.pt written by fit or simulate")
    ev.add_argument("--guide", default=None, help="a *_guide.pt (default: q = p)")
    ev.add_argument("--particles", type=_positive_int, default=64)
    ev.add_argument("--window", type=_positive_float, default=None, metavar="SECONDS",
                    help="evaluate windows of this length and sum them per sequence (as fit --window)")
    ev.add_argument("--duration", type=_positive_float, default=None)
    common(ev)
    ev.add_argument("--out", default=None, help="JSON file for the per-sequence results")
    ev.set_defaults(func=_evaluate)

    rep = sub.add_parser("reproduce", help="the paper's experiments: exp1 (gradient variance), exp2 (test ELBO "
                                          "vs training size), exp3 (time per epoch vs amplitude)")
    rep.add_argument("experiment", choices=("exp1", "exp2", "exp3", "training", "bias", "sources"),
                     help="training: path-wise vs score-function training over seeds; bias: relaxation bias vs "
                          "temperature; sources: the path-wise gradient's variance by source, with q = p")
    common(rep, "results", progress=True)
    rep.add_argument("--quick", action="store_true", help="reduced sizes (about a minute)")
    rep.add_argument("--draws", type=_positive_int, default=None,
                     help="exp1: gradient draws per estimator; bias: path-wise draws per temperature; sources: draws")
    rep.add_argument("--sizes", type=_positive_int, nargs="+", default=None, metavar="N",
                     help="exp2: training-set sizes (default: the paper's 10 ... 200)")
    rep.add_argument("--trials", type=_positive_int, default=None, help="exp2: trials per size (default 24)")
    rep.add_argument("--workers", type=_positive_int, default=1,
                     help="exp2: processes to spread the independent trials over (one thread each)")
    rep.add_argument("--guide", choices=("model", "separate", "acausal"), default="model",
                     help="the guide: model (q = p, the paper's configuration), separate (a causal guide network "
                          "of its own) or acausal (also sees future observed spikes); the last two are extensions "
                          "and write NAME_GUIDE.json")
    rep.add_argument("--seeds", type=int, nargs="+", default=None, metavar="S",
                     help="exp1, training, sources: run these seeds in one go (default: --seed; 0-4 for training)")
    rep.set_defaults(func=_reproduce)
    return parser


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run the command line; exit status 0 on success, 2 for bad input, 130 when interrupted
    (Ctrl-C or SIGTERM; ``fit`` saves its checkpoint first)."""
    args = build_parser().parse_args(argv)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _terminate)  # SIGTERM ends a run like Ctrl-C
    try:
        return args.func(args)
    except (ValueError, ImportError) as err:
        print(f"pyro-dpp: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        from .snn import TrainingInterrupted

        message = str(err) if isinstance(err, TrainingInterrupted) else "interrupted"
        if isinstance(err, TrainingInterrupted) and err.checkpoint is not None:
            message += "; rerun the same command with --resume to continue"
        print(f"pyro-dpp: {message}", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
