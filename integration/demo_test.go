package integration

import (
	"encoding/base64"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/caddy-par/caddy-par/integration/internal/harness"
)

// TestDemo runs the demo (integration/demo) the way a user does, walks
// its start page → PAR push → Dex login → callback with plain HTTP, redeems
// the code with the curl parameters the callback page prints, then presses
// Ctrl-C and checks that everything it started is gone.
func TestDemo(t *testing.T) {
	art, err := resetArtifacts("TestDemo")
	if err != nil {
		t.Fatal(err)
	}
	needGateway(t) // the demo's own builds are then no-ops
	needDex(t)
	root, err := harness.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "demo")
	build := exec.CommandContext(suiteCtx, "go", "build", "-o", bin, "./demo")
	build.Dir = filepath.Join(root, "integration")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./demo: %v\n%s", err, out)
	}
	logPath := filepath.Join(art, "demo.log")
	demo, err := harness.Start(harness.ProcSpec{Name: "demo", Args: []string{bin}, Dir: art, LogPath: logPath})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { demo.Stop(10 * time.Second) })
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("demo output %s (tail):\n%s", logPath, harness.Tail(logPath, 40))
		}
	})

	ready := regexp.MustCompile(`demo ready: gateway=(\S+) app=(\S+) callback=(\S+) user=(\S+) password=(\S+)`)
	var m []string
	for deadline := time.Now().Add(90 * time.Second); m == nil; {
		b, _ := os.ReadFile(logPath)
		m = ready.FindStringSubmatch(string(b))
		if m == nil {
			if demo.Exited() || time.Now().After(deadline) {
				t.Fatalf("the demo did not get ready (exited=%v)", demo.Exited())
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	gw, app, callback, user, password := m[1], m[2], m[3], m[4], m[5]
	out, _ := os.ReadFile(logPath)
	secret := regexp.MustCompile(`secret (demo-[0-9a-f]+)`).FindStringSubmatch(string(out))
	workDir := regexp.MustCompile(`Logs\s+(\S+)/gateway\.log`).FindStringSubmatch(string(out))
	if secret == nil || workDir == nil || !strings.Contains(string(out), "curl -s -u 'demo-app:"+secret[1]+"' "+gw+"/dex/par") {
		t.Fatalf("the walk-through lacks the secret, the work dir or the push command:\n%s", out)
	}

	// The start page pushes and redirects with client_id + request_uri only.
	status, _, body := browserGet(t, app)
	if status != 200 || !strings.Contains(body, `id="sign-in"`) {
		t.Fatalf("start page: %d %q", status, clip(body, 200))
	}
	resp := do(t, http.MethodPost, app+"start", "", nil)
	loc := resp.Header.Get("Location")
	u, _ := url.Parse(loc)
	if resp.StatusCode != 303 || !strings.HasPrefix(loc, gw+"/dex/auth?") || len(u.Query()) != 2 || u.Query().Get("request_uri") == "" {
		t.Fatalf("POST /start: %d Location=%q", resp.StatusCode, loc)
	}
	// The gateway redeems it and follows Dex's bounce itself.
	resp = do(t, http.MethodGet, loc, "", nil)
	login := resp.Header.Get("Location")
	if resp.StatusCode != 302 || !strings.HasPrefix(login, "/dex/auth/local/login?") {
		t.Fatalf("authorization URL: %d Location=%q", resp.StatusCode, login)
	}
	status, _, body = browserGet(t, gw+login)
	if status != 200 || !strings.Contains(body, `name="password"`) {
		t.Fatalf("Dex login page: %d %q", status, clip(body, 200))
	}
	form := url.Values{"login": {user}, "password": {password}}
	resp = do(t, http.MethodPost, gw+login, form.Encode(), http.Header{"Content-Type": {"application/x-www-form-urlencoded"}})
	cb := resp.Header.Get("Location")
	if resp.StatusCode != 303 || !strings.HasPrefix(cb, callback+"?") {
		t.Fatalf("login: %d Location=%q", resp.StatusCode, cb)
	}
	status, _, body = browserGet(t, cb)
	code := mustQuery(t, cb, "code")
	if status != 200 || !strings.Contains(body, "Callback received") || !strings.Contains(body, code) || !strings.Contains(body, "code_verifier=") {
		t.Fatalf("callback page: %d %q", status, clip(body, 400))
	}
	// The token request the callback page prints works (through the gateway).
	tok := url.Values{"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {callback}, "code_verifier": {"dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"}}
	resp = do(t, http.MethodPost, gw+"/dex/token", tok.Encode(), http.Header{
		"Content-Type":  {"application/x-www-form-urlencoded"},
		"Authorization": {"Basic " + base64.StdEncoding.EncodeToString([]byte("demo-app:"+secret[1]))},
	})
	if resp.StatusCode != 200 {
		t.Errorf("token request: %d", resp.StatusCode)
	}

	// Ctrl-C: the demo stops the gateway and Dex and removes its work dir.
	kids := childrenOf(demo.Pid())
	if len(kids) < 2 {
		t.Errorf("expected the gateway and Dex as the demo's children, found %v", kids)
	}
	if err := syscall.Kill(demo.Pid(), syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case <-waitExit(demo):
	case <-time.After(20 * time.Second):
		t.Fatal("the demo did not exit within 20 s of SIGINT")
	}
	if err := demo.ExitErr(); err != nil {
		t.Errorf("demo exit: %v", err)
	}
	for _, origin := range []string{gw, strings.TrimSuffix(app, "/")} {
		if resp, err := harness.HTTPClient.Get(origin + "/"); err == nil {
			resp.Body.Close()
			t.Errorf("%s still answers after the demo exited", origin)
		}
	}
	if _, err := os.Stat(workDir[1]); !os.IsNotExist(err) {
		t.Errorf("work dir %s still exists (%v)", workDir[1], err)
	}
	for _, k := range kids {
		pid, _ := strconv.Atoi(strings.Fields(k)[0])
		if syscall.Kill(pid, 0) == nil {
			t.Errorf("left behind by the demo: %s", k)
		}
	}
}

func do(t *testing.T, method, u, body string, h http.Header) *http.Response {
	t.Helper()
	req, _ := http.NewRequest(method, u, strings.NewReader(body))
	for k, v := range h {
		req.Header[k] = v
	}
	resp, err := harness.HTTPClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, clip(u, 200), err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

func mustQuery(t *testing.T, u, k string) string {
	t.Helper()
	pu, err := url.Parse(u)
	if err != nil || pu.Query().Get(k) == "" {
		t.Fatalf("no %s in %s", k, u)
	}
	return pu.Query().Get(k)
}

func waitExit(p *harness.Proc) <-chan struct{} {
	c := make(chan struct{})
	go func() { _ = p.ExitErr(); close(c) }()
	return c
}

// childrenOf lists live processes whose parent is pid (from /proc), as
// "PID (comm)".
func childrenOf(pid int) []string {
	var out []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) > 1 && f[1] == strconv.Itoa(pid) && f[0] != "Z" {
			out = append(out, e.Name()+" "+s[:i+1])
		}
	}
	return out
}
