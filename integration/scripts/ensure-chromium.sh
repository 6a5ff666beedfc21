#!/usr/bin/env bash
# ensure-chromium.sh — make sure Debian's Chromium is installed at /usr/bin/chromium.
#
# Why: the end-to-end tests drive a real browser through playwright-core, which
# never downloads its own browser builds (the machines only reach package
# registries). The browser therefore comes from Debian's `chromium` package.
#
# Idempotent: if /usr/bin/chromium already works, it only prints the version.
# Exits non-zero with a message naming chromium when it cannot be installed.
set -euo pipefail

CHROMIUM_BIN="${CHROMIUM_BIN:-/usr/bin/chromium}"

fail() {
  echo "ensure-chromium: ERROR: $*" >&2
  exit 1
}

print_version() {
  # `chromium --version` prints e.g. "Chromium 1xx.0.x.y built on Debian ...".
  local v
  if ! v="$("$CHROMIUM_BIN" --version 2>/dev/null)"; then
    fail "chromium is present at $CHROMIUM_BIN but '$CHROMIUM_BIN --version' failed"
  fi
  echo "ensure-chromium: $v ($CHROMIUM_BIN)"
}

if [ -x "$CHROMIUM_BIN" ]; then
  print_version
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  fail "chromium is missing at $CHROMIUM_BIN and apt-get is not available to install it"
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO="sudo -n"
  else
    fail "chromium is missing at $CHROMIUM_BIN; installing it needs root (or sudo)"
  fi
fi

export DEBIAN_FRONTEND=noninteractive
echo "ensure-chromium: chromium not found at $CHROMIUM_BIN; installing Debian package 'chromium'" >&2
# apt-get update first: on a fresh machine the package lists are empty.
$SUDO apt-get update -q >&2 || fail "apt-get update failed; cannot install chromium"
$SUDO apt-get install -y -q --no-install-recommends chromium >&2 \
  || fail "apt-get install chromium failed"

[ -x "$CHROMIUM_BIN" ] || fail "chromium package installed but $CHROMIUM_BIN does not exist"
print_version
