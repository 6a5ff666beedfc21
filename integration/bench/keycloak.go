package main

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/caddy-par/caddy-par/integration/internal/harness"
)

// keycloakWarmup is the minimum unrecorded warmup for Keycloak: the JVM
// needs a while before its JIT has compiled the PAR path.
const keycloakWarmup = 15 * time.Second

// keycloakReadyTimeout bounds Keycloak's startup (first use: fetch.sh's
// download and build, then a fresh H2 database).
const keycloakReadyTimeout = 6 * time.Minute

// peerKeycloak measures Keycloak's PAR endpoint with the same client,
// parameters and load (behind -keycloak). It uses the Keycloak setup of
// integration/keycloak (start.sh, which runs fetch.sh: the pinned
// distribution, JDK 21+, Maven for the first download) with this
// directory's keycloak-realm.json: realm "bench", client web-app with
// secret s3cret, redirect URI https://app.example.com/callback, PKCE S256,
// default scopes profile and email.
func (e *env) peerKeycloak(r *row) error {
	start := filepath.Join(e.repoRoot, "integration", "keycloak", "start.sh")
	if _, err := os.Stat(start); err != nil {
		r.skipped = "integration/keycloak/start.sh not found"
		return nil
	}
	port, err := harness.FreePort()
	if err != nil {
		return err
	}
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	runDir := filepath.Join(e.tmp, "keycloak-run")
	env := e.childEnv(
		"KC_REALM_FILE="+filepath.Join(e.repoRoot, "integration", "bench", "keycloak-realm.json"),
		"KC_RUN_DIR="+runDir,
		"TMPDIR="+e.tmp,
	)
	// fetch.sh caches under $HOME/.cache/caddy-par: keep the real HOME (and
	// the caller's Java/Maven settings) so the cache is shared with the
	// other Keycloak tests.
	for _, k := range []string{"HOME", "CADDY_PAR_CACHE", "KC_HOME", "KC_JAVA_HOME", "JAVA_HOME", "KC_HEAP", "MAVEN_OPTS"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	c, err := e.start("keycloak", filepath.Dir(start), filepath.Join(e.tmp, "keycloak.log"), env, e.serverCPUs,
		"bash", start, strconv.Itoa(port), base)
	if err != nil {
		return err
	}
	e.servers = append(e.servers, c)
	logf("   starting Keycloak (start.sh %d %s); this can take a few minutes on first use", port, base)
	if err := harness.WaitReady(e.ctx, c, base+"/realms/bench/.well-known/openid-configuration", keycloakReadyTimeout, func(s int) bool { return s == http.StatusOK }); err != nil {
		return err
	}
	r.server = "Keycloak (integration/keycloak/start.sh, start-dev, H2) realm bench"
	spec, size := pushSpec(base+"/realms/bench/protocol/openid-connect/ext/par/request", false)
	spec.warmup = e.cfg.warmup
	if spec.warmup < keycloakWarmup {
		spec.warmup = keycloakWarmup
	}
	r.note("push body %d bytes, client_secret_basic; %s warmup for the JVM; start-dev mode (dev defaults, not a tuned production Keycloak)", size, spec.warmup)
	e.measure(r, c, spec)
	return nil
}
