package harness

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// DexClient is a static client of the embedded Dex server.
type DexClient struct {
	ID, Secret, Name string // no Secret: public client
	RedirectURIs     []string
}

// DexConfig are the flags of the embedded Dex server (integration/dex).
type DexConfig struct {
	Port         int
	Issuer       string // e.g. http://127.0.0.1:GW/dex
	UserEmail    string // login name; default alice@example.com
	UserPassword string
	Clients      []DexClient
	MaxURIBytes  int // 0: no limit (Dex has none)
	LogPath      string
}

// StartDex runs the Dex binary and waits for /dex/healthz.
func StartDex(ctx context.Context, bin, dir string, cfg DexConfig) (*Proc, error) {
	args := []string{bin,
		"-addr", fmt.Sprintf("127.0.0.1:%d", cfg.Port),
		"-issuer", cfg.Issuer,
		"-user-password", cfg.UserPassword,
	}
	if cfg.UserEmail != "" {
		args = append(args, "-user-email", cfg.UserEmail)
	}
	if cfg.MaxURIBytes > 0 {
		args = append(args, "-max-uri-bytes", fmt.Sprint(cfg.MaxURIBytes))
	}
	for _, c := range cfg.Clients {
		f := []string{"id=" + c.ID, "name=" + c.Name}
		if c.Secret != "" {
			f = append(f, "secret="+c.Secret)
		}
		for _, r := range c.RedirectURIs {
			f = append(f, "redirect="+r)
		}
		args = append(args, "-client", strings.Join(f, ";"))
	}
	p, err := Start(ProcSpec{Name: fmt.Sprintf("dex :%d", cfg.Port), Args: args, Dir: dir, LogPath: cfg.LogPath})
	if err != nil {
		return nil, err
	}
	url := fmt.Sprintf("http://127.0.0.1:%d/dex/healthz", cfg.Port)
	if err := WaitReady(ctx, p, url, 30*time.Second, func(s int) bool { return s == 200 }); err != nil {
		p.Stop(2 * time.Second)
		return nil, err
	}
	return p, nil
}
