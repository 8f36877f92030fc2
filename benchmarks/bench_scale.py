"""Scale benchmark (issue 11): the hidden-neuron SNN at the size of real recordings.

Grid: observed neurons ``D_o`` in {10, 30, 100, 300} x hidden neurons ``D_h`` in {4, 16} x
recording length ``T`` in {100, 1000, 3600} s, ``--sequences`` recordings (default 4).

**Data generator.** A "true" SNN of ``D_o + D_h`` neurons with the paper's model (sigmoid rates,
amplitude ``a = 5``, two Epanechnikov basis functions with centres 0 and 10 s, self-connections
``<= -0.1``) and ``init="small"`` (``W ~ N(0, 0.1^2)``, ``b = 0``, self-connections ``-1``),
simulated by exact thinning (:meth:`pyro_dpp.snn.SNN.simulate`), one recording at a time (so the
simulation's memory is one recording's; ``--simulate-chunk`` cuts it further). These weights give
1.0-1.1 spikes/s per observed neuron with 10-30 observed neurons, 1.25 with 100 and 1.5 with 300
(the drive of the random weights grows with the network): about the 1 spike/s of the issue. The
``rate_observed`` / ``rate_hidden`` fields record what each run produced. The network trained
is another ``init="small"`` SNN of the same sizes (seed + 1), with ``q = p`` (the model's own
hidden dynamics as the guide, the paper's configuration).

**Stages.** Every (configuration, stage) runs in a fresh subprocess, so that its peak resident
memory (``resource.getrusage``) is its own; the parent kills a stage that runs past ``--timeout``
or whose resident memory passes ``--memory-limit`` and records it as "did not finish" (with the
peak memory it had reached). Each child first runs its operation once on a 5 s recording of the
same sizes (warm-up: numba compilation, allocator), then times it:

- ``simulate``: :meth:`SNN.simulate` of every recording of length ``T`` (all neurons jointly);
  writes the data (compact event times and integer neuron ids, float64) for the other stages.
- ``log_prob``: the exact joint log-likelihood ``log p(X, Z)`` of the simulated observed ``X`` and
  hidden ``Z`` spikes under the trained network (``hidden_process(X).log_prob(Z) +
  observed_process(Z).log_prob(X)``, whole recordings), forward (``log_prob_s``) and backward
  (``backward_s``) to the weights.
- ``fit:<estimator>``: one epoch of :func:`pyro_dpp.snn.fit` on the observed spikes
  (``estimator`` in pathwise, pathwise_exact, score_function, score_function_baseline;
  temperature 0.3, one particle, ``batch_size = --batch-size``, default all recordings in one
  step, as in the issue's table). Where ``fit`` takes ``window=`` (long recordings cut into
  windows), the epoch is all windows once, with ``--window`` seconds (default 100; 0 for whole
  recordings) and by default ``--sequences`` windows per step -- detected with
  ``inspect.signature``, so the same script runs before and after.

**Columns** (table printed at the end; every field is in the JSON):
``status`` ok / timeout / memory (killed past ``--memory-limit``) / error (stderr tail in the
JSON) / skipped (no data) / cached (simulation reused from ``--data-dir``); ``seconds`` the
stage's timed operation (simulate: all recordings; log_prob: forward + backward; fit:
``FitResult.epoch_seconds[0]``, one epoch); ``call s`` the whole ``fit`` call (data conversion
and window cutting included), ``load s`` building the ``SpikeTrains`` from the saved arrays;
``peak MB`` the stage's peak resident set (``ru_maxrss``, its high-water mark reset after the
warm-up through ``/proc/self/clear_refs``; it includes the ~0.4 GB of Python, torch and numba
already resident) and ``net MB`` that minus the resident set just before the stage (what the stage
itself added: data loading included); ``spikes/seq`` observed spikes per recording; ``rate/s``
observed spikes per second per observed neuron; ``window`` the ``window=`` passed to ``fit``.
Ratios: every ``T`` against the smallest ``T`` of the same ``(D_o, D_h)`` measured in this
invocation, for time, peak and net memory; "within 12x" (the issue's linearity criterion for
``T = 1000`` against ``T = 100``) judges time and net memory (peak memory where the baseline's net
memory is under 50 MB, too small to divide by). The issue's headline targets are checked where
measured.

Usage::

    # everything (hours: run it on a quiet machine; each stage is written as it finishes)
    nice python benchmarks/bench_scale.py --timeout 1800 --memory-limit 16 --data-dir /tmp/scale_data
    # a subset
    nice python benchmarks/bench_scale.py --observed 10 30 --hidden 4 --durations 100 1000 \\
        --estimators pathwise_exact --timeout 120
    # the headline configuration
    python benchmarks/bench_scale.py --observed 100 --hidden 16 --durations 3600 \\
        --estimators pathwise_exact --threads 2 --timeout 1200
    # print the tables of an existing JSON again
    python benchmarks/bench_scale.py --report

Results go to ``benchmarks/results/scale.json`` (``--out``), rewritten atomically after every
stage; ``--append`` keeps the records of earlier invocations (each invocation records the
machine: cores, load average, torch threads, date, git commit, and the options).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import inspect
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ESTIMATORS = ("pathwise", "pathwise_exact", "score_function", "score_function_baseline")
WARMUP_DURATION = 5.0
#: The issue's headline targets: (D_o, D_h, T, estimator) -> (seconds, peak bytes).
HEADLINE = {(100, 16, 3600.0, "pathwise_exact"): (600.0, 4e9)}


# ---------------------------------------------------------------------------------------------
# child side: one stage of one configuration
# ---------------------------------------------------------------------------------------------
def _rss_mb() -> float:
    """Peak resident set of this process so far, MB (``ru_maxrss`` is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _current_rss_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _reset_peak(out: dict[str, Any]) -> None:
    """After the warm-up: record the peak so far, then reset the high-water mark (Linux
    ``/proc/self/clear_refs``, which ``ru_maxrss`` follows) so that the stage's peak is its own."""
    import gc

    gc.collect()
    out["peak_rss_warmup_mb"] = _rss_mb()
    try:
        Path("/proc/self/clear_refs").write_text("5")
        out["peak_reset"] = True
    except OSError:
        out["peak_reset"] = False  # the peak then includes the warm-up (a 5 s recording)
    out["rss_before_stage_mb"] = _current_rss_mb()


def _network(spec: dict[str, Any], seed: int) -> Any:
    import torch

    from pyro_dpp.snn import SNN

    torch.manual_seed(seed)
    net = SNN(spec["observed"], spec["hidden"], init="small")
    return net.to(dtype=getattr(torch, spec["dtype"]), device=spec["device"])


def _events(trains: Any) -> tuple[list[Any], list[Any]]:
    """Per recording: event times (float64) and integer neuron ids, sorted by time."""
    import numpy as np

    times, marks = [], []
    for seq in trains.to_lists():
        t = np.concatenate([np.asarray(x, dtype=np.float64) for x in seq]) if seq else np.zeros(0)
        m = np.concatenate([np.full(len(x), k, dtype=np.int64) for k, x in enumerate(seq)]) if seq else np.zeros(0, int)
        order = np.argsort(t, kind="stable")
        times.append(t[order])
        marks.append(m[order])
    return times, marks


def _simulate(net: Any, sequences: int, duration: float, seed: int,
              chunk: float | None = None) -> tuple[list, list, list, list]:
    """Simulate one recording at a time: observed and hidden (times, ids) per recording. With
    ``chunk``, each recording is independent pieces of that length laid end to end (the network
    starts afresh at every piece: not the process of a whole recording near the joins, but the
    same rates, and the sampler's memory is one piece's)."""
    import numpy as np

    obs_t, obs_m, hid_t, hid_m = [], [], [], []
    starts = [0.0] if not chunk else [c * chunk for c in range(int(np.ceil(duration / chunk - 1e-9)))]
    for s in range(sequences):
        pieces: list[tuple] = []
        for c, start in enumerate(starts):
            length = duration - start if c == len(starts) - 1 else chunk
            observed, hidden = net.simulate(1, length, seed=seed + s + 100_003 * c)
            (ot,), (om,) = _events(observed)
            (ht,), (hm,) = _events(hidden)
            pieces.append((ot + start, om, ht + start, hm))
        ot, om, ht, hm = (np.concatenate(x) for x in zip(*pieces))
        obs_t.append(ot)
        obs_m.append(om)
        hid_t.append(ht)
        hid_m.append(hm)
    return obs_t, obs_m, hid_t, hid_m


def _trains(times: list, marks: list, num_marks: int, duration: float, spec: dict[str, Any]) -> Any:
    import torch

    from pyro_dpp import SpikeTrains

    return SpikeTrains.from_events(list(times), list(marks), num_marks, duration, dtype=getattr(torch, spec["dtype"]),
                                   device=spec["device"])


def _load(spec: dict[str, Any], duration: float | None = None) -> tuple[Any, Any, float]:
    """The stage's data (observed, hidden SpikeTrains) and the seconds spent building them; with
    ``duration`` a fresh warm-up recording of that length from the true network instead."""
    import numpy as np

    if duration is not None:
        true = _network(spec, spec["seed"])
        obs_t, obs_m, hid_t, hid_m = _simulate(true, 1, duration, spec["seed"] + 500)
    else:
        duration = spec["duration"]
        with np.load(spec["data"]) as f:
            n = spec["sequences"]
            obs_t = [f[f"obs_t{s}"] for s in range(n)]
            obs_m = [f[f"obs_m{s}"] for s in range(n)]
            hid_t = [f[f"hid_t{s}"] for s in range(n)]
            hid_m = [f[f"hid_m{s}"] for s in range(n)]
    start = time.perf_counter()
    observed = _trains(obs_t, obs_m, spec["observed"], duration, spec)
    hidden = _trains(hid_t, hid_m, spec["hidden"], duration, spec)
    return observed, hidden, time.perf_counter() - start


def data_summary(spec: dict[str, Any]) -> dict[str, Any]:
    """Spike counts and rates of a configuration's data file."""
    import numpy as np

    with np.load(spec["data"]) as f:
        n_obs = [len(f[f"obs_t{s}"]) for s in range(spec["sequences"])]
        n_hid = [len(f[f"hid_t{s}"]) for s in range(spec["sequences"])]
    span = spec["sequences"] * spec["duration"]
    return {"spikes_observed": n_obs, "spikes_hidden": n_hid, "rate_observed": sum(n_obs) / (span * spec["observed"]),
            "rate_hidden": sum(n_hid) / (span * spec["hidden"])}


def _stage_simulate(spec: dict[str, Any], out: dict[str, Any]) -> None:
    import numpy as np

    true = _network(spec, spec["seed"])
    _simulate(true, 1, WARMUP_DURATION, spec["seed"] + 500)
    _reset_peak(out)
    start = time.perf_counter()
    obs_t, obs_m, hid_t, hid_m = _simulate(true, spec["sequences"], spec["duration"], spec["seed"] + 1000,
                                           spec["simulate_chunk"])
    out["seconds"] = time.perf_counter() - start
    out["simulate_chunk"] = spec["simulate_chunk"]
    # thinning candidates per recording: of the simulation (all neurons), of a hidden-site draw in fit
    out["candidates_per_sequence"] = true.neuron_bound * true.num_neurons * spec["duration"]
    out["hidden_candidates_per_sequence"] = true.neuron_bound * true.n_hidden * spec["duration"]
    arrays = {}
    for s in range(spec["sequences"]):
        arrays.update({f"obs_t{s}": obs_t[s], f"obs_m{s}": obs_m[s], f"hid_t{s}": hid_t[s], f"hid_m{s}": hid_m[s]})
    tmp = spec["data"] + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, spec["data"])
    out.update(data_summary(spec))


def _score(process: Any, trains: Any) -> Any:
    """``process.log_prob`` of SpikeTrains: exact trains in the index layout (time, neuron id: O(events)
    memory) where this version has it, else as the padded realization tensor."""
    if getattr(trains, "is_exact", False):
        return process.log_prob(trains.to_tensor(format="index"))
    return process.log_prob(trains.to_tensor())


def _log_prob(net: Any, observed: Any, hidden: Any) -> tuple[float, float, float]:
    """Forward and backward seconds of the exact ``log p(X, Z)``, and its value."""
    net.zero_grad()
    start = time.perf_counter()
    value = _score(net.hidden_process(observed), hidden).sum() + _score(net.observed_process(hidden), observed).sum()
    forward = time.perf_counter() - start
    start = time.perf_counter()
    value.backward()
    return forward, time.perf_counter() - start, float(value)


def _stage_log_prob(spec: dict[str, Any], out: dict[str, Any]) -> None:
    net = _network(spec, spec["seed"] + 1)
    _log_prob(net, *_load(spec, WARMUP_DURATION)[:2])
    _reset_peak(out)
    observed, hidden, out["load_s"] = _load(spec)
    out["log_prob_s"], out["backward_s"], out["log_prob"] = _log_prob(net, observed, hidden)
    out["seconds"] = out["log_prob_s"] + out["backward_s"]


def fit_options(fit: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of one epoch of ``fit``, with ``window=`` where ``fit`` takes it.
    ``batch_size`` None: all recordings in one step (the issue's table), or, with windows,
    ``sequences`` windows per step (all windows in one step would make the memory grow with T)."""
    options = {"estimator": spec["estimator"], "num_epochs": 1, "temperature": 0.3, "batch_size": spec["batch_size"],
               "progress": False, "seed": spec["seed"]}
    if spec["window"] and "window" in inspect.signature(fit).parameters:
        options["window"] = spec["window"]
        if options["batch_size"] is None:
            options["batch_size"] = spec["sequences"]
    return options


def _stage_fit(spec: dict[str, Any], out: dict[str, Any]) -> None:
    from pyro_dpp.snn import fit

    net = _network(spec, spec["seed"] + 1)
    options = fit_options(fit, spec)
    out["window"], out["batch_size"] = options.get("window"), options["batch_size"]
    warm, _, _ = _load(spec, WARMUP_DURATION)
    fit(copy.deepcopy(net), warm, **{**options, "window": None} if "window" in options else options)
    del warm
    _reset_peak(out)
    observed, _, out["load_s"] = _load(spec)
    start = time.perf_counter()
    result = fit(net, observed, **options)
    out["fit_call_s"] = time.perf_counter() - start
    out["seconds"] = result.epoch_seconds[0]
    out["steps"] = len(result.losses)
    out["loss"] = sum(result.losses)


def child(spec: dict[str, Any]) -> None:
    """Run one stage and write its record (with peak memory) to ``spec["result"]``."""
    import torch

    import pyro_dpp  # noqa: F401  (import cost counted in the floor, not in the stage)

    torch.set_num_threads(spec["threads"])
    out: dict[str, Any] = {"rss_after_import_mb": _rss_mb()}
    stage = spec["stage"]
    if stage == "simulate":
        _stage_simulate(spec, out)
    elif stage == "log_prob":
        _stage_log_prob(spec, out)
    else:
        _stage_fit(spec, out)
    out["peak_rss_mb"] = _rss_mb()
    if spec["device"].startswith("cuda"):
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    Path(spec["result"]).write_text(json.dumps(out))


# ---------------------------------------------------------------------------------------------
# parent side: the grid, subprocesses, timeouts, incremental JSON
# ---------------------------------------------------------------------------------------------
def _proc_status(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak) of a live process, MB (empty where /proc cannot tell)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = float(value.split()[0]) / 1024.0
    return fields


def run_stage(spec: dict[str, Any], timeout: float, memory_limit_mb: float) -> dict[str, Any]:
    """Run one stage in a fresh subprocess; ``status`` ok, timeout, memory (killed past the limit)
    or error (with the tail of its stderr)."""
    with tempfile.TemporaryDirectory() as tmp:
        spec = {**spec, "result": str(Path(tmp) / "result.json")}
        env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]), "MKL_NUM_THREADS": str(spec["threads"]),
               "NUMBA_NUM_THREADS": str(spec["threads"]),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        err_path = Path(tmp) / "stderr"
        start = time.perf_counter()
        with open(err_path, "w") as err:
            proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
                                    stdout=subprocess.DEVNULL, stderr=err, env=env)
            status, peak = None, 0.0
            try:
                while proc.poll() is None:
                    mem = _proc_status(proc.pid)
                    peak = max(peak, mem.get("VmHWM", 0.0))
                    if time.perf_counter() - start > timeout:
                        status = "timeout"
                    elif mem.get("VmRSS", 0.0) > memory_limit_mb:
                        status = "memory"
                    if status:
                        break
                    time.sleep(0.2)
            finally:  # also when the parent is interrupted: never leave a stage running
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        wall = time.perf_counter() - start
        record: dict[str, Any] = {"wall_s": wall}
        if status:
            record.update(status=status, peak_rss_mb=peak or None,
                          note=f"did not finish: killed after {wall:.0f} s" if status == "timeout" else
                          f"did not finish: resident memory passed {memory_limit_mb:.0f} MB")
        elif proc.returncode != 0 or not Path(spec["result"]).exists():
            tail = err_path.read_text()[-1500:]
            record.update(status="error", returncode=proc.returncode, note=tail.strip().splitlines()[-1:] or [""],
                          stderr_tail=tail)
            record["note"] = record["note"][0]
        else:
            record.update(status="ok", **json.loads(Path(spec["result"]).read_text()))
        if record.get("peak_rss_mb") is not None and record.get("rss_before_stage_mb") is not None:
            record["net_rss_mb"] = max(0.0, record["peak_rss_mb"] - record["rss_before_stage_mb"])
        return record


def _git_commit() -> str | None:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True)
        return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def machine(args: argparse.Namespace) -> dict[str, Any]:
    """Who measured: cores, load, threads, versions, date, commit, and the features detected."""
    import torch

    import pyro_dpp
    from pyro_dpp import SpikeTrains
    from pyro_dpp.snn import fit

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": _git_commit(), "cpu_count": os.cpu_count(),
        "affinity_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average": list(os.getloadavg()), "torch_threads": args.threads, "nice": os.nice(0),
        "torch": torch.__version__, "python": sys.version.split()[0], "platform": platform.platform(),
        "backend": getattr(pyro_dpp, "get_backend", lambda: None)(),
        "features": {"fit_window": "window" in inspect.signature(fit).parameters,
                     "spike_trains_windows": hasattr(SpikeTrains, "windows")},
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                    if k not in ("child", "out", "note")},
        "note": args.note,
    }


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomic rewrite, so that a killed run leaves the previous complete file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def _fmt(x: Any, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def format_table(records: list[dict[str, Any]]) -> str:
    head = (f"{'D_o':>4} {'D_h':>4} {'T':>6} {'stage':<28} {'status':<7} {'seconds':>9} {'call s':>8} {'load s':>7} "
            f"{'peak MB':>8} {'net MB':>8} {'spikes/seq':>10} {'rate/s':>6} {'window':>6}")
    lines = [head, "-" * len(head)]
    for r in records:
        spikes = r.get("spikes_observed")
        lines.append(
            f"{r['observed']:>4} {r['hidden']:>4} {r['duration']:>6g} {r['stage']:<28} {r['status']:<7} "
            f"{_fmt(r.get('seconds'), '.2f'):>9} {_fmt(r.get('fit_call_s'), '.2f'):>8} "
            f"{_fmt(r.get('load_s'), '.2f'):>7} {_fmt(r.get('peak_rss_mb'), '.0f'):>8} "
            f"{_fmt(r.get('net_rss_mb'), '.0f'):>8} {_fmt(sum(spikes) / len(spikes) if spikes else None, '.0f'):>10} "
            f"{_fmt(r.get('rate_observed'), '.2f'):>6} {_fmt(r.get('window'), 'g'):>6}"
        )
    return "\n".join(lines)


def ratios(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each ``T`` against the smallest ``T`` of the same sizes and stage (finished stages only)."""
    ok = [r for r in records if r["status"] == "ok"]
    out = []
    for r in ok:
        same = [b for b in ok if (b["observed"], b["hidden"], b["stage"]) == (r["observed"], r["hidden"], r["stage"])]
        base = min((b for b in same if b["duration"] < r["duration"]), key=lambda b: b["duration"], default=None)
        if base is None:
            continue
        row = {"observed": r["observed"], "hidden": r["hidden"], "stage": r["stage"], "duration": r["duration"],
               "baseline_duration": base["duration"], "length_ratio": r["duration"] / base["duration"],
               "baseline_net_rss_mb": base.get("net_rss_mb")}
        for key in ("seconds", "peak_rss_mb", "net_rss_mb"):
            if r.get(key) and base.get(key):
                row[f"{key}_ratio"] = r[key] / base[key]
        out.append(row)
    return out


def format_ratios(rows: list[dict[str, Any]]) -> str:
    head = (f"{'D_o':>4} {'D_h':>4} {'stage':<28} {'T / T0':>12} {'time x':>8} {'peak x':>7} {'net mem x':>9}"
            "  within 12x")
    lines = [head, "-" * len(head)]
    for r in rows:
        memory = "net_rss_mb_ratio" if r.get("baseline_net_rss_mb", 0) >= 50 else "peak_rss_mb_ratio"
        checks = [r.get(k) for k in ("seconds_ratio", memory)]
        verdict = "yes" if all(c is not None and c <= 12 for c in checks) else "NO"
        lines.append(
            f"{r['observed']:>4} {r['hidden']:>4} {r['stage']:<28} "
            f"{r['duration']:>6g}/{r['baseline_duration']:<5g} {_fmt(r.get('seconds_ratio'), '.1f'):>8} "
            f"{_fmt(r.get('peak_rss_mb_ratio'), '.1f'):>7} {_fmt(r.get('net_rss_mb_ratio'), '.1f'):>9}  "
            f"{verdict if r['length_ratio'] <= 10 else '(T ratio > 10)'}"
        )
    return "\n".join(lines)


def headline(records: list[dict[str, Any]]) -> list[str]:
    """The issue's targets, where this invocation measured them."""
    lines = []
    for (d_o, d_h, duration, est), (seconds, peak) in HEADLINE.items():
        for r in records:
            if (r["observed"], r["hidden"], r["duration"], r["stage"]) == (d_o, d_h, duration, f"fit:{est}"):
                ok = r["status"] == "ok" and r["seconds"] < seconds and r["peak_rss_mb"] * 2**20 < peak
                lines.append(f"target {d_o}+{d_h} neurons, T = {duration:g} s, one epoch of {est} under "
                             f"{seconds:.0f} s and {peak / 1e9:.0f} GB: {'met' if ok else 'NOT met'} "
                             f"({r['status']}, {_fmt(r.get('seconds'))} s, {_fmt(r.get('peak_rss_mb'), '.0f')} MB)")
    big = [r for r in records if r["observed"] >= 300]
    if big:
        done = [r["stage"] for r in big if r["status"] == "ok"]
        lines.append(f"target 300 observed neurons run: {len(done)} of {len(big)} stages finished ({', '.join(done)})")
    return lines


def report(records: list[dict[str, Any]]) -> str:
    parts = [format_table(records), "", "ratios against the smallest T of the same sizes (this invocation):",
             format_ratios(ratios(records)), ""] + headline(records)
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--observed", type=int, nargs="+", default=[10, 30, 100, 300])
    parser.add_argument("--hidden", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--durations", type=float, nargs="+", default=[100.0, 1000.0, 3600.0])
    parser.add_argument("--estimators", nargs="+", default=list(ESTIMATORS), choices=ESTIMATORS)
    parser.add_argument("--stages", nargs="+", default=["simulate", "log_prob", "fit"],
                        choices=["simulate", "log_prob", "fit"], help="simulate always runs (it makes the data)")
    parser.add_argument("--sequences", type=int, default=4, help="recordings per configuration (issue: 4)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="fit's batch_size (default: all recordings in one step; with windows, "
                        "--sequences windows per step)")
    parser.add_argument("--window", type=float, default=100.0,
                        help="fit's window= in seconds where fit takes it (0: whole recordings)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per stage before it is killed")
    parser.add_argument("--memory-limit", type=float, default=8.0, help="GB of resident memory per stage before "
                        "it is killed (the machine is shared)")
    parser.add_argument("--threads", type=int, default=1, help="torch/OMP/numba threads in each stage")
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"],
                        help="float64 by default: float32 cannot tell spike times apart at T = 3600 s")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--simulate-chunk", type=float, default=0.0,
                        help="simulate each recording as independent pieces of this many seconds laid end to end "
                        "(bounds the sampler's memory at 300 neurons x 3600 s; default 0: whole recordings, exact)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="keep the simulated recordings here and reuse them in later invocations (the "
                        "simulate stage is then recorded as 'cached'); default: a temporary directory")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "scale.json")
    parser.add_argument("--append", action="store_true", help="keep the records already in --out")
    parser.add_argument("--report", action="store_true", help="print the tables of --out and exit")
    parser.add_argument("--note", default="", help="free text kept with the invocation (e.g. what else ran)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(json.loads(args.child))
        return 0
    if args.report:
        data = json.loads(args.out.read_text())
        for i, inv in enumerate(data["invocations"]):
            print(f"invocation {i}: {inv['date']} commit {inv['git_commit']} load {inv['load_average']}"
                  + (f" ({inv['note']})" if inv.get("note") else ""))
            print(report([r for r in data["records"] if r["invocation"] == i]))
        return 0
    if min(args.observed + args.hidden) < 1 or min(args.durations) <= 0 or args.sequences < 1 or args.threads < 1:
        parser.error("need --observed, --hidden >= 1, --durations > 0, --sequences >= 1, --threads >= 1")
    if args.batch_size is not None and args.batch_size < 1:
        parser.error("--batch-size must be >= 1")

    data = {"invocations": [], "records": []}
    if args.append and args.out.exists():
        data = json.loads(args.out.read_text())
    invocation = len(data["invocations"])
    data["invocations"].append(machine(args))
    write_json(args.out, data)
    mine: list[dict[str, Any]] = []
    configs = [(o, h, d) for o in sorted(args.observed) for h in sorted(args.hidden) for d in sorted(args.durations)]
    stages = (["log_prob"] if "log_prob" in args.stages else []) + (
        [f"fit:{e}" for e in args.estimators] if "fit" in args.stages else [])
    total = len(configs) * (1 + len(stages))
    done, start = 0, time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir or Path(tmp)
        data_dir.mkdir(parents=True, exist_ok=True)
        for d_o, d_h, duration in configs:
            spec = {"observed": d_o, "hidden": d_h, "duration": duration, "sequences": args.sequences,
                    "seed": args.seed, "threads": args.threads, "dtype": args.dtype, "device": args.device,
                    "batch_size": args.batch_size, "window": args.window or None,
                    "simulate_chunk": args.simulate_chunk or None,
                    "data": str(data_dir / f"snn_{d_o}+{d_h}_T{duration:g}_n{args.sequences}_seed{args.seed}"
                                f"{f'_chunk{args.simulate_chunk:g}' if args.simulate_chunk else ''}.npz")}
            have_data = False
            for stage in ["simulate"] + stages:
                done += 1
                label = f"[{done}/{total}, {time.perf_counter() - start:.0f} s] {d_o}+{d_h} neurons, T = {duration:g} s"
                if stage == "simulate" and args.data_dir is not None and Path(spec["data"]).exists():
                    record = {"status": "cached", "note": f"data read from {spec['data']}", **data_summary(spec)}
                    have_data = True
                elif stage != "simulate" and not have_data:
                    record = {"status": "skipped", "note": "no data: the simulation did not finish"}
                else:
                    print(f"{label}: {stage} ...", flush=True)
                    est = stage.split(":", 1)[1] if stage.startswith("fit:") else None
                    record = run_stage({**spec, "stage": stage, "estimator": est}, args.timeout,
                                       args.memory_limit * 1024)
                have_data = have_data or (stage == "simulate" and record["status"] == "ok")
                record = {"invocation": invocation, "observed": d_o, "hidden": d_h, "duration": duration,
                          "sequences": args.sequences, "stage": stage, **record}
                extra = (f", {record['rate_observed']:.2f} spikes/s per observed neuron" if "rate_observed" in record
                         else "")
                print(f"    {record['status']}: {_fmt(record.get('seconds'), '.2f')} s, peak "
                      f"{_fmt(record.get('peak_rss_mb'), '.0f')} MB{extra}"
                      + (f" ({record['note']})" if record.get("note") else ""), flush=True)
                mine.append(record)
                data["records"].append(record)
                write_json(args.out, data)
    print()
    print(f"pyro_dpp scale benchmark: {args.sequences} recordings, {args.threads} thread(s), {args.dtype}, "
          f"load average at start {data['invocations'][invocation]['load_average']}")
    print(report(mine))
    data["invocations"][invocation]["ratios"] = ratios(mine)
    data["invocations"][invocation]["elapsed_s"] = time.perf_counter() - start
    data["invocations"][invocation]["load_average_end"] = list(os.getloadavg())
    write_json(args.out, data)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
