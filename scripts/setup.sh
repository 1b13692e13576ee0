#!/usr/bin/env bash
# Set up everything overread needs on a fresh Debian machine: system packages
# (DCMTK, dicom3tools, Orthanc, Chromium) and a virtual environment in .venv with
# the pinned CPU build of PyTorch and overread itself (editable, with dev tools).
# Safe to run again: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
DEB_PACKAGES=(dcmtk dicom3tools orthanc orthanc-dicomweb chromium chromium-driver r-cran-proc r-cran-psych nodejs)

missing=()
for pkg in "${DEB_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]]; then
    echo "setup: installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup: warning: not root, cannot install Debian packages: ${missing[*]} (tests needing them are skipped)" >&2
  fi
fi
# Orthanc's Debian package starts a system service on port 4242/8042; overread's
# tests start private instances on free ports, so the system one is stopped.
if command -v service >/dev/null 2>&1 && pgrep -x Orthanc >/dev/null 2>&1 && [[ $(id -u) -eq 0 ]]; then
  service orthanc stop >/dev/null 2>&1 || pkill -x Orthanc || true
fi

stamp="$VENV/.overread-installed"
if [[ ! -f "$stamp" || pyproject.toml -nt "$stamp" ]]; then
  [[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # The pinned CPU wheel first, so nothing below pulls a CUDA build.
  "$VENV/bin/python" -m pip install -q "torch==2.13.0"
  "$VENV/bin/python" -m pip install -q -e ".[dev]"
  touch "$stamp"
fi
scripts/fetch_test_data.sh || echo "setup: warning: real test label files not fetched" >&2
# The study page's image viewer: Cornerstone3D from npm, bundled with esbuild into one
# script the gateway serves itself (no CDN). Rebuilt when its sources change.
viewer=src/overread/web/viewer
# Debian's nodejs comes without npm (NodeSource's includes it).
if ! command -v npm >/dev/null 2>&1 && [[ $(id -u) -eq 0 ]]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm >/dev/null || true
fi
if command -v npm >/dev/null 2>&1; then
  if [[ ! -d "$viewer/node_modules" || "$viewer/package-lock.json" -nt "$viewer/node_modules" ]]; then
    (cd "$viewer" && npm ci --no-audit --no-fund --loglevel=error) && touch "$viewer/node_modules"
  fi
  bundle="$viewer/dist/overread-viewer.js"
  if [[ ! -f "$bundle" || -n $(find "$viewer/src" "$viewer/build.mjs" "$viewer/package-lock.json" -newer "$bundle" 2>/dev/null) ]]; then
    (cd "$viewer" && npm run --silent build) || echo "setup: warning: the image viewer was not built" >&2
  fi
else
  echo "setup: warning: npm not found: the study page's image viewer is not built (install nodejs and npm)" >&2
fi
