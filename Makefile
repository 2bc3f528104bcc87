# Two commands do all the set-up on a machine with python3 (3.11+), make and git:
#   make demo   the all-in-one demo (`fleet up`) on the embedded broker
#   make test   lint, type-check, build the docs and run the whole test suite on 4 workers
#   make docs   serve the docs site (docs/, mkdocs.yml) on http://127.0.0.1:8000/
# Both create .venv when it is missing. `make test` also installs the Debian packages the
# interop tests need (Mosquitto and its clients, openssl), the dashboard tests need (chromium) and
# the distributed rehearsal needs (prometheus) when they are missing.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODE_STAMP := tests/node/node_modules/.package-lock.json
APT_PACKAGES := mosquitto mosquitto-clients openssl curl chromium tmux prometheus
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test lint docs deps node-deps bench screenshot clean

# Debian's own python3 makes venvs only with its python3-venv package (ensurepip).
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || ! command -v apt-get >/dev/null || { \
	  echo "installing python3-venv: $(PYTHON) has no ensurepip"; \
	  $(SUDO) apt-get update && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends python3-venv; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/fleet up

deps:
	@if ! command -v mosquitto_pub >/dev/null || ! command -v openssl >/dev/null || ! command -v curl >/dev/null \
	    || ! command -v chromium >/dev/null || ! command -v tmux >/dev/null \
	    || ! [ -x /usr/sbin/mosquitto ] || ! [ -x /usr/bin/prometheus ]; then \
	  echo "installing Debian packages: $(APT_PACKAGES)"; \
	  $(SUDO) apt-get update && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends $(APT_PACKAGES); \
	fi

# The Node.js clients of tests/bridges/test_node_clients.py; without node that module is skipped.
$(NODE_STAMP): tests/node/package.json tests/node/package-lock.json
	npm ci --prefix tests/node --no-audit --no-fund

node-deps:
	@if command -v node >/dev/null && command -v npm >/dev/null; then \
	  $(MAKE) --no-print-directory $(NODE_STAMP); \
	else \
	  echo "node and npm not found: tests/bridges/test_node_clients.py will be skipped"; \
	fi

# mkdocs without --quiet: --quiet hides the warnings that --strict counts, and the build passes.
# NO_MKDOCS_2_WARNING: mkdocs-material 9.8 prints a notice of its end of life (May 2027) on each build.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# The docs site, live: it rebuilds on every change of docs/ or mkdocs.yml.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

# The suite on 4 pytest-xdist workers: its tests mostly wait on sockets and child processes, so 4 keep
# 2 cores busy. loadgroup runs the tests marked xdist_group("heavy") one at a time, on one worker.
# The tests marked alone time the machine's responsiveness: they run afterwards, with none beside them.
test: $(STAMP) deps node-deps lint
	$(BIN)/pytest -n 4 --dist loadgroup -m "not alone"
	$(BIN)/pytest -m alone

bench: $(STAMP) deps
	$(BIN)/python bench/broker_scale.py

# The README's picture of the dashboard: the demo fleet on the page, in headless Chromium.
screenshot: $(STAMP) deps
	DASHBOARD_SCREENSHOT=docs/dashboard.png $(BIN)/pytest tests/bridges/test_dashboard.py -k screenshot

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache site tests/node/node_modules
