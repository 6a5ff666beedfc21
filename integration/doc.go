// Package integration holds the end-to-end tests of caddy-par: the built
// gateway in front of real IdPs (the embedded Dex server and Keycloak),
// driven by a real PAR client library (openid-client) and a real browser
// (Chromium), all on 127.0.0.1. See README.md.
package integration
