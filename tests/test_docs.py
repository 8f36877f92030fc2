"""The Sphinx site builds without a single warning (``-W``): API reference and tutorial pages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sphinx")
pytest.importorskip("myst_nb")

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_docs_build_without_warnings(tmp_path):
    out = tmp_path / "html"
    # a separate process: autodoc imports every module, and the build must not touch docs/ itself
    done = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-E", "-q", "-b", "html", "-d",
         str(tmp_path / "doctrees"), str(DOCS), str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-5000:]
    api = (out / "api.html").read_text()
    for name in ("pyro_dpp.PointProcess", "pyro_dpp.intensity.GLM", "pyro_dpp.snn.fit", "pyro_dpp.io.load_spikes",
                 "pyro_dpp.plot.gradient_variance_bars", "pyro_dpp.distributed.SNNLightningModule"):
        assert f'id="{name}"' in api, f"{name} is missing from the API reference"
    tutorials = sorted(p.stem for p in (DOCS.parent / "tutorials").glob("*.ipynb"))
    assert tutorials, "no tutorial notebooks found"
    for stem in tutorials:
        assert (out / "tutorials" / f"{stem}.html").exists(), f"tutorial {stem} was not rendered"
