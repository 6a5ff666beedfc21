#!/usr/bin/env bash
# smoke-login.sh KC_URL [PUBLIC_URL]
#
# Logs alice in to the demo realm with curl only, talking straight to
# Keycloak (not through the gateway): authorization code + PKCE S256 for the
# confidential client web-app, client_secret_basic at the token endpoint, then
# a refresh. Because Keycloak writes PUBLIC_URL into the login form's action,
# the script rewrites that origin to KC_URL when they differ.
#
# Environment: CLIENT_ID, CLIENT_SECRET, REDIRECT_URI, KC_USER, KC_PASSWORD,
# REALM, AUTH_METHOD (GET or POST).
#
# Exits 0 and prints "login ok" on success. Loopback only; every curl call is
# bounded by --max-time.
set -euo pipefail

KC_URL=${1:?usage: smoke-login.sh KC_URL [PUBLIC_URL]}
PUBLIC_URL=${2:-$KC_URL}
REALM=${REALM:-demo}
CLIENT_ID=${CLIENT_ID:-web-app}
CLIENT_SECRET=${CLIENT_SECRET:-web-app-secret}
USERNAME=${KC_USER:-alice}
PASSWORD=${KC_PASSWORD:-alice-password}
REDIRECT_URI=${REDIRECT_URI:-http://127.0.0.1:65000/callback}
# AUTH_METHOD=POST sends the authorization request as a form POST (OIDC Core 3.1.2.1).
AUTH_METHOD=${AUTH_METHOD:-GET}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
jar=$work/cookies

b64url() { base64 -w0 | tr '+/' '-_' | tr -d '='; }
verifier=$(head -c 48 /dev/urandom | b64url)
challenge=$(printf '%s' "$verifier" | openssl dgst -sha256 -binary | b64url)
state=$(head -c 12 /dev/urandom | b64url)
nonce=$(head -c 12 /dev/urandom | b64url)

c() { curl -sS --max-time 20 "$@"; }

auth_url="$KC_URL/realms/$REALM/protocol/openid-connect/auth"
get_flag=(-G)
if [ "$AUTH_METHOD" = POST ]; then get_flag=(); fi
c -c "$jar" -b "$jar" -o "$work/login.html" -w '%{http_code}\n' "${get_flag[@]}" "$auth_url" \
  --data-urlencode "client_id=$CLIENT_ID" \
  --data-urlencode "response_type=code" \
  --data-urlencode "scope=openid email profile" \
  --data-urlencode "redirect_uri=$REDIRECT_URI" \
  --data-urlencode "state=$state" \
  --data-urlencode "nonce=$nonce" \
  --data-urlencode "code_challenge=$challenge" \
  --data-urlencode "code_challenge_method=S256" >"$work/status"
[ "$(cat "$work/status")" = 200 ] || { echo "auth GET: HTTP $(cat "$work/status")" >&2; exit 1; }

# <form id="kc-form-login" ... action="...">; the action is HTML-escaped (&amp;).
action=$(grep -o 'action="[^"]*"' "$work/login.html" | head -n1 | sed -e 's/^action="//' -e 's/"$//' -e 's/&amp;/\&/g')
[ -n "$action" ] || { echo "no form action in login page" >&2; exit 1; }
action=${action/#"$PUBLIC_URL"/"$KC_URL"}

c -c "$jar" -b "$jar" -o /dev/null -D "$work/post.headers" "$action" \
  --data-urlencode "username=$USERNAME" \
  --data-urlencode "password=$PASSWORD" \
  --data-urlencode "credentialId="
location=$(grep -i '^location:' "$work/post.headers" | head -n1 | cut -d' ' -f2- | tr -d '\r')
case $location in
  "$REDIRECT_URI"\?*) ;;
  *) echo "login POST did not redirect to the client: ${location:-<none>}" >&2; head -n1 "$work/post.headers" >&2; exit 1 ;;
esac
query=${location#*\?}
param() { printf '%s\n' "$query" | tr '&' '\n' | sed -n "s/^$1=//p" | head -n1; }
code=$(param code)
[ "$(param state)" = "$state" ] || { echo "state mismatch" >&2; exit 1; }
echo "redirect: iss=$(param iss) code=${code:0:12}..."

token_url="$KC_URL/realms/$REALM/protocol/openid-connect/token"
c -u "$CLIENT_ID:$CLIENT_SECRET" -o "$work/token.json" "$token_url" \
  --data-urlencode "grant_type=authorization_code" \
  --data-urlencode "code=$code" \
  --data-urlencode "redirect_uri=$REDIRECT_URI" \
  --data-urlencode "code_verifier=$verifier"
refresh=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["refresh_token"]) if "access_token" in d and "id_token" in d else sys.exit("token response: %s" % d)' "$work/token.json")
echo "token: access_token + id_token + refresh_token received"

c -u "$CLIENT_ID:$CLIENT_SECRET" -o "$work/refresh.json" "$token_url" \
  --data-urlencode "grant_type=refresh_token" \
  --data-urlencode "refresh_token=$refresh"
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); "access_token" in d or sys.exit("refresh response: %s" % d)' "$work/refresh.json"
echo "refresh: new access_token received"
echo "login ok"
