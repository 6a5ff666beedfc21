package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"
)

type machineInfo struct {
	nproc        int
	cpuModel     string
	kernel       string
	goVersion    string
	caddyVersion string
	nodeVersion  string
	oidcProvider string
}

func gatherMachineInfo(e *env) machineInfo {
	mi := machineInfo{goVersion: runtime.Version()}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			line := sc.Text()
			if strings.HasPrefix(line, "processor") {
				mi.nproc++
			}
			if mi.cpuModel == "" && strings.HasPrefix(line, "model name") {
				if i := strings.IndexByte(line, ':'); i >= 0 {
					mi.cpuModel = strings.TrimSpace(line[i+1:])
				}
			}
		}
		f.Close()
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		mi.kernel = strings.TrimSpace(string(b))
	}
	out := func(name string, args ...string) string {
		ctx, cancel := context.WithTimeout(e.ctx, 20*time.Second)
		defer cancel()
		b, err := exec.CommandContext(ctx, name, args...).Output()
		if err != nil {
			return ""
		}
		return strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0])
	}
	if v := out("go", "version"); v != "" {
		mi.goVersion = strings.TrimPrefix(v, "go version ")
	}
	if e.caddyPath != "" {
		mi.caddyVersion = out(e.caddyPath, "version")
	}
	if node, err := exec.LookPath(e.cfg.node); err == nil {
		mi.nodeVersion = out(node, "--version")
	}
	if b, err := os.ReadFile(filepath.Join(e.peerDir, "package.json")); err == nil {
		var p struct {
			Dependencies map[string]string `json:"dependencies"`
		}
		if json.Unmarshal(b, &p) == nil {
			mi.oidcProvider = p.Dependencies["oidc-provider"]
		}
	}
	return mi
}

// report renders the Markdown report.
func (e *env) report() string {
	var b strings.Builder
	mi := e.info
	fmt.Fprintf(&b, "\n## caddy-par bench (%s)\n\n", time.Now().UTC().Format("2006-01-02 15:04 UTC"))
	fmt.Fprintf(&b, "- machine: nproc %d, %s, Linux %s\n", mi.nproc, orDash(mi.cpuModel), orDash(mi.kernel))
	fmt.Fprintf(&b, "- Go: %s; caddy: %s\n", mi.goVersion, orDash(mi.caddyVersion))
	fmt.Fprintf(&b, "- peer: node %s, oidc-provider %s\n", orDash(mi.nodeVersion), orDash(mi.oidcProvider))
	if e.serverCPUs != nil {
		fmt.Fprintf(&b, "- pinning: servers (caddy, node) on CPU %v; load generator + minimal upstream on CPU %v\n", e.serverCPUs, e.loadCPUs)
	} else {
		fmt.Fprintf(&b, "- pinning: none (servers, load generator and upstream share all CPUs)\n")
	}
	if parExtra != "" {
		fmt.Fprintf(&b, "- oauth_par extra subdirectives (-par-extra): %q\n", parExtra)
	}
	fmt.Fprintf(&b, "- load average (1/5/15 min) at start: %s; at end: %s\n", e.loadStart, loadAvg())
	fmt.Fprintf(&b, "- load: closed loop, %d workers, one keep-alive HTTP/1.1 connection each, %s unrecorded warmup + %s measured per scenario, loopback 127.0.0.1\n\n",
		e.cfg.concurrency, e.cfg.warmup, e.cfg.duration)

	hasRows := false
	for _, n := range e.order {
		if len(e.results[n].memory) == 0 {
			hasRows = true
		}
	}
	if hasRows {
		b.WriteString("| scenario | concurrency | duration | requests | req/s | p50 | p99 | errors | server CPU/req | server RSS | other load |\n")
		b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	}
	for _, n := range e.order {
		r := e.results[n]
		if len(r.memory) > 0 {
			continue
		}
		switch {
		case r.skipped != "":
			fmt.Fprintf(&b, "| %s | - | - | - | - | - | - | - | - | - | skipped: %s |\n", n, r.skipped)
		case r.res == nil:
			fmt.Fprintf(&b, "| %s | - | - | - | - | - | - | - | - | - | FAILED: %s |\n", n, oneLine(r.failed))
		default:
			rs := r.res
			cpu := "-"
			if r.cpuPerReq > 0 {
				cpu = fmtDur(r.cpuPerReq)
			}
			rss := "-"
			if r.rss > 0 {
				rss = fmtBytes(float64(r.rss))
			}
			fmt.Fprintf(&b, "| %s | %d | %s | %d | %.0f | %s | %s | %d | %s | %s | %.2f CPU |\n",
				n, e.cfg.concurrency, rs.elapsed.Round(10*time.Millisecond), rs.requests, rs.rps(),
				fmtDur(rs.pct(50)), fmtDur(rs.pct(99)), rs.errors, cpu, rss, r.foreign)
		}
	}

	ratios := [][3]string{
		{"par-push / baseline-respond", "par-push", "baseline-respond"},
		{"par-push-large / baseline-respond", "par-push-large", "baseline-respond"},
		{"par-authorize / baseline-proxy", "par-authorize", "baseline-proxy"},
		{"par-push-redis / par-push", "par-push-redis", "par-push"},
		{"par-authorize-redis / par-authorize", "par-authorize-redis", "par-authorize"},
		{"par-push / peer-oidc-provider-par", "par-push", "peer-oidc-provider-par"},
		{"par-push-large / peer-oidc-provider-par-large", "par-push-large", "peer-oidc-provider-par-large"},
		{"par-push / peer-keycloak-par", "par-push", "peer-keycloak-par"},
		{"par-push-private-key-jwt-es256 / par-push", "par-push-private-key-jwt-es256", "par-push"},
		{"par-push-private-key-jwt-ps256 / par-push", "par-push-private-key-jwt-ps256", "par-push"},
		{"par-push-signed-request-object / par-push", "par-push-signed-request-object", "par-push"},
		{"par-push-signed-request-object / par-push-private-key-jwt-es256", "par-push-signed-request-object", "par-push-private-key-jwt-es256"},
	}
	var rl []string
	for _, q := range ratios {
		a, c := e.results[q[1]], e.results[q[2]]
		if a == nil || c == nil || a.res == nil || c.res == nil || a.res.requests == 0 || c.res.requests == 0 {
			continue
		}
		cpu := "-"
		if a.cpuPerReq > 0 && c.cpuPerReq > 0 {
			cpu = fmt.Sprintf("%.2f× (%s)", float64(a.cpuPerReq)/float64(c.cpuPerReq), fmtSigned(a.cpuPerReq-c.cpuPerReq))
		}
		rl = append(rl, fmt.Sprintf("| %s | %.2f× | %.2f× | %.2f× | %s |", q[0],
			a.res.rps()/c.res.rps(),
			float64(a.res.pct(50))/float64(c.res.pct(50)),
			float64(a.res.pct(99))/float64(c.res.pct(99)), cpu))
	}
	if len(rl) > 0 {
		b.WriteString("\n| ratio | req/s | p50 | p99 | server CPU/req |\n|---|---:|---:|---:|---:|\n")
		b.WriteString(strings.Join(rl, "\n") + "\n")
	}

	var mem []string
	for _, n := range e.order {
		mem = append(mem, e.results[n].memory...)
	}
	if len(mem) > 0 {
		b.WriteString("\n### memory\n\n")
		b.WriteString(strings.Join(mem, "\n") + "\n")
	}

	var notes []string
	for _, n := range e.order {
		r := e.results[n]
		var parts []string
		if r.server != "" {
			parts = append(parts, "server: "+r.server)
		}
		if r.logPerReq > 0 {
			parts = append(parts, fmt.Sprintf("server log %.0f B/request", r.logPerReq))
		}
		parts = append(parts, r.notes...)
		if r.failed != "" && r.res != nil {
			parts = append(parts, "FAILED: "+oneLine(r.failed))
		}
		if len(parts) > 0 {
			notes = append(notes, fmt.Sprintf("- %s: %s", n, strings.Join(parts, "; ")))
		}
	}
	if len(notes) > 0 {
		b.WriteString("\nnotes:\n\n" + strings.Join(notes, "\n") + "\n")
	}
	return b.String()
}

// loadAvg returns the first three fields of /proc/loadavg.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "-"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "-"
	}
	return strings.Join(f[:3], " ")
}

func fmtSigned(d time.Duration) string {
	if d < 0 {
		return "-" + fmtDur(-d)
	}
	return "+" + fmtDur(d)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	s = strings.ReplaceAll(s, "|", "/")
	return trunc(s, 300)
}
