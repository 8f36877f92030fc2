"""Tests of the realization tensor format and the :class:`pyro_dpp.SpikeTrains` container."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pyro_dpp import PointProcess, SpikeTrains, event_mask
from pyro_dpp.intensity import Poisson

# spikes[sequence][neuron]: unsorted within and across neurons, one silent neuron, an event at t = T
SPIKES = [
    [[0.5, 0.1], [0.3], []],
    [[], [1.2, 0.7, 0.9], [2.0]],
]


def assert_lists_equal(got, expected):
    assert len(got) == len(expected)
    for seq_got, seq_expected in zip(got, expected, strict=True):
        assert len(seq_got) == len(seq_expected)
        for train_got, train_expected in zip(seq_got, seq_expected, strict=True):
            assert isinstance(train_got, np.ndarray)
            np.testing.assert_allclose(train_got, np.sort(np.asarray(train_expected, dtype=float)), rtol=1e-6)


# ---- round trips ---------------------------------------------------------------------------


def test_from_lists_round_trip():
    trains = SpikeTrains.from_lists(SPIKES, duration=2.0)
    value = trains.to_tensor()
    assert value.shape == (2, 5, 5)  # 4 events at most, plus one padding row; K + 2 = 5
    back = SpikeTrains.from_tensor(value)
    assert torch.equal(back.to_tensor(), value)
    assert_lists_equal(back.to_lists(), SPIKES)
    assert_lists_equal(trains.to_lists(), SPIKES)


def test_round_trip_with_per_sequence_durations():
    trains = SpikeTrains.from_lists(SPIKES, duration=[1.5, 2.5])
    assert torch.allclose(trains.duration, torch.tensor([1.5, 2.5]))
    value = trains.to_tensor(max_events=6)
    back = SpikeTrains.from_tensor(value)
    assert torch.allclose(back.duration, torch.tensor([1.5, 2.5]))
    assert_lists_equal(back.to_lists(), SPIKES)
    # padding rows hold each sequence's own duration
    pad = ~event_mask(value)
    assert torch.equal(value[0, pad[0], 0], torch.full((int(pad[0].sum()),), 1.5))
    assert torch.equal(value[1, pad[1], 0], torch.full((int(pad[1].sum()),), 2.5))


def test_from_lists_numpy_and_ints():
    spikes = [[np.array([1, 0]), np.array([], dtype=float)]]
    trains = SpikeTrains.from_lists(spikes, 3)
    assert trains.times.dtype == torch.get_default_dtype()
    assert torch.equal(trains.times[0], torch.tensor([0.0, 1.0]))
    assert_lists_equal(trains.to_lists(), [[[0.0, 1.0], []]])


def test_from_events_single_sequence():
    times = torch.tensor([0.7, 0.2, 1.5])
    marks = torch.tensor([1, 0, 1])
    trains = SpikeTrains.from_events(times, marks, num_marks=2, duration=2.0)
    assert trains.batch_shape == ()
    assert len(trains) == 1
    assert trains.num_marks == 2
    assert torch.equal(trains.times, torch.tensor([0.2, 0.7, 1.5]))
    assert torch.equal(trains.weights, torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]))
    assert torch.equal(trains.rest, torch.zeros(3))
    assert torch.equal(trains.mask, torch.tensor([True, True, True]))
    assert int(trains.num_events) == 3
    assert float(trains.duration) == 2.0
    value = trains.to_tensor()
    assert value.shape == (4, 4)
    assert torch.equal(value[-1], torch.tensor([2.0, 0.0, 0.0, 0.0]))
    back = SpikeTrains.from_tensor(value)
    assert back.batch_shape == ()
    assert_lists_equal(back.to_lists(), [[[0.2], [0.7, 1.5]]])


def test_from_events_batch():
    times = [np.array([0.4, 0.1]), np.array([]), np.array([0.9, 0.3, 0.6])]
    marks = [np.array([2, 0]), np.array([], dtype=int), np.array([1, 1, 0])]
    trains = SpikeTrains.from_events(times, marks, num_marks=3, duration=1.0)
    assert trains.batch_shape == (3,)
    assert len(trains) == 3
    assert torch.equal(trains.num_events, torch.tensor([2, 0, 3]))
    assert torch.equal(trains.mask, torch.tensor([[True, True, False], [False, False, False], [True, True, True]]))
    # padding: zero weights, time = duration
    assert torch.equal(trains.times[1], torch.ones(3))
    assert torch.equal(trains.weights[1], torch.zeros(3, 3))
    assert torch.equal(trains.times[0], torch.tensor([0.1, 0.4, 1.0]))
    assert torch.equal(trains.weights[0].argmax(-1)[:2], torch.tensor([0, 2]))
    assert_lists_equal(trains.to_lists(), [[[0.1], [], [0.4]], [[], [], []], [[0.6], [0.3, 0.9], []]])


def test_sorting_keeps_marks_with_their_times():
    times = np.array([0.9, 0.1, 0.5, 0.3, 0.7])
    marks = np.array([0, 1, 2, 1, 0])
    trains = SpikeTrains.from_events(times, marks, 3, 1.0)
    order = np.argsort(times)
    assert np.array_equal(trains.times.numpy(), times[order].astype(np.float32))
    assert np.array_equal(trains.weights.argmax(-1).numpy(), marks[order])


def test_ties_are_kept():
    trains = SpikeTrains.from_events(np.array([0.5, 0.5, 0.2]), np.array([1, 0, 1]), 2, 1.0)
    assert int(trains.num_events) == 3
    # stable sort: the two events at 0.5 keep their input order
    assert torch.equal(trains.weights.argmax(-1), torch.tensor([1, 1, 0]))


def test_empty_sequences():
    trains = SpikeTrains.from_lists([[[], []]], 1.0)
    assert torch.equal(trains.num_events, torch.tensor([0]))
    value = trains.to_tensor()
    assert value.shape == (1, 1, 4)
    assert torch.equal(value, torch.tensor([[[1.0, 0.0, 0.0, 0.0]]]))
    assert_lists_equal(SpikeTrains.from_tensor(value).to_lists(), [[[], []]])


def test_to_float64():
    trains = SpikeTrains.from_lists(SPIKES, 2.0).to(torch.float64)
    assert trains.times.dtype == torch.float64 and trains.duration.dtype == torch.float64
    assert_lists_equal(trains.to_lists(), SPIKES)


def test_repr():
    assert repr(SpikeTrains.from_lists(SPIKES, 2.0)) == "SpikeTrains(batch_shape=(2,), num_marks=3, max_events=4)"


# ---- padding ------------------------------------------------------------------------------


@pytest.mark.parametrize("max_events", [4, 5, 9])
def test_to_tensor_padding(max_events):
    trains = SpikeTrains.from_lists(SPIKES, 2.0)
    value = trains.to_tensor(max_events)
    assert value.shape == (2, max_events, 5)
    mask = event_mask(value)
    assert torch.equal(mask.sum(-1), torch.tensor([3, 4]))
    # real rows first, padding rows: zero weights, time = duration
    assert torch.equal(mask, torch.arange(max_events) < torch.tensor([[3], [4]]))
    assert torch.equal(value[..., 1:][~mask], torch.zeros(int((~mask).sum()), 4))
    assert torch.equal(value[..., 0][~mask], torch.full((int((~mask).sum()),), 2.0))
    assert (value[..., 1:, 0] >= value[..., :-1, 0]).all()
    assert_lists_equal(SpikeTrains.from_tensor(value, duration=2.0).to_lists(), SPIKES)


def test_to_tensor_cuts_padding():
    times = [np.array([0.1]), np.array([0.2, 0.3, 0.4])]
    marks = [np.array([0]), np.array([0, 0, 0])]
    padded = SpikeTrains.from_events(times, marks, 1, 1.0).to_tensor(8)
    trains = SpikeTrains.from_tensor(padded)
    assert trains.to_tensor(3).shape == (2, 3, 3)
    assert torch.equal(trains.to_tensor(3), padded[:, :3])


def test_to_tensor_overflow():
    trains = SpikeTrains.from_lists(SPIKES, 2.0)
    with pytest.raises(ValueError, match="holds 4 events but max_events=3.*larger max_events"):
        trains.to_tensor(3)


def test_from_tensor_needs_duration_without_padding_row():
    trains = SpikeTrains.from_lists(SPIKES, 2.0)
    full = trains.to_tensor(4)
    assert event_mask(full)[1, -1]  # the second sequence fills every row
    with pytest.raises(ValueError, match="no padding row.*pass duration="):
        SpikeTrains.from_tensor(full)
    back = SpikeTrains.from_tensor(full, duration=2.0)
    assert_lists_equal(back.to_lists(), SPIKES)


def test_event_mask():
    value = torch.tensor(
        [
            [0.1, 1.0, 0.0, 0.0],  # event
            [0.2, 0.3, 0.5, 0.2],  # relaxed candidate
            [0.3, 0.0, 0.0, 1.0],  # candidate that is "no event": still a real row
            [1.0, 0.0, 0.0, 0.0],  # padding
        ]
    )
    assert torch.equal(event_mask(value), torch.tensor([True, True, True, False]))
    assert torch.equal(event_mask(value.expand(3, 2, 4, 4)), torch.tensor([True, True, True, False]).expand(3, 2, 4))


def test_relaxed_rows_read_by_largest_weight():
    times = torch.tensor([0.1, 0.2, 0.3, 1.0])
    weights = torch.tensor([[0.6, 0.1], [0.1, 0.7], [0.2, 0.1], [0.0, 0.0]])
    rest = torch.tensor([0.3, 0.2, 0.7, 0.0])
    trains = SpikeTrains(times, weights, 1.0, rest=rest)
    assert int(trains.num_events) == 3  # candidates, including the "no event" one
    assert torch.equal(trains.rest, rest)
    assert_lists_equal(trains.to_lists(), [[[0.1], [0.2]]])


def test_point_process_samples_convert():
    torch.manual_seed(0)
    exact = PointProcess(Poisson([1.0, 2.0]), 2.0)
    x = exact.sample((3,))
    trains = SpikeTrains.from_tensor(x)
    assert torch.allclose(trains.duration, torch.full((3,), 2.0))
    lists = trains.to_lists()
    assert [sum(len(t) for t in seq) for seq in lists] == event_mask(x).sum(-1).tolist()
    again = SpikeTrains.from_lists(lists, 2.0).to_tensor(x.shape[-2])
    assert torch.equal(again, x)
    assert torch.allclose(exact.log_prob(again), exact.log_prob(x))

    relaxed = PointProcess(Poisson([1.0, 2.0]), 2.0, bound=4.0, temperature=0.5)
    y = relaxed.sample((3,))
    trains = SpikeTrains.from_tensor(y)
    assert torch.equal(trains.num_events, event_mask(y).sum(-1))
    kept = (y[..., 1:].argmax(-1) < 2) & event_mask(y)
    assert [sum(len(t) for t in seq) for seq in trains.to_lists()] == kept.sum(-1).tolist()


# ---- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "times, marks, num_marks, duration, match",
    [
        (np.array([0.5, 2.5]), np.array([0, 1]), 2, 2.0, r"outside \[0, 2.0\]"),
        (np.array([-0.1, 0.5]), np.array([0, 1]), 2, 2.0, r"outside \[0, 2.0\]"),
        (np.array([0.5, np.nan]), np.array([0, 1]), 2, 2.0, "NaN or inf"),
        (np.array([0.5, np.inf]), np.array([0, 1]), 2, 2.0, "NaN or inf"),
        (np.array([0.5, 0.6]), np.array([0, 2]), 2, 2.0, r"neuron ids outside 0..1"),
        (np.array([0.5, 0.6]), np.array([-1, 0]), 2, 2.0, r"neuron ids outside 0..1"),
        (np.array([0.5, 0.6]), np.array([0.0, 0.5]), 2, 2.0, "integer neuron ids"),
        (np.array([0.5, 0.6]), np.array([0]), 2, 2.0, "2 times but 1 marks"),
        (np.array([0.5]), np.array([0]), 2, 0.0, "duration must be positive"),
        (np.array([0.5]), np.array([0]), 2, -1.0, "duration must be positive"),
        (np.array([0.5]), np.array([0]), 2, float("nan"), "duration must be positive"),
        (np.array([0.5]), np.array([0]), 2, [1.0, 2.0], "one entry per sequence"),
    ],
    ids=["after-window", "negative-time", "nan", "inf", "id-too-large", "id-negative", "id-not-integer",
         "length-mismatch", "zero-duration", "negative-duration", "nan-duration", "duration-shape"],
)
def test_from_events_errors(times, marks, num_marks, duration, match):
    with pytest.raises(ValueError, match=match):
        SpikeTrains.from_events(times, marks, num_marks, duration)


def test_from_events_error_names_the_sequence():
    times = [np.array([0.1]), np.array([0.2, 1.5])]
    marks = [np.array([0]), np.array([0, 0])]
    with pytest.raises(ValueError, match=r"sequence 1 has spike times outside \[0, 1.0\]"):
        SpikeTrains.from_events(times, marks, 1, 1.0)
    # the per-sequence duration decides
    assert torch.equal(SpikeTrains.from_events(times, marks, 1, [1.0, 2.0]).num_events, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="got 2 time arrays but 1 mark arrays"):
        SpikeTrains.from_events(times, marks[:1], 1, 1.0)


@pytest.mark.parametrize(
    "spikes, duration, match",
    [
        ([[[0.1], [0.2]], [[0.3]]], 1.0, "sequence 1 has 1 neurons but sequence 0 has 2"),
        ([[[0.1], [0.2]], [[0.3], [0.4], []]], 1.0, "sequence 1 has 3 neurons but sequence 0 has 2"),
        ([[[0.1, float("nan")], [0.2]]], 1.0, "NaN or inf"),
        ([[[0.1], [1.2]]], 1.0, "outside"),
        ([], 1.0, "at least one sequence"),
    ],
    ids=["fewer-neurons", "more-neurons", "nan", "out-of-window", "empty"],
)
def test_from_lists_errors(spikes, duration, match):
    with pytest.raises(ValueError, match=match):
        SpikeTrains.from_lists(spikes, duration)


@pytest.mark.parametrize(
    "times, weights, match",
    [
        (torch.tensor([0.5, 0.2]), torch.eye(2), "unsorted"),
        (torch.tensor([0.5, 1.5]), torch.eye(2), "outside the window"),
        (torch.tensor([0.2, float("nan")]), torch.eye(2), "NaN or inf"),
        (torch.tensor([0.2, 0.5]), torch.tensor([[0.7, 0.7], [0.0, 1.0]]), "simplex"),
        (torch.tensor([0.2, 0.5]), torch.tensor([[0.0, 0.0], [0.0, 1.0]]), "after padding"),
    ],
    ids=["unsorted", "out-of-window", "nan", "simplex", "event-after-padding"],
)
def test_constructor_validates(times, weights, match):
    with pytest.raises(ValueError, match=match):
        SpikeTrains(times, weights, 1.0)


def test_from_tensor_validates():
    with pytest.raises(ValueError, match="realization tensor"):
        SpikeTrains.from_tensor(torch.zeros(3))
    bad = torch.tensor([[0.5, 1.0, 0.0], [0.2, 0.0, 1.0], [1.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="unsorted"):
        SpikeTrains.from_tensor(bad)


# ---- compact storage and the index layout ----------------------------------------------------


def test_exact_trains_are_stored_as_times_and_integer_marks():
    trains = SpikeTrains.from_lists(SPIKES, duration=2.0, dtype=torch.float64)
    assert trains.is_exact
    assert trains.times.dtype == torch.float64 and trains.marks.dtype == torch.int64
    expected_marks = [[0, 1, 0, -1], [1, 1, 1, 2]]  # sorted by time: 0.1 (n0), 0.3 (n1), 0.5 (n0)
    assert trains.marks.tolist() == expected_marks
    assert trains.times[0, -1] == 2.0  # a padding row holds the duration
    # the one-hot weights are built from the marks when asked for
    weights = trains.weights
    assert weights.shape == (2, 4, 3)
    marks = torch.tensor(expected_marks)
    assert torch.equal(weights, torch.nn.functional.one_hot(marks.clamp(min=0), 3).double()
                       * (marks >= 0).unsqueeze(-1))
    assert torch.equal(trains.mask, marks >= 0)


def test_index_format_round_trip():
    trains = SpikeTrains.from_lists(SPIKES, duration=2.0, dtype=torch.float64)
    index = trains.to_tensor(format="index")
    assert index.shape == (2, 5, 2)
    assert torch.equal(index[..., 1], torch.tensor([[0.0, 1, 0, -1, -1], [1, 1, 1, 2, -1]], dtype=torch.float64))
    assert torch.equal(index[..., 0], trains.to_tensor()[..., 0])
    back = SpikeTrains.from_tensor(index, num_marks=3)
    assert_lists_equal(back.to_lists(), SPIKES)
    assert torch.equal(back.to_tensor(), trains.to_tensor())
    # the converters of events.py agree with the container
    from pyro_dpp.events import dense_to_index, index_to_dense

    assert torch.equal(dense_to_index(trains.to_tensor()), index)
    assert torch.equal(index_to_dense(index, 3), trains.to_tensor())
    assert trains.to_tensor(max_events=7, format="index").shape == (2, 7, 2)


def test_index_format_errors_say_what_to_change():
    trains = SpikeTrains.from_lists(SPIKES, duration=2.0)
    index = trains.to_tensor(format="index")
    with pytest.raises(ValueError, match="pass num_marks="):
        SpikeTrains.from_tensor(index)
    with pytest.raises(ValueError, match=r"mark ids outside 0\.\.1"):
        SpikeTrains.from_tensor(index, num_marks=2)
    with pytest.raises(ValueError, match="format must be 'dense' or 'index'"):
        trains.to_tensor(format="sparse")
    relaxed = SpikeTrains.from_tensor(
        PointProcess(Poisson(torch.tensor([1.0, 2.0])), 2.0, temperature=0.5).rsample((2,)))
    assert not relaxed.is_exact
    with pytest.raises(ValueError, match="no index layout"):
        relaxed.to_tensor(format="index")
    with pytest.raises(ValueError, match="soft marks"):
        _ = relaxed.marks
    from pyro_dpp.events import dense_to_index

    with pytest.raises(ValueError, match="only exact realizations"):
        dense_to_index(relaxed.to_tensor())


def test_many_neurons_cost_o_events_memory():
    """300 neurons x 100,000 spikes under a 16 MB memory limit: the container holds 16 bytes a
    spike; the dense one-hot tensor (242 MB) is refused with a message naming the index layout."""
    from pyro_dpp.memory import set_memory_limit

    rng = np.random.default_rng(0)
    times, neurons = rng.uniform(0, 1000.0, 100_000), rng.integers(0, 300, 100_000)
    set_memory_limit("16M")
    try:
        trains = SpikeTrains.from_events(times, neurons, 300, 1000.0, dtype=torch.float64)
        assert trains.to_tensor(format="index").shape == (100_001, 2)
        lists = trains.to_lists()[0]
        assert sum(len(x) for x in lists) == 100_000
        np.testing.assert_array_equal(lists[7], np.sort(times[neurons == 7]))
        with pytest.raises(ValueError, match="keep the data in the index layout"):
            trains.to_tensor()
        with pytest.raises(ValueError, match="become equal in torch.float32"):
            trains.to(torch.float32)  # 100,000 spikes in 1000 s: float32 merges neighbours
        moved = trains.to("cpu")
        assert moved.is_exact and torch.equal(moved.marks, trains.marks)
    finally:
        set_memory_limit(None)
