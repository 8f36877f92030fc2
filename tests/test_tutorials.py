"""Execute every tutorial notebook top to bottom (small sizes); any cell error fails its test."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

TUTORIALS = sorted((Path(__file__).resolve().parent.parent / "tutorials").glob("*.ipynb"))
KERNEL = "python3"
#: notebooks whose figures must come out inline (as PNG outputs)
WITH_FIGURES = {"01_point_processes", "02_snn_hidden_neurons", "03_reproducing_the_paper",
                "04_grasshopper_spike_trains", "05_writing_your_own_intensity", "06_bayesian_hawkes",
                "07_brian2_network"}
#: notebooks that need a peer package (installed by the test extras; skipped where it is missing)
REQUIRES = {"07_brian2_network": "brian2"}
TIMEOUT = 300  # seconds per cell; a small-size notebook runs in well under a minute


@pytest.fixture
def small_env(monkeypatch):
    """The kernel inherits this process's environment: small sizes, one intra-op thread (the notebooks
    run tiny tensor ops, for which threads only add synchronisation)."""
    monkeypatch.setenv("PYRO_DPP_TUTORIAL_SMALL", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONHASHSEED", "0")


def _execute(nb, cwd: Path):
    client = nbclient.NotebookClient(
        nb, timeout=TIMEOUT, kernel_name=KERNEL, resources={"metadata": {"path": str(cwd)}}
    )
    return client.execute()


def test_tutorials_exist():
    assert TUTORIALS, "no notebooks under tutorials/"


def test_kernel_is_this_interpreter(small_env, tmp_path):
    """The 'python3' kernel must run this interpreter (the venv with pyro_dpp installed): jupyter_client
    replaces a kernelspec's bare 'python' with sys.executable."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import sys, os, pyro_dpp\nprint(sys.executable)\n"
                                          "print(os.environ['PYRO_DPP_TUTORIAL_SMALL'])")]
    out = _execute(nb, tmp_path)
    text = "".join(o.get("text", "") for o in out.cells[0].outputs).split()
    assert os.path.realpath(text[0]) == os.path.realpath(sys.executable), text
    assert text[1] == "1"


def _require(package: str, notebook: str) -> None:
    """Skip when ``package`` is not installed; fail, saying why, when it is installed but broken."""
    try:
        importlib.import_module(package)
    except ImportError:
        pytest.skip(f"{notebook} needs {package}, which is not installed (it is in the test extras)")
    except Exception as err:  # e.g. Brian2 2.9 under numpy 2.4: AttributeError on numpy.ndarray.ptp
        pytest.fail(f"{package} is installed but does not import ({type(err).__name__}: {err}); "
                    "install with -c constraints.txt (numpy<2.4 for brian2)", pytrace=False)


@pytest.mark.slow
@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs(path, small_env):
    if path.stem in REQUIRES:
        _require(REQUIRES[path.stem], path.name)
    nb = nbformat.read(path, as_version=4)
    # notebooks are stored without outputs (reviewable diffs, no stale figures)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name} is stored with outputs"
    try:
        out = _execute(nb, path.parent)
    except nbclient.exceptions.CellExecutionError as err:  # the message names the cell and traceback
        pytest.fail(f"{path.name} failed:\n{err}", pytrace=False)
    errors = [o for c in out.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    if path.stem in WITH_FIGURES:  # figures are rendered inline, not pasted images
        images = [o for c in out.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
        assert images, f"{path.name} produced no inline figures"
