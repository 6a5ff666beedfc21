// Command demo runs the caddy-par gateway in front of the embedded Dex
// server on 127.0.0.1, with one confidential client (demo-app) whose
// redirect URI is a small page served by the demo itself, and prints a
// walk-through: push with curl, open the authorization URL in a browser,
// sign in, land on the callback. It runs until Ctrl-C and then stops
// everything it started.
//
//	cd integration && go run ./demo
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"html/template"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/caddy-par/caddy-par/integration/internal/harness"
)

// The PKCE pair of RFC 7636 Appendix B, so the walk-through can be
// copy-pasted.
const (
	pkceVerifier  = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
	pkceChallenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
	clientID      = "demo-app"
	userEmail     = "alice@example.com"
)

func main() {
	gwPort := flag.Int("port", 0, "gateway port on 127.0.0.1 (0: a free port)")
	keep := flag.Bool("keep", false, "keep the work dir (Caddyfile, gateway.log, dex.log) on exit")
	flag.Parse()
	if err := run(*gwPort, *keep); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(gwPort int, keep bool) (err error) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	// Whatever happens from here on, every child process is stopped.
	defer harness.StopAll()

	work, err := os.MkdirTemp("", "caddy-par-demo-")
	if err != nil {
		return err
	}
	defer func() {
		if keep {
			fmt.Printf("work dir kept: %s\n", work)
		} else {
			os.RemoveAll(work)
		}
	}()

	logw := prefixWriter{os.Stderr, "demo: "}
	gwBin, err := harness.BuildGateway(ctx, logw)
	if err != nil {
		return err
	}
	dexBin, err := harness.BuildDex(ctx, logw)
	if err != nil {
		return err
	}

	ports, err := harness.FreePorts(3)
	if err != nil {
		return err
	}
	if gwPort == 0 {
		gwPort = ports[0]
	}
	dexPort, cbPort := ports[1], ports[2]
	origin := fmt.Sprintf("http://127.0.0.1:%d", gwPort)
	issuer := origin + "/dex"
	redirectURI := fmt.Sprintf("http://127.0.0.1:%d/callback", cbPort)
	secret := "demo-" + randHex(12)
	password := "pw-" + randHex(6)

	// The client app: a start page that pushes and redirects like a real
	// app would, and a callback page that shows what it received.
	app := &demoApp{origin: origin, issuer: issuer, redirectURI: redirectURI, secret: secret}
	cbLn, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", cbPort))
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: app.routes(), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(cbLn) }()
	defer srv.Close()

	dex, err := harness.StartDex(ctx, dexBin, work, harness.DexConfig{
		Port:         dexPort,
		Issuer:       issuer,
		UserEmail:    userEmail,
		UserPassword: password,
		Clients:      []harness.DexClient{{ID: clientID, Secret: secret, Name: "caddy-par demo", RedirectURIs: []string{redirectURI}}},
		LogPath:      filepath.Join(work, "dex.log"),
	})
	if err != nil {
		return err
	}
	defer dex.Stop(5 * time.Second)

	gw, err := harness.StartGateway(ctx, gwBin, work, harness.GatewayConfig{
		Port:                  gwPort,
		Upstream:              fmt.Sprintf("127.0.0.1:%d", dexPort),
		LogPath:               filepath.Join(work, "gateway.log"),
		LogLevel:              "INFO",
		AuthorizationEndpoint: "/dex/auth",
		PAREndpoint:           "/dex/par",
		RequirePAR:            true,
		Clients:               []harness.GatewayClient{{ID: clientID, SecretEnv: "DEMO_APP_SECRET", RedirectURIs: []string{redirectURI}}},
	}, []string{"DEMO_APP_SECRET=" + secret})
	if err != nil {
		return err
	}
	defer gw.Stop(5 * time.Second)

	caddyfile, _ := os.ReadFile(gw.CaddyfilePath)
	printWalkthrough(walkthrough{
		Origin: origin, Issuer: issuer, RedirectURI: redirectURI, Secret: secret,
		Email: userEmail, Password: password, Work: work, Caddyfile: string(caddyfile),
		AppURL: fmt.Sprintf("http://127.0.0.1:%d/", cbPort),
	})

	// Run until Ctrl-C, or until a child dies.
	select {
	case <-ctx.Done():
		fmt.Println("\ndemo: stopping the gateway and Dex")
	case <-exited(dex):
		return fmt.Errorf("Dex exited: %v\n%s", dex.ExitErr(), harness.Tail(dex.LogPath, 20))
	case <-exited(gw.Proc):
		return fmt.Errorf("the gateway exited: %v\n%s", gw.ExitErr(), harness.Tail(gw.Config.LogPath, 20))
	}
	return nil
}

func exited(p *harness.Proc) <-chan struct{} {
	c := make(chan struct{})
	go func() { _ = p.ExitErr(); close(c) }()
	return c
}

type walkthrough struct {
	Origin, Issuer, RedirectURI, Secret, Email, Password, Work, Caddyfile, AppURL string
}

func printWalkthrough(w walkthrough) {
	authz := w.Origin + "/dex/auth"
	fmt.Printf(`
caddy-par demo: the gateway in front of Dex, everything on 127.0.0.1
=====================================================================

Gateway (issuer %[2]s):
  discovery      %[2]s/.well-known/openid-configuration
  PAR endpoint   %[1]s/dex/par
  authorization  %[3]s
Client           %[4]s, secret %[5]s, redirect URI %[6]s
User             %[7]s / %[8]s
Logs             %[9]s/gateway.log and dex.log

The quick way: open %[10]s in a browser and click "Sign in".

The curl walk-through:

1. Push the authorization request (client_secret_basic):

curl -s -u '%[4]s:%[5]s' %[1]s/dex/par \
  -d client_id=%[4]s -d response_type=code \
  --data-urlencode 'redirect_uri=%[6]s' \
  --data-urlencode 'scope=openid email profile' \
  -d state=demo-state -d nonce=demo-nonce \
  -d code_challenge=%[11]s -d code_challenge_method=S256

   It answers 201 {"request_uri":"urn:ietf:params:oauth:request_uri:...","expires_in":60}.

2. Within 60 seconds, open this URL in a browser, with the request_uri from step 1:

%[3]s?client_id=%[4]s&request_uri=<request_uri>

   (curl users: REQUEST_URI=$(curl ... | sed 's/.*"request_uri":"\([^"]*\)".*/\1/')
    then open "%[3]s?client_id=%[4]s&request_uri=$REQUEST_URI")

3. Sign in on Dex's login page as %[7]s / %[8]s.
   The browser lands on %[6]s, which shows the code and state.
   The demo exchanges nothing; the callback page prints the curl for the
   token request (code_verifier %[12]s).

Things to try:
  - open the same authorization URL again: the gateway's invalid_request_uri page;
  - a plain authorization request, which require_par refuses (error=invalid_request on the callback):
    %[3]s?client_id=%[4]s&response_type=code&scope=openid&redirect_uri=%[13]s&state=plain

The Caddyfile:

%[14]s
Press Ctrl-C to stop.
`, w.Origin, w.Issuer, authz, clientID, w.Secret, w.RedirectURI, w.Email, w.Password, w.Work, w.AppURL,
		pkceChallenge, pkceVerifier, url.QueryEscape(w.RedirectURI), indent(w.Caddyfile, "    "))
	fmt.Printf("demo ready: gateway=%s app=%s callback=%s user=%s password=%s\n", w.Origin, w.AppURL, w.RedirectURI, w.Email, w.Password)
}

func indent(s, p string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	for i, l := range lines {
		lines[i] = p + strings.ReplaceAll(l, "\t", "    ")
	}
	return strings.Join(lines, "\n") + "\n"
}

// demoApp is the client's side: a start page and the redirect URI.
type demoApp struct {
	origin, issuer, redirectURI, secret string
}

func (a *demoApp) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", a.home)
	mux.HandleFunc("POST /start", a.start)
	mux.HandleFunc("GET /callback", a.callback)
	return mux
}

var page = template.Must(template.New("page").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{.Title}}</title>
<style>body{font-family:system-ui,sans-serif;max-width:48rem;margin:3rem auto;padding:0 1rem;color:#222}
code,pre{background:#f2f2f2;padding:.1rem .3rem}pre{padding:.8rem;white-space:pre-wrap;word-break:break-all}
th{text-align:left;padding-right:1rem}</style></head><body>
<h1 id="title">{{.Title}}</h1>
{{if .Start}}<p>This page plays the client application <code>demo-app</code>. The button pushes the
authorization request to the gateway's PAR endpoint (server side, with the client secret) and sends the
browser to the authorization endpoint with only <code>client_id</code> and <code>request_uri</code>.</p>
<form method="post" action="/start"><button type="submit" id="sign-in">Sign in</button></form>{{end}}
{{if .Params}}<table id="params">{{range .Params}}<tr><th>{{.K}}</th><td><code>{{.V}}</code></td></tr>{{end}}</table>{{end}}
{{if .Curl}}<p>The demo exchanges nothing. To redeem the code yourself (once, within a minute):</p><pre id="token-curl">{{.Curl}}</pre>{{end}}
{{if .Note}}<p>{{.Note}}</p>{{end}}
<p><a href="/">Start again</a></p>
</body></html>
`))

type kv struct{ K, V string }

type pageData struct {
	Title  string
	Start  bool
	Params []kv
	Curl   string
	Note   string
}

func render(w http.ResponseWriter, status int, d pageData) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = page.Execute(w, d)
}

func (a *demoApp) home(w http.ResponseWriter, r *http.Request) {
	render(w, 200, pageData{Title: "caddy-par demo app", Start: true})
}

// start pushes the request and redirects the browser.
func (a *demoApp) start(w http.ResponseWriter, r *http.Request) {
	form := url.Values{
		"client_id": {clientID}, "response_type": {"code"}, "redirect_uri": {a.redirectURI},
		"scope": {"openid email profile"}, "state": {"st-" + randHex(6)}, "nonce": {"n-" + randHex(8)},
		"code_challenge": {pkceChallenge}, "code_challenge_method": {"S256"},
	}
	req, _ := http.NewRequestWithContext(r.Context(), http.MethodPost, a.origin+"/dex/par", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(clientID, a.secret)
	resp, err := harness.HTTPClient.Do(req)
	if err != nil {
		render(w, 502, pageData{Title: "Push failed", Note: err.Error()})
		return
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	var par struct {
		RequestURI string `json:"request_uri"`
	}
	if resp.StatusCode != http.StatusCreated || json.Unmarshal(body, &par) != nil || par.RequestURI == "" {
		render(w, 502, pageData{Title: "Push failed", Note: fmt.Sprintf("%s: %s", resp.Status, body)})
		return
	}
	q := url.Values{"client_id": {clientID}, "request_uri": {par.RequestURI}}
	http.Redirect(w, r, a.origin+"/dex/auth?"+q.Encode(), http.StatusSeeOther)
}

func (a *demoApp) callback(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	d := pageData{Title: "Callback received"}
	for _, k := range []string{"code", "state", "iss", "error", "error_description"} {
		if v := q.Get(k); v != "" {
			d.Params = append(d.Params, kv{k, v})
		}
	}
	if q.Get("error") != "" {
		d.Title = "Callback: authorization error"
	} else if code := q.Get("code"); code != "" {
		d.Curl = fmt.Sprintf("curl -s -u '%s:%s' %s/dex/token \\\n  -d grant_type=authorization_code -d code=%s \\\n  --data-urlencode 'redirect_uri=%s' \\\n  -d code_verifier=%s",
			clientID, a.secret, a.origin, url.QueryEscape(code), a.redirectURI, pkceVerifier)
	}
	render(w, 200, d)
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

type prefixWriter struct {
	w      io.Writer
	prefix string
}

func (p prefixWriter) Write(b []byte) (int, error) {
	for _, l := range strings.SplitAfter(string(b), "\n") {
		if l != "" {
			fmt.Fprint(p.w, p.prefix+l)
		}
	}
	return len(b), nil
}
