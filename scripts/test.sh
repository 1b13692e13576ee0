#!/usr/bin/env bash
# The test command: lint, format check, strict typing, then the whole pytest
# suite (slow and service tests included). pytest's exit status 5 ("no tests
# collected") is a failure here, not a success.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
# The venv goes last: pynetdicom installs its own `storescp`/`storescu` scripts there,
# and the tests' peers must be DCMTK's (Debian's /usr/bin) ones.
export PATH="$PATH:$PWD/$VENV/bin"

BIN="$PWD/$VENV/bin"

set -e
"$BIN/ruff" check src tests
"$BIN/ruff" format --check src tests
"$BIN/mypy" src
set +e
"$BIN/python" -m pytest "$@"
status=$?
if [[ $status -eq 5 ]]; then
  echo "test: pytest collected no tests: failing" >&2
  exit 1
fi
exit $status
