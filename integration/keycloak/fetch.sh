#!/usr/bin/env bash
# fetch.sh: make the pinned Keycloak distribution available and print its path.
#
# Downloads org.keycloak:keycloak-quarkus-dist:$KC_VERSION:tar.gz through Maven
# (whatever repository Maven is configured to use), unpacks it into
#   ${CADDY_PAR_CACHE:-$HOME/.cache/caddy-par}/keycloak-$KC_VERSION/keycloak-$KC_VERSION
# and runs Keycloak's one-off Quarkus build for development mode there, so that
# start.sh never has to rebuild (and concurrent start.sh runs never race on it).
#
# Idempotent: once the distribution is ready (marker file), a run does no
# network access and returns in milliseconds. Safe to call concurrently (flock).
# The last line of stdout is the path of the unpacked distribution; progress
# goes to stderr.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=SCRIPTDIR/common.sh
. "$here/common.sh"

marker=$KC_DIST_DIR/.caddy-par-ready

if [ -f "$marker" ]; then
  printf '%s\n' "$KC_DIST_DIR"
  exit 0
fi

mkdir -p "$KC_CACHE_DIR" || die "cannot create cache dir $KC_CACHE_DIR (set CADDY_PAR_CACHE)"
if command -v flock >/dev/null 2>&1; then
  exec 9>"$KC_CACHE_DIR/.lock"
  flock 9
fi
if [ -f "$marker" ]; then # another fetch.sh finished while we waited
  printf '%s\n' "$KC_DIST_DIR"
  exit 0
fi

command -v mvn >/dev/null 2>&1 || die "mvn not found on PATH: it is needed once to download org.keycloak:keycloak-quarkus-dist:$KC_VERSION:tar.gz"
command -v tar >/dev/null 2>&1 || die "tar not found on PATH"
java_home=$(find_java_home)

tmp=$(mktemp -d "$KC_CACHE_DIR/.fetch.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

tarball=keycloak-quarkus-dist-$KC_VERSION.tar.gz
if [ ! -d "$KC_DIST_DIR" ]; then
  log "downloading org.keycloak:keycloak-quarkus-dist:$KC_VERSION:tar.gz with mvn (about 170 MB)"
  # Run from the empty temp dir so no project pom.xml is picked up.
  if ! (cd "$tmp" && mvn -B -q dependency:copy \
    "-Dartifact=org.keycloak:keycloak-quarkus-dist:$KC_VERSION:tar.gz" \
    "-DoutputDirectory=$tmp") >&2; then
    die "mvn could not fetch org.keycloak:keycloak-quarkus-dist:$KC_VERSION:tar.gz (is Maven's repository reachable?)"
  fi
  [ -s "$tmp/$tarball" ] || die "mvn reported success but $tmp/$tarball is missing"
  log "unpacking $tarball"
  tar -xzf "$tmp/$tarball" -C "$tmp" || die "could not unpack $tarball"
  rm -f "$tmp/$tarball"
  [ -x "$tmp/keycloak-$KC_VERSION/bin/kc.sh" ] || die "unpacked archive has no keycloak-$KC_VERSION/bin/kc.sh"
  mv "$tmp/keycloak-$KC_VERSION" "$KC_DIST_DIR"
fi

# One-off build (Quarkus augmentation) for the dev profile with the build-time
# options start.sh uses (db=dev-file, default features). start-dev would
# otherwise do it on its first run (60-90 s on 2 cores) and rewrite lib/quarkus/
# in place, racing with any other start. `kc.sh build` refuses the dev
# profile, so run start-dev once in Keycloak's early-exit launch mode: it
# re-augments, relaunches, starts Quarkus without bootstrapping Keycloak (no
# realm, no admin) and exits. Its throwaway H2 file lives in $tmp.
log "running Keycloak's dev-mode build once (a minute or two on 2 cores)"
if ! (cd "$KC_DIST_DIR" && JAVA_HOME=$java_home "$KC_DIST_DIR/bin/kc.sh" \
  -Dkc.launch.mode=exit_before_bootstrap \
  start-dev --http-host=127.0.0.1 --http-port=0 \
  "--db-url=jdbc:h2:file:$tmp/h2/keycloakdb;NON_KEYWORDS=VALUE") >&2 </dev/null; then
  die "Keycloak's dev-mode build (kc.sh start-dev in early-exit mode) failed in $KC_DIST_DIR (JAVA_HOME=$java_home)"
fi
persisted=$(unzip -p "$KC_DIST_DIR/lib/quarkus/generated-bytecode.jar" META-INF/keycloak-persisted.properties 2>/dev/null || true)
case $persisted in
  *kc.profile=dev*) ;;
  *) die "dev-mode build did not leave a dev build in $KC_DIST_DIR/lib/quarkus" ;;
esac

date -u +%Y-%m-%dT%H:%M:%SZ >"$marker"
log "Keycloak $KC_VERSION ready"
printf '%s\n' "$KC_DIST_DIR"
