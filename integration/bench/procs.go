package main

import (
	"bufio"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"github.com/caddy-par/caddy-par/integration/internal/harness"
)

// Every child the bench starts is a harness.Proc: its own process group,
// Pdeathsig=SIGKILL (so it dies if the bench is killed with SIGKILL), and
// registered so that harness.KillAll kills all of them on every exit path
// (normal return, error, panic, SIGINT/SIGTERM).

// start launches a child with exactly env as its environment and a stdin
// pipe that is never written (the node peer exits when it closes). If cpus
// is non-nil the child is started with that CPU affinity (inherited from
// the forking thread, so it applies before the child runs any code: a Go
// child sizes GOMAXPROCS from it).
func (e *env) start(name, dir, logPath string, env []string, cpus []int, argv ...string) (*harness.Proc, error) {
	return harness.Start(harness.ProcSpec{
		Name:      name,
		Args:      argv,
		Dir:       dir,
		Env:       env,
		LogPath:   logPath,
		CleanEnv:  true,
		StdinPipe: true,
		StartCmd:  func(cmd *exec.Cmd) error { return startWithAffinity(cmd, cpus) },
	})
}

// stopGrace is how long a child gets after SIGTERM before SIGKILL.
const stopGrace = 3 * time.Second

// logSize is the current size of the child's log in bytes.
func logSize(c *harness.Proc) int64 {
	st, err := os.Stat(c.LogPath)
	if err != nil {
		return 0
	}
	return st.Size()
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

// ---- readiness, RSS, CPU ----

// anyStatus is a readiness test for harness.WaitReady: any HTTP answer.
func anyStatus(int) bool { return true }

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
func rssOf(c *harness.Proc) int64 {
	if c == nil || c.Exited() {
		return 0
	}
	var sum int64
	for _, p := range groupPids(c.Pid()) {
		r, _, _ := procStatus(p)
		sum += r
	}
	return sum
}

// groupCPU is the CPU time of the child's process group.
func groupCPU(c *harness.Proc) time.Duration {
	if c == nil {
		return 0
	}
	var sum time.Duration
	for _, p := range groupPids(c.Pid()) {
		sum += cpuTime(p)
	}
	return sum
}
