#!/usr/bin/env bash
# Installs the project with its test extras and what the tests need, then runs the test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k windows`.
set -euo pipefail
source "$(dirname "$0")/setup_venv.sh" test
# Headless rendering: EGL (Mesa) is in the base image; install it where it is missing.
if ! ldconfig -p | grep -q "libEGL.so.1"; then
  echo "[test] installing EGL/Mesa for headless MuJoCo rendering"
  apt-get update -qq && apt-get install -y -qq libegl1 libgl1-mesa-dri >/dev/null
fi
# Azure Blob tests (tests/test_blob.py) run against Azurite, the storage emulator from npm; the tests start it.
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
if [ ! -x "$ROOT/.azurite/node_modules/.bin/azurite-blob" ]; then
  echo "[test] installing Azurite (npm) into .azurite/"
  command -v npm >/dev/null || { echo "[test] npm (Node.js 18+) is needed to install Azurite" >&2; exit 1; }
  npm install --prefix "$ROOT/.azurite" --no-audit --no-fund --loglevel=error azurite >/dev/null
fi
python -m pytest "$@"
