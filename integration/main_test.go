package integration

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/caddy-par/caddy-par/integration/internal/harness"
)

// suiteCtx is cancelled when the run is interrupted or about to time out.
var suiteCtx, cancelSuite = context.WithCancel(context.Background())

func TestMain(m *testing.M) {
	flag.Parse()
	// Every process is stopped on every exit path: tests register
	// t.Cleanup, and this is the last line of defence for interrupts and
	// for `go test -timeout`, which panics without running cleanups.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		s := <-sigs
		fmt.Fprintf(os.Stderr, "integration: %v: stopping all processes\n", s)
		cancelSuite()
		harness.StopAll()
		os.Exit(130)
	}()
	if f := flag.Lookup("test.timeout"); f != nil {
		if d, ok := f.Value.(flag.Getter).Get().(time.Duration); ok && d > 0 {
			margin := 20 * time.Second
			if d < 2*margin {
				margin = d / 4
			}
			time.AfterFunc(d-margin, func() {
				fmt.Fprintf(os.Stderr, "integration: -timeout %s almost reached: stopping all processes (use go test -timeout 20m for a cold run)\n", d)
				cancelSuite()
				harness.StopAll()
			})
		}
	}
	if willRun("TestKeycloak") {
		// Keycloak takes one to two minutes to boot: start it now, while
		// the builds and the Dex tests run.
		go bootKeycloak()
	}
	code := m.Run()
	cancelSuite()
	harness.StopAll()
	os.Exit(code)
}

// willRun reports whether -test.run selects the top-level test name.
func willRun(name string) bool {
	f := flag.Lookup("test.run")
	if f == nil || f.Value.String() == "" {
		return true
	}
	first := strings.Split(f.Value.String(), "/")[0]
	re, err := regexp.Compile(first)
	return err != nil || re.MatchString(name)
}

// ---- shared, built once per run ----

type onceValue struct {
	once sync.Once
	val  string
	err  error
}

func (o *onceValue) get(f func() (string, error)) (string, error) {
	o.once.Do(func() { o.val, o.err = f() })
	return o.val, o.err
}

var gatewayBin, dexBin onceValue

// logWriter sends build progress to the test log of whoever asked first.
type logWriter struct{ t *testing.T }

func (w logWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

func needGateway(t *testing.T) string {
	t.Helper()
	p, err := gatewayBin.get(func() (string, error) { return harness.BuildGateway(suiteCtx, logWriter{t}) })
	if err != nil {
		t.Fatalf("building the gateway: %v", err)
	}
	return p
}

func needDex(t *testing.T) string {
	t.Helper()
	p, err := dexBin.get(func() (string, error) { return harness.BuildDex(suiteCtx, logWriter{t}) })
	if err != nil {
		t.Fatalf("building the Dex server: %v", err)
	}
	return p
}

// needBrowser fails (never skips) when Chromium or the JS dependencies
// are missing.
func needBrowser(t *testing.T) {
	t.Helper()
	if err := harness.CheckBrowserPrereqs(); err != nil {
		t.Fatalf("%v\n(the README's test command installs both; this suite never skips)", err)
	}
}

// artifactsDir is integration/.artifacts/<name>, emptied once per run.
func artifactsDir(t testing.TB, name string) string {
	t.Helper()
	root, err := harness.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	d := filepath.Join(root, "integration", ".artifacts", filepath.FromSlash(name))
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
	return d
}

func resetArtifacts(name string) (string, error) {
	root, err := harness.RepoRoot()
	if err != nil {
		return "", err
	}
	d := filepath.Join(root, "integration", ".artifacts", name)
	if err := os.RemoveAll(d); err != nil {
		return "", err
	}
	return d, os.MkdirAll(d, 0o755)
}
