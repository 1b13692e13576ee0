# The two commands a newcomer needs:
#   make demo   set up everything and run the main job
#   make test   set up everything and run the tests (lint, types, pytest)
VENV ?= .venv
export VENV

.PHONY: setup demo test test-fast lint format clean

setup:
	bash scripts/setup.sh

demo: setup
	$(VENV)/bin/overread demo --studies 20 --rate 120 --exit-when-done

test: setup
	bash scripts/test.sh

test-fast: setup
	bash scripts/test.sh -m "not slow and not service"

lint:
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests
	$(VENV)/bin/mypy src

format:
	$(VENV)/bin/ruff format src tests
	$(VENV)/bin/ruff check --fix src tests

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache
