# edgefleet: two commands. `make demo` runs the main job; `make test` installs and runs the tests
# (all but those marked slow: ~15-18 min on 2 cores); `make test-slow` runs those (CI runs both).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
ARGS   ?=

.PHONY: demo test test-slow test-all install bench lint clean reliability dist

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip >/dev/null
	$(PY) -m pip install -e '.[all,dev,torch]'
	# onnx2tf pins versions that fight ours (docs/adr/0012-pytorch-onnx-import.md): no deps
	$(PY) -m pip install --no-deps onnx2tf==1.29.24 tf-keras==2.21.0
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m demo $(ARGS)

test: install
	bash scripts/test-deps.sh
	$(PY) -m pytest -m "not slow" $(ARGS)

# TensorFlow conversions, real agents end to end, the README tour, the benches' test runs
test-slow: install
	bash scripts/test-deps.sh
	$(PY) -m pytest -m slow $(ARGS)

test-all: install
	bash scripts/test-deps.sh
	$(PY) -m pytest $(ARGS)

reliability: install
	bash scripts/test-deps.sh
	$(PY) scripts/reliability_report.py

bench: install
	$(PY) -m bench all

# the agent wheel + install.sh + coral-setup.sh + the systemd unit, what a hub serves (EDGEFLEET_HUB_DIST=dist)
dist: install
	PY=$(PY) sh scripts/dist.sh dist

lint: install
	PY=$(PY) bash scripts/check

clean:
	rm -rf $(VENV) .pytest_cache build dist *.egg-info
