# edgefleet: two commands. `make demo` runs the main job; `make test` installs and runs the tests.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
ARGS   ?=

.PHONY: demo test install bench lint clean reliability

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip >/dev/null
	$(PY) -m pip install -e '.[all,dev]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m demo $(ARGS)

test: install
	bash scripts/test-deps.sh
	$(PY) -m pytest $(ARGS)

reliability: install
	bash scripts/test-deps.sh
	$(PY) scripts/reliability_report.py

bench: install
	$(PY) -m bench all

lint: install
	PY=$(PY) bash scripts/check

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
