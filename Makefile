# Two commands on a fresh clone (only Python 3.11 needed):
#   make demo   set up .venv and run the main job
#   make test   set up .venv and run the whole test suite
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
WHEELS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)

.PHONY: demo test lint bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(WHEELS) -c constraints.txt -e ".[test]"
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/pyro-dpp demo --out demo-output --force

test: $(VENV)/.installed
	$(VENV)/bin/ruff check pyro_dpp tests benchmarks examples
	$(PY) -m pytest -n 2 -q

bench: $(VENV)/.installed
	$(PY) benchmarks/bench_core.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache
