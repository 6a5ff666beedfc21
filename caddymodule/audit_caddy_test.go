package caddymodule_test

// In-process Caddy tests of the audit trail: the Caddyfile of the README's
// "Audit trail" section (the audit logger to a file of its own, excluded
// from the default log), a mix of pushes, redemptions and rejections, and
// the exact events in each file.

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig"
)

// atGlobal routes the audit logger to audit.log and everything else to
// default.log, as the README shows.
func atGlobal(dir string) string {
	return fmt.Sprintf(`log default {
		output file %s
		format json
		exclude http.handlers.oauth_par.audit
	}
	log oauth_par_audit {
		output file %s {
			roll_size 100MiB
			roll_keep 10
			roll_keep_for 90d
		}
		format json {
			time_format rfc3339_nano
		}
		include http.handlers.oauth_par.audit
	}`, filepath.Join(dir, "default.log"), filepath.Join(dir, "audit.log"))
}

// atLines parses a JSON log file.
func atLines(t *testing.T, path string) []map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []map[string]any
	for _, l := range bytes.Split(b, []byte("\n")) {
		if len(l) == 0 {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal(l, &m); err != nil {
			t.Fatalf("%s: line is not JSON: %q", path, l)
		}
		out = append(out, m)
	}
	return out
}

// atEvent is an expected audit event: endpoint, client_id, outcome,
// error, request_uri_fp, auth_method (client_ip is 127.0.0.1).
type atEvent [6]string

const (
	atStateSentinel = "STATE-SENTINEL-a8f3"
	atNonceSentinel = "NONCE-SENTINEL-77c1"
	atHintSentinel  = "HINT-SENTINEL@example.test"
	atVerifier      = "audit-verifier-0123456789-abcdefghijklmnopqrstuv"
)

// atRun sends the operations and returns the events the audit trail must
// hold, in order, and the values that must never appear in any log.
func atRun(t *testing.T, c *ctCaddy) ([]atEvent, []string) {
	t.Helper()
	fp := func(uri string) string {
		s := sha256.Sum256([]byte(strings.TrimPrefix(uri, ctURNPrefix)))
		return hex.EncodeToString(s[:6])
	}
	form := ctWith(ctAppForm(), "state", atStateSentinel, "nonce", atNonceSentinel, "login_hint", atHintSentinel,
		"code_challenge", ctChallenge(atVerifier), "redirect_uri", "https://app.example.test/cb2")
	spa := ctWith(ctSPAForm(), "state", atStateSentinel)

	basic := c.mustPush(t, form, ctBasic(ctAppID, ctAppSecret))
	post := c.mustPush(t, ctWith(form, "client_secret", ctAppSecret), nil)
	public := c.mustPush(t, spa, nil)
	if r := c.get(t, ctRedeemQuery(ctAppID, basic), nil); r.Status != http.StatusOK {
		t.Fatalf("redeem: %s", r)
	}
	ctWantHTMLError(t, c.get(t, ctRedeemQuery(ctAppID, basic), nil), http.StatusBadRequest, "invalid_request_uri")
	// A stolen request_uri presented by another client: not burnt.
	ctWantHTMLError(t, c.get(t, ctRedeemQuery(ctSPAID, post), nil), http.StatusBadRequest, "invalid_request_uri")
	ctWantJSONError(t, c.postForm(t, "/par", form.Encode(), ctBasic(ctAppID, ctAppSecret+"-wrong")), http.StatusUnauthorized, "invalid_client")
	ctWantJSONError(t, c.pushApp(t, ctWith(form, "scope", "admin")), http.StatusBadRequest, "invalid_scope")
	if r := c.get(t, "/par", nil); r.Status != http.StatusMethodNotAllowed {
		t.Fatalf("GET /par: %s", r)
	}
	strict := ctWith(form, "client_id", ctStrictID, "redirect_uri", ctStrictRedir)
	if r := c.get(t, "/authorize?"+strict.Encode(), nil); r.Status != http.StatusSeeOther {
		t.Fatalf("unpushed request of strict-app: %s", r)
	}
	// Passed through: not an audit event.
	if r := c.get(t, "/authorize?"+ctWith(spa, "client_id", ctSPAID).Encode(), nil); r.Status != http.StatusOK {
		t.Fatalf("pass-through: %s", r)
	}
	if r := c.get(t, ctRedeemQuery(ctSPAID, public), nil); r.Status != http.StatusOK {
		t.Fatalf("redeem spa: %s", r)
	}

	events := []atEvent{
		{"par", ctAppID, "issued", "", fp(basic), "client_secret_basic"},
		{"par", ctAppID, "issued", "", fp(post), "client_secret_post"},
		{"par", ctSPAID, "issued", "", fp(public), "none"},
		{"authorize", ctAppID, "redeemed", "", fp(basic), ""},
		{"authorize", ctAppID, "rejected", "invalid_request_uri", fp(basic), ""},
		{"authorize", ctSPAID, "rejected", "invalid_request_uri", fp(post), ""},
		{"par", ctAppID, "rejected", "invalid_client", "", "client_secret_basic"},
		{"par", ctAppID, "rejected", "invalid_scope", "", "client_secret_basic"},
		{"par", "", "rejected", "invalid_request", "", ""},
		{"authorize", ctStrictID, "rejected", "invalid_request", "", ""},
		{"authorize", ctSPAID, "redeemed", "", fp(public), ""},
	}
	never := []string{
		atStateSentinel, atNonceSentinel, atHintSentinel, url.QueryEscape(atHintSentinel),
		ctChallenge(atVerifier), atVerifier, "app.example.test", "spa.example.test", "strict.example.test",
		ctAppSecret, url.QueryEscape(ctAppSecret), "openid",
	}
	for _, u := range []string{basic, post, public} {
		ref := strings.TrimPrefix(u, ctURNPrefix)
		never = append(never, ref, ref[:12], ref[len(ref)-12:])
	}
	return events, never
}

// atWait reads path until it has n lines (log writes are synchronous, so
// this is only a guard against a slow disk).
func atWait(t *testing.T, path string, n int) []map[string]any {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		lines := atLines(t, path)
		if len(lines) >= n || time.Now().After(deadline) {
			return lines
		}
		time.Sleep(20 * time.Millisecond)
	}
}

var atFields = []string{"auth_method", "client_id", "client_ip", "endpoint", "error", "level", "logger", "msg", "outcome", "request_uri_fp", "ts"}

func TestCaddyAuditTrailHasOneEventPerOperationAndNothingElse(t *testing.T) {
	dir := t.TempDir()
	up := ctNewUpstream(t, nil)
	c := ctStart(t, up, atGlobal(dir), ctBlock())
	events, never := atRun(t, c)

	audit := atWait(t, filepath.Join(dir, "audit.log"), len(events))
	if len(audit) != len(events) {
		for _, l := range audit {
			t.Logf("audit: %v", l)
		}
		t.Fatalf("audit.log has %d events, want %d", len(audit), len(events))
	}
	if raw, err := os.ReadFile(filepath.Join(dir, "audit.log")); err == nil {
		first, _, _ := bytes.Cut(raw, []byte("\n"))
		t.Logf("first audit event: %s", first)
	}
	for i, l := range audit {
		w := events[i]
		var keys []string
		for k := range l {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		if !slices.Equal(keys, atFields) {
			t.Errorf("event %d has fields %v, want exactly %v", i, keys, atFields)
		}
		got := atEvent{}
		for j, k := range []string{"endpoint", "client_id", "outcome", "error", "request_uri_fp", "auth_method"} {
			got[j], _ = l[k].(string)
		}
		if got != w {
			t.Errorf("event %d = %q, want %q", i, got, w)
		}
		if l["logger"] != "http.handlers.oauth_par.audit" || l["level"] != "info" || l["client_ip"] != "127.0.0.1" {
			t.Errorf("event %d: logger %v level %v client_ip %v", i, l["logger"], l["level"], l["client_ip"])
		}
		if want := "request " + w[2]; l["msg"] != want {
			t.Errorf("event %d: msg %v, want %q", i, l["msg"], want)
		}
		if ts, _ := l["ts"].(string); ts == "" {
			t.Errorf("event %d: ts %v", i, l["ts"])
		} else if when, err := time.Parse(time.RFC3339Nano, ts); err != nil || time.Since(when) > time.Minute || time.Since(when) < 0 {
			t.Errorf("event %d: ts %q: %v", i, ts, err)
		}
	}

	// Nothing of it reaches the default log, and no log holds a pushed
	// value, a secret or a request_uri.
	deflt := atLines(t, filepath.Join(dir, "default.log"))
	if len(deflt) == 0 {
		t.Fatal("default.log is empty: the logging config did not apply")
	}
	for _, l := range deflt {
		if _, outcome := l["outcome"]; outcome || l["logger"] == "http.handlers.oauth_par.audit" {
			t.Errorf("default.log has an outcome line: %v", l)
		}
	}
	for _, name := range []string{"audit.log", "default.log"} {
		b, _ := os.ReadFile(filepath.Join(dir, name))
		for _, s := range never {
			if bytes.Contains(b, []byte(s)) {
				t.Errorf("%s contains %q", name, s)
			}
		}
	}
}

// With `audit off` there is no audit event; rejections are logged by the
// handler's logger, at info, as before the audit trail existed.
func TestCaddyAuditOffLogsRejectionsOnTheHandlerLogger(t *testing.T) {
	dir := t.TempDir()
	up := ctNewUpstream(t, nil)
	c := ctStart(t, up, atGlobal(dir), ctBlock("audit off"))
	events, never := atRun(t, c)

	var rejections int
	for _, e := range events {
		if e[2] == "rejected" {
			rejections++
		}
	}
	deflt := atWait(t, filepath.Join(dir, "default.log"), 1)
	var ours []map[string]any
	for _, l := range deflt {
		if _, outcome := l["outcome"]; outcome {
			ours = append(ours, l)
		}
	}
	if len(ours) != rejections {
		t.Errorf("default.log has %d outcome lines, want the %d rejections: %v", len(ours), rejections, ours)
	}
	for _, l := range ours {
		if l["logger"] != "http.handlers.oauth_par" || l["level"] != "info" || l["msg"] != "request rejected" || l["error"] == nil {
			t.Errorf("unexpected line: %v", l)
		}
	}
	if a := atLines(t, filepath.Join(dir, "audit.log")); len(a) != 0 {
		t.Errorf("audit off, yet audit.log has %d events: %v", len(a), a)
	}
	b, _ := os.ReadFile(filepath.Join(dir, "default.log"))
	for _, s := range never {
		if bytes.Contains(b, []byte(s)) {
			t.Errorf("default.log contains %q", s)
		}
	}
}

func atAdapt(caddyfile string) (string, error) {
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), map[string]any{"filename": "Caddyfile"})
	return string(cfg), err
}

func TestCaddyfileAuditDirective(t *testing.T) {
	for _, tc := range []struct{ line, want, err string }{
		{"audit off", `"disable_audit":true`, ""},
		{"audit on", "", ""},
		{"audit", "", "missing value"},
		{"audit maybe", "", "not on or off"},
		{"audit off on", "", "too many arguments"},
	} {
		cfg, err := atAdapt("http://127.0.0.1:1 {\n\toauth_par {\n\t\tauthorization_endpoint /authorize\n\t\t" + tc.line + "\n\t}\n}\n")
		switch {
		case tc.err != "":
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: want an error with %q, got %v", tc.line, tc.err, err)
			}
		case err != nil:
			t.Errorf("%q: %v", tc.line, err)
		case tc.want != "" && !strings.Contains(cfg, tc.want):
			t.Errorf("%q: adapted JSON lacks %s: %s", tc.line, tc.want, cfg)
		case tc.want == "" && strings.Contains(cfg, "disable_audit"):
			t.Errorf("%q: adapted JSON has disable_audit: %s", tc.line, cfg)
		}
	}
}
