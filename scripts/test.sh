#!/usr/bin/env bash
# The test command: lint, format check, strict typing, then the whole pytest
# suite (slow and service tests included). pytest's exit status 5 ("no tests
# collected") is a failure here, not a success.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
export PATH="$PWD/$VENV/bin:$PATH"

set -e
ruff check src tests
ruff format --check src tests
mypy src
set +e
pytest "$@"
status=$?
if [[ $status -eq 5 ]]; then
  echo "test: pytest collected no tests: failing" >&2
  exit 1
fi
exit $status
