#!/usr/bin/env bash
# Runs a command with headless Chromium and its chromedriver on the PATH, for
# the browser tests of the /ui page (tests/test_ui.py). Installs Debian's
# `chromium` and `chromium-driver` when either is missing.
set -euo pipefail

if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  echo "chromium or chromedriver missing: installing them (apt-get)" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    chromium chromium-driver >/dev/null
fi

exec "$@"
