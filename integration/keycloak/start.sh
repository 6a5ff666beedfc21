#!/usr/bin/env bash
# start.sh PORT PUBLIC_URL [extra kc.sh start-dev options...]
#
# Runs Keycloak (dev mode, embedded H2) in the foreground with the demo realm
# imported, HTTP on 127.0.0.1:PORT only, and every URL Keycloak emits (issuer,
# discovery endpoints, login form action, redirects) on PUBLIC_URL, e.g. the
# gateway's origin http://127.0.0.1:GWPORT. Keycloak's log goes to stdout.
#
# Ready when GET http://127.0.0.1:PORT/realms/demo/.well-known/openid-configuration
# returns 200. Stop it with SIGTERM (or SIGINT) to this process: kc.sh forwards
# the signal to the JVM. kc.sh runs java as a child, so SIGKILL to this pid
# alone leaves the JVM behind: start it in its own process group and signal
# the group (Go: SysProcAttr{Setpgid: true}; syscall.Kill(-pid, SIGTERM)).
#
# Environment (all optional):
#   KC_HOME          unpacked distribution (default: what fetch.sh prints;
#                    fetch.sh is run, and is a no-op once cached)
#   KC_RUN_DIR       this instance's state: H2 database (h2/) and import dir
#                    (import/). Default: a new mktemp -d under ${TMPDIR:-/tmp}
#                    (left behind; ~1 MB). Reusing a dir skips schema creation
#                    and the realm import (the realm already exists), which
#                    makes the start much faster.
#   KC_REALM_FILE    realm JSON to import (default: realm-demo.json here)
#   CADDY_PAR_WEB_APP_SECRET  secret of client web-app (placeholder in the
#                    realm file; default web-app-secret). Only applied when
#                    the realm is imported, i.e. on a fresh KC_RUN_DIR.
#   CADDY_PAR_FAPI_APP_SECRET  secret of client fapi-app (default
#                    fapi-app-secret), same rules. The gateway knows fapi-app
#                    by its public keys; Keycloak only by this secret.
#   CADDY_PAR_UPSTREAM_ONLY_APP_SECRET  secret of clients upstream-only-app
#                    and no-code-flow-app (default upstream-only-app-secret),
#                    same rules. The gateway does not know them: it checks
#                    their secret with Keycloak (upstream_client_auth).
#   KC_BOOTSTRAP_ADMIN_USERNAME / KC_BOOTSTRAP_ADMIN_PASSWORD
#                    master-realm admin (default admin / admin)
#   KC_HEAP          JVM heap flags (default: -Xms64m -Xmx512m)
#   KC_JAVA_HOME     JDK to use (default: see common.sh, JDK 21+)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=SCRIPTDIR/common.sh
. "$here/common.sh"

usage() {
  echo "usage: ${0##*/} PORT PUBLIC_URL [extra kc.sh start-dev options...]" >&2
  echo "  e.g. ${0##*/} 18080 http://127.0.0.1:18443" >&2
  exit 2
}

[ $# -ge 2 ] || usage
port=$1
public_url=${2%/}
shift 2

case $port in
  '' | *[!0-9]*) die "PORT must be a number, got '$port'" ;;
esac
if [ "$port" -lt 1 ] || [ "$port" -gt 65535 ]; then
  die "PORT out of range: $port"
fi
case $public_url in
  http://?* | https://?*) ;;
  *) die "PUBLIC_URL must be an absolute http(s) URL such as http://127.0.0.1:18443, got '$public_url'" ;;
esac

java_home=$(find_java_home)

if [ -z "${KC_HOME:-}" ]; then
  KC_HOME=$("$here/fetch.sh" | tail -n1)
fi
[ -x "$KC_HOME/bin/kc.sh" ] || die "no Keycloak distribution at KC_HOME=$KC_HOME (run fetch.sh)"
# kc.sh --import-realm points the importer at $KC_HOME/data/import whenever
# that directory exists, which would override the per-run import dir below.
if [ -d "$KC_HOME/data/import" ]; then
  die "$KC_HOME/data/import exists; remove it (start.sh imports from KC_RUN_DIR/import so runs do not interfere)"
fi

realm_file=${KC_REALM_FILE:-$here/realm-demo.json}
[ -r "$realm_file" ] || die "realm file not readable: $realm_file"

run_dir=${KC_RUN_DIR:-}
if [ -z "$run_dir" ]; then
  run_dir=$(mktemp -d "${TMPDIR:-/tmp}/caddy-par-keycloak.XXXXXX")
fi
mkdir -p "$run_dir/import" "$run_dir/h2"
run_dir=$(cd "$run_dir" && pwd)
cp "$realm_file" "$run_dir/import/realm-demo.json"

export JAVA_HOME=$java_home
export JAVA_OPTS_KC_HEAP=${KC_HEAP:--Xms64m -Xmx512m}
export KC_BOOTSTRAP_ADMIN_USERNAME=${KC_BOOTSTRAP_ADMIN_USERNAME:-admin}
export KC_BOOTSTRAP_ADMIN_PASSWORD=${KC_BOOTSTRAP_ADMIN_PASSWORD:-admin}
export CADDY_PAR_WEB_APP_SECRET=${CADDY_PAR_WEB_APP_SECRET:-web-app-secret}
export CADDY_PAR_FAPI_APP_SECRET=${CADDY_PAR_FAPI_APP_SECRET:-fapi-app-secret}
export CADDY_PAR_UPSTREAM_ONLY_APP_SECRET=${CADDY_PAR_UPSTREAM_ONLY_APP_SECRET:-upstream-only-app-secret}

log "Keycloak $KC_VERSION: http://127.0.0.1:$port (public $public_url), run dir $run_dir, JAVA_HOME=$java_home"

cd "$KC_HOME"
# -Dkeycloak.migration.dir: where --import-realm reads realm files from.
# --db-url: per-run H2 file (db=dev-file is the pre-built default; db-url is
#   a runtime option, so no rebuild).
# --hostname as a full URL (hostname v2): issuer and all frontend and
#   backchannel URLs are PUBLIC_URL, whichever Host the request came with.
# Health and metrics stay at their default (disabled; both are build-time
#   options), so the management port (9000) is not opened; the HTTP listener
#   binds 127.0.0.1 only.
exec "$KC_HOME/bin/kc.sh" \
  "-Dkeycloak.migration.dir=$run_dir/import" \
  start-dev \
  --http-host=127.0.0.1 \
  "--http-port=$port" \
  "--hostname=$public_url" \
  --import-realm \
  "--db-url=jdbc:h2:file:$run_dir/h2/keycloakdb;NON_KEYWORDS=VALUE" \
  "$@"
