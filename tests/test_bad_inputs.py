"""Bad inputs and faults (issue 13): one row per case, each raising the right error with a message
that names the problem, and leaving every file in its folder as it was (bytes and mtime).

Rows are grouped by the issue's items: 1 float precision, 2 neuron ids, 3 the window, 4
checkpoints, 5 memory, 6 unsafe loading, 7 output paths, 8 NWB gaps, 9 unclear errors. Behaviour
that must *work* (float64 loading, bit-identical resume, byte-identical NWB, ...) is tested below
the table.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pyro_dpp import PointProcess, SpikeTrains
from pyro_dpp import io as spio
from pyro_dpp.cli import main
from pyro_dpp.events import validate_realization
from pyro_dpp.intensity import Poisson
from pyro_dpp.snn import SNN, fit

ROOT = Path(__file__).resolve().parents[1]


class CliError(Exception):
    """A ``pyro-dpp`` run that exited non-zero: its status and stderr."""


def cli(*argv: Any) -> Callable[[], None]:
    def run() -> None:
        import contextlib
        import io

        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in argv])
            except SystemExit as exit_:
                code = exit_.code
        if code != 0:
            raise CliError(f"rc={code}: {err.getvalue()}")

    return run


def tiny_trains(num_neurons: int = 2, dtype: torch.dtype = torch.float64, seed: int = 0) -> SpikeTrains:
    rng = np.random.default_rng(seed)
    times = [np.sort(rng.uniform(0, 4.0, 6)), np.sort(rng.uniform(0, 4.0, 5))]
    marks = [np.arange(6) % num_neurons, np.arange(5) % num_neurons]
    return SpikeTrains.from_events(times, marks, num_neurons, 4.0, dtype=dtype)


def tiny_net(n_observed: int = 2, n_hidden: int = 1) -> SNN:
    torch.manual_seed(0)
    return SNN(n_observed, n_hidden, basis="exponential", amplitude=2.0).double()


def write(path: Path, text: str | bytes) -> Path:
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


def npz(path: Path, **arrays: Any) -> Path:
    np.savez(path, **arrays)
    return path


class Payload:
    """Unpickling this runs code (it writes a marker file): what ``weights_only`` must refuse."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.write_text, (Path(self.marker), "ran"))


# ---- the table ----------------------------------------------------------------------------------
# Each setup gets an empty folder, creates what the case needs and returns the action to run.


def s_float32_collapse(d: Path) -> Callable[[], Any]:
    path = write(d / "hour.csv", "# duration: 3600001\ntime,neuron\n3600000.1,0\n3600000.2,0\n3600000.3,1\n")
    return lambda: spio.load_spikes(path, dtype=torch.float32)


def s_to_float32_collapse(d: Path) -> Callable[[], Any]:
    trains = SpikeTrains.from_events(np.array([3600000.2, 3600000.3]), np.array([0, 1]), 2, 3600001.0,
                                     dtype=torch.float64)
    return lambda: trains.to(torch.float32)


def s_cli_fit_float32_collapse(d: Path) -> Callable[[], Any]:
    path = write(d / "hour.csv", "# duration: 3600001\ntime,neuron\n3600000.1,0\n3600000.2,0\n3600000.3,1\n")
    return cli("fit", path, "--out", d / "fit.json", "--dtype", "float32", "--no-progress", "--epochs", "1")


def s_fit_float32_network_float64_data(d: Path) -> Callable[[], Any]:
    data = SpikeTrains.from_events(np.array([3600000.2, 3600000.3]), np.array([0, 1]), 2, 3600001.0,
                                   dtype=torch.float64)
    model = SNN(2, 1, basis="exponential", amplitude=2.0)  # float32
    return lambda: fit(model, data, num_epochs=1, progress=False, checkpoint=d / "ck.pt")


def s_id_typo_100000(d: Path) -> Callable[[], Any]:
    path = write(d / "ids.csv", "# duration: 5\ntime,neuron\n1.0,0\n2.0,100000\n")
    return lambda: spio.load_spikes(path)


def s_id_typo_3000(d: Path) -> Callable[[], Any]:
    path = write(d / "ids.csv", "# duration: 5\ntime,neuron\n1.0,0\n1.5,1\n2.0,3000\n")
    return cli("fit", path, "--out", d / "fit.json", "--no-progress", "--epochs", "1")


def s_id_1e11(d: Path) -> Callable[[], Any]:
    path = npz(d / "ids.npz", times=np.array([1.0, 2.0]), neurons=np.array([0, 1e11]), duration=np.array(5.0))
    return lambda: spio.load_spikes(path)


def s_declared_count_absurd(d: Path) -> Callable[[], Any]:
    path = write(d / "ids.csv", "# duration: 5\n# num_neurons: 100000000000\ntime,neuron\n1.0,0\n2.0,1\n")
    return lambda: spio.load_spikes(path)


def s_from_events_count_absurd(d: Path) -> Callable[[], Any]:
    return lambda: SpikeTrains.from_events(np.array([1.0]), np.array([0]), 10**11, 5.0)


def s_id_not_in_map(d: Path) -> Callable[[], Any]:
    path = write(d / "ids.csv", "# duration: 5\ntime,neuron\n1.0,17\n2.0,4\n")
    return lambda: spio.load_spikes(path, neuron_ids=[17, 23])


def s_evaluate_file_model_mismatch(d: Path) -> Callable[[], Any]:
    data = spio.save_spikes(tiny_trains(1), d / "one.npz")
    tiny_net(2).save(d / "model.pt")
    return cli("evaluate", data, "--model", d / "model.pt", "--particles", "2", "--out", d / "eval.json")


def s_window_log_prob(d: Path) -> Callable[[], Any]:
    value = torch.tensor([[1e6 + 90.0, 1.0, 0.0, 0.0], [1e6, 0.0, 0.0, 0.0]], dtype=torch.float64)
    process = PointProcess(Poisson(torch.ones(2, dtype=torch.float64)), 1e6)
    return lambda: process.log_prob(value)


def s_window_validate_float32(d: Path) -> Callable[[], Any]:
    value = torch.tensor([[1e6 + 90.0, 1.0, 0.0, 0.0], [1e6, 0.0, 0.0, 0.0]])
    return lambda: validate_realization(value, 2, torch.tensor(1e6))


def s_window_spike_trains(d: Path) -> Callable[[], Any]:
    times = torch.tensor([5.0, 1e6 + 90.0], dtype=torch.float64)
    weights = torch.eye(2, dtype=torch.float64)
    return lambda: SpikeTrains(times, weights, torch.tensor(1e6, dtype=torch.float64))


def s_window_from_events(d: Path) -> Callable[[], Any]:
    return lambda: SpikeTrains.from_events(np.array([5.0, 1e6 + 90.0]), np.array([0, 1]), 2, 1e6)


def _checkpoint(d: Path) -> tuple[SNN, SNN, SpikeTrains, Path]:
    model, guide = tiny_net(), tiny_net()
    data = tiny_trains()
    path = d / "ck.pt"
    fit(model, data, guide, num_epochs=1, progress=False, seed=0, checkpoint=path)
    return model, guide, data, path


def s_checkpoint_truncated(d: Path) -> Callable[[], Any]:
    model, guide, data, path = _checkpoint(d)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return lambda: fit(model, data, guide, num_epochs=2, progress=False, seed=0, checkpoint=path)


def s_checkpoint_other_data(d: Path) -> Callable[[], Any]:
    model, guide, _, path = _checkpoint(d)
    return lambda: fit(model, tiny_trains(seed=1), guide, num_epochs=2, progress=False, seed=0, checkpoint=path)


def s_checkpoint_other_options(d: Path) -> Callable[[], Any]:
    model, guide, data, path = _checkpoint(d)
    return lambda: fit(model, data, guide, num_epochs=2, lr=0.5, progress=False, seed=0, checkpoint=path)


def s_checkpoint_not_ours(d: Path) -> Callable[[], Any]:
    path = d / "ck.pt"
    torch.save({"weights": torch.zeros(2)}, path)
    return lambda: fit(tiny_net(), tiny_trains(), tiny_net(), num_epochs=1, progress=False, checkpoint=path)


def s_checkpoint_code(d: Path) -> Callable[[], Any]:
    path = d / "ck.pt"
    torch.save({"format": "pyro_dpp.fit_checkpoint", "x": Payload(str(d / "marker"))}, path)
    return lambda: fit(tiny_net(), tiny_trains(), tiny_net(), num_epochs=1, progress=False, checkpoint=path)


def s_checkpoint_callback_object(d: Path) -> Callable[[], Any]:
    return lambda: fit(tiny_net(), tiny_trains(), tiny_net(), num_epochs=1, progress=False, checkpoint=d / "ck.pt",
                       callback=lambda epoch, model, guide: object())


def s_cli_resume_nothing(d: Path) -> Callable[[], Any]:
    data = spio.save_spikes(tiny_trains(), d / "data.npz")
    return cli("fit", data, "--out", d / "fit.json", "--resume", "--no-progress", "--epochs", "1")


def s_cli_stale_checkpoint(d: Path) -> Callable[[], Any]:
    data = spio.save_spikes(tiny_trains(), d / "data.npz")
    write(d / "fit_checkpoint.pt", b"old")
    return cli("fit", data, "--out", d / "fit.json", "--no-progress", "--epochs", "1")


def s_draw_memory(d: Path) -> Callable[[], Any]:
    # the reproducer: the default size (1000 rows) stops the draw at its candidate count,
    # before any candidate tensor is allocated
    process = PointProcess(Poisson(torch.tensor([1e5, 1e5])), 1000.0, temperature=0.3)
    return lambda: process.rsample((64,))


def s_draw_memory_bound(d: Path) -> Callable[[], Any]:
    # with the bound given, the size is sized from bound x duration (2e8 rows): refused before allocating
    process = PointProcess(Poisson(torch.tensor([1e5, 1e5])), 1000.0, bound=2e5, temperature=0.3)
    return lambda: process.rsample((64,))


def s_draw_memory_max_events(d: Path) -> Callable[[], Any]:
    process = PointProcess(Poisson(torch.ones(2)), 10.0, max_events=10**12)
    return lambda: process.sample()


def s_snn_load_code(d: Path) -> Callable[[], Any]:
    path = d / "net.pt"
    torch.save({"config": {"n_observed": 2, "n_hidden": 1}, "state": Payload(str(d / "marker"))}, path)
    return lambda: SNN.load(path)


def s_snn_load_truncated(d: Path) -> Callable[[], Any]:
    tiny_net().save(d / "net.pt")
    path = write(d / "net.pt", (d / "net.pt").read_bytes()[:200])
    return lambda: SNN.load(path)


def s_hawkes_no_force(d: Path) -> Callable[[], Any]:
    write(d / "hawkes.png", b"an earlier figure")
    return cli("hawkes", "--out", d, "--duration", "5", "--sequences", "2", "--particles", "2")


def s_hawkes_out_is_file(d: Path) -> Callable[[], Any]:
    out = write(d / "plots", "a file")
    return cli("hawkes", "--out", out, "--duration", "5", "--sequences", "2", "--particles", "2")


def s_fit_out_directory(d: Path) -> Callable[[], Any]:
    data = spio.save_spikes(tiny_trains(), d / "data.npz")
    (d / "results").mkdir()
    return cli("fit", data, "--out", d / "results", "--no-progress", "--epochs", "1")


def s_fit_out_under_file(d: Path) -> Callable[[], Any]:
    data = spio.save_spikes(tiny_trains(), d / "data.npz")
    write(d / "notadir", "x")
    return cli("fit", data, "--out", d / "notadir" / "f.json", "--no-progress", "--epochs", "1")


def s_fit_out_is_input(d: Path) -> Callable[[], Any]:
    data = spio.save_spikes(tiny_trains(), d / "data.npz")
    return cli("fit", data, "--out", data, "--force", "--no-progress", "--epochs", "1")


def s_evaluate_out_is_input(d: Path) -> Callable[[], Any]:
    data = spio.save_spikes(tiny_trains(), d / "data.npz")
    tiny_net().save(d / "model.pt")
    return cli("evaluate", data, "--model", d / "model.pt", "--out", d / "model.pt", "--force")


def s_simulate_no_force(d: Path) -> Callable[[], Any]:
    write(d / "spikes_network.pt", b"an earlier network")
    return cli("simulate", "--out", d / "spikes.npz", "--sequences", "1", "--duration", "3")


def s_save_into_missing_folder(d: Path) -> Callable[[], Any]:
    return lambda: spio.save_spikes(tiny_trains(), d / "missing" / "x.npz")


def _nwb_gap(gap: float) -> Callable[[Path], Callable[[], Any]]:
    def setup(d: Path) -> Callable[[], Any]:
        pytest.importorskip("pynwb")
        return lambda: spio.to_nwb(tiny_trains(), d / "x.nwb", gap=gap)

    return setup


def s_num_marks_negative(d: Path) -> Callable[[], Any]:
    return lambda: SpikeTrains.from_events(np.array([1.0]), np.array([0]), -1, 5.0)


def s_duration_shape(d: Path) -> Callable[[], Any]:
    times = torch.tensor([[1.0, 2.0], [0.5, 3.0]])
    weights = torch.nn.functional.one_hot(torch.tensor([[0, 1], [1, 0]]), 2).float()
    return lambda: SpikeTrains(times, weights, torch.tensor([5.0, 5.0, 5.0]))


def s_zero_rates(d: Path) -> Callable[[], Any]:
    return lambda: PointProcess(Poisson(torch.zeros(2)), 10)


def s_one_hot_relaxed(d: Path) -> Callable[[], Any]:
    value = tiny_trains(dtype=torch.float32).to_tensor()
    return lambda: PointProcess(Poisson(torch.ones(2)), 4.0, temperature=0.3).log_prob(value)


def s_csv_fractional_count(d: Path) -> Callable[[], Any]:
    path = write(d / "x.csv", "# duration: 5\n# num_neurons: 2.5\ntime,neuron\n1.0,0\n2.0,1\n")
    return lambda: spio.load_spikes(path)


def s_npz_complex_times(d: Path) -> Callable[[], Any]:
    path = npz(d / "x.npz", times=np.array([1.0 + 2j, 2.0]), neurons=np.array([0, 1]), duration=np.array(5.0))
    return lambda: spio.load_spikes(path)


def s_npz_fractional_ids(d: Path) -> Callable[[], Any]:
    path = npz(d / "x.npz", times=np.array([1.0, 2.0]), neurons=np.array([0, 0.5]), duration=np.array(5.0))
    return lambda: spio.load_spikes(path)


def s_npz_fractional_count(d: Path) -> Callable[[], Any]:
    path = npz(d / "x.npz", times=np.array([1.0, 2.0]), neurons=np.array([0, 1]), duration=np.array(5.0),
               num_neurons=np.array(2.5))
    return lambda: spio.load_spikes(path)


def s_empty_neo_block(d: Path) -> Callable[[], Any]:
    neo = pytest.importorskip("neo")
    return lambda: spio.from_neo(neo.Block())


def s_evaluate_guide_size(d: Path) -> Callable[[], Any]:
    data = spio.save_spikes(tiny_trains(), d / "data.npz")
    tiny_net(2, 1).save(d / "model.pt")
    tiny_net(2, 3).save(d / "guide.pt")
    return cli("evaluate", data, "--model", d / "model.pt", "--guide", d / "guide.pt", "--particles", "2")


def _fit_option(**options: Any) -> Callable[[Path], Callable[[], Any]]:
    def setup(d: Path) -> Callable[[], Any]:
        kwargs = {"num_epochs": 1, "progress": False, **options}
        return lambda: fit(tiny_net(), tiny_trains(), tiny_net(), checkpoint=d / "ck.pt", **kwargs)

    return setup


@dataclass
class Case:
    setup: Callable[[Path], Callable[[], Any]]
    match: str
    error: type = ValueError


CASES = {
    # 1 float precision
    "1 float32 merges times on load": Case(s_float32_collapse, r"become equal in torch.float32.*float64"),
    "1 SpikeTrains.to(float32) merges times": Case(s_to_float32_collapse, r"become equal in torch.float32"),
    "1 fit --dtype float32 merges times": Case(s_cli_fit_float32_collapse, r"rc=2.*become equal", CliError),
    "1 float32 network, float64 data": Case(s_fit_float32_network_float64_data, r"network's dtype.*\.double\(\)"),
    # 2 neuron ids
    "2 id typo 100000 without a count": Case(s_id_typo_100000, r"not contiguous.*num_neurons"),
    "2 id typo 3000 in fit": Case(s_id_typo_3000, r"rc=2.*not contiguous", CliError),
    "2 id 1e11": Case(s_id_1e11, r"not contiguous"),
    "2 declared count 1e11": Case(s_declared_count_absurd, r"would need about .* num_marks"),
    "2 from_events num_marks 1e11": Case(s_from_events_count_absurd, r"would need about .* num_marks"),
    "2 id missing from neuron_ids": Case(s_id_not_in_map, r"\[4\] are not in neuron_ids"),
    "2 evaluate: file/model neurons differ": Case(s_evaluate_file_model_mismatch,
                                                 r"rc=2.*has 1 neurons but the model has 2", CliError),
    # 3 the window
    "3 log_prob 90 s after T=1e6": Case(s_window_log_prob, r"outside the window"),
    "3 validate float32 90 s after T=1e6": Case(s_window_validate_float32, r"outside the window"),
    "3 SpikeTrains 90 s after T=1e6": Case(s_window_spike_trains, r"outside the window"),
    "3 from_events 90 s after T=1e6": Case(s_window_from_events, r"outside \[0"),
    # 4 checkpoints
    "4 truncated checkpoint": Case(s_checkpoint_truncated, r"not a complete training checkpoint"),
    "4 checkpoint of other data": Case(s_checkpoint_other_data, r"different run: the data differ"),
    "4 checkpoint of other options": Case(s_checkpoint_other_options, r"different run: lr \(0.05"),
    "4 checkpoint of another program": Case(s_checkpoint_not_ours, r"not a pyro_dpp training checkpoint"),
    "4 checkpoint holding code": Case(s_checkpoint_code, r"Python objects other than tensors"),
    "4 callback value a checkpoint cannot hold": Case(s_checkpoint_callback_object, r"return plain values"),
    "4 --resume without a checkpoint": Case(s_cli_resume_nothing, r"rc=2.*no checkpoint .* to resume", CliError),
    "4 stale checkpoint without --resume": Case(s_cli_stale_checkpoint, r"rc=2.*--resume .*--force", CliError),
    # 5 memory
    "5 rsample of 2e8 candidates x 64": Case(s_draw_memory, r"drew \d+ thinning candidates but max_events=1000"),
    "5 rsample of 2e8 candidates x 64, bound given": Case(s_draw_memory_bound, r"would need about .*smaller bound.*"
                                                                         r"shorter duration.*fewer sequences"),
    "5 an explicit max_events of 1e12": Case(s_draw_memory_max_events, r"max_events=1000000000000 .*would need"),
    # 6 unsafe loading
    "6 SNN.load of a file holding code": Case(s_snn_load_code, r"Python objects other than tensors"),
    "6 SNN.load of a truncated file": Case(s_snn_load_truncated, r"not a complete network"),
    # 7 output paths
    "7 hawkes overwrites without --force": Case(s_hawkes_no_force, r"rc=2.*hawkes.png already exist.*--force",
                                                CliError),
    "7 hawkes --out is a file": Case(s_hawkes_out_is_file, r"rc=2.*is a file, not a folder", CliError),
    "7 fit --out a folder": Case(s_fit_out_directory, r"rc=2.*is a folder", CliError),
    "7 fit --out under a file": Case(s_fit_out_under_file, r"rc=2.*is a file, not a folder", CliError),
    "7 fit --out is its input (--force)": Case(s_fit_out_is_input, r"rc=2.*also an input", CliError),
    "7 evaluate --out is its model (--force)": Case(s_evaluate_out_is_input, r"rc=2.*also an input", CliError),
    "7 simulate overwrites without --force": Case(s_simulate_no_force, r"rc=2.*already exist.*--force", CliError),
    "7 save into a missing folder": Case(s_save_into_missing_folder, r"folder .* does not exist"),
    # 8 NWB gaps
    "8 to_nwb gap=0": Case(_nwb_gap(0.0), r"gap must be finite and > 0"),
    "8 to_nwb gap=-5": Case(_nwb_gap(-5.0), r"gap must be finite and > 0"),
    "8 to_nwb gap=nan": Case(_nwb_gap(float("nan")), r"gap must be finite and > 0"),
    "8 to_nwb gap lost to rounding": Case(_nwb_gap(1e-300), r"lost to rounding"),
    # 9 unclear errors
    "9 from_events num_marks=-1": Case(s_num_marks_negative, r"num_marks must be a positive integer"),
    "9 SpikeTrains duration shape": Case(s_duration_shape, r"duration has shape \(3,\) but .* batch shape \(2,\)"),
    "9 Poisson(zeros) blames max_rate": Case(s_zero_rates, r"max_rate\(\).*no bound= was passed"),
    "9 one-hot value to relaxed log_prob": Case(s_one_hot_relaxed, r"exact \(one-hot\) events.*temperature=0"),
    "9 csv '# num_neurons: 2.5'": Case(s_csv_fractional_count, r"num_neurons.*positive integer.*2.5"),
    "9 npz complex times": Case(s_npz_complex_times, r"'times' holds complex numbers"),
    "9 npz fractional ids": Case(s_npz_fractional_ids, r"neuron ids must be integers"),
    "9 npz num_neurons 2.5": Case(s_npz_fractional_count, r"num_neurons.*positive integer"),
    "9 empty neo.Block": Case(s_empty_neo_block, r"neo.Block has no segments"),
    "9 evaluate with a guide of another size": Case(s_evaluate_guide_size, r"rc=2.*guide .* 3 hidden", CliError),
    "9 fit num_particles=0": Case(_fit_option(num_particles=0), r"num_particles must be an integer >= 1"),
    "9 fit num_epochs=-1": Case(_fit_option(num_epochs=-1), r"num_epochs must be an integer >= 0"),
    "9 fit batch_size=0": Case(_fit_option(batch_size=0), r"batch_size must be an integer >= 1"),
    "9 fit temperature_decay=-1": Case(_fit_option(temperature_decay=-1), r"temperature_decay must be .* > 0"),
}


def _files(folder: Path) -> dict[str, tuple[str, int]]:
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(tmp_path, name):
    case = CASES[name]
    action = case.setup(tmp_path)
    before = _files(tmp_path)
    with pytest.raises(case.error, match=case.match):
        action()
    assert _files(tmp_path) == before, "a failed call changed, added or removed files"
    assert not (tmp_path / "marker").exists(), "loading a file ran code"


# ---- what must work -----------------------------------------------------------------------------


def test_float64_times_by_default(tmp_path):
    path = write(tmp_path / "hour.csv", "# duration: 3600001\ntime,neuron\n3600000.1,0\n3600000.2,0\n3600000.3,1\n")
    trains = spio.load_spikes(path)
    assert trains.times.dtype == torch.float64
    assert trains.times[0, :3].tolist() == [3600000.1, 3600000.2, 3600000.3]


def test_declared_count_and_id_map_accept_sparse_ids(tmp_path):
    path = write(tmp_path / "ids.csv", "# duration: 5\ntime,neuron\n1.0,17\n2.0,4\n3.0,17\n")
    mapped = spio.load_spikes(path, neuron_ids=[17, 4])
    assert mapped.num_marks == 2 and [len(x) for x in mapped.to_lists()[0]] == [2, 1]
    declared = spio.load_spikes(path, num_neurons=18)
    assert declared.num_marks == 18


def test_window_tolerance_is_a_few_ulps_in_the_data_dtype():
    for dtype in (torch.float32, torch.float64):
        d = torch.tensor(1e6, dtype=dtype)
        ulp = float(torch.finfo(dtype).eps) * 1e6
        inside = float(d) + ulp  # a rounding error passes...
        SpikeTrains.from_events(np.array([inside]), np.array([0]), 1, d, dtype=dtype)
        outside = float(d) + 16 * ulp  # ...a real excess does not
        with pytest.raises(ValueError, match="outside"):
            SpikeTrains.from_events(np.array([outside]), np.array([0]), 1, d, dtype=dtype)


def test_csv_with_a_byte_order_mark_is_read(tmp_path):
    path = write(tmp_path / "bom.csv", "\ufeff# duration: 5\ntime,neuron\n1.0,0\n2.0,1\n".encode())
    assert spio.load_spikes(path).num_marks == 2
    plain = write(tmp_path / "bom2.csv", "\ufefftime,neuron\n1.0,0\n2.0,1\n".encode())
    assert spio.load_spikes(plain, duration=5).num_events.item() == 2


def test_save_spikes_writes_and_returns_the_exact_path(tmp_path, capsys):
    trains = tiny_trains()
    path = spio.save_spikes(trains, tmp_path / "x.NPZ")
    assert path == tmp_path / "x.NPZ" and path.is_file() and not (tmp_path / "x.NPZ.npz").exists()
    assert torch.equal(spio.load_npz(path).to_tensor(), trains.to_tensor())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.NPZ"]  # no temporary file left


def test_simulate_without_hidden_neurons_reports_only_what_it_wrote(tmp_path, capsys):
    out = tmp_path / "s.npz"
    cli("simulate", "--out", out, "--hidden", "0", "--sequences", "1", "--duration", "3")()
    printed = capsys.readouterr().out
    assert "s_hidden" not in printed and "(hidden)" not in printed and not (tmp_path / "s_hidden.npz").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.npz", "s_network.pt"]
    assert str(out) in printed


def test_nwb_files_are_byte_reproducible(tmp_path):
    pytest.importorskip("pynwb")
    when = datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    first = spio.to_nwb(tiny_trains(), tmp_path / "a.nwb", identifier="run-1", session_start_time=when)
    time.sleep(1.1)  # a clock that leaked into the file would differ now
    second = spio.to_nwb(tiny_trains(), tmp_path / "b.nwb", identifier="run-1", session_start_time=when)
    assert first.read_bytes() == second.read_bytes()
    torch.testing.assert_close(spio.from_nwb(first).to_tensor(), tiny_trains().to_tensor())


def test_network_round_trip_keeps_dtype_and_loads_weights_only(tmp_path):
    net = tiny_net()
    net.save(tmp_path / "n.pt")
    back = SNN.load(tmp_path / "n.pt")
    assert back.weight.dtype == torch.float64 and torch.equal(back.weight, net.weight)
    torch.load(tmp_path / "n.pt", weights_only=True)  # plain data only


# ---- interrupted training -------------------------------------------------------------------------


def _fit_cli(tmp: Path, out: str, *extra: str, env: dict[str, str] | None = None,
             wait: bool = True) -> subprocess.CompletedProcess | subprocess.Popen:
    argv = [sys.executable, "-m", "pyro_dpp.cli", "fit", str(tmp / "data.npz"), "--out", str(tmp / out),
            "--hidden", "1", "--basis", "exponential", "--amplitude", "2", "--no-progress", *extra]
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    if not wait:
        return subprocess.Popen(argv, env=full_env, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    return subprocess.run(argv, env=full_env, cwd=tmp, capture_output=True, text=True, timeout=600)


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state"]


def test_cli_interrupted_and_resumed_is_bit_identical(tmp_path):
    spio.save_spikes(tiny_trains(), tmp_path / "data.npz")
    plain = _fit_cli(tmp_path, "a/fit.json", "--epochs", "3")
    assert plain.returncode == 0, plain.stderr
    # a deterministic Ctrl-C right after epoch 1 (the test hook raises KeyboardInterrupt there)
    cut = _fit_cli(tmp_path, "b/fit.json", "--epochs", "3", env={"PYRO_DPP_TEST_INTERRUPT_AFTER_EPOCH": "1"})
    assert cut.returncode == 130
    assert cut.stderr.count("\n") == 1 and "Traceback" not in cut.stderr, cut.stderr
    assert "interrupted after 1 of 3 epochs" in cut.stderr and "--resume" in cut.stderr
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["fit_checkpoint.pt"]
    resumed = _fit_cli(tmp_path, "b/fit.json", "--epochs", "3", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    for name in ("fit_model.pt", "fit_guide.pt"):
        a, b = _state(tmp_path / "a" / name), _state(tmp_path / "b" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    losses = [json.loads((tmp_path / x / "fit.json").read_text())["losses"] for x in "ab"]
    assert losses[0] == losses[1]
    assert not (tmp_path / "b" / "fit_checkpoint.pt").exists()  # the default checkpoint is removed after success


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_cli_real_signal_saves_a_checkpoint_and_exits_130(tmp_path, signum):
    spio.save_spikes(tiny_trains(), tmp_path / "data.npz")
    checkpoint = tmp_path / "ck.pt"
    run = _fit_cli(tmp_path, "fit.json", "--epochs", "100000", "--checkpoint", str(checkpoint), wait=False)
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert checkpoint.exists(), run.communicate()[1] if run.poll() is not None else "no checkpoint in 300 s"
    run.send_signal(signum)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 130, err
    assert err.count("\n") == 1 and "Traceback" not in err and "checkpoint saved to" in err, err
    state = torch.load(checkpoint, weights_only=True)
    done = state["result"]["epochs_done"]
    assert done >= 1 and len(state["result"]["losses"]) == done * 2
    assert not (tmp_path / "fit.json").exists()
    # the checkpoint resumes: one more epoch completes the run
    resumed = _fit_cli(tmp_path, "fit.json", "--epochs", str(done + 1), "--checkpoint", str(checkpoint), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert len(json.loads((tmp_path / "fit.json").read_text())["losses"]) == (done + 1) * 2
