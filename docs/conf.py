"""Sphinx configuration: API reference from the docstrings, tutorials rendered from their notebooks.

Build with ``sphinx-build -W -b html docs docs/_build/html`` (``pip install -e '.[docs]'``). The
notebooks are *not* executed here (``nb_execution_mode = "off"``): the test suite executes them
(tests/test_tutorials.py), and the pages show whatever outputs the notebooks hold.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pyro_dpp  # noqa: E402

project = "pyro_dpp"
author = "pyro_dpp developers"
copyright = "pyro_dpp developers"  # noqa: A001
version = release = pyro_dpp.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_nb",
]

# tutorials/ is a link to the repository's tutorials folder (the notebooks the tests execute)
exclude_patterns = ["_build", "**/.ipynb_checkpoints", "Thumbs.db", ".DS_Store"]
source_suffix = {".rst": "restructuredtext", ".ipynb": "myst-nb", ".md": "myst-nb"}

nb_execution_mode = "off"
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3

autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_class_signature = "separated"

html_theme = "alabaster"
html_title = f"pyro_dpp {release}"
html_static_path: list[str] = []

# ---- references in docstrings -------------------------------------------------------------------
# The package's docstrings list references in a plain-text style:
#
#     [1] H. Kajino, "A Differentiable Point Process with Its Application to Spiking Neural
#         Networks", ICML 2021.
#     [2] ...
#
# which reST would read as a definition list that ends without a blank line. This hook makes each
# reference one paragraph (continuation lines joined), so the docstrings can stay readable as text.
_REFERENCE = re.compile(r"^(\s*)\[\d+\]\s")


def _references_as_paragraphs(app, what, name, obj, options, lines: list[str]) -> None:
    out: list[str] = []
    i = 0
    while i < len(lines):
        match = _REFERENCE.match(lines[i])
        if not match:
            out.append(lines[i])
            i += 1
            continue
        indent = match.group(1)
        text = lines[i].strip()
        i += 1
        while i < len(lines) and lines[i].strip() and not _REFERENCE.match(lines[i]) \
                and len(lines[i]) - len(lines[i].lstrip()) > len(indent):
            text += " " + lines[i].strip()
            i += 1
        if out and out[-1].strip():
            out.append("")
        out.extend([indent + text, ""])
    lines[:] = out


def setup(app) -> None:
    app.connect("autodoc-process-docstring", _references_as_paragraphs)
