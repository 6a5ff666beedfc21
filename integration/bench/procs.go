package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"
)

// procSet tracks every child process the bench starts, so that all of them
// are killed on every exit path (normal return, error, panic, SIGINT/SIGTERM).
// Children also get Pdeathsig=SIGKILL, so they die if the bench is killed
// with SIGKILL.
type procSet struct {
	mu    sync.Mutex
	procs []*child
}

type child struct {
	name string
	cmd  *exec.Cmd
	log  string // path of the combined stdout/stderr log
	done chan struct{}
	err  error // exit status, valid after done is closed
}

func (c *child) pid() int { return c.cmd.Process.Pid }

// exited reports whether the child has already exited.
func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// logTail returns the last n bytes of the child's log, for error messages.
func (c *child) logTail(n int64) string {
	f, err := os.Open(c.log)
	if err != nil {
		return ""
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return ""
	}
	off := st.Size() - n
	if off < 0 {
		off = 0
	}
	b := make([]byte, st.Size()-off)
	_, _ = f.ReadAt(b, off)
	return string(b)
}

// logSize is the current size of the child's log in bytes.
func (c *child) logSize() int64 {
	st, err := os.Stat(c.log)
	if err != nil {
		return 0
	}
	return st.Size()
}

// start launches a child. If cpus is non-nil the child is started with that
// CPU affinity (inherited from the forking thread, so it applies before the
// child runs any code: a Go child sizes GOMAXPROCS from it).
func (ps *procSet) start(name, dir, logPath string, env []string, cpus []int, argv ...string) (*child, error) {
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = dir
	cmd.Env = env
	cmd.Stdout = lf
	cmd.Stderr = lf
	// stdin is a pipe that we never write: the node peer exits when it closes.
	stdin, err := cmd.StdinPipe()
	if err != nil {
		lf.Close()
		return nil, err
	}
	_ = stdin
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}

	ps.mu.Lock()
	defer ps.mu.Unlock()
	if err := startWithAffinity(cmd, cpus); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	lf.Close() // the child holds its own descriptor
	c := &child{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() { c.err = cmd.Wait(); close(c.done) }()
	ps.procs = append(ps.procs, c)
	return c, nil
}

// stop kills one child (its whole process group) and waits for it.
func (ps *procSet) stop(c *child) {
	if c == nil {
		return
	}
	if !c.exited() {
		_ = syscall.Kill(-c.pid(), syscall.SIGTERM)
		select {
		case <-c.done:
		case <-time.After(3 * time.Second):
			_ = syscall.Kill(-c.pid(), syscall.SIGKILL)
			select {
			case <-c.done:
			case <-time.After(5 * time.Second):
			}
		}
	}
	ps.mu.Lock()
	for i, p := range ps.procs {
		if p == c {
			ps.procs = append(ps.procs[:i], ps.procs[i+1:]...)
			break
		}
	}
	ps.mu.Unlock()
}

// killAll kills every child still running. Safe to call more than once and
// from a signal handler goroutine.
func (ps *procSet) killAll() {
	ps.mu.Lock()
	procs := append([]*child(nil), ps.procs...)
	ps.mu.Unlock()
	for _, c := range procs {
		if !c.exited() {
			_ = syscall.Kill(-c.pid(), syscall.SIGKILL)
		}
	}
	for _, c := range procs {
		select {
		case <-c.done:
		case <-time.After(5 * time.Second):
		}
	}
	ps.mu.Lock()
	ps.procs = nil
	ps.mu.Unlock()
}

// ---- CPU affinity (stdlib only: raw sched_setaffinity) ----

type cpuMask [16]uint64 // up to 1024 CPUs

func maskOf(cpus []int) cpuMask {
	var m cpuMask
	for _, c := range cpus {
		if c >= 0 && c < len(m)*64 {
			m[c/64] |= 1 << (uint(c) % 64)
		}
	}
	return m
}

func setAffinity(tid int, cpus []int) error {
	m := maskOf(cpus)
	_, _, e := syscall.RawSyscall(syscall.SYS_SCHED_SETAFFINITY, uintptr(tid), unsafe.Sizeof(m), uintptr(unsafe.Pointer(&m)))
	if e != 0 {
		return e
	}
	return nil
}

// benchCPUs is the affinity of the bench process itself (nil: not pinned).
var benchCPUs []int

// pinSelf pins every thread of this process to cpus. Threads created later
// inherit the affinity of the thread that creates them, so one pass (done
// twice to catch threads born during the first) pins the whole process.
func pinSelf(cpus []int) error {
	for pass := 0; pass < 2; pass++ {
		ents, err := os.ReadDir("/proc/self/task")
		if err != nil {
			return err
		}
		for _, e := range ents {
			tid, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			if err := setAffinity(tid, cpus); err != nil && !errors.Is(err, syscall.ESRCH) {
				return err
			}
		}
	}
	benchCPUs = cpus
	return nil
}

// startWithAffinity forks cmd from a locked OS thread whose affinity is
// temporarily set to cpus, so the child inherits it from its first
// instruction. The thread's affinity is restored to benchCPUs (or all CPUs)
// before it is released.
func startWithAffinity(cmd *exec.Cmd, cpus []int) error {
	if cpus == nil {
		return cmd.Start()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		tid := syscall.Gettid()
		if err := setAffinity(tid, cpus); err != nil {
			errc <- err
			return
		}
		err := cmd.Start()
		restore := benchCPUs
		if restore == nil {
			restore = allCPUs()
		}
		_ = setAffinity(tid, restore)
		errc <- err
	}()
	return <-errc
}

func allCPUs() []int {
	n := runtime.NumCPU()
	out := make([]int, n)
	for i := range out {
		out[i] = i
	}
	return out
}

// ---- ports, readiness, RSS ----

// freePort asks the kernel for a free loopback port.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// waitHTTP polls url until it answers any HTTP response (bounded by timeout),
// or the child exits.
func waitHTTP(ctx context.Context, c *child, url string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	cl := &http.Client{Timeout: 2 * time.Second}
	for i := 0; time.Now().Before(deadline) && i < 2000; i++ {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if c != nil && c.exited() {
			return fmt.Errorf("%s exited during startup (%v); log tail:\n%s", c.name, c.err, c.logTail(3000))
		}
		resp, err := cl.Get(url)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	tail := ""
	if c != nil {
		tail = c.logTail(3000)
	}
	return fmt.Errorf("%s did not answer on %s within %s; log tail:\n%s", nameOf(c), url, timeout, tail)
}

func nameOf(c *child) string {
	if c == nil {
		return "server"
	}
	return c.name
}

// procStatus reads VmRSS and VmHWM (peak RSS) of pid, in bytes.
func procStatus(pid int) (rss, hwm int64, err error) {
	f, err := os.Open(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		var dst *int64
		switch {
		case strings.HasPrefix(line, "VmRSS:"):
			dst = &rss
		case strings.HasPrefix(line, "VmHWM:"):
			dst = &hwm
		default:
			continue
		}
		fs := strings.Fields(line)
		if len(fs) >= 2 {
			kb, _ := strconv.ParseInt(fs[1], 10, 64)
			*dst = kb * 1024
		}
	}
	return rss, hwm, sc.Err()
}

// groupPids returns the pids in the process group pgid (a child and what it
// started: e.g. start.sh → kc.sh → java for Keycloak).
func groupPids(pgid int) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return []int{pgid}
	}
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
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
		// state ppid pgrp ...
		if len(f) >= 3 && f[2] == strconv.Itoa(pgid) {
			out = append(out, pid)
		}
	}
	if len(out) == 0 {
		out = []int{pgid}
	}
	return out
}

// rssOf returns the VmRSS of the child's process group in bytes (0 if it
// cannot be read).
func rssOf(c *child) int64 {
	if c == nil || c.exited() {
		return 0
	}
	var sum int64
	for _, p := range groupPids(c.pid()) {
		r, _, _ := procStatus(p)
		sum += r
	}
	return sum
}

// groupCPU is the CPU time of the child's process group.
func groupCPU(c *child) time.Duration {
	if c == nil {
		return 0
	}
	var sum time.Duration
	for _, p := range groupPids(c.pid()) {
		sum += cpuTime(p)
	}
	return sum
}
