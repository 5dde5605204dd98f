#!/usr/bin/env bash
# Install what the real-browser tests (pytest -m browser) need: Debian's Chromium and the
# playwright Python package.  Idempotent: apt runs only when /usr/bin/chromium is missing, and
# playwright's own browser downloads (`playwright install`) are never used.
set -euo pipefail

PYTHON="${PYTHON:-python3}"

if [ ! -x /usr/bin/chromium ]; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
            echo "install-browser: /usr/bin/chromium is missing and this is not root (no sudo):" >&2
            echo "  apt-get install -y chromium chromium-driver" >&2
            exit 1
        fi
    fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update
    $SUDO apt-get install -y chromium chromium-driver
fi

if ! "$PYTHON" -c "import playwright.sync_api" >/dev/null 2>&1; then
    "$PYTHON" -m pip install --quiet playwright
fi

echo "install-browser: $(/usr/bin/chromium --version 2>/dev/null | head -n1); playwright (python) ready"
