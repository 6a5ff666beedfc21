package harness

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// BuildGateway builds the gateway (`go build -o <cache>/caddy-par ./cmd/caddy`
// from the repository root) and returns the binary's path. A cold build
// takes minutes on 2 cores; with the Go build cache warm and the sources
// unchanged it is a no-op of a second or two. Progress goes to logw.
func BuildGateway(ctx context.Context, logw io.Writer) (string, error) {
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	return build(ctx, logw, root, "./cmd/caddy", "caddy-par")
}

// BuildDex builds the embedded Dex server (integration/dex, its own Go
// module) into <cache>/dexsrv and returns its path.
func BuildDex(ctx context.Context, logw io.Writer) (string, error) {
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	return build(ctx, logw, filepath.Join(root, "integration", "dex"), ".", "dexsrv")
}

// build runs go build under an exclusive lock on the cache directory, so
// that concurrent test runs and the demo never write the same binary at
// once. Building in place (no temp file + rename) lets the go command see
// that an up-to-date binary needs no relink.
func build(ctx context.Context, logw io.Writer, dir, pkg, name string) (string, error) {
	cache, err := CacheDir()
	if err != nil {
		return "", err
	}
	out := filepath.Join(cache, name)
	unlock, err := lockFile(ctx, filepath.Join(cache, ".build-"+name+".lock"))
	if err != nil {
		return "", err
	}
	defer unlock()

	start := time.Now()
	fmt.Fprintf(logw, "building %s: (cd %s && go build -o %s %s); a cold build takes a few minutes\n", name, dir, out, pkg)
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, pkg)
	cmd.Dir = dir
	var buf bytes.Buffer
	cmd.Stdout = &buf
	cmd.Stderr = &buf
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("go build -o %s %s (in %s): %v\n%s", out, pkg, dir, err, strings.TrimSpace(buf.String()))
	}
	fmt.Fprintf(logw, "built %s in %s\n", name, time.Since(start).Round(100*time.Millisecond))
	return out, nil
}

// lockFile takes an exclusive flock on path, waiting until ctx is done.
func lockFile(ctx context.Context, path string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { _ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN); f.Close() }, nil
		}
		if err != syscall.EWOULDBLOCK {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("waiting for lock %s: %w", path, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}
