// Package harness starts and stops the processes of the end-to-end tests
// and the demo: the caddy-par gateway, the embedded Dex server and Keycloak.
// Every process runs in its own process group on 127.0.0.1 and is registered
// so that StopAll can kill whatever is still running on any exit path.
package harness

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
)

// RepoRoot returns the repository root: the directory with go.mod,
// cmd/caddy and integration/. It is searched upwards from the working
// directory, then from this source file.
func RepoRoot() (string, error) {
	var starts []string
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	if _, file, _, ok := runtime.Caller(0); ok {
		starts = append(starts, filepath.Dir(file))
	}
	for _, s := range starts {
		for d := s; ; {
			if isRepoRoot(d) {
				return d, nil
			}
			p := filepath.Dir(d)
			if p == d {
				break
			}
			d = p
		}
	}
	return "", errors.New("cannot find the caddy-par repository root (a directory with go.mod, cmd/caddy and integration/); run from inside the repository")
}

func isRepoRoot(d string) bool {
	b, err := os.ReadFile(filepath.Join(d, "go.mod"))
	if err != nil || !strings.Contains(string(b), "module github.com/caddy-par/caddy-par\n") {
		return false
	}
	for _, p := range []string{"cmd/caddy", "integration/dex", "integration/js"} {
		if st, err := os.Stat(filepath.Join(d, p)); err != nil || !st.IsDir() {
			return false
		}
	}
	return true
}

// CacheDir is ${CADDY_PAR_CACHE:-$HOME/.cache/caddy-par}, created if needed.
// Built binaries and the Keycloak distribution live there.
func CacheDir() (string, error) {
	d := os.Getenv("CADDY_PAR_CACHE")
	if d == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", errors.New("neither CADDY_PAR_CACHE nor HOME is set")
		}
		d = filepath.Join(home, ".cache", "caddy-par")
	}
	if err := os.MkdirAll(d, 0o755); err != nil {
		return "", err
	}
	return d, nil
}
