#!/usr/bin/env bash
# Fetch real chest X-ray label files for the data tests: the torchxrayvision wheel
# ships the label CSVs of CheXpert, NIH ChestX-ray14 (with bounding boxes), SIIM-ACR
# pneumothorax (RLE masks), RSNA, VinDr, PadChest and others. We download the wheel
# with pip (no dependencies, never imported) and unpack only its data folder into
# .cache/testdata/torchxrayvision/. Safe to run again: skipped when already there.
# Tests that need these files skip, with a reason, when the folder is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
TXV_VERSION=${TXV_VERSION:-1.5.7}
DEST=.cache/testdata/torchxrayvision
STAMP="$DEST/.complete-$TXV_VERSION"

if [[ -f "$STAMP" ]]; then
  exit 0
fi
if [[ ! -x "$VENV/bin/pip" ]]; then
  echo "fetch_test_data: $VENV/bin/pip not found; run scripts/setup.sh first" >&2
  exit 1
fi

download=$(mktemp -d)
trap 'rm -rf "$download"' EXIT
if ! "$VENV/bin/pip" download -q --no-deps "torchxrayvision==$TXV_VERSION" -d "$download"; then
  echo "fetch_test_data: warning: could not download torchxrayvision==$TXV_VERSION (tests using real label files are skipped)" >&2
  exit 0
fi
wheel=$(ls "$download"/torchxrayvision-"$TXV_VERSION"-*.whl)
mkdir -p "$DEST"
"$VENV/bin/python" - "$wheel" "$DEST" <<'PY'
import sys
import zipfile
from pathlib import Path

wheel, dest = sys.argv[1], Path(sys.argv[2])
prefix = "torchxrayvision/data/"
with zipfile.ZipFile(wheel) as zf:
    for name in zf.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            target = dest / name[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(zf.read(name))
PY
touch "$STAMP"
echo "fetch_test_data: real label files in $DEST"
