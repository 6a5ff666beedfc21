#!/usr/bin/env bash
# The project's one test command (README: "Test"). From a fresh clone on a
# fresh machine it installs what the tests need, idempotently, then runs:
#   1. static checks: gofmt, go vet (all three Go modules);
#   2. unit and in-process Caddy tests: go test -race ./... at the root,
#      then each native fuzz target of caddymodule for 10 s (README:
#      "Fuzzing" for a longer session);
#   3. end-to-end tests against real Keycloak and Dex upstreams, with
#      openid-client and headless Chromium, and two gateways sharing a
#      redis-server (integration/).
# Downloads are cached in ${CADDY_PAR_CACHE:-~/.cache/caddy-par}.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

step() { printf '\n== %s\n' "$*"; }

step "prerequisites"
bash integration/scripts/ensure-chromium.sh
bash integration/scripts/ensure-redis.sh
# The Redis store tests fail instead of skipping when redis-server is missing.
export CADDY_PAR_REQUIRE_REDIS=1
if [ ! -f integration/js/node_modules/.package-lock.json ] ||
	! cmp -s integration/js/package-lock.json integration/js/node_modules/.package-lock.json.src 2>/dev/null; then
	(cd integration/js && npm ci --no-audit --no-fund --loglevel=error)
	cp integration/js/package-lock.json integration/js/node_modules/.package-lock.json.src
fi
keycloak_home=$(bash integration/keycloak/fetch.sh | tail -n 1)
echo "keycloak: $keycloak_home"

step "static checks"
unformatted=$(gofmt -l caddymodule cmd integration)
if [ -n "$unformatted" ]; then
	echo "gofmt needed:" >&2
	echo "$unformatted" >&2
	exit 1
fi
go vet ./...
(cd integration && go vet ./...)
(cd integration/dex && go vet ./...)

step "unit and in-process Caddy tests"
go test -race -count=1 -timeout 10m ./...

step "fuzzing (bounded)"
# go test -fuzz takes one target per run, so they run one after another:
# 9 targets x 10 s, about 120 s with start-up. A crash fails the step and
# leaves its input in caddymodule/testdata/fuzz/<target>/: commit it as a
# regression seed. Minimizing each new input may take up to 60 s by default,
# which would eat a 10 s budget (FuzzJWT's inputs are long): cap it at 1 s.
for target in FuzzPushForm FuzzBasicAuth FuzzRequestURI FuzzRewriteMetadata \
	FuzzJWT FuzzCaddyfile FuzzParseDN FuzzAuthzResponse FuzzAuthorizationDetailTypes; do
	echo "-- $target"
	go test -run '^$' -fuzz "^${target}\$" -fuzztime 10s -fuzzminimizetime 1s ./caddymodule
done

step "end-to-end tests (Keycloak, Dex, openid-client, Chromium)"
(cd integration && go test -count=1 -timeout 25m ./...)
