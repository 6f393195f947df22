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
python -m pytest "$@"
