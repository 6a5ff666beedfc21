package harness

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// FetchKeycloak runs integration/keycloak/fetch.sh (a no-op once the
// pinned distribution is cached; a download plus a one-off build the first
// time) and returns the distribution's path, the last line of its stdout.
// fetch.sh's progress goes to logw.
func FetchKeycloak(ctx context.Context, logw io.Writer) (string, error) {
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	script := filepath.Join(root, "integration", "keycloak", "fetch.sh")
	cmd := exec.CommandContext(ctx, "bash", script)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = logw
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s failed: %v (its messages are above / in the log)", script, err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	dist := strings.TrimSpace(lines[len(lines)-1])
	if st, err := os.Stat(filepath.Join(dist, "bin", "kc.sh")); err != nil || st.IsDir() {
		return "", fmt.Errorf("%s printed %q, which has no bin/kc.sh", script, dist)
	}
	return dist, nil
}

// KeycloakConfig starts integration/keycloak/start.sh.
type KeycloakConfig struct {
	Home      string // distribution (FetchKeycloak)
	Port      int    // Keycloak's own HTTP port on 127.0.0.1
	PublicURL string // the gateway's origin: issuer and every URL Keycloak emits
	RunDir    string // H2 database and import dir of this instance
	Secret    string // secret of client web-app (imported with the realm)
	// FAPISecret is the secret of client fapi-app (imported with the
	// realm; empty: start.sh's default).
	FAPISecret string
	// UpstreamOnlySecret is the secret of clients upstream-only-app and
	// no-code-flow-app, which only Keycloak knows (empty: start.sh's
	// default).
	UpstreamOnlySecret string
	LogPath            string
}

// KeycloakReadyTimeout bounds a Keycloak start: about 1.5 min on 2 busy
// cores with a fresh database.
const KeycloakReadyTimeout = 5 * time.Minute

// StartKeycloak runs start.sh in its own process group and waits until the
// demo realm's discovery document is served.
func StartKeycloak(ctx context.Context, cfg KeycloakConfig) (*Proc, error) {
	root, err := RepoRoot()
	if err != nil {
		return nil, err
	}
	script := filepath.Join(root, "integration", "keycloak", "start.sh")
	p, err := Start(ProcSpec{
		Name: fmt.Sprintf("keycloak :%d", cfg.Port),
		Args: []string{"bash", script, fmt.Sprint(cfg.Port), cfg.PublicURL},
		Dir:  cfg.RunDir,
		Env: []string{
			"KC_HOME=" + cfg.Home,
			"KC_RUN_DIR=" + cfg.RunDir,
			"CADDY_PAR_WEB_APP_SECRET=" + cfg.Secret,
			"CADDY_PAR_FAPI_APP_SECRET=" + cfg.FAPISecret,
			"CADDY_PAR_UPSTREAM_ONLY_APP_SECRET=" + cfg.UpstreamOnlySecret,
		},
		LogPath: cfg.LogPath,
	})
	if err != nil {
		return nil, err
	}
	url := fmt.Sprintf("http://127.0.0.1:%d/realms/demo/.well-known/openid-configuration", cfg.Port)
	if err := WaitReady(ctx, p, url, KeycloakReadyTimeout, func(s int) bool { return s == 200 }); err != nil {
		p.Stop(10 * time.Second)
		return nil, err
	}
	return p, nil
}
