"""The scale benchmark runs end to end at its smallest size (no timing assertions: speed lives in
``benchmarks/``; this only keeps the script from rotting)."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench_scale():
    spec = importlib.util.spec_from_file_location("bench_scale", ROOT / "benchmarks" / "bench_scale.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_scale"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("bench_scale", None)


def test_smallest_configuration_end_to_end(bench_scale, tmp_path, capsys):
    out = tmp_path / "scale.json"
    args = ["--observed", "2", "--hidden", "1", "--durations", "5", "10", "--sequences", "1",
            "--estimators", "pathwise_exact", "--timeout", "600", "--out", str(out)]
    assert bench_scale.main(args) == 0
    data = json.loads(out.read_text())
    (invocation,) = data["invocations"]
    for key in ("date", "git_commit", "cpu_count", "load_average", "torch_threads", "features"):
        assert key in invocation
    records = data["records"]
    assert [(r["duration"], r["stage"]) for r in records] == [
        (d, s) for d in (5.0, 10.0) for s in ("simulate", "log_prob", "fit:pathwise_exact")]
    assert all(r["status"] == "ok" for r in records), [r.get("stderr_tail") for r in records]
    for r in records:
        assert r["seconds"] >= 0 and r["peak_rss_mb"] > 0 and r["net_rss_mb"] >= 0
    simulated = [r for r in records if r["stage"] == "simulate"]
    for r in simulated:
        # the rate is what the data has: spikes over neuron-seconds
        assert r["rate_observed"] == pytest.approx(sum(r["spikes_observed"]) / (2 * r["duration"]))
    fitted = [r for r in records if r["stage"] == "fit:pathwise_exact"]
    assert all(r["steps"] >= 1 and r["fit_call_s"] >= r["seconds"] for r in fitted)
    # the T = 10 stages against the T = 5 baseline of the same invocation
    ratios = invocation["ratios"]
    assert sorted(r["stage"] for r in ratios) == ["fit:pathwise_exact", "log_prob", "simulate"]
    assert all(r["length_ratio"] == 2 and r["seconds_ratio"] > 0 for r in ratios)
    printed = capsys.readouterr().out
    assert "ratios against the smallest T" in printed and "within 12x" in printed
    # --report prints the same tables back from the file
    assert bench_scale.main(["--report", "--out", str(out)]) == 0
    assert "fit:pathwise_exact" in capsys.readouterr().out


def test_timeout_is_recorded_and_later_stages_skipped(bench_scale, tmp_path):
    out = tmp_path / "scale.json"
    args = ["--observed", "2", "--hidden", "1", "--durations", "5", "--sequences", "1", "--estimators", "pathwise",
            "--timeout", "0.5", "--out", str(out)]
    assert bench_scale.main(args) == 0
    records = json.loads(out.read_text())["records"]
    assert [(r["stage"], r["status"]) for r in records] == [
        ("simulate", "timeout"), ("log_prob", "skipped"), ("fit:pathwise", "skipped")]
    assert "did not finish" in records[0]["note"]


def test_data_dir_keeps_the_simulation_for_later_invocations(bench_scale, tmp_path):
    out, data_dir = tmp_path / "scale.json", tmp_path / "data"
    # pieces of 3 s and 2 s laid end to end
    args = ["--observed", "2", "--hidden", "1", "--durations", "5", "--sequences", "2", "--stages", "simulate",
            "--simulate-chunk", "3", "--timeout", "600", "--data-dir", str(data_dir), "--out", str(out)]
    assert bench_scale.main(args) == 0
    assert bench_scale.main(args + ["--append"]) == 0
    data = json.loads(out.read_text())
    assert len(data["invocations"]) == 2
    first, second = data["records"]
    assert (first["status"], first["invocation"], second["status"], second["invocation"]) == ("ok", 0, "cached", 1)
    assert second["spikes_observed"] == first["spikes_observed"] and len(first["spikes_observed"]) == 2
    (path,) = data_dir.glob("*.npz")
    with np.load(path) as f:
        for s in range(2):
            times, marks = f[f"obs_t{s}"], f[f"obs_m{s}"]
            assert len(times) == first["spikes_observed"][s] and set(marks.tolist()) <= {0, 1}
            assert (np.diff(times) > 0).all() and times.min() >= 0 and times.max() <= 5
            assert (times > 3).any() and (times < 3).any()  # both pieces are there


def test_window_passed_only_where_fit_takes_it(bench_scale):
    spec = {"estimator": "pathwise_exact", "batch_size": None, "seed": 0, "window": 100.0, "sequences": 4}

    def old_fit(model, observed, estimator, num_epochs, temperature, batch_size, progress, seed):
        pass

    def new_fit(model, observed, estimator, num_epochs, temperature, batch_size, progress, seed, window=None):
        pass

    assert "window" not in bench_scale.fit_options(old_fit, spec)
    windowed = bench_scale.fit_options(new_fit, spec)
    # minibatches of windows: all windows in one step would make the memory grow with T
    assert (windowed["window"], windowed["batch_size"]) == (100.0, 4)
    assert bench_scale.fit_options(new_fit, {**spec, "batch_size": 2})["batch_size"] == 2
    assert "window" not in bench_scale.fit_options(new_fit, {**spec, "window": None})
