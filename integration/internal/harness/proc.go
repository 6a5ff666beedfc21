package harness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Proc is a child process running in its own process group, with stdout
// and stderr appended to LogPath.
type Proc struct {
	Name    string
	LogPath string

	cmd  *exec.Cmd
	done chan struct{}
	err  error
	once sync.Once
}

// ProcSpec describes a process to start.
type ProcSpec struct {
	Name    string
	Args    []string // Args[0] is the program
	Dir     string
	Env     []string // added to (and overriding) the current environment
	LogPath string

	// CleanEnv makes Env the child's whole environment instead of
	// additions to this process's.
	CleanEnv bool
	// StdinPipe gives the child a stdin pipe that nothing writes to: it
	// reaches EOF when this process exits, so a child can watch it to die
	// with its parent. Without it stdin is the null device.
	StdinPipe bool
	// StartCmd, if set, starts the prepared command instead of cmd.Start
	// (e.g. to fork it from a CPU-pinned thread). It must call cmd.Start
	// once and return its error.
	StartCmd func(cmd *exec.Cmd) error
}

var (
	registryMu sync.Mutex
	registry   = map[*Proc]bool{}
)

// Start starts a process in a new process group. The direct child also gets
// Pdeathsig=SIGKILL, so it dies with the test binary even on SIGKILL.
func Start(spec ProcSpec) (*Proc, error) {
	lf, err := os.OpenFile(spec.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer lf.Close() // the child has its own descriptor
	cmd := exec.Command(spec.Args[0], spec.Args[1:]...)
	cmd.Dir = spec.Dir
	if spec.CleanEnv {
		cmd.Env = append([]string{}, spec.Env...) // non-nil: nothing inherited
	} else {
		cmd.Env = mergeEnv(os.Environ(), spec.Env)
	}
	cmd.Stdout = lf
	cmd.Stderr = lf
	if spec.StdinPipe {
		// The write end stays with cmd (closed after Wait), so it lives as
		// long as the Proc and closes when this process exits.
		if _, err := cmd.StdinPipe(); err != nil {
			return nil, err
		}
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	fmt.Fprintf(lf, "### %s: %s\n", time.Now().Format(time.RFC3339), strings.Join(spec.Args, " "))
	startCmd := spec.StartCmd
	if startCmd == nil {
		startCmd = (*exec.Cmd).Start
	}
	registryMu.Lock()
	defer registryMu.Unlock()
	if err := startCmd(cmd); err != nil {
		return nil, fmt.Errorf("start %s: %w", spec.Name, err)
	}
	p := &Proc{Name: spec.Name, LogPath: spec.LogPath, cmd: cmd, done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	registry[p] = true
	return p, nil
}

func mergeEnv(base, extra []string) []string {
	keys := map[string]bool{}
	for _, kv := range extra {
		k, _, _ := strings.Cut(kv, "=")
		keys[k] = true
	}
	var out []string
	for _, kv := range base {
		k, _, _ := strings.Cut(kv, "=")
		if !keys[k] {
			out = append(out, kv)
		}
	}
	return append(out, extra...)
}

// Pid is the process (and process group) id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Exited reports whether the process has exited.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// ExitErr is the process's exit status once it has exited.
func (p *Proc) ExitErr() error {
	<-p.done
	return p.err
}

// Stop sends SIGTERM to the process group, waits up to grace for the
// leader to exit, then SIGKILLs the whole group (which also gets children
// that outlived the leader, such as Keycloak's JVM under kc.sh). Safe to
// call more than once and concurrently.
func (p *Proc) Stop(grace time.Duration) {
	if p == nil {
		return
	}
	p.once.Do(func() {
		pgid := p.Pid()
		_ = syscall.Kill(-pgid, syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(grace):
		}
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
		}
		registryMu.Lock()
		delete(registry, p)
		registryMu.Unlock()
	})
}

// StopAll kills every process started by Start that is still registered.
// It is meant for the last line of defence: TestMain, signal handlers and
// watchdogs.
func StopAll() { stopAll(2 * time.Second) }

// KillAll is StopAll without the grace period: every registered process
// group gets SIGKILL at once (after a SIGTERM it has no time to act on).
func KillAll() { stopAll(0) }

func stopAll(grace time.Duration) {
	registryMu.Lock()
	ps := make([]*Proc, 0, len(registry))
	for p := range registry {
		ps = append(ps, p)
	}
	registryMu.Unlock()
	var wg sync.WaitGroup
	for _, p := range ps {
		wg.Add(1)
		go func() { defer wg.Done(); p.Stop(grace) }()
	}
	wg.Wait()
}

// Tail returns the last n lines of a file (for failure reports).
func Tail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	defer f.Close()
	const max = 256 << 10
	if st, err := f.Stat(); err == nil && st.Size() > max {
		_, _ = f.Seek(st.Size()-max, io.SeekStart)
	}
	b, _ := io.ReadAll(f)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	for i, l := range lines {
		if len(l) > 2000 {
			lines[i] = l[:2000] + "…"
		}
	}
	return strings.Join(lines, "\n")
}

// FreePort returns a TCP port that was free on 127.0.0.1 a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// FreePorts returns n distinct free ports (all held open together while
// they are chosen, so they differ).
func FreePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// HTTPClient talks to loopback only: no proxy, no redirects followed.
var HTTPClient = &http.Client{
	Timeout:   20 * time.Second,
	Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true},
	CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	},
}

// WaitReady polls url until ready(status) holds, the process exits, or
// timeout passes.
func WaitReady(ctx context.Context, p *Proc, url string, timeout time.Duration, ready func(status int) bool) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last string
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := HTTPClient.Do(req)
		if err == nil {
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
			resp.Body.Close()
			if ready(resp.StatusCode) {
				return nil
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		if p != nil && p.Exited() {
			return fmt.Errorf("%s exited before it was ready (%v); last lines of %s:\n%s", p.Name, p.ExitErr(), p.LogPath, Tail(p.LogPath, 30))
		}
		select {
		case <-ctx.Done():
			msg := fmt.Sprintf("%s not ready at %s after %s (last: %s)", nameOf(p), url, timeout, last)
			if p != nil {
				msg += fmt.Sprintf("; last lines of %s:\n%s", p.LogPath, Tail(p.LogPath, 30))
			}
			return errors.New(msg)
		case <-time.After(150 * time.Millisecond):
		}
	}
}

func nameOf(p *Proc) string {
	if p == nil {
		return "server"
	}
	return p.Name
}
