package harness

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"time"
)

// Reload rewrites the gateway's Caddyfile from cfg and applies it with
// `caddy reload` through the admin API (cfg.Admin must be set, and be the
// address the gateway was started with).
func (g *Gateway) Reload(ctx context.Context, bin string, cfg GatewayConfig) error {
	if cfg.Admin == "" {
		return fmt.Errorf("reload needs GatewayConfig.Admin")
	}
	text, err := cfg.Caddyfile()
	if err != nil {
		return err
	}
	if err := os.WriteFile(g.CaddyfilePath, []byte(text), 0o644); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "reload", "--config", g.CaddyfilePath, "--adapter", "caddyfile", "--address", cfg.Admin).CombinedOutput()
	if err != nil {
		return fmt.Errorf("caddy reload: %v\n%s", err, out)
	}
	g.Config = cfg
	return nil
}
