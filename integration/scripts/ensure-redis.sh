#!/usr/bin/env bash
# ensure-redis.sh — make sure Debian's redis-server (and redis-cli) is installed.
#
# Why: the Redis store's unit tests (caddymodule) and the two-gateway
# end-to-end tests (integration) run against a real redis-server, which they
# start themselves on a free 127.0.0.1 port with a throwaway directory and no
# persistence. Nothing here starts or configures a system Redis: the install
# runs with a policy-rc.d that keeps the package's service from being
# started, so no Redis listens that the tests did not start.
#
# Pinned to Debian 12's redis-server 7.0.15 (REDIS_DEB_VERSION); when the
# archive no longer carries that exact revision (security updates replace
# it), the current 7.0.15 revision is installed instead, with a note.
# Idempotent: with redis-server and redis-cli present it only prints versions.
set -euo pipefail

REDIS_DEB_VERSION="${REDIS_DEB_VERSION:-5:7.0.15-1~deb12u10}"

fail() {
  echo "ensure-redis: ERROR: $*" >&2
  exit 1
}

print_version() {
  local v
  v="$(redis-server --version 2>/dev/null)" || fail "redis-server is present but 'redis-server --version' failed"
  echo "ensure-redis: $v ($(command -v redis-server)); $(redis-cli --version 2>/dev/null || echo 'redis-cli missing')"
}

if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; then
  print_version
  exit 0
fi

command -v apt-get >/dev/null 2>&1 || fail "redis-server is missing and apt-get is not available to install it"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || fail "redis-server is missing; installing it needs root (or sudo)"
  SUDO="sudo -n"
fi
export DEBIAN_FRONTEND=noninteractive

# apt-get update only when the package lists do not know redis-server yet.
# (Read the whole output first: grep -q closing the pipe early would make
# apt-cache fail under pipefail.)
known() { local p; p=$(apt-cache policy redis-server 2>/dev/null) && grep -q 'Candidate: [^(]' <<<"$p"; }
if ! known; then
  echo "ensure-redis: package lists do not know redis-server; running apt-get update" >&2
  $SUDO apt-get update -q >&2 || fail "apt-get update failed; cannot install redis-server"
fi
known || fail "no installable redis-server package in the configured Debian archives"

want="redis-server=$REDIS_DEB_VERSION redis-tools=$REDIS_DEB_VERSION"
madison=$(apt-cache madison redis-server 2>/dev/null || true)
if ! grep -qF "| $REDIS_DEB_VERSION |" <<<"$madison"; then
  cand=$(apt-cache policy redis-server | sed -n 's/^ *Candidate: //p')
  case "$cand" in
  *:7.0.15-*) echo "ensure-redis: $REDIS_DEB_VERSION is no longer in the archive; installing $cand (same 7.0.15 upstream)" >&2 ;;
  *) fail "pinned redis-server $REDIS_DEB_VERSION is not available (candidate: $cand); set REDIS_DEB_VERSION" ;;
  esac
  want="redis-server=$cand redis-tools=$cand"
fi
# policy-rc.d 101: do not start the packaged service during installation.
prc=/usr/sbin/policy-rc.d
made_prc=""
if [ ! -e "$prc" ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$prc" >/dev/null && $SUDO chmod +x "$prc" && made_prc=1
fi
echo "ensure-redis: installing $want" >&2
# shellcheck disable=SC2086
$SUDO apt-get install -y -q --no-install-recommends $want >&2 || { [ -n "$made_prc" ] && $SUDO rm -f "$prc"; fail "apt-get install redis-server failed"; }
[ -n "$made_prc" ] && $SUDO rm -f "$prc"
command -v redis-server >/dev/null 2>&1 || fail "redis-server package installed but redis-server is not on PATH"
print_version
