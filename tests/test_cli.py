"""The ``pyro-dpp`` command line: every subcommand runs, writes its files, and rejects bad input."""

from __future__ import annotations

import re

import pytest

from pyro_dpp.cli import main

SMALL = ["--duration", "8", "--sequences", "3", "--particles", "4", "--seed", "0"]


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


def test_snn_demo_runs_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "snn"
    argv = ["demo", "--out", str(out), "--duration", "8", "--epochs", "1", "--draws", "2", "--no-progress"]
    assert _run(argv) == 0
    printed = capsys.readouterr().out
    assert "gradient E[std]" in printed and "pathwise" in printed and "score_function_baseline" in printed
    assert (out / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import json

    result = json.loads((out / "demo.json").read_text())
    for estimator in ("pathwise", "score_function", "score_function_baseline"):
        entry = result["estimators"][estimator]
        assert entry["e_std"] > 0 and entry["test_elbo_after"] < 0
    assert _run(argv) != 0
    assert "--force" in capsys.readouterr().err
    assert _run(argv + ["--force"]) == 0


@pytest.mark.parametrize("suffix", [".npz", ".csv"])
def test_simulate_fit_evaluate_round_trip(tmp_path, capsys, suffix):
    data = tmp_path / f"spikes{suffix}"
    assert _run(["simulate", "--out", str(data), "--observed", "2", "--hidden", "1", "--sequences", "2",
                 "--duration", "6", "--amplitude", "2", "--basis", "exponential"]) == 0
    assert data.exists() and (tmp_path / f"spikes_hidden{suffix}").exists()
    fit_json = tmp_path / "fit.json"
    assert _run(["fit", str(data), "--out", str(fit_json), "--hidden", "1", "--epochs", "2", "--basis", "exponential",
                 "--amplitude", "2", "--batch-size", "2", "--no-progress"]) == 0
    assert (tmp_path / "fit_model.pt").exists() and (tmp_path / "fit_guide.pt").exists()
    capsys.readouterr()
    eval_json = tmp_path / "eval.json"
    assert _run(["evaluate", str(data), "--model", str(tmp_path / "fit_model.pt"), "--guide",
                 str(tmp_path / "fit_guide.pt"), "--particles", "4", "--out", str(eval_json)]) == 0
    import json

    result = json.loads(eval_json.read_text())
    assert len(result["elbo"]) == 2 and all(e < 0 for e in result["elbo"])
    assert "mean exact ELBO" in capsys.readouterr().out


def test_cli_rejects_bad_files(tmp_path, capsys):
    missing = tmp_path / "nope.npz"
    assert _run(["fit", str(missing), "--out", str(tmp_path / "f.json"), "--no-progress"]) != 0
    assert "nope.npz" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("when,who\n1.0,0\n")
    assert _run(["fit", str(bad), "--out", str(tmp_path / "f.json"), "--duration", "5", "--no-progress"]) != 0
    assert "column" in capsys.readouterr().err
    outside = tmp_path / "outside.csv"
    outside.write_text("time,neuron\n1.0,0\n7.0,1\n")
    assert _run(["fit", str(outside), "--out", str(tmp_path / "f.json"), "--duration", "5", "--no-progress"]) != 0
    assert "outside" in capsys.readouterr().err


def test_reproduce_quick_exp1_writes_json(tmp_path, capsys):
    assert _run(["reproduce", "exp1", "--quick", "--draws", "3", "--out", str(tmp_path), "--no-progress"]) == 0
    import json

    result = json.loads((tmp_path / "exp1.json").read_text())
    for estimator in ("pathwise", "score_function", "score_function_baseline"):
        assert result[estimator]["e_std"] > 0 and result[estimator]["seconds"] > 0
    assert (tmp_path / "exp1.png").exists()
    assert _run(["reproduce", "exp1", "--quick", "--draws", "3", "--out", str(tmp_path)]) != 0


def test_reproduce_exp1_guide_and_seeds(tmp_path, capsys):
    """``--guide model`` (the default: q = p) and ``--seeds`` in one run; another guide writes its own
    file; ``--seeds`` is refused where it does not apply."""
    import json

    argv = ["reproduce", "exp1", "--quick", "--draws", "3", "--out", str(tmp_path), "--no-progress"]
    assert _run([*argv, "--guide", "model", "--seeds", "0", "1"]) == 0
    assert "SF / PW" in capsys.readouterr().out
    result = json.loads((tmp_path / "exp1.json").read_text())
    assert result["guide"] == "model" and result["seeds"] == [0, 1] and len(result["runs"]) == 2
    for run in result["runs"]:
        # q = p: the hidden-site terms cancel, so both path-wise estimators are the same draws
        assert run["pathwise"]["e_std"] == pytest.approx(run["pathwise_exact"]["e_std"], rel=1e-4)
    assert len(result["ratios"]["score_function / pathwise"]["per_seed"]) == 2
    assert _run([*argv, "--guide", "separate"]) == 0
    assert json.loads((tmp_path / "exp1_separate.json").read_text())["guide"] == "separate"
    assert (tmp_path / "exp1_separate.png").exists()
    assert _run(["reproduce", "bias", "--quick", "--seeds", "0", "1", "--out", str(tmp_path)]) != 0
    assert "--seeds" in capsys.readouterr().err
    assert _run([*argv, "--guide", "prior"]) != 0


def test_reproduce_sources_prints_the_decomposition(tmp_path, capsys):
    import json

    assert _run(["reproduce", "sources", "--quick", "--out", str(tmp_path), "--no-progress"]) == 0
    assert "events_soft" in capsys.readouterr().out
    result = json.loads((tmp_path / "sources.json").read_text())
    for row in result["results"]["0"].values():
        if isinstance(row, dict):
            assert row["hidden_sites"] == 0.0 and row["total"] > 0
    assert (tmp_path / "sources.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert _run(["reproduce", "sources", "--quick", "--guide", "separate", "--out", str(tmp_path), "--force"]) != 0


def test_fit_offers_every_estimator():
    from pyro_dpp.cli import build_parser
    from pyro_dpp.snn import ESTIMATORS

    fit = next(a for a in build_parser()._subparsers._group_actions[0].choices["fit"]._actions
               if a.dest == "estimator")
    assert tuple(fit.choices) == ESTIMATORS


@pytest.mark.parametrize("experiment", ["bias", "training"])
def test_reproduce_quick_bias_and_training_write_json_and_figure(tmp_path, experiment):
    import json

    assert _run(["reproduce", experiment, "--quick", "--out", str(tmp_path), "--no-progress"]) == 0
    result = json.loads((tmp_path / f"{experiment}.json").read_text())
    if experiment == "bias":
        assert set(result["estimators"]) == {"pathwise", "pathwise_exact"}
    else:
        assert set(result["paired"]) == {f"{a} - {b}" for a in ("pathwise", "pathwise_exact")
                                          for b in ("score_function", "score_function_baseline")}
    assert (tmp_path / f"{experiment}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fit_and_evaluate_in_windows(tmp_path, capsys):
    import json

    data = tmp_path / "spikes.npz"
    assert _run(["simulate", "--out", str(data), "--observed", "2", "--hidden", "1", "--sequences", "1",
                 "--duration", "12", "--amplitude", "2", "--basis", "exponential"]) == 0
    fit_json = tmp_path / "fit.json"
    assert _run(["fit", str(data), "--out", str(fit_json), "--hidden", "1", "--epochs", "2", "--basis", "exponential",
                 "--amplitude", "2", "--batch-size", "2", "--window", "5", "--no-progress"]) == 0
    result = json.loads(fit_json.read_text())
    assert result["window"] == 5.0
    assert len(result["losses"]) == 2 * 2  # 3 windows (5, 5, 2 s) in steps of 2 windows, 2 epochs
    capsys.readouterr()
    eval_json = tmp_path / "eval.json"
    assert _run(["evaluate", str(data), "--model", str(tmp_path / "fit_model.pt"), "--guide",
                 str(tmp_path / "fit_guide.pt"), "--particles", "4", "--window", "5", "--out", str(eval_json)]) == 0
    result = json.loads(eval_json.read_text())
    assert len(result["elbo"]) == 1 and result["window"] == 5.0
    assert _run(["fit", str(data), "--out", str(tmp_path / "g.json"), "--window", "0", "--no-progress"]) != 0
    assert "--window" in capsys.readouterr().err
