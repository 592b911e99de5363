#!/usr/bin/env bash
# Debian's chromium for the dashboard's browser tests (tests/ui/test_browser.py drives it with Playwright).
# `--optional`: say so and go on where it cannot be installed (no apt, not root and no sudo).
set -euo pipefail
command -v chromium >/dev/null && exit 0
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo -n"
if command -v apt-get >/dev/null && { [ -z "$SUDO" ] || sudo -n true 2>/dev/null; }; then
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core
    exit 0
fi
if [ "${1:-}" = "--optional" ]; then
    echo "scripts/install_chromium.sh: cannot install chromium here (needs apt-get as root); the browser tests will be skipped" >&2
    exit 0
fi
echo "scripts/install_chromium.sh: cannot install chromium (needs apt-get as root)" >&2
exit 1
