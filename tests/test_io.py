"""Spike file formats: round trips, agreement across formats, and clear errors for bad files."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pytest
import torch

from pyro_dpp import SpikeTrains
from pyro_dpp import io as spio
from pyro_dpp.snn import SNN, fit

NUM_NEURONS = 3
DURATIONS = [2.0, 2.5, 3.0]
TRIAL_STARTS = [0.0, 4.0, 8.0]  # NWB trials, seconds; integers so that t + start - start == t exactly


def _spikes(seed: int = 0) -> list[list[np.ndarray]]:
    """``spikes[sequence][neuron]``: times on a 2^-10 s grid (exact in binary and in decimal text),
    neuron 2 silent in sequence 1."""
    rng = np.random.default_rng(seed)
    out = []
    for s, d in enumerate(DURATIONS):
        seq = []
        for k in range(NUM_NEURONS):
            n = 0 if (s, k) == (1, 2) else int(rng.integers(2, 6))
            seq.append(np.sort(np.round(rng.uniform(0, d, n) * 1024) / 1024))
        out.append(seq)
    return out


@pytest.fixture
def trains() -> SpikeTrains:
    return SpikeTrains.from_lists(_spikes(), DURATIONS, dtype=torch.float64)


def _same(a: SpikeTrains, b: SpikeTrains) -> None:
    assert a.num_marks == b.num_marks
    assert a.to_tensor().dtype == b.to_tensor().dtype
    assert torch.equal(a.to_tensor(), b.to_tensor())
    assert torch.equal(a.duration, b.duration)


# ---- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".npz", ".csv"])
def test_round_trip(tmp_path, trains, suffix):
    path = spio.save_spikes(trains, tmp_path / f"spikes{suffix}")
    _same(spio.load_spikes(path, dtype=torch.float64), trains)
    # float64 by default (issue 13: torch's default float32 merged distinct times); float32 on request,
    # the same values rounded once
    _same(spio.load_spikes(path), trains)
    back = spio.load_spikes(path, dtype=torch.float32)
    assert back.times.dtype == torch.float32
    assert torch.equal(back.to_tensor(), trains.to_tensor().to(back.times.dtype))


@pytest.mark.parametrize("suffix", [".npz", ".csv"])
def test_round_trip_with_units(tmp_path, trains, suffix):
    path = spio.save_spikes(trains, tmp_path / f"spikes{suffix}", time_unit="s")
    _same(spio.load_spikes(path, dtype=torch.float64), trains)  # default: the file's own unit
    ms = spio.load_spikes(path, time_unit="ms", dtype=torch.float64)
    torch.testing.assert_close(ms.to_tensor()[..., 0], trains.to_tensor()[..., 0] * 1000)
    torch.testing.assert_close(ms.duration, trains.duration * 1000)
    # a file without a unit is read as it is
    plain = spio.save_spikes(trains, tmp_path / f"plain{suffix}")
    _same(spio.load_spikes(plain, time_unit="ms", dtype=torch.float64), trains)


def test_round_trip_silent_neurons_and_sequences(tmp_path):
    # trailing silent neuron and an empty last sequence survive thanks to num_neurons/duration
    trains = SpikeTrains.from_lists([[[0.5], [], []], [[], [], []]], [1.0, 2.0], dtype=torch.float64)
    for suffix in (".npz", ".csv"):
        back = spio.load_spikes(spio.save_spikes(trains, tmp_path / f"x{suffix}"), dtype=torch.float64)
        _same(back, trains)


def test_npz_per_sequence_format(tmp_path, trains):
    spikes = _spikes()
    arrays = {"duration": np.asarray(DURATIONS)}
    for s, seq in enumerate(spikes):
        arrays[f"times_{s}"] = np.concatenate(seq)
        arrays[f"neurons_{s}"] = np.concatenate([np.full(len(t), k) for k, t in enumerate(seq)])
    np.savez(tmp_path / "per_seq.npz", **arrays)
    _same(spio.load_npz(tmp_path / "per_seq.npz", num_neurons=NUM_NEURONS, dtype=torch.float64), trains)


def test_device_and_dtype_arguments(tmp_path, trains):
    path = spio.save_spikes(trains, tmp_path / "x.npz")
    back = spio.load_spikes(path, dtype=torch.float32, device="cpu")
    assert back.times.dtype == torch.float32 and back.times.device.type == "cpu"


# ---- neo ---------------------------------------------------------------------------------------


def test_neo_round_trip_and_units(trains):
    pytest.importorskip("neo")
    pq = pytest.importorskip("quantities")
    neo_trains = spio.to_neo(trains, time_unit="s")
    assert len(neo_trains) == 3 and len(neo_trains[0]) == NUM_NEURONS
    assert neo_trains[0][0].units == pq.s and float(neo_trains[1][0].t_stop) == DURATIONS[1]
    _same(spio.from_neo(neo_trains, dtype=torch.float64), trains)
    # the same spikes in milliseconds read back in seconds
    in_ms = [[st.rescale("ms") for st in seq] for seq in neo_trains]
    back = spio.from_neo(in_ms, time_unit="s", dtype=torch.float64)
    torch.testing.assert_close(back.to_tensor(), trains.to_tensor())
    torch.testing.assert_close(back.duration, trains.duration)
    # and in milliseconds, if asked
    ms = spio.from_neo(neo_trains, time_unit="ms", dtype=torch.float64)
    torch.testing.assert_close(ms.duration, trains.duration * 1000)
    # one sequence as a plain list, with t_start != 0: times become relative to t_start
    shifted = [st.time_shift(5 * pq.s) for st in neo_trains[0]]
    single = spio.from_neo(shifted, dtype=torch.float64)
    torch.testing.assert_close(single.to_tensor()[0], trains.to_tensor()[0, : single.to_tensor().shape[-2]])


def test_neo_segment_and_block(trains):
    neo = pytest.importorskip("neo")
    block = neo.Block()
    for seq in spio.to_neo(trains):
        segment = neo.Segment()
        segment.spiketrains.extend(seq)
        block.segments.append(segment)
    _same(spio.from_neo(block, dtype=torch.float64), trains)
    first = spio.from_neo(block.segments[0], dtype=torch.float64)
    assert first.num_events.tolist() == [int(trains.num_events[0])]
    with pytest.raises(ValueError, match="neo.Block"):
        spio.from_neo([1.0, 2.0])


# ---- NWB ---------------------------------------------------------------------------------------


def _write_nwb(path, spikes, trials: bool = True, obs_intervals: bool = False) -> None:
    """A tiny NWB file written with pynwb itself: one unit per neuron, one trial per sequence."""
    pynwb = pytest.importorskip("pynwb")
    nwbfile = pynwb.NWBFile(session_description="test", identifier="pyro-dpp-test",
                            session_start_time=datetime(2024, 1, 1, tzinfo=timezone.utc))
    for k in range(NUM_NEURONS):
        times = np.concatenate([seq[k] + a for seq, a in zip(spikes, TRIAL_STARTS)]) if trials else spikes[0][k]
        kwargs = {"obs_intervals": [[0.0, DURATIONS[0]]]} if obs_intervals else {}
        nwbfile.add_unit(spike_times=times, **kwargs)
    if trials:
        for a, d in zip(TRIAL_STARTS, DURATIONS):
            nwbfile.add_trial(start_time=a, stop_time=a + d)
    with pynwb.NWBHDF5IO(str(path), "w") as io:
        io.write(nwbfile)


def test_nwb_read_trials(tmp_path, trains):
    _write_nwb(tmp_path / "session.nwb", _spikes())
    _same(spio.load_spikes(tmp_path / "session.nwb", dtype=torch.float64), trains)
    ms = spio.from_nwb(tmp_path / "session.nwb", time_unit="ms", dtype=torch.float64)
    torch.testing.assert_close(ms.duration, trains.duration * 1000)
    # without trials the whole file is one sequence: the window must come from somewhere
    whole = spio.from_nwb(tmp_path / "session.nwb", use_trials=False, duration=12.0, dtype=torch.float64)
    assert whole.num_events.tolist() == [int(trains.num_events.sum())]


def test_nwb_single_sequence(tmp_path, trains):
    _write_nwb(tmp_path / "one.nwb", _spikes(), trials=False, obs_intervals=True)
    one = spio.from_nwb(tmp_path / "one.nwb", dtype=torch.float64)
    assert float(one.duration) == DURATIONS[0]
    torch.testing.assert_close(one.to_tensor()[0], trains.to_tensor()[0, : one.to_tensor().shape[-2]])
    _write_nwb(tmp_path / "bare.nwb", _spikes(), trials=False)
    with pytest.raises(ValueError, match="pass duration="):
        spio.from_nwb(tmp_path / "bare.nwb")
    assert float(spio.from_nwb(tmp_path / "bare.nwb", duration=2.0).duration) == 2.0


def test_nwb_round_trip(tmp_path, trains):
    pytest.importorskip("pynwb")
    path = spio.save_spikes(trains, tmp_path / "written.nwb")
    _same(spio.load_spikes(path, dtype=torch.float64), trains)
    path = spio.save_spikes(trains, tmp_path / "written_ms.nwb", time_unit="ms")  # numbers are ms: stored / 1000
    back = spio.load_spikes(path, time_unit="ms", dtype=torch.float64)
    torch.testing.assert_close(back.to_tensor(), trains.to_tensor())


# ---- the same spikes from every source -----------------------------------------------------------


def test_all_formats_agree_and_fit_identically(tmp_path):
    pytest.importorskip("neo")
    pytest.importorskip("pynwb")
    spikes = _spikes(seed=1)
    # npz, flat format, written by hand
    times = np.concatenate([np.concatenate(seq) for seq in spikes])
    neurons = np.concatenate([np.concatenate([np.full(len(t), k) for k, t in enumerate(seq)]) for seq in spikes])
    sequence = np.concatenate([np.full(sum(len(t) for t in seq), s) for s, seq in enumerate(spikes)])
    np.savez(tmp_path / "spikes.npz", times=times, neurons=neurons, sequence=sequence, duration=DURATIONS,
             num_neurons=NUM_NEURONS)
    # csv, written by hand (no duration line: passed as an argument)
    lines = ["neuron,time,sequence"] + [f"{n},{float(t)!r},{s}" for t, n, s in zip(times, neurons, sequence)]
    (tmp_path / "spikes.csv").write_text("\n".join(lines) + "\n")
    # NWB, written with pynwb
    _write_nwb(tmp_path / "spikes.nwb", spikes)
    # neo objects, built directly
    import neo
    import quantities as pq

    neo_trains = [[neo.SpikeTrain(t * pq.s, t_start=0 * pq.s, t_stop=d * pq.s) for t in seq]
                  for seq, d in zip(spikes, DURATIONS)]

    loaded = {
        "npz": spio.load_spikes(tmp_path / "spikes.npz", dtype=torch.float64),
        "csv": spio.load_spikes(tmp_path / "spikes.csv", num_neurons=NUM_NEURONS, duration=DURATIONS,
                                dtype=torch.float64),
        "nwb": spio.load_spikes(tmp_path / "spikes.nwb", dtype=torch.float64),
        "neo": spio.from_neo(neo_trains, dtype=torch.float64),
    }
    for other in ("csv", "nwb", "neo"):
        _same(loaded[other], loaded["npz"])

    fitted = {}
    for name, data in loaded.items():
        torch.manual_seed(0)
        model = SNN(NUM_NEURONS, 1, basis="exponential", num_basis=1, init="small").double()
        result = fit(model, data, num_epochs=1, batch_size=None, seed=0, progress=False)
        assert np.isfinite(result.losses).all()
        fitted[name] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for name in ("csv", "nwb", "neo"):
        for key, value in fitted["npz"].items():
            assert torch.equal(fitted[name][key], value), (name, key)
    # and training moved the parameters
    torch.manual_seed(0)
    initial = SNN(NUM_NEURONS, 1, basis="exponential", num_basis=1, init="small").double()
    assert not torch.equal(initial.weight, fitted["npz"]["weight"])


# ---- bad files -----------------------------------------------------------------------------------


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(ValueError, match="no spike file"):
        spio.load_spikes(tmp_path / "nope.npz")
    with pytest.raises(FileNotFoundError):  # also a FileNotFoundError
        spio.load_spikes(tmp_path / "nope.csv", duration=1.0)
    with pytest.raises(ValueError, match="unknown spike file suffix"):
        spio.load_spikes(tmp_path / "spikes.txt")
    with pytest.raises(ValueError, match="unknown spike file suffix"):
        spio.save_spikes(SpikeTrains.from_lists([[[0.5]]], 1.0), tmp_path / "spikes.mat")
    (tmp_path / "garbage.npz").write_text("not a zip archive")
    with pytest.raises(ValueError, match="not a readable .npz"):
        spio.load_spikes(tmp_path / "garbage.npz")


def _csv(tmp_path, text: str, name: str = "bad.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, match",
    [
        ("", "empty file"),
        ("t,neuron\n0.5,0\n", "header must name the columns"),
        ("time,neuron,channel\n0.5,0,1\n", "header must name the columns"),
        ("time\n0.5\n", "header must name the columns"),
        ("time,neuron\n0.5\n", "1 fields but the header has 2"),
        ("time,neuron\nabc,0\n", "not a number"),
        ("time,neuron\nnan,0\n", "NaN or infinite"),
        ("time,neuron\n0.5,-1\n", "negative neuron id"),
        ("time,neuron\n0.5,1.5\n", "must be integers"),
        ("time,neuron\n1.5,0\n", r"outside the window \[0, 1\]"),
        ("time,neuron\n-0.5,0\n", "outside the window"),
        ("time,neuron\n0.5,3\n", "unknown neuron id 3 for num_neurons=2"),
        ("time_fortnights,neuron\n0.5,0\n", "unknown time unit"),
        ("time,neuron,sequence\n0.5,0,-1\n", "nonnegative integer"),
    ],
)
def test_bad_csv(tmp_path, text, match):
    with pytest.raises(ValueError, match=match):
        spio.load_spikes(_csv(tmp_path, text), num_neurons=2, duration=1.0)


def test_csv_needs_duration(tmp_path):
    path = _csv(tmp_path, "time,neuron\n0.5,0\n")
    with pytest.raises(ValueError, match="pass duration="):
        spio.load_spikes(path)
    assert spio.load_spikes(path, duration=1.0).num_marks == 1
    path = _csv(tmp_path, "# duration: 1.0\ntime,neuron\n0.5,0\n", "with_duration.csv")
    assert float(spio.load_spikes(path).duration) == 1.0


def test_no_spikes_needs_num_neurons(tmp_path):
    path = _csv(tmp_path, "time,neuron\n")
    with pytest.raises(ValueError, match="pass num_neurons="):
        spio.load_spikes(path, duration=1.0)
    assert spio.load_spikes(path, duration=1.0, num_neurons=2).num_events.tolist() == [0]


@pytest.mark.parametrize(
    "arrays, match",
    [
        ({"spikes": [0.5]}, "expected arrays 'times' and 'neurons'"),
        ({"times": [0.5], "duration": 1.0}, r"missing array\(s\) \['neurons'\]"),
        ({"times": [0.5, 0.6], "neurons": [0], "duration": 1.0}, "'times' has 2 entries but 'neurons' 1"),
        ({"times": [0.5], "neurons": [0]}, "no 'duration'"),
        ({"times": [np.nan], "neurons": [0], "duration": 1.0}, "NaN or infinite"),
        ({"times": [0.5], "neurons": [-2], "duration": 1.0}, "negative neuron id -2"),
        ({"times": [0.5], "neurons": [4], "duration": 1.0, "num_neurons": 2}, "unknown neuron id 4"),
        ({"times": [0.5, 3.0], "neurons": [0, 0], "duration": 2.0}, r"outside the window \[0, 2\]"),
        ({"times": [0.5], "neurons": [0], "sequence": [0.5], "duration": 1.0}, "nonnegative integer"),
        ({"times": [0.5], "neurons": [0], "sequence": [2], "duration": [1.0, 1.0]}, "only 2 durations"),
        ({"times": [0.5], "neurons": [0], "duration": -1.0}, "positive and finite"),
        ({"times_0": [0.5], "duration": 1.0}, r"missing array\(s\) \['neurons_0'\]"),
        ({"times_1": [0.5], "neurons_1": [0], "duration": 1.0}, "without gaps"),
        ({"times": [0.5], "neurons": [0], "duration": 1.0, "time_unit": "parsec"}, "unknown time unit"),
    ],
)
def test_bad_npz(tmp_path, arrays, match):
    np.savez(tmp_path / "bad.npz", **{k: np.asarray(v) for k, v in arrays.items()})
    with pytest.raises(ValueError, match=match):
        spio.load_spikes(tmp_path / "bad.npz")


def test_npz_that_is_not_an_archive_of_numbers(tmp_path):
    with open(tmp_path / "single.npz", "wb") as handle:
        np.save(handle, np.arange(3.0))
    with pytest.raises(ValueError, match="single array"):
        spio.load_spikes(tmp_path / "single.npz")
    np.savez(tmp_path / "objects.npz", times=np.array([0.5, "x"], dtype=object), neurons=[0, 0], duration=1.0)
    with pytest.raises(ValueError, match="cannot read its arrays"):
        spio.load_spikes(tmp_path / "objects.npz")


def test_bad_nwb(tmp_path):
    pynwb = pytest.importorskip("pynwb")
    nwbfile = pynwb.NWBFile(session_description="empty", identifier="x",
                            session_start_time=datetime(2024, 1, 1, tzinfo=timezone.utc))
    with pynwb.NWBHDF5IO(str(tmp_path / "empty.nwb"), "w") as io:
        io.write(nwbfile)
    with pytest.raises(ValueError, match="no units table"):
        spio.load_spikes(tmp_path / "empty.nwb")
    (tmp_path / "garbage.nwb").write_text("not hdf5")
    with pytest.raises(ValueError, match="not a readable NWB file"):
        spio.load_spikes(tmp_path / "garbage.nwb")
    with pytest.raises(ValueError, match="no spike file"):
        spio.load_spikes(tmp_path / "missing.nwb")


def test_relaxed_trains_are_not_written(tmp_path):
    soft = torch.tensor([[[0.5, 0.7, 0.3], [1.0, 0.0, 0.0]]])  # one soft candidate, one padding row
    trains = SpikeTrains.from_tensor(soft, 1.0)
    with pytest.raises(ValueError, match="relaxed"):
        spio.save_spikes(trains, tmp_path / "soft.npz")


def test_missing_optional_dependency_message(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name in ("neo", "pynwb"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match=r"pip install 'pyro-dpp\[neo\]'"):
        spio.from_neo([])
    with pytest.raises(ImportError, match=r"pip install 'pyro-dpp\[nwb\]'"):
        spio.from_nwb("whatever.nwb")


# ---- large files ----------------------------------------------------------------------------


def test_csv_bulk_reader_keeps_every_float64_digit(tmp_path):
    """The bulk (numpy) csv reader returns the exact float64 times written with repr, as the
    row-by-row reader does, and keeps SpikeTrains compact (integer marks, no one-hot weights)."""
    rng = np.random.default_rng(0)
    times = np.sort(rng.uniform(0, 3600.0, 2000)) + 1e6  # far from the origin: float32 would merge them
    neurons = rng.integers(0, 300, 2000)
    path = tmp_path / "big.csv"
    path.write_text("# duration: 1003600.0\n# num_neurons: 300\ntime,neuron\n"
                    + "".join(f"{float(t)!r},{n}\n" for t, n in zip(times, neurons)))
    trains = spio.load_csv(path)
    assert trains.times.dtype == torch.float64 and trains.marks.dtype == torch.int64
    assert trains.times.shape == (1, 2000)
    np.testing.assert_array_equal(trains.times[0].numpy(), times)
    np.testing.assert_array_equal(trains.marks[0].numpy(), neurons)
    quoted = tmp_path / "quoted.csv"  # quoted fields: the row-by-row reader, same result
    quoted.write_text("# duration: 1003600.0\n# num_neurons: 300\ntime,neuron\n"
                      + "".join(f'"{float(t)!r}",{n}\n' for t, n in zip(times, neurons)))
    np.testing.assert_array_equal(spio.load_csv(quoted).times.numpy(), trains.times.numpy())
    with pytest.raises(ValueError, match="become equal in torch.float32"):
        spio.load_csv(path, dtype=torch.float32)


def test_save_and_load_many_neurons_without_dense_weights(tmp_path):
    """300 neurons x 20,000 spikes round-trip through npz and csv under a memory limit that the dense
    one-hot tensor (20,000 x 302 float64 numbers, 48 MB) would exceed."""
    from pyro_dpp.memory import set_memory_limit

    rng = np.random.default_rng(1)
    times, neurons = np.sort(rng.uniform(0, 100.0, 20_000)), rng.integers(0, 300, 20_000)
    trains = SpikeTrains.from_events(times, neurons, 300, 100.0, dtype=torch.float64)
    set_memory_limit("8M")
    try:
        for suffix in (".npz", ".csv"):
            path = spio.save_spikes(trains, tmp_path / f"x{suffix}")
            back = spio.load_spikes(path)
            np.testing.assert_array_equal(back.times.numpy().reshape(-1), times)
            np.testing.assert_array_equal(back.marks.numpy().reshape(-1), neurons)
        with pytest.raises(ValueError, match="dense .* would need about"):
            trains.to_tensor()  # the dense layout is what the limit refuses
    finally:
        set_memory_limit(None)
