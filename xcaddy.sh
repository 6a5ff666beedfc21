#!/usr/bin/env bash
# Builds ./caddy from this checkout with xcaddy: Caddy plus the oauth_par
# module, the way operators add plugins to their own Caddy builds.
#
#   ./xcaddy.sh                        # ./caddy with Caddy $CADDY_VERSION
#   ./xcaddy.sh --with github.com/...  # extra xcaddy arguments are passed on
#
# xcaddy itself is pinned in cmd/tools/go.mod and built by the Go toolchain,
# so nothing is installed by hand.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CADDY_VERSION=${CADDY_VERSION:-v2.11.9}

xcaddy=$(go -C "$root/cmd/tools" tool -n xcaddy)

# Our module is not published, and a module proxy that answers 403 (rather
# than 404) for unknown paths stops Go's module lookup for the subpackage.
# So fetch everything this checkout needs into the module cache first, and
# let xcaddy's build resolve from that cache only (checksums were verified
# when the modules were downloaded).
go -C "$root" mod download
export GOPROXY="file://$(go env GOMODCACHE)/cache/download" GOSUMDB=off GOFLAGS=

"$xcaddy" build "$CADDY_VERSION" \
	--with github.com/caddy-par/caddy-par/caddymodule \
	--replace "github.com/caddy-par/caddy-par=$root" \
	--output "$root/caddy" "$@"

"$root/caddy" list-modules | grep -qx 'http.handlers.oauth_par' || {
	echo "xcaddy.sh: the built ./caddy lacks http.handlers.oauth_par" >&2
	exit 1
}
echo "built $root/caddy: Caddy $("$root/caddy" version | cut -d' ' -f1) with oauth_par"
