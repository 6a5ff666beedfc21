package integration

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddy-par/caddy-par/integration/internal/harness"
)

// kcRedisTwoGateways: the Keycloak browser flow with two gateways sharing
// one redis-server. The client discovers and pushes through gateway A (the
// origin Keycloak is configured with), and the browser is sent to gateway
// B, which redeems the request_uri from Redis and forwards it to Keycloak.
// Keycloak's own pages then point back to A (its fixed hostname), as they
// would to a load balancer's name. It replaces the suite's gateway on A's
// port, so it runs last.
func kcRedisTwoGateways(t *testing.T, e *idpEnv, gwBin string, base harness.GatewayConfig) {
	dir := e.subtestDir(t)
	ports, err := harness.FreePorts(2)
	if err != nil {
		t.Fatal(err)
	}
	r, err := harness.StartRedis(suiteCtx, filepath.Join(dir, "redis"), ports[0])
	if err != nil {
		t.Fatal(err)
	}
	defer r.Stop()
	key := base64.StdEncoding.EncodeToString([]byte(randHex(16)))
	env := []string{"WEB_APP_SECRET=" + e.secret, "PAR_REDIS_KEY=" + key}
	store := []string{"store redis {", "	address " + r.Addr(), "	encryption_key {env.PAR_REDIS_KEY}", "}"}

	e.gw.Stop(5 * time.Second) // frees A's port (Keycloak's hostname)
	var gws [2]*harness.Gateway
	for i, port := range []int{base.Port, ports[1]} {
		cfg := base
		cfg.Port = port
		cfg.LogPath = filepath.Join(dir, fmt.Sprintf("gateway-%c.log", 'A'+i))
		cfg.Extra = append(append([]string{}, base.Extra...), store...)
		gw, err := harness.StartGateway(suiteCtx, gwBin, filepath.Join(dir, fmt.Sprintf("gateway-%c", 'A'+i)), cfg, env)
		if err != nil {
			t.Fatal(err)
		}
		defer gw.Stop(5 * time.Second)
		gws[i] = gw
	}
	a, b := gws[0].Config, gws[1].Config
	t.Logf("gateway A %s (pushes), gateway B %s (redemptions), redis %s", a.Origin(), b.Origin(), r.Addr())

	cfg := e.flow("web-app")
	cfg.Scope = e.confScope // not just "openid", which is in every Keycloak path
	cfg.AuthorizationOrigin = b.Origin()
	res := runFlow(t, dir, cfg)
	requireTokens(t, res)
	if res.ParRequest == nil || res.ParRequest.URL != a.Origin()+a.PAREndpoint {
		t.Errorf("PAR request = %+v, want it at gateway A %s", res.ParRequest, a.Origin()+a.PAREndpoint)
	}
	checkOnlyRequestURIInAuthorizationURL(t, res, b.Origin()+b.AuthorizationEndpoint)
	checkNothingPushedInBrowserURLs(t, res)
	if !res.LoginPageSeen {
		t.Error("Keycloak's login page was not shown")
	}
	if !res.NonceMatches || !res.IssMatches || !res.AudMatches {
		t.Errorf("id_token: nonceMatches=%v issMatches=%v audMatches=%v", res.NonceMatches, res.IssMatches, res.AudMatches)
	}
	if got := res.Tokens.IDTokenClaims["nonce"]; got != res.pushed("nonce") || got == "" {
		t.Errorf("id_token nonce %v != pushed %q: Keycloak did not get the request pushed at A", got, res.pushed("nonce"))
	}
	// The push was stored by A and redeemed by B, from Redis.
	if n := countOutcome(t, a.LogPath, "par", "issued"); n != 1 {
		t.Errorf("gateway A logged %d pushes, want 1", n)
	}
	if n := countOutcome(t, b.LogPath, "authorize", "redeemed"); n != 1 {
		t.Errorf("gateway B logged %d redemptions, want 1", n)
	}
	if n := countOutcome(t, a.LogPath, "authorize", "redeemed"); n != 0 {
		t.Errorf("gateway A redeemed %d requests, want 0", n)
	}
	keys, _ := r.CLI("--scan")
	if ref := strings.TrimPrefix(*res.RequestURI, "urn:ietf:params:oauth:request_uri:"); strings.Contains(keys, ref) {
		t.Error("the request_uri reference is a Redis key")
	}
}

// countOutcome counts the gateway's outcome log lines for endpoint.
func countOutcome(t *testing.T, path, endpoint, outcome string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(string(b), "\n") {
		var l struct {
			Logger   string `json:"logger"`
			Endpoint string `json:"endpoint"`
			Outcome  string `json:"outcome"`
		}
		if json.Unmarshal([]byte(line), &l) == nil && strings.HasPrefix(l.Logger, "http.handlers.oauth_par") && l.Endpoint == endpoint && l.Outcome == outcome {
			n++
		}
	}
	return n
}
