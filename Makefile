# The two set-up commands of the README:
#   make run   - the embedded stack in the foreground (PostgreSQL, broker, authsvc, api)
#   make test  - the whole test suite against a real embedded stack
# Both create .venv and install the project with the tested versions pinned in constraints.txt.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: run test lint bench install lock clean-state reliability

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[embedded,test]"
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/fleetctl run

# The suite on TEST_WORKERS pytest-xdist workers, each with its own stack (tests/support/xdist.py), measured by
# coverage.py in every Python process it starts ([tool.coverage] in pyproject.toml). Fails when a test fails or
# the total coverage is below fail_under; the figures per file are in var/coverage/report.txt afterwards.
TEST_WORKERS ?= 2

test: $(STAMP)
	@rm -rf var/coverage && mkdir -p var/coverage
	@echo "coverage run -m pytest -n $(TEST_WORKERS) --dist loadscope $(PYTEST_ARGS)"; status=0; \
	$(BIN)/coverage run -m pytest -n $(TEST_WORKERS) --dist loadscope $(PYTEST_ARGS) || status=$$?; \
	$(BIN)/coverage combine --quiet && $(BIN)/coverage report > var/coverage/report.txt; \
	total=$$($(BIN)/coverage report --format=total --fail-under=0); \
	echo "coverage: $$total % of fleetcore, fleetctl, authsvc, api, emqx, simulator (per file: var/coverage/report.txt)"; \
	gate=$$($(BIN)/coverage report --format=total) || { echo "$$gate" | tail -n 1; [ $$status -ne 0 ] || status=3; }; \
	exit $$status

# ruff over the whole repository and mypy over fleetcore, authsvc and api (settings in pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m bench

# Re-resolve dependencies within pyproject's ranges and record the exact versions (run after changing ranges).
lock:
	rm -rf .lockvenv && $(PYTHON) -m venv .lockvenv
	.lockvenv/bin/python -m pip install --quiet --upgrade "pip>=24" && .lockvenv/bin/python -m pip install --quiet ".[embedded,test]"
	.lockvenv/bin/python -m pip freeze --exclude fleet-backend | sort > constraints.txt
	rm -rf .lockvenv

# Removes the embedded stack's local state (database, generated secrets, logs).
clean-state:
	rm -rf var

# Runs the acceptance, failure, security and fuzz tests (on TEST_WORKERS workers; each record is one appended line)
# and regenerates docs/RELIABILITY.md from their figures.
reliability: $(STAMP)
	rm -f var/reliability.jsonl && mkdir -p var
	FLEET_RELIABILITY_OUT=$(CURDIR)/var/reliability.jsonl $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadscope tests/acceptance tests/failure tests/security tests/fuzz $(PYTEST_ARGS)
	$(BIN)/python -m tests.support.reliability var/reliability.jsonl
