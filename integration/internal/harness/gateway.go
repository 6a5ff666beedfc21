package harness

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/template"
	"time"
)

// GatewayClient is one `client` block of the oauth_par directive.
type GatewayClient struct {
	ID string
	// SecretEnv names the environment variable holding the secret; the
	// Caddyfile says `secret {env.NAME}`. Empty means a public client,
	// unless Lines is set.
	SecretEnv    string
	RedirectURIs []string
	// Lines are more lines of the client block, as written (jwks_file,
	// auth_methods, require_dpop...). A client without SecretEnv but with
	// Lines is not marked public.
	Lines []string
}

// GatewayConfig is what the generated Caddyfile says.
type GatewayConfig struct {
	Port                  int    // the site is http://127.0.0.1:Port
	Upstream              string // host:port of the IdP
	LogPath               string // JSON log file
	LogLevel              string // default DEBUG
	AuthorizationEndpoint string
	PAREndpoint           string
	ForwardMethod         string // "", "get" or "post"
	RequirePAR            bool
	Clients               []GatewayClient
	// Extra lines inside the oauth_par block, as written.
	Extra []string
	// Admin, if set, is the admin API address (for caddy reload);
	// default: admin off.
	Admin string
}

// Origin is http://127.0.0.1:Port.
func (c GatewayConfig) Origin() string { return "http://127.0.0.1:" + strconv.Itoa(c.Port) }

var caddyfileTmpl = template.Must(template.New("Caddyfile").Funcs(template.FuncMap{"q": quote}).Parse(`{
	admin {{if .Admin}}{{.Admin}}{{else}}off{{end}}
	auto_https off
	log {
		output file {{q .LogPath}}
		format json
		level {{if .LogLevel}}{{.LogLevel}}{{else}}DEBUG{{end}}
	}
}

http://127.0.0.1:{{.Port}} {
	oauth_par {
		authorization_endpoint {{.AuthorizationEndpoint}}
		par_endpoint {{.PAREndpoint}}
{{- if .ForwardMethod}}
		forward_method {{.ForwardMethod}}
{{- end}}
{{- if .RequirePAR}}
		require_par
{{- end}}
{{- range .Extra}}
		{{.}}
{{- end}}
{{- range .Clients}}
		client {{.ID}} {
{{- if .SecretEnv}}
			secret {env.{{.SecretEnv}}}
{{- else if not .Lines}}
			public
{{- end}}
			redirect_uris{{range .RedirectURIs}} {{.}}{{end}}
{{- range .Lines}}
			{{.}}
{{- end}}
		}
{{- end}}
	}
	reverse_proxy {{.Upstream}}
}
`))

// QuoteCaddyfile quotes s as one Caddyfile token when it needs it.
func QuoteCaddyfile(s string) string { return quote(s) }

func quote(s string) string {
	if strings.ContainsAny(s, " \t\"{}#") {
		return strconv.Quote(s)
	}
	return s
}

// Caddyfile renders the configuration the way a user would write it.
func (c GatewayConfig) Caddyfile() (string, error) {
	var b strings.Builder
	err := caddyfileTmpl.Execute(&b, c)
	return b.String(), err
}

// Gateway is a running caddy-par gateway.
type Gateway struct {
	*Proc
	Config        GatewayConfig
	CaddyfilePath string
}

// StartGateway writes <dir>/Caddyfile and runs `caddy run --config
// Caddyfile --adapter caddyfile` with env (e.g. WEB_APP_SECRET=...), then
// waits until the PAR endpoint answers (405 to a GET, from the gateway
// itself). Caddy's own state (autosave, storage) stays under dir.
func StartGateway(ctx context.Context, bin, dir string, cfg GatewayConfig, env []string) (*Gateway, error) {
	text, err := cfg.Caddyfile()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	cf := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(cf, []byte(text), 0o644); err != nil {
		return nil, err
	}
	state := filepath.Join(dir, "caddy-state")
	env = append([]string{
		"XDG_CONFIG_HOME=" + filepath.Join(state, "config"),
		"XDG_DATA_HOME=" + filepath.Join(state, "data"),
	}, env...)
	p, err := Start(ProcSpec{
		Name:    fmt.Sprintf("gateway :%d", cfg.Port),
		Args:    []string{bin, "run", "--config", cf, "--adapter", "caddyfile"},
		Dir:     dir,
		Env:     env,
		LogPath: filepath.Join(dir, "gateway.stderr.log"),
	})
	if err != nil {
		return nil, err
	}
	g := &Gateway{Proc: p, Config: cfg, CaddyfilePath: cf}
	err = WaitReady(ctx, p, cfg.Origin()+cfg.PAREndpoint, 30*time.Second, func(s int) bool { return s == 405 })
	if err != nil {
		p.Stop(2 * time.Second)
		return nil, fmt.Errorf("%v\ngateway log %s:\n%s", err, cfg.LogPath, Tail(cfg.LogPath, 20))
	}
	return g, nil
}
