# Two commands set everything up on a fresh Debian/Ubuntu machine: `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PLUGIN_NAME := building_footprints
QGIS_PROFILE_DIR ?= $(HOME)/.local/share/QGIS/QGIS3/profiles/default
export QT_QPA_PLATFORM ?= offscreen
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup test test-desktop demo lint bench zip deploy clean

setup: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt scripts/setup_env.sh
	@bash scripts/setup_env.sh
	@touch $@

# The real-desktop check (QGIS under Xvfb, ~20 s) is part of the suite; test-desktop runs it alone.
test: $(STAMP)
	$(PY) -m pytest tests --run-desktop

test-desktop: $(STAMP)
	$(PY) -m pytest tests/test_desktop.py --run-desktop -v

demo: $(STAMP)
	$(PY) scripts/demo.py

# Lint rules, line length and complexity limit: pyproject.toml [tool.ruff].
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(STAMP)
	$(PY) scripts/bench.py

zip: $(STAMP)
	$(PY) scripts/build_zip.py --out dist/$(PLUGIN_NAME).zip

deploy: zip
	$(PY) scripts/build_zip.py --deploy "$(QGIS_PROFILE_DIR)"

clean:
	rm -rf dist demo_output .pytest_cache
