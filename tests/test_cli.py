"""The ``pyro-dpp`` command line: every subcommand runs, writes its files, and rejects bad input."""

from __future__ import annotations

import re

import pytest
import torch

from pyro_dpp.cli import main

SMALL = ["--duration", "8", "--sequences", "3", "--particles", "4", "--seed", "0"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # the demo's samplers step through events with tiny tensor ops: intra-op threads only add
    # synchronisation (milliseconds per op on a busy machine)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _run(argv: list[str]) -> int:
    """Exit status of ``main(argv)``, whether it returns one or raises SystemExit (argparse)."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return 0 if exit_.code is None else (exit_.code if isinstance(exit_.code, int) else 1)


def test_hawkes_runs_and_saves_figure(tmp_path, capsys):
    out = tmp_path / "hawkes"
    assert _run(["hawkes", "--out", str(out), *SMALL]) == 0
    printed = capsys.readouterr().out
    figure = out / "hawkes.png"
    assert figure.is_file() and figure.stat().st_size > 1000
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    match = re.search(r"exact log-likelihood per sequence: mean (-?\d+\.\d+)", printed)
    assert match, printed
    # the log-likelihood of a few events of a point process is a finite, negative number here
    assert float(match.group(1)) < 0
    assert "Saved" in printed


def test_hawkes_is_reproducible(tmp_path, capsys):
    assert _run(["hawkes", "--out", str(tmp_path / "a"), *SMALL]) == 0
    first = capsys.readouterr().out
    assert _run(["hawkes", "--out", str(tmp_path / "b"), *SMALL]) == 0
    second = capsys.readouterr().out

    def strip(text: str) -> str:  # drop paths and timings
        return "\n".join(line for line in text.splitlines() if not line.startswith("Saved"))

    assert strip(first) == strip(second)


@pytest.mark.parametrize(
    "option, value, expected",
    [
        ("--duration", "-5", "--duration: must be positive"),
        ("--duration", "0", "--duration: must be positive"),
        ("--duration", "nan", "--duration: must be positive"),
        ("--duration", "abc", "--duration: expected a number"),
        ("--sequences", "0", "--sequences: must be a positive integer"),
        ("--particles", "-1", "--particles: must be a positive integer"),
        ("--temperature", "0", "--temperature: must be positive"),
        ("--bound", "-1", "--bound: must be positive"),
    ],
)
def test_hawkes_rejects_bad_values(tmp_path, capsys, option, value, expected):
    out = tmp_path / "bad"
    code = _run(["hawkes", "--out", str(out), *SMALL, option, value])
    assert code != 0
    err = capsys.readouterr().err
    assert expected in err, err
    assert not (out / "hawkes.png").exists()


def test_hawkes_reports_a_too_small_bound(tmp_path, capsys):
    # a bound below the baseline rates must fail with the library's message, not a traceback
    code = _run(["hawkes", "--out", str(tmp_path / "b"), *SMALL, "--bound", "0.5"])
    assert code != 0
    err = capsys.readouterr().err
    assert "pyro-dpp: error:" in err and "bound" in err, err
