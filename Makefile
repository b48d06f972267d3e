# The two commands of the README: `make demo` (the end-to-end story) and `make test`.
# Both create .venv and install the project with every extra on first use.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARTIFACTS ?= artifacts

.PHONY: install demo test test-slow test-large test-all fuzz bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[all]"
	touch $@

install: $(VENV)/.installed

# the whole story on both seed models: train, export, compress (small preset, 0.5-point budget), prove it
demo: install
	$(PY) samples/demo.py --out $(ARTIFACTS)

# pytest exits 5 when it collected no tests: make treats that as the failure it is.
test: install
	$(PY) -m pytest -q

test-slow: install
	$(PY) -m pytest -q -m slow

test-large: install
	$(PY) -m pytest -q -m large

test-all: install
	$(PY) -m pytest -q -m ""

# a long fuzz run (the default suite runs 60 mutations): ONNX_COMPRESS_FUZZ_EXAMPLES=N to change
fuzz: install
	ONNX_COMPRESS_FUZZ_EXAMPLES=$${ONNX_COMPRESS_FUZZ_EXAMPLES:-3000} $(PY) -m pytest -q tests/hardening/test_fuzz.py -m ""

bench: install
	$(PY) -m benchmarks

clean:
	rm -rf $(ARTIFACTS) .pytest_cache build *.egg-info
