package harness

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Redis is a redis-server started on 127.0.0.1:Port with its own
// throwaway directory and no persistence (--save "" --appendonly no), as
// the Redis store's end-to-end tests use it. After Stop, Start runs a new,
// empty server on the same port.
type Redis struct {
	Port    int
	Dir     string
	LogPath string
	proc    *Proc
}

// Addr is 127.0.0.1:Port.
func (r *Redis) Addr() string { return "127.0.0.1:" + strconv.Itoa(r.Port) }

// StartRedis starts redis-server (it must be installed: test.sh runs
// scripts/ensure-redis.sh) and waits until it answers PING.
func StartRedis(ctx context.Context, dir string, port int) (*Redis, error) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		return nil, fmt.Errorf("redis-server is not installed (run integration/scripts/ensure-redis.sh): %v", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	r := &Redis{Port: port, Dir: dir, LogPath: filepath.Join(dir, "redis.log")}
	return r, r.Start(ctx)
}

// Start (re)starts the server after Stop.
func (r *Redis) Start(ctx context.Context) error {
	p, err := Start(ProcSpec{
		Name: fmt.Sprintf("redis-server :%d", r.Port),
		Args: []string{"redis-server", "--port", strconv.Itoa(r.Port), "--bind", "127.0.0.1",
			"--dir", r.Dir, "--save", "", "--appendonly", "no", "--daemonize", "no",
			"--maxmemory-policy", "noeviction"},
		Dir:     r.Dir,
		LogPath: r.LogPath,
	})
	if err != nil {
		return err
	}
	r.proc = p
	deadline := time.Now().Add(10 * time.Second)
	for {
		if out, err := r.CLI("PING"); err == nil && strings.TrimSpace(out) == "PONG" {
			return nil
		}
		if p.Exited() || time.Now().After(deadline) || ctx.Err() != nil {
			p.Stop(time.Second)
			return fmt.Errorf("redis-server on %s did not start; log %s:\n%s", r.Addr(), r.LogPath, Tail(r.LogPath, 20))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stop kills the server (an abrupt outage).
func (r *Redis) Stop() {
	if r.proc != nil {
		_ = syscall.Kill(r.proc.Pid(), syscall.SIGCONT)
		r.proc.Stop(0)
		r.proc = nil
	}
}

// Pause freezes the server (SIGSTOP): a hung Redis. Resume undoes it.
func (r *Redis) Pause()  { _ = syscall.Kill(r.proc.Pid(), syscall.SIGSTOP) }
func (r *Redis) Resume() { _ = syscall.Kill(r.proc.Pid(), syscall.SIGCONT) }

// CLI runs redis-cli against the server.
func (r *Redis) CLI(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "redis-cli", append([]string{"-h", "127.0.0.1", "-p", strconv.Itoa(r.Port)}, args...)...).Output()
	return string(out), err
}

// Info is one INFO section as field -> value.
func (r *Redis) Info(section string) (map[string]string, error) {
	out, err := r.CLI("INFO", section)
	if err != nil {
		return nil, err
	}
	m := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		if k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), ":"); ok {
			m[k] = v
		}
	}
	return m, nil
}

// CommandCalls is INFO commandstats as command -> calls.
func (r *Redis) CommandCalls() (map[string]int, error) {
	info, err := r.Info("commandstats")
	if err != nil {
		return nil, err
	}
	calls := map[string]int{}
	for k, v := range info {
		name, ok := strings.CutPrefix(k, "cmdstat_")
		if !ok {
			continue
		}
		for _, kv := range strings.Split(v, ",") {
			if n, ok := strings.CutPrefix(kv, "calls="); ok {
				calls[name], _ = strconv.Atoi(n)
			}
		}
	}
	return calls, nil
}

// CallsSince is after - before per command, without INFO itself.
func CallsSince(before, after map[string]int) map[string]int {
	d := map[string]int{}
	for k, v := range after {
		if k != "info" && v != before[k] {
			d[k] = v - before[k]
		}
	}
	return d
}
